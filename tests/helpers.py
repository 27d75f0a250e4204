"""Test helpers: waiting on conditions, finding leftovers of a cell."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

MARK = "HEAPD_TEST_MARK"


def assert_eventually(
    check: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.02
) -> T:
    """Retry `check` until it returns a truthy value or stops raising AssertionError."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
            if result:
                return result
            error: Exception = AssertionError(f"{check} stayed falsy for {timeout_s}s")
        except AssertionError as exc:
            error = exc
        if time.monotonic() > deadline:
            raise error
        time.sleep(interval_s)


def shm_entries(cell: str) -> list[str]:
    """Everything of the cell in /dev/shm (segments and semaphores)."""
    return sorted(p.name for p in Path("/dev/shm").iterdir() if f"heapd.{cell}." in p.name)


def marked_processes(mark: str) -> list[int]:
    """Pids of live processes whose environment carries HEAPD_TEST_MARK=mark."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
        if needle in environ.split(b"\0") and not zombie:
            found.append(int(entry.name))
    return found


def kill_all(pids: list[int]) -> None:
    """SIGKILL leftovers (after the test has recorded them as a failure)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def is_running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (a killed orphan may wait a while to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def role_pids(mark: str, role: str) -> list[int]:
    """Pids of the cell's live `python -m heapd.ROLE` processes (ROLE: plm, scheduler, ...)."""
    found = []
    for pid in marked_processes(mark):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a == b"-m" and b == f"heapd.{role}".encode() for a, b in itertools.pairwise(argv)):
            found.append(pid)
    return found
