"""The PLM's result delivery: every settled result is released in bounded time, even when its
client died; a stopping PLM ends its client streams and its background work at once.

In-process tests run the `Plm` object on a real cell (a task is settled by cancelling it, so no
worker is needed); end-to-end tests run real cells with raw gRPC stubs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from heapd import Client, shm
from heapd.plm.__main__ import SHUTDOWN_GRACE_S
from heapd.plm.convert import DEPENDENCY_MESSAGES, cancel_on_worker
from heapd.plm.daemon import Plm
from heapd.plm.intake import Intake
from heapd.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc
from tests import tasks_for_tests as t
from tests.conftest import StartCell
from tests.helpers import assert_eventually, authed_channel, is_running, role_pids

SPEC = task_pb2.TaskSpec(builtin=task_pb2.BuiltinCall(name="sleep"))


@pytest.fixture
def cell(cell_name: str) -> Iterator[shm.Cell]:
    caps = shm.Capacities(tasks=64, workers=4, arena_bytes=1 << 16, max_blob_bytes=4096)
    with shm.Cell.create(cell_name, caps) as c:
        yield c
        # Plm.close joins its doorbell thread: none may still wait on the cell's semaphore.
        assert not [t for t in threading.enumerate() if t.name == "bell-plm"]


async def until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Await until `check()` holds (the PLM's timers and doorbell run meanwhile)."""

    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout_s)


def released(cell: shm.Cell, task_id: int) -> bool:
    try:
        cell.get(task_id)
    except shm.TaskNotFound:
        return True
    return False


# --- in-process


def test_result_of_a_session_without_a_stream_is_released_after_the_ttl(cell: shm.Cell) -> None:
    """A client submitted under its session and died before watching: the result settles into
    a session nobody reads, and must still be released once the TTL ends."""

    async def main() -> None:
        async with Plm(
            cell, result_ttl_s=0.2, cancel_call=cancel_on_worker, messages=DEPENDENCY_MESSAGES
        ) as plm:
            [task_id] = await plm.submit(Intake("died", [shm.NewTask(SPEC.SerializeToString())]))
            cell.cancel(task_id, time.time())  # settles it and rings the PLM
            await until(lambda: plm.stats()[1] == 1)  # held for nobody
            await until(lambda: released(cell, task_id))
            assert plm.stats()[1] == 0
            assert cell.check() == []

    asyncio.run(main())


def test_shutdown_ends_open_watch_streams(cell: shm.Cell) -> None:
    async def main() -> None:
        async with Plm(
            cell, result_ttl_s=60.0, cancel_call=cancel_on_worker, messages=DEPENDENCY_MESSAGES
        ) as plm:

            async def read_all() -> list[object]:
                return [batch async for batch in plm.watch("watching", [])]

            reader = asyncio.create_task(read_all())
            await asyncio.sleep(0)  # let the stream attach and wait
            assert not reader.done()
            plm.shutdown()
            assert await asyncio.wait_for(reader, timeout=5) == []

    asyncio.run(main())


def test_close_awaits_the_background_tasks(cell: shm.Cell) -> None:
    async def main() -> None:
        async with Plm(
            cell, result_ttl_s=60.0, cancel_call=cancel_on_worker, messages=DEPENDENCY_MESSAGES
        ):
            assert [t for t in asyncio.all_tasks() if t.get_name() == "plm-finished"]
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "plm-finished"]

    asyncio.run(main())


# --- end to end


def test_result_of_a_client_whose_stream_closed_is_released_after_the_ttl(
    start_cell: StartCell, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client submits, watches, and its stream closes (the client died) before its task
    settles: the result sits in its session with nobody to read it, and the PLM must release it
    (and its payload) once `result_ttl_s` has passed, not keep it until the PLM restarts."""
    monkeypatch.setenv("HEAPD_PLM_RESULT_TTL_S", "1.0")  # inherited by the PLM process
    cell = start_cell(workers=0)
    with authed_channel(cell.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)

        def submit() -> int:
            request = task_service_pb2.SubmitTaskRequest(spec=SPEC, session="died")
            task_id: int = stub.SubmitTask(request, timeout=10).task_id
            return task_id

        def cancel(task_id: int) -> None:
            stub.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task_id), timeout=10)

        # The stream is surely open once it delivered a first, already settled task.
        first, awaited = submit(), submit()
        cancel(first)
        watch = stub.WatchTasks(
            task_service_pb2.WatchTasksRequest(session="died", task_ids=[first]), timeout=30
        )
        assert [r.task_id for r in next(watch).results] == [first]
        watch.cancel()  # the client dies, its task still queued
        cancel(awaited)
        status = stub.GetTask(task_service_pb2.GetTaskRequest(task_id=awaited), timeout=10)
        assert status.state == task_pb2.CANCELLED

        def awaited_released() -> bool:
            try:
                stub.GetTask(task_service_pb2.GetTaskRequest(task_id=awaited), timeout=10)
            except grpc.RpcError as exc:
                return exc.code() == grpc.StatusCode.NOT_FOUND
            return False

        assert_eventually(awaited_released, timeout_s=15)


def test_a_stopping_plm_ends_its_client_streams_well_within_its_grace(
    start_cell: StartCell,
) -> None:
    """SIGTERM to a PLM with a client connected, its WatchTasks and SubmitStream streams open:
    both end at once, so the PLM exits without waiting out the server's grace period; the
    supervisor restarts it and the client carries on over new streams."""
    cell = start_cell(workers=1, slots=1)
    (plm,) = role_pids(cell.name, "plm")
    with Client(cell.address) as client:
        assert client.submit(t.square, 3).result(timeout=30) == 9  # both streams open
        stopped_at = time.monotonic()
        os.kill(plm, signal.SIGTERM)
        assert_eventually(lambda: not is_running(plm), timeout_s=10)
        exited_s = time.monotonic() - stopped_at
        assert exited_s < SHUTDOWN_GRACE_S / 2, f"the PLM took {exited_s:.2f} s to stop"
        assert client.submit(t.square, 4).result(timeout=30) == 16
