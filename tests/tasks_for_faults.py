"""Task functions for the fault tests (tests/test_faults.py), imported by reference in pool
children. Side effects go to files the test reads back: one line per event, appended with
O_APPEND so that lines from concurrent processes never interleave.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time


def note(path: str, line: str) -> None:
    """Append one line atomically (a single write on an O_APPEND descriptor)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def record(tag: int, seconds: float, path: str) -> tuple[int, int]:
    """Sleep, logging start and end (with the worker's pid, and the time at the end); returns
    (tag, worker pid)."""
    worker = os.getppid()  # a pool child's parent is its worker daemon
    note(path, f"start {tag} {worker}")
    time.sleep(seconds)
    note(path, f"end {tag} {worker} {time.time()}")
    return tag, worker


def record_item(item: tuple[int, float, str]) -> tuple[int, int]:
    """`record` for `Client.map`, which passes one argument per task."""
    return record(*item)


def kill_own_process(path: str) -> None:
    """Log the attempt, then die by SIGKILL (the pool child, not the worker)."""
    note(path, f"attempt {os.getpid()}")
    os.kill(os.getpid(), signal.SIGKILL)


def kill_own_worker(path: str) -> None:
    """Log the attempt with the worker's pid, then SIGKILL that worker daemon (a poison task)."""
    note(path, f"attempt {os.getppid()}")
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(60)  # the worker's death-watch kills this child with it


def hang_with_grandchild(path: str) -> None:
    """Start a grandchild in this process group, log both pids, then hang."""
    grandchild = subprocess.Popen(["sleep", "300"])
    note(path, f"{os.getpid()} {grandchild.pid}")
    time.sleep(300)


def log_pid_and_sleep(path: str, seconds: float) -> None:
    """Log this process's pid, then sleep (to be cancelled while running)."""
    note(path, str(os.getpid()))
    time.sleep(seconds)


def worker_pid() -> int:
    """The pid of the worker daemon running this task."""
    return os.getppid()
