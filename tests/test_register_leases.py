"""The register's lease backstop, on a real cell with the Register object in-process.

The register is given a short lease grace, and the tests await what the lease does (or a later
lease does) instead of sleeping past the default grace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from heapd import shm
from heapd.register.beats import Beat, Registration
from heapd.register.convert import TaskOutcomes
from heapd.register.daemon import Register
from heapd.v1 import task_pb2
from tests.helpers import eventually

GRACE_S = 0.05

Scenario = Callable[[Register, shm.WorkerInfo], Awaitable[None]]


@pytest.fixture
def cell(cell_name: str) -> Iterator[shm.Cell]:
    caps = shm.Capacities(tasks=64, workers=4, arena_bytes=1 << 16, max_blob_bytes=4096)
    with shm.Cell.create(cell_name, caps) as c:
        yield c


def run_with_register(cell: shm.Cell, scenario: Scenario) -> None:
    """A running register (lease grace GRACE_S) with one two-slot worker; then `scenario`."""

    async def main() -> None:
        register = Register(
            cell, interval_s=0.5, deadline_s=30.0, outcomes=TaskOutcomes(), lease_grace_s=GRACE_S
        )
        register.start()
        try:
            worker = register.admit(Registration("127.0.0.1:1", 2, 1, "h"))
            await scenario(register, worker)
        finally:
            register.close()

    asyncio.run(main())


def start_attempt(register: Register, worker: shm.WorkerInfo, timeout_ms: int) -> tuple[int, int]:
    """Submit a task with `timeout_ms`, dispatch it and report it started: (task id, attempt)."""
    cell = register.cell
    [task_id] = cell.submit([shm.NewTask(b"spec", timeout_ms=timeout_ms)], time.time())
    [d] = cell.dispatch(1, time.time())
    register.beat(Beat(worker.worker_id, worker.epoch, [(task_id, d.attempt)], []))
    assert cell.get(task_id).state == shm.TaskState.RUNNING
    return task_id, d.attempt


async def until_settled(cell: shm.Cell, task_id: int) -> None:
    """Await until the task is terminal (the register's timers run meanwhile)."""
    await eventually(lambda: cell.get(task_id).state in shm.TERMINAL_STATES, interval_s=0.01)


def test_unreported_timed_out_attempt_is_settled_and_cancelled(cell: shm.Cell) -> None:
    async def scenario(register: Register, worker: shm.WorkerInfo) -> None:
        granted_at = time.time()
        task_id, attempt = start_attempt(register, worker, timeout_ms=100)
        await until_settled(cell, task_id)
        settled = cell.get(task_id)
        assert settled.state == shm.TaskState.FAILED
        # The lease runs out at timeout + grace after the start was reported, never before
        # (5 ms of slack for the wall clock against the loop's monotonic one).
        assert settled.finished_at - granted_at >= 0.1 + GRACE_S - 0.005
        outcome = task_pb2.TaskOutcome.FromString(cell.read_result(task_id) or b"")
        assert outcome.failure.kind == task_pb2.TIMEOUT
        assert register.take_cancels(worker.worker_id) == [(task_id, attempt)]
        assert cell.check() == []

    run_with_register(cell, scenario)


def test_reported_result_ends_the_lease(cell: shm.Cell) -> None:
    """A reported attempt's lease never fires: a later lease with a longer timeout (control)
    fires, and by then the reported one would have too."""

    async def scenario(register: Register, worker: shm.WorkerInfo) -> None:
        task_id, attempt = start_attempt(register, worker, timeout_ms=50)
        control, control_attempt = start_attempt(register, worker, timeout_ms=100)
        done = shm.Completion(task_id, attempt, shm.TaskState.SUCCEEDED, b"ok")
        register.beat(Beat(worker.worker_id, worker.epoch, [], [done]))
        await until_settled(cell, control)
        assert cell.get(control).state == shm.TaskState.FAILED
        assert cell.read_result(task_id) == b"ok"
        assert register.take_cancels(worker.worker_id) == [(control, control_attempt)]
        assert cell.stats().stale_total == 0

    run_with_register(cell, scenario)
