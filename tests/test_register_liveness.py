"""Register liveness on a real cell with the Register object in-process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from heapd import shm
from heapd.register.beats import Beat, Registration
from heapd.register.convert import TaskOutcomes
from heapd.register.daemon import Register


@pytest.fixture
def cell(cell_name: str) -> Iterator[shm.Cell]:
    caps = shm.Capacities(tasks=64, workers=4, arena_bytes=1 << 16, max_blob_bytes=4096)
    with shm.Cell.create(cell_name, caps) as c:
        yield c


def test_a_draining_worker_that_dies_gives_its_tasks_back(cell: shm.Cell) -> None:
    async def main() -> None:
        register = Register(cell, interval_s=0.5, deadline_s=30.0, outcomes=TaskOutcomes())
        register.start()
        try:
            worker = register.admit(Registration("127.0.0.1:1", 1, 1, "h"))
            [task_id] = cell.submit([shm.NewTask(b"spec")], time.time())
            [d] = cell.dispatch(1, time.time())
            register.beat(Beat(worker.worker_id, worker.epoch, [(task_id, d.attempt)], [], True))
            register.beat(Beat(worker.worker_id, worker.epoch, [], [], True))  # flag repeats
            assert cell.worker(worker.worker_id).state == shm.WorkerState.DRAINING
            register.stream_broken(worker.worker_id, worker.epoch)
            assert cell.worker(worker.worker_id).state == shm.WorkerState.DEAD
            assert cell.get(task_id).state == shm.TaskState.QUEUED
            assert cell.check() == []
        finally:
            register.close()

    asyncio.run(main())
