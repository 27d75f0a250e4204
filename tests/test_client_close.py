"""Every future ends settled: closing a client fails its pending futures with `ClientClosed`,
an AsyncClient used without `async with` still gets its results, and closing an AsyncClient
lets the cell hear of the futures cancelled just before."""

from __future__ import annotations

import asyncio

import pytest

from heapd import AsyncClient, Client, ClientClosed
from tests import tasks_for_tests as t
from tests.conftest import StartCell


def test_closing_a_client_fails_its_pending_futures(start_cell: StartCell) -> None:
    cell = start_cell(workers=0)  # nothing runs: every task stays queued
    client = Client(cell.address)
    pending = [client.submit(t.square, 2), *client.map(t.square, range(3))]
    client.close()
    for future in pending:
        with pytest.raises(ClientClosed, match=f"task {future.task_id}"):
            future.result(timeout=10)
    with pytest.raises(ClientClosed):
        client.submit(t.square, 3)
    client.close()  # idempotent
    with Client(cell.address) as other:
        assert other.get_task(pending[0].task_id).state == "QUEUED", "closing cancels no task"


def test_a_client_keeps_what_its_settled_futures_had_when_closed(start_cell: StartCell) -> None:
    cell = start_cell(workers=0)
    with Client(cell.address) as client:
        cancelled = client.submit(t.square, 5)
        assert cancelled.cancel()
        waiting = client.submit(t.square, 6)
    assert cancelled.cancelled()
    with pytest.raises(ClientClosed):
        waiting.result(timeout=10)


def test_closing_an_async_client_fails_its_pending_futures(start_cell: StartCell) -> None:
    cell = start_cell(workers=0)

    async def run() -> None:
        async with AsyncClient(cell.address) as client:
            pending = [await client.submit(t.square, 2), *await client.map(t.square, range(3))]
        for future in pending:
            with pytest.raises(ClientClosed, match=f"task {future.task_id}"):
                await asyncio.wait_for(future, 10)
        with pytest.raises(ClientClosed):
            await client.submit(t.square, 3)
        await client.close()  # idempotent

    asyncio.run(run())


def test_an_async_client_without_async_with_gets_its_results(start_cell: StartCell) -> None:
    cell = start_cell(workers=1, slots=2)

    async def run() -> None:
        client = AsyncClient(cell.address)
        try:
            future = await client.submit(t.square, 3)
            assert await asyncio.wait_for(future, 30) == 9
            many = await client.map(t.add, range(20))
            assert await client.gather(many, timeout=30) == list(range(20))
            assert len((await client.cluster_status()).workers) == 1
        finally:
            await client.close()

    asyncio.run(run())


def test_closing_an_async_client_lets_its_cancels_reach_the_cell(start_cell: StartCell) -> None:
    cell = start_cell(workers=0)

    async def run() -> list[int]:
        client = AsyncClient(cell.address)
        futures = await client.map(t.square, range(5))
        for future in futures:
            assert future.cancel()  # locally at once; the CancelTask calls run in the background
        await client.close()
        return [future.task_id for future in futures]

    task_ids = asyncio.run(run())
    with Client(cell.address) as client:
        assert [client.get_task(task_id).state for task_id in task_ids] == ["CANCELLED"] * 5


def test_async_gather_timeout_leaves_the_tasks_alone(start_cell: StartCell) -> None:
    cell = start_cell(workers=0)

    async def run() -> None:
        async with AsyncClient(cell.address) as client:
            future = await client.submit(t.square, 4)
            with pytest.raises(TimeoutError):
                await client.gather([future], timeout=0.1)
            assert not future.done()
            assert (await client.get_task(future.task_id)).state == "QUEUED"
            assert await client.cancel(future)
            assert future.cancelled()

    asyncio.run(run())
