"""What the pool runs and what it reports: one attempt of a task, in and out."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Job:
    """One attempt of a task to run; timeout_s = 0 means none."""

    task_id: int
    attempt: int
    spec: bytes  # serialized heapd.v1.TaskSpec
    timeout_s: float = 0.0
    priority: int = 0  # higher first; the pool starts what it holds in (priority, task id) order
    received_ns: int = 0  # traced (shm.trace): when the worker received it (unix ns); else 0


@dataclass(frozen=True, slots=True)
class JobResult:
    """How one attempt settled."""

    task_id: int
    attempt: int
    succeeded: bool
    retryable: bool
    outcome: bytes  # serialized heapd.v1.TaskOutcome
    # Traced: the worker's stamps so far (received, handed, child started, child finished,
    # read); the heartbeat adds when it was sent. Empty otherwise.
    trace_ns: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Assignment:
    """Jobs sent to one membership of a worker: (worker_id, epoch) is the fencing token."""

    worker_id: int
    epoch: int
    jobs: list[Job]
    revoke: list[tuple[int, int]]  # (task_id, attempt) to give back if not started
    defer_answer: bool = False  # AssignStream: answered with a later answer (cumulative)
