"""Test helpers: waiting on conditions (from sync code and from coroutines), processes of a
cell and their state, its logs, and FIFO gates that hold a task until the test releases it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from heapd.runtime.channels import CHANNEL_OPTIONS
from heapd.security import Security

T = TypeVar("T")

MARK = "HEAPD_TEST_MARK"


def _describe(check: Callable[[], object]) -> str:
    """Where a check was written (a lambda's repr says nothing)."""
    code = getattr(check, "__code__", None)
    if code is None:
        return repr(check)
    return f"{check.__qualname__} ({Path(code.co_filename).name}:{code.co_firstlineno})"


def _holds(check: Callable[[], T], timeout_s: float) -> T:
    """`check()` if truthy; else AssertionError (as `check` raises when it does not hold yet)."""
    result = check()
    if not result:
        raise AssertionError(f"{_describe(check)} stayed falsy for {timeout_s}s")
    return result


def assert_eventually(
    check: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.02
) -> T:
    """Retry `check` until it returns a truthy value or stops raising AssertionError; raise the
    last AssertionError after `timeout_s`. Blocks: from coroutines use `eventually`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return _holds(check, timeout_s)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(interval_s)


async def eventually(
    check: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.02
) -> T:
    """`assert_eventually` for coroutines: awaits between tries, so the event loop (and the
    pool, register or PLM running on it) keeps running while the test waits."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return _holds(check, timeout_s)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(interval_s)


def shm_entries(cell: str) -> list[str]:
    """Everything of the cell in /dev/shm (segments and semaphores)."""
    return sorted(p.name for p in Path("/dev/shm").iterdir() if f"heapd.{cell}." in p.name)


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (field 3 on), None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[-1].split()


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
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def is_stopped(pid: int) -> bool:
    """Whether `pid` is stopped by a signal (SIGSTOP has taken effect, not just been sent)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] == "T"


def parent_of(pid: int) -> int | None:
    """The parent pid of `pid`, None if it is gone."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields is not None else None


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


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among the lines of a log (heapd logs one JSON object per line)."""
    found = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                found.append(entry)
    return found


def log_events(log_dir: Path, pattern: str, msg: str) -> list[dict[str, Any]]:
    """The log lines with this message from the role logs matching `pattern` in `log_dir`
    (e.g. "register.log", "worker-*.log"; a restarted role appends to its file)."""
    return [
        entry
        for path in sorted(log_dir.glob(pattern))
        for entry in json_lines(path.read_text())
        if entry.get("msg") == msg
    ]


def gated_command(gate: Path) -> list[str]:
    """A command task that runs until `release_gate(gate)` (gate: a FIFO)."""
    return ["sh", "-c", f"read line < {gate}"]


def release_gate(fifo: Path) -> bool:
    """Write one line to a FIFO a task waits on (`read line < FIFO`) if the task has it open
    for reading; False if nobody reads it yet. Never blocks: wait with `assert_eventually` or
    `eventually` until it returns True."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no reader yet
            return False
        raise
    try:
        os.write(fd, b"go\n")
    finally:
        os.close(fd)
    return True


def authed_channel(address: str) -> grpc.Channel:
    """A synchronous channel to a test cell's role that sends the test token (HEAPD_TOKEN)."""
    return Security.from_env().channel(address, CHANNEL_OPTIONS)
