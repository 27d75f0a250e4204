"""Task functions the end-to-end tests run on workers (imported there by reference)."""

from __future__ import annotations

import os
import threading
import time


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0) -> int:
    return a + b


def fail_with(kind: str, message: str) -> None:
    errors = {
        "KeyError": KeyError,
        "ValueError": ValueError,
        "ZeroDivisionError": ZeroDivisionError,
    }
    raise errors[kind](message)


def unpicklable_result() -> object:
    return threading.Lock()  # neither pickle nor cloudpickle can encode a lock


def sleep_and_tag(tag: str, seconds: float) -> tuple[str, float]:
    time.sleep(seconds)
    return tag, time.time()


def tagged_start(tag: str, seconds: float) -> tuple[str, float]:
    """When it started (this host's clock), then sleep: start order across workers."""
    started = time.time()
    time.sleep(seconds)
    return tag, started


def tagged_start_until(tag: str, path: str, limit_s: float = 60.0) -> tuple[str, float]:
    """When it started, then hold its slot until `path` exists (at most `limit_s`): the test
    decides when it ends."""
    started = time.time()
    deadline = started + limit_s
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.005)
    return tag, started


def whoami() -> int:
    return os.getppid()


def flaky(counter_path: str, failures: int) -> int:
    """Fails `failures` times (counted in a file), then returns the attempt number."""
    with open(counter_path, "a+") as f:
        f.write("x")
        f.seek(0)
        attempt = len(f.read())
    if attempt <= failures:
        raise ConnectionError(f"transient failure {attempt}")
    return attempt


def nested_total(items: object) -> int:
    """Sum every int in nested lists, tuples and dict values (futures arrive as their values)."""
    if isinstance(items, int):
        return items
    if isinstance(items, dict):
        return sum(nested_total(v) for v in items.values())
    if isinstance(items, list | tuple):
        return sum(nested_total(v) for v in items)
    raise TypeError(f"not a number or container: {items!r}")


def add_after_sleep(a: int, b: int, seconds: float) -> int:
    time.sleep(seconds)
    return a + b


def identity(x: object) -> object:
    return x


def add_after_gate(a: int, b: int, gate: str) -> int:
    """a + b once `release_gate(gate)` wrote to the FIFO (it waits for it, however long)."""
    with open(gate) as fifo:
        fifo.readline()
    return a + b
