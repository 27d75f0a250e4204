"""What one attempt settled to, in plain form; `heapd.worker.convert` encodes it for the wire."""

from __future__ import annotations

from dataclasses import dataclass

from heapd.worker.failure import FailureInfo


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A finished command: its exit code and captured output."""

    returncode: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt settled to: a pickled value, a command result, or a failure."""

    result: bytes | CommandResult | FailureInfo
    started_at: float = 0.0
    finished_at: float = 0.0
