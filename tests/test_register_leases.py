"""The register's lease backstop, on a real cell with the Register object in-process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from heapd import shm
from heapd.register.convert import Beat, Registration
from heapd.register.daemon import Register
from heapd.register.leases import LEASE_GRACE_S
from heapd.v1 import task_pb2

Scenario = Callable[[Register, shm.WorkerInfo, int, int], Awaitable[None]]


@pytest.fixture
def cell(cell_name: str) -> Iterator[shm.Cell]:
    caps = shm.Capacities(tasks=64, workers=4, arena_bytes=1 << 16, max_blob_bytes=4096)
    with shm.Cell.create(cell_name, caps) as c:
        yield c


def run_with_started_attempt(cell: shm.Cell, timeout_ms: int, scenario: Scenario) -> None:
    """A running register, one worker, and one task with `timeout_ms` that the worker reported
    started; then `scenario(register, worker, task_id, attempt)`."""

    async def main() -> None:
        register = Register(cell, interval_s=0.5, deadline_s=30.0)
        register.start()
        try:
            worker = register.admit(Registration("127.0.0.1:1", 1, 1, "h"))
            [task_id] = cell.submit([shm.NewTask(b"spec", timeout_ms=timeout_ms)], time.time())
            [d] = cell.dispatch(1, time.time())
            register.beat(Beat(worker.worker_id, worker.epoch, [(task_id, d.attempt)], []))
            assert cell.get(task_id).state == shm.TaskState.RUNNING
            await scenario(register, worker, task_id, d.attempt)
        finally:
            register.close()

    asyncio.run(main())


def test_unreported_timed_out_attempt_is_settled_and_cancelled(cell: shm.Cell) -> None:
    async def scenario(
        register: Register, worker: shm.WorkerInfo, task_id: int, attempt: int
    ) -> None:
        await asyncio.sleep(0.1 + LEASE_GRACE_S + 0.2)  # let the lease run out
        assert cell.get(task_id).state == shm.TaskState.FAILED
        outcome = task_pb2.TaskOutcome.FromString(cell.read_result(task_id) or b"")
        assert outcome.failure.kind == task_pb2.TIMEOUT
        assert register.take_cancels(worker.worker_id) == [(task_id, attempt)]
        assert cell.check() == []

    run_with_started_attempt(cell, 100, scenario)


def test_reported_result_ends_the_lease(cell: shm.Cell) -> None:
    async def scenario(
        register: Register, worker: shm.WorkerInfo, task_id: int, attempt: int
    ) -> None:
        done = shm.Completion(task_id, attempt, shm.TaskState.SUCCEEDED, b"ok")
        register.beat(Beat(worker.worker_id, worker.epoch, [], [done]))
        await asyncio.sleep(0.05 + LEASE_GRACE_S + 0.2)
        assert cell.read_result(task_id) == b"ok"
        assert register.take_cancels(worker.worker_id) == []
        assert cell.stats().stale_total == 0

    run_with_started_attempt(cell, 50, scenario)
