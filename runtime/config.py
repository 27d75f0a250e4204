"""Configuration: one frozen dataclass per concern, loaded once in each entry point.

Precedence is flags > environment (`HEAPD_<SECTION>_<FIELD>`, then `HEAPD_<FIELD>`) > the TOML
file's `[section]` table > the dataclass default. The environment is passed in as a mapping so
the precedence is testable and nothing reads `os.environ` at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from heapd.runtime.logs import LogLevel

DEFAULT_PLM_PORT = 7070
# The register listens on a fixed, well-known port, as Dask's scheduler (8786) and Ray's head
# (6379) do: a worker on another host joins with `heapd worker --register HEAD:7071`, and a worker
# started with no --register at all finds the register of its own host. `heapd up` keeps it.
DEFAULT_REGISTER_PORT = 7071

T = TypeVar("T")


class Durability(enum.StrEnum):
    """How hard the journal commits: `fsync` survives power loss (SQLite synchronous=FULL),
    `os` survives any process crash and a clean reboot (synchronous=NORMAL), `none` keeps no
    journal at all (a reboot forgets the cell; for benchmarks)."""

    FSYNC = "fsync"
    OS = "os"
    NONE = "none"


class Transport(enum.StrEnum):
    """`heapd up --transport`: how the roles and local workers of the cell reach each other.
    `unix` (default): gRPC over Unix domain sockets in the cell's socket directory
    (`heapd.runtime.sockets`), the PLM and register listening on TCP too for clients and
    workers of other hosts; `tcp`: everything over TCP, as a multi-host cell does."""

    UNIX = "unix"
    TCP = "tcp"


class Auth(enum.StrEnum):
    """`heapd up --auth`: `token` makes every port require the cell's token (given, or made
    in the state directory); `none` runs without one (loopback only, unless --insecure)."""

    TOKEN = "token"
    NONE = "none"


def default_state_dir(cell: str, env: Mapping[str, str]) -> Path:
    """`$XDG_STATE_HOME/heapd/<cell>`, else `~/.local/state/heapd/<cell>` (HOME from `env`)."""
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local/state")
    return Path(base) / "heapd" / cell


def state_dir(cell: str, configured: str, env: Mapping[str, str]) -> Path:
    """The cell's state directory (its journal): the configured one, else the default."""
    return Path(configured).expanduser() if configured else default_state_dir(cell, env)


@dataclass(frozen=True)
class PlmConfig:
    """The PLM: where TaskService listens, how long unclaimed results are held, and its journal
    (the state directory, default `default_state_dir`, and how hard it commits)."""

    cell: str = "default"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PLM_PORT
    socket: str = ""  # also listen on this Unix socket path ("": TCP only)
    result_ttl_s: float = 600.0
    state_dir: str = ""
    durability: Durability = Durability.FSYNC
    metrics_port: int = -1  # the HTTP endpoint (/metrics ...); -1 = off, 0 = any port
    log_level: LogLevel = LogLevel.INFO


@dataclass(frozen=True)
class SchedulerConfig:
    """The main scheduler: dispatch batch size and how deep workers may be fed."""

    cell: str = "default"
    host: str = "127.0.0.1"
    port: int = 0
    batch: int = 512
    # Tasks per worker slot once the queue is deep (>= 4 x total slots); 1 when it is shallow.
    # Deep prefetch never delays a late high-priority task (prefetched lower ones are taken
    # back); it sends fewer, larger AssignStream messages: W1 ~9.5k tasks/s at 32, ~6.8k at 8.
    prefetch_per_slot: int = 32
    # Placement policy: least-loaded | round-robin | random | power-of-two.
    policy: str = "least-loaded"
    # Aging period: a queued task's priority grows by 1 for every aging_s it waits; 0 = off.
    aging_s: float = 0.0
    metrics_port: int = -1  # the HTTP endpoint (/metrics ...); -1 = off, 0 = any port
    log_level: LogLevel = LogLevel.INFO


@dataclass(frozen=True)
class RegisterConfig:
    """The register: where RegisterService listens and the liveness deadline of workers."""

    cell: str = "default"
    host: str = "127.0.0.1"
    port: int = DEFAULT_REGISTER_PORT
    socket: str = ""  # also listen on this Unix socket path ("": TCP only)
    heartbeat_interval_s: float = 0.5
    missed_heartbeats: int = 4
    metrics_port: int = -1  # the HTTP endpoint (/metrics ...); -1 = off, 0 = any port
    log_level: LogLevel = LogLevel.INFO
    # Most slots one worker may announce (more is refused: a rogue announcing 65,535 would
    # draw in the whole queue).
    max_slots: int = 1024
    # Most completions, and most started refs, one Heartbeat message may carry (more is
    # refused before any is applied; workers send at most 1,000 per message).
    max_results_per_heartbeat: int = 10_000

    @property
    def deadline_s(self) -> float:
        """Silence longer than this makes a worker DEAD."""
        return self.heartbeat_interval_s * self.missed_heartbeats


@dataclass(frozen=True)
class WorkerConfig:
    """A worker: its register, its own listening address and its slots."""

    register: str = f"127.0.0.1:{DEFAULT_REGISTER_PORT}"
    host: str = "127.0.0.1"
    port: int = 0
    advertise_host: str = ""
    # Listen on this Unix socket path only, announced as unix:PATH (needs a unix: register).
    socket: str = ""
    slots: int = 2
    register_timeout_s: float = 30.0
    # What it offers and carries, as on the command line: "cpus=4,gpu=1", "zone=a,arch=x86_64"
    # (no cpus: it offers cpus = slots).
    resources: str = ""
    labels: str = ""
    # The largest encoded result it sends (larger: BAD_RESULT naming this limit; command output
    # is truncated instead). `heapd up` sets its workers' to the cell's --max-blob-kb.
    max_result_bytes: int = 1 << 20
    metrics_port: int = -1  # the HTTP endpoint (/metrics ...); -1 = off, 0 = any port
    log_level: LogLevel = LogLevel.INFO


@dataclass(frozen=True)
class SecurityConfig:
    """Every role's and `heapd up`'s trust settings (section `[security]`, HEAPD_TOKEN_FILE,
    HEAPD_TLS_CERT, ...): the token file, TLS files, and `insecure` to listen beyond loopback
    without them. The token itself may also come from HEAPD_TOKEN (never a flag: argv is
    public)."""

    token_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""  # with a CA, peers must present certificates it signed (mutual TLS)
    insecure: bool = False


@dataclass(frozen=True)
class UpConfig:
    """`heapd up` and `heapd down`: the cell to create (name, capacities), the ports of its PLM
    and register, its local workers, where the roles log and at which level.

    `plm_port` and `register_port` are named so that `HEAPD_PLM_PORT` and `HEAPD_REGISTER_PORT`
    (the `HEAPD_<FIELD>` fallback) mean the same under `heapd up` as for a role run alone. A
    setting of one role (`[scheduler] prefetch_per_slot`, `HEAPD_REGISTER_MISSED_HEARTBEATS`) is
    not repeated here: the roles inherit the environment and get the same TOML file, so each
    reads its own settings through its own config.
    """

    cell: str = "default"
    host: str = "127.0.0.1"
    plm_port: int = DEFAULT_PLM_PORT
    register_port: int = DEFAULT_REGISTER_PORT
    workers: int = 2
    slots: int = 2
    resources: str = ""  # offered by each local worker, e.g. "gpu=1" (WorkerConfig.resources)
    labels: str = ""  # carried by each local worker, e.g. "zone=a"
    tasks: int = 1 << 20
    arena_mb: int = 256
    max_blob_kb: int = 1024
    # The PLM's HTTP endpoint (/metrics, /status, /); the scheduler, register and workers get
    # the ports after it. -1 = off, 0 = any ports.
    metrics_port: int = -1
    log_dir: str = ""  # empty: the roles log to the stderr of `heapd up`
    state_dir: str = ""  # empty: default_state_dir(cell)
    durability: Durability = Durability.FSYNC
    log_level: LogLevel = LogLevel.INFO
    auth: Auth = Auth.TOKEN
    transport: Transport = Transport.UNIX


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
        expected = kind.__name__
        if issubclass(kind, enum.Enum):
            expected = " or ".join(str(member.value) for member in kind)
        raise ValueError(f"configuration {name}={raw!r}: expected {expected}") from exc


def add_common_flags(parser: argparse.ArgumentParser, default_port: int) -> None:
    """--cell, --host, --port and --config, shared by every role's command."""
    parser.add_argument("--cell", help="cell name (HEAPD_CELL; default 'default')")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, help=f"port to listen on (default {default_port}; 0 = any)"
    )
    parser.add_argument("--config", type=Path, help="TOML configuration file (or HEAPD_CONFIG)")
    add_log_level_flag(parser)
    add_security_flags(parser)


def add_journal_flags(parser: argparse.ArgumentParser) -> None:
    """--state-dir and --durability, for the PLM and `heapd up`."""
    parser.add_argument(
        "--state-dir",
        dest="state_dir",
        help="the cell's state directory, where its journal lives (HEAPD_STATE_DIR; default"
        " $XDG_STATE_HOME/heapd/CELL or ~/.local/state/heapd/CELL)",
    )
    parser.add_argument(
        "--durability",
        choices=[d.value for d in Durability],
        help="journal commits: fsync survives power loss, os survives crashes and clean"
        f" reboots, none keeps no journal (HEAPD_DURABILITY; default {Durability.FSYNC})",
    )


def add_socket_flag(parser: argparse.ArgumentParser, role: str, what: str) -> None:
    """--socket PATH: a Unix domain socket the role listens on (`what` says how)."""
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help=f"{what} (HEAPD_{role.upper()}_SOCKET; default none)",
    )


def add_metrics_flag(parser: argparse.ArgumentParser, what: str = "/metrics") -> None:
    """--metrics-port: serve Prometheus metrics over HTTP (off unless given)."""
    parser.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        help=f"serve {what} over HTTP on this port, on the same host (HEAPD_METRICS_PORT;"
        " default off; 0 = any port)",
    )


def add_security_flags(parser: argparse.ArgumentParser) -> None:
    """--token-file, --tls-cert, --tls-key, --tls-ca and --insecure (see SecurityConfig)."""
    parser.add_argument(
        "--token-file",
        dest="token_file",
        help="the cell's bearer token, required of every caller and sent on every call"
        " (HEAPD_TOKEN_FILE, or the token itself in HEAPD_TOKEN)",
    )
    parser.add_argument(
        "--tls-cert", dest="tls_cert", help="PEM certificate for TLS (HEAPD_TLS_CERT)"
    )
    parser.add_argument("--tls-key", dest="tls_key", help="its PEM private key (HEAPD_TLS_KEY)")
    parser.add_argument(
        "--tls-ca",
        dest="tls_ca",
        help="PEM CA certificate: peers must present certificates it signed, mutual TLS"
        " (HEAPD_TLS_CA)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow listening beyond loopback without TLS and a token (logged as a warning)",
    )


def add_log_level_flag(parser: argparse.ArgumentParser) -> None:
    """--log-level, for every role and `heapd up` (HEAPD_LOG_LEVEL, TOML `log_level`)."""
    parser.add_argument(
        "--log-level",
        dest="log_level",
        type=str.upper,
        choices=[level.value for level in LogLevel],
        help=f"log at this level and above (HEAPD_LOG_LEVEL; default {LogLevel.INFO})",
    )


def config_path(args: argparse.Namespace, env: Mapping[str, str]) -> Path | None:
    """The TOML file: --config, else HEAPD_CONFIG, else none."""
    path = getattr(args, "config", None) or env.get("HEAPD_CONFIG")
    return Path(path) if path else None


def from_args(cls: type[T], section: str, args: argparse.Namespace, env: Mapping[str, str]) -> T:
    """Load `cls` for a command from its parsed flags, the environment and the TOML file; a
    malformed setting ends the command as a bad flag does (a message, exit 2), not a traceback."""
    try:
        return load(cls, section, vars(args), env, config_path(args, env))
    except (ValueError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"heapd {section}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
