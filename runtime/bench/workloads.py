"""Task functions the benchmarks run on workers (importable by reference)."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def noop(x: T) -> T:
    """W1/W2: the no-op task."""
    return x


def logged_sleep(item: tuple[int, float, str]) -> int:
    """W4: sleep, logging start and end (task number, pid, time) to a shared file with
    O_APPEND, so lost and duplicate executions can be counted afterwards."""
    import os
    import time

    number, seconds, path = item
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # the harness creates it
    try:
        os.write(fd, f"start {number} {os.getpid()} {time.time()}\n".encode())
        time.sleep(seconds)
        os.write(fd, f"end {number} {os.getpid()} {time.time()}\n".encode())
    finally:
        os.close(fd)
    return number


def started_sleep(seconds: float) -> float:
    """W7: sleep, returning when it started (time.time(), the clock the harness reads too), so
    a queue wait and the order tasks started in can be measured without asking the cell."""
    import time

    started = time.time()
    time.sleep(seconds)
    return started
