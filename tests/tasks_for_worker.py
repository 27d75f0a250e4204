"""Task functions for the worker tests, imported by reference in pool children.

Kept apart from the test modules so a child imports only this (not pytest) to run them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path


class Flaky(RuntimeError):
    """A user exception type, importable by the client."""


class NeedsTwoArgs(Exception):
    """Pickles, but cannot unpickle: its __init__ wants two args and `args` holds one."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


class HoldsALock(Exception):
    """Cannot be pickled at all: an attribute is a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def add(a: int, b: int = 0) -> int:
    return a + b


def fail(kind: str, message: str) -> None:
    """Raise the named exception type (a builtin or one of this module)."""
    types: dict[str, type[Exception]] = {
        "ValueError": ValueError,
        "KeyError": KeyError,
        "Flaky": Flaky,
        "HoldsALock": HoldsALock,
    }
    raise types[kind](message)


def fail_needing_two_args() -> None:
    raise NeedsTwoArgs("left", "right")


def lock_result() -> object:
    return threading.Lock()


def exit_with(code: int) -> None:
    os._exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def hang() -> None:
    time.sleep(600)


def hang_with_grandchild(pidfile: str) -> None:
    """Start a grandchild in this process group, record its pid, and wait on it."""
    grandchild = subprocess.Popen(["sleep", "600"])
    Path(pidfile).write_text(str(grandchild.pid))
    grandchild.wait()
