"""What a settled task gives back: its value, a `CommandResult`, or the exception to raise.

Plain types only. The wire bytes of a `heapd.v1.TaskOutcome` are parsed by `heapd.convert`
(`outcome_from_bytes`, `result_value`), which builds the `Outcome` decoded here.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from heapd.errors import BadResult, FailureInfo, TaskCancelled, TaskFailed, from_failure


class TaskState(IntEnum):
    """A task's state; numbered as `heapd.v1.TaskState` on the wire."""

    PENDING = 1
    QUEUED = 2
    DISPATCHED = 3
    RUNNING = 4
    SUCCEEDED = 5
    FAILED = 6
    CANCELLED = 7


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A command task's result. A non-zero `returncode` is not an error: the command ran."""

    returncode: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True, slots=True)
class Settled:
    """One result as the WatchTasks stream delivered it. `state` is a `TaskState` number (0 when
    the PLM does not know the task); `outcome` stays serialized until its future is settled, so
    a malformed one fails that future and not the stream."""

    task_id: int
    state: int
    outcome: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt settled to: a pickled value, a command result, or a failure."""

    result: bytes | CommandResult | FailureInfo
    started_at: float = 0.0
    finished_at: float = 0.0


def decode_outcome(state: int, outcome: Outcome | None) -> Any:
    """The value of a settled task, or raise what it failed with.

    SUCCEEDED gives the unpickled return value (or the CommandResult); FAILED raises the
    original exception or the matching TaskFailed subclass; CANCELLED raises TaskCancelled.
    """
    result = outcome.result if outcome is not None else None
    if state == TaskState.SUCCEEDED:
        return _value(result)
    if state == TaskState.FAILED:
        if isinstance(result, FailureInfo):
            raise from_failure(result)
        raise TaskFailed("the task failed, and the cell kept no reason")
    if state == TaskState.CANCELLED:
        message = result.message if isinstance(result, FailureInfo) else ""
        raise TaskCancelled(message or "the task was cancelled")
    raise ValueError(f"the task has not settled (state {_state_name(state)})")


def _value(result: bytes | CommandResult | FailureInfo | None) -> Any:
    if isinstance(result, CommandResult):
        return result
    if not isinstance(result, bytes):
        raise TaskFailed("the task succeeded, but its outcome carries no value")
    try:
        return pickle.loads(result)
    except Exception as exc:  # e.g. its class lives in a module the client does not have
        raise BadResult(f"the result could not be unpickled here: {exc}") from exc


def _state_name(state: int) -> str:
    try:
        return TaskState(state).name
    except ValueError:
        return str(state)
