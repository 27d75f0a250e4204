"""Configuration: one frozen dataclass per concern, loaded once in each entry point.

Precedence is flags > environment (`HEAPD_<SECTION>_<FIELD>`, then `HEAPD_<FIELD>`) > the TOML
file's `[section]` table > the dataclass default. The environment is passed in as a mapping so
the precedence is testable and nothing reads `os.environ` at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_PLM_PORT = 7070

T = TypeVar("T")


@dataclass(frozen=True)
class CellConfig:
    """The shared-memory cell: its name and capacities (used by whoever creates it)."""

    cell: str = "default"
    tasks: int = 1 << 20
    workers: int = 1024
    arena_mb: int = 256
    max_blob_kb: int = 1024


@dataclass(frozen=True)
class PlmConfig:
    """The PLM: where TaskService listens and how long unclaimed results are held."""

    cell: str = "default"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PLM_PORT
    result_ttl_s: float = 600.0


@dataclass(frozen=True)
class SchedulerConfig:
    """The main scheduler: dispatch batch size and how deep workers may be fed."""

    cell: str = "default"
    host: str = "127.0.0.1"
    port: int = 0
    batch: int = 512
    # Tasks per worker slot once the queue is deep (>= 4 x total slots); 1 when it is shallow,
    # so a late high-priority task waits behind at most this many tasks per slot.
    prefetch_per_slot: int = 8


@dataclass(frozen=True)
class RegisterConfig:
    """The register: where RegisterService listens and the liveness deadline of workers."""

    cell: str = "default"
    host: str = "127.0.0.1"
    port: int = 0
    heartbeat_interval_s: float = 0.5
    missed_heartbeats: int = 4

    @property
    def deadline_s(self) -> float:
        """Silence longer than this makes a worker DEAD."""
        return self.heartbeat_interval_s * self.missed_heartbeats


@dataclass(frozen=True)
class WorkerConfig:
    """A worker: its register, its own listening address and its slots."""

    register: str = "127.0.0.1:7071"
    host: str = "127.0.0.1"
    port: int = 0
    advertise_host: str = ""
    slots: int = 2
    register_timeout_s: float = 30.0


def load(
    cls: type[T],
    section: str,
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    toml_path: Path | None = None,
) -> T:
    """Build `cls` from flags > env > TOML > defaults; a malformed value raises ValueError."""
    table = _toml_section(toml_path, section)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        raw = _first_set(field.name, section, flags, env, table)
        if raw is not None:
            values[field.name] = _coerce(field.name, raw, type(getattr(cls, field.name)))
    return cls(**values)


def _first_set(
    name: str,
    section: str,
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    table: Mapping[str, Any],
) -> Any:
    if flags.get(name) is not None:
        return flags[name]
    for key in (f"HEAPD_{section.upper()}_{name.upper()}", f"HEAPD_{name.upper()}"):
        if key in env:
            return env[key]
    return table.get(name)


def _toml_section(path: Path | None, section: str) -> Mapping[str, Any]:
    if path is None:
        return {}
    data = tomllib.loads(path.read_text())
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    nested = data.get(section, {})
    return {**top, **nested}


def _coerce(name: str, raw: Any, kind: type) -> Any:
    try:
        if kind is bool and isinstance(raw, str):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"configuration {name}={raw!r}: expected {kind.__name__}") from exc


def add_common_flags(parser: argparse.ArgumentParser, default_port: int) -> None:
    """--cell, --host, --port and --config, shared by every role's command."""
    parser.add_argument("--cell", help="cell name (HEAPD_CELL; default 'default')")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, help=f"port to listen on (default {default_port}; 0 = any)"
    )
    parser.add_argument("--config", type=Path, help="TOML configuration file (or HEAPD_CONFIG)")


def from_args(cls: type[T], section: str, args: argparse.Namespace, env: Mapping[str, str]) -> T:
    """Load `cls` for a role from its parsed flags, the environment and the TOML file."""
    path = getattr(args, "config", None) or env.get("HEAPD_CONFIG")
    return load(cls, section, vars(args), env, Path(path) if path else None)
