"""The log level of a cell's roles: `heapd up --log-level` hands its level to every role; the
environment and TOML file reach the roles as they reach `heapd up` (one configuration path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import StartCell

SHUTDOWN = "signal received, shutting down"  # logged at INFO by every role on SIGTERM


def records(log_dir: Path, role: str) -> list[tuple[str, str]]:
    """(level, msg) of each JSON log line of a role."""
    found = []
    for line in (log_dir / f"{role}.log").read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            found.append((str(entry.get("level")), str(entry.get("msg"))))
    return found


def info_lines(log_dir: Path, role: str) -> list[str]:
    return [msg for level, msg in records(log_dir, role) if level == "info"]


def test_log_level_flag_reaches_every_role(
    start_cell: StartCell, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--log-level WARNING` silences the roles' INFO lines; `HEAPD_<ROLE>_LOG_LEVEL` still
    turns one role up."""
    monkeypatch.setenv("HEAPD_SCHEDULER_LOG_LEVEL", "INFO")
    cell = start_cell(workers=1, slots=1, extra_args=("--log-level", "WARNING"))
    cell.stop()
    assert cell.log_dir is not None
    assert info_lines(cell.log_dir, "plm") == []
    assert info_lines(cell.log_dir, "register") == [], "not even 'worker registered'"
    assert SHUTDOWN in info_lines(cell.log_dir, "scheduler")


def test_each_role_reads_its_own_table_of_the_config_file(
    start_cell: StartCell, tmp_path: Path
) -> None:
    toml = tmp_path / "heapd.toml"
    toml.write_text('log_level = "WARNING"\n[register]\nlog_level = "INFO"\n')
    cell = start_cell(workers=1, slots=1, extra_args=("--config", str(toml)))
    cell.stop()
    assert cell.log_dir is not None
    assert "worker registered" in info_lines(cell.log_dir, "register")
    assert info_lines(cell.log_dir, "plm") == info_lines(cell.log_dir, "scheduler") == []
