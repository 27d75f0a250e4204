"""A pool child: runs jobs handed over a pipe, one at a time, and reports as it goes.

Started by `worker.pool` with the multiprocessing *spawn* context (fork+exec: safe once gRPC
threads exist in the worker, grpc/grpc#16001). The child first leads its own process group, so
that a timeout or a cancel kills the task together with everything it started.

Protocol (pickled over one duplex `Connection`):

- parent → child: `Run(jobs)` appends to the local queue; `Skip(task_id, attempt)` drops a job
  not yet started (a cancel); `None` asks the child to exit.
- child → parent: `Ready(pid)` once, when it can take work; then `Report(started, results)`.
  The parent hands work only to an idle child, so the first job of each `Run` starts the moment
  it arrives: the parent counts it started when it hands it over, and the child does not report
  that start (a job handed singly costs one message each way). The start of each later job of a
  batch is reported just before it runs (the parent times it from there). A finished result
  rides with the next job's start when more jobs are already waiting locally — that is
  microseconds later, so it is never held back — and is sent on its own otherwise.

Jobs carry the task as serialized `heapd.v1.TaskSpec` bytes and results carry serialized
`heapd.v1.TaskOutcome` bytes, so that decoding and encoding happen here, in the children, off
the daemon's event loop: this module is the pool's edge with the task wire format (`execute`
and `outcome_bytes`, through `heapd.worker.convert`); `heapd.worker.execute` and the pool work
on plain values and opaque bytes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import NamedTuple

from heapd.worker import convert
from heapd.worker.execute import DEFAULT_MAX_RESULT_BYTES, bad_spec, capped, run_task
from heapd.worker.failure import FailureInfo, FailureKind, type_name
from heapd.worker.outcomes import CommandResult, Outcome
from heapd.worker.specs import BadSpec

JobTuple = tuple[int, int, bytes]  # task_id, attempt, serialized TaskSpec
# task_id, attempt, succeeded, retryable, outcome, started_ns (the child's clock, unix ns)
ResultTuple = tuple[int, int, bool, bool, bytes, int]


class Run(NamedTuple):
    """Parent → child: jobs to run, in order."""

    jobs: list[JobTuple]


class Skip(NamedTuple):
    """Parent → child: drop this job if it has not started (it was cancelled)."""

    task_id: int
    attempt: int


class Ready(NamedTuple):
    """Child → parent: imports done, process group set; the child can take work."""

    pid: int


class Report(NamedTuple):
    """Child → parent: the job just started (if any) and results finished since the last report,
    sent at `at_ns` (the child's clock, unix ns: when the job started, or the results finished,
    for traced tasks)."""

    started: tuple[int, int] | None
    results: list[ResultTuple]
    at_ns: int = 0


class Execution(NamedTuple):
    """The verdict on one attempt: flags for the control plane, the outcome for the user."""

    succeeded: bool
    retryable: bool
    outcome: bytes  # serialized heapd.v1.TaskOutcome


def execute(spec: bytes, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> Execution:
    """Run the task described by serialized TaskSpec bytes; never raises. The outcome weighs
    at most `max_result_bytes` (see `heapd.worker.execute.capped`)."""
    started_at = time.time()
    try:
        verdict = capped(run_task(convert.spec_from_bytes(spec)), max_result_bytes)
        outcome = outcome_bytes(verdict.result, started_at)
    except BadSpec as exc:
        verdict = bad_spec(exc)
        outcome = outcome_bytes(verdict.result, started_at)
    except BaseException as exc:  # user code escaping every net (a __str__ raising SystemExit)
        return Execution(False, False, outcome_bytes(_escaped(exc), started_at))
    if len(outcome) > max_result_bytes:  # never, unless ENVELOPE_BYTES is wrong: stay safe
        verdict = verdict._replace(succeeded=False, retryable=False)
        outcome = outcome_bytes(_oversized(len(outcome), max_result_bytes), started_at)
    return Execution(verdict.succeeded, verdict.retryable, outcome)


def _escaped(exc: BaseException) -> FailureInfo:
    """A failure built without calling the exception's own code again."""
    return FailureInfo(
        FailureKind.EXCEPTION,
        type_name=type_name(type(exc)),
        message=f"the task raised {type(exc).__name__}, which could not be reported",
    )


def _oversized(size: int, max_result_bytes: int) -> FailureInfo:
    return FailureInfo(
        FailureKind.BAD_RESULT,
        message=f"the task's outcome is {size} bytes, more than the limit of {max_result_bytes}"
        " bytes for one result (the worker's max_result_bytes)",
    )


def outcome_bytes(result: bytes | CommandResult | FailureInfo, started_at: float) -> bytes:
    """An attempt's outcome as results carry it, finished now: also what the pool reports for
    an attempt it settles itself (timed out, or its child died)."""
    outcome = Outcome(result, started_at=started_at, finished_at=time.time())
    return convert.outcome_to_bytes(outcome)


def main(
    conn: Connection, parent_pid: int, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
) -> None:
    """Child entry point: lead a process group, say ready, serve jobs until told or orphaned;
    each job's outcome weighs at most `max_result_bytes`."""
    os.setsid()  # a new session and group led by this pid; grandchildren inherit the group
    _die_with_parent(parent_pid)
    try:
        conn.send(Ready(os.getpid()))
        _serve(conn, max_result_bytes)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the worker went away: nobody is left to report to
    finally:
        conn.close()


def _serve(conn: Connection, max_result_bytes: int) -> None:
    pending: deque[JobTuple] = deque()
    done: list[ResultTuple] = []
    announced: tuple[int, int] | None = None  # the first job of the last Run: started on arrival
    while True:
        if not pending:
            if done:
                conn.send(Report(None, done, time.time_ns()))
                done = []
            message = conn.recv()
            if not _absorb(message, pending):
                return
            if isinstance(message, Run) and message.jobs:
                announced = message.jobs[0][:2]
        while conn.poll():  # cancels and new work that came in while the last job ran
            if not _absorb(conn.recv(), pending):
                return
        if not pending:
            continue
        task_id, attempt, spec = pending.popleft()
        started_ns = time.time_ns()
        if (task_id, attempt) != announced:
            conn.send(Report((task_id, attempt), done, started_ns))
            done = []
        succeeded, retryable, outcome = execute(spec, max_result_bytes)
        done.append((task_id, attempt, succeeded, retryable, outcome, started_ns))


def _absorb(message: Run | Skip | None, pending: deque[JobTuple]) -> bool:
    """Apply one parent message to the local queue; False means exit."""
    if message is None:
        return False
    if isinstance(message, Skip):
        kept = [job for job in pending if (job[0], job[1]) != (message.task_id, message.attempt)]
        pending.clear()
        pending.extend(kept)
    else:
        pending.extend(message.jobs)
    return True


def _die_with_parent(parent_pid: int) -> None:
    """On Linux, ask for SIGKILL when the worker dies, so a killed worker leaves no task running.

    The pipe would tell the child too, but only between jobs; a long task would run on as an
    orphan. Checked against `parent_pid` afterwards because the worker may already be gone.
    """
    if sys.platform != "linux":
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    if os.getppid() != parent_pid:
        os._exit(1)
