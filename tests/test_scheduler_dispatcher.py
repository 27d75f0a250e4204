"""heapd.scheduler's dispatcher and daemon against a fake AssignStream (no gRPC, no worker).

What a broken stream hands back to the queue, and that closing leaves no task of the scheduler
running: the feeds' writers and readers, a feed closing itself, the dispatch loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from heapd import shm
from heapd.runtime.lifelines import Lifelines, RoleFailed
from heapd.scheduler.daemon import Scheduler
from heapd.scheduler.dispatcher import Answer, Dispatcher, Request, Revoke
from tests.shm_helpers import SMALL, scratch_cell_name

Ref = tuple[int, int]


class FakeStream:
    """An AssignStream whose answers, breakage and closing the test drives."""

    def __init__(self, address: str, send_error: Exception | None = None) -> None:
        self.address = address
        self.send_error = send_error
        self.sent: list[list[Ref]] = []
        self.deferred: list[bool] = []  # per request sent: whether it deferred its answer
        self.answers_in: asyncio.Queue[str | Answer | Exception] = asyncio.Queue()
        self.closing = asyncio.Event()  # close() was called
        self.release = asyncio.Event()  # close() may return
        self.release.set()
        self.closed = False
        self._sent_changed = asyncio.Event()

    async def send(self, request: Request, defer: bool = False) -> None:
        if self.send_error is not None:
            raise self.send_error
        self.deferred.append(defer)
        if isinstance(request, Revoke):
            self.sent.append(list(request.refs))
        else:
            self.sent.append([(d.task_id, d.attempt) for d in request])
        self._sent_changed.set()

    async def answers(self) -> AsyncIterator[Answer]:
        while True:
            answer = await self.answers_in.get()
            if isinstance(answer, Exception):
                raise answer
            if isinstance(answer, Answer):
                yield answer
            else:
                yield Answer(refused=answer, revoked=[])

    async def close(self) -> None:
        self.closing.set()
        await self.release.wait()
        self.closed = True

    async def until_sent(self, groups: int) -> None:
        while len(self.sent) < groups:
            self._sent_changed.clear()
            await self._sent_changed.wait()


class Streams:
    """The `open_stream` factory: records every stream it opened."""

    def __init__(self) -> None:
        self.opened: list[FakeStream] = []
        self.first = asyncio.Event()

    def __call__(self, address: str) -> FakeStream:
        stream = FakeStream(address)
        self.opened.append(stream)
        self.first.set()
        return stream


class RequeueLog:
    """The part of shm.Cell the dispatcher uses: what it requeued."""

    def __init__(self) -> None:
        self.requeued: list[list[Ref]] = []
        self.some = asyncio.Event()

    def requeue(self, refs: list[Ref], now: float) -> int:
        self.requeued.append(refs)
        self.some.set()
        return len(refs)


def lifelines() -> Lifelines:
    """The scheduler's lifelines, for a dispatcher alone: a death is logged and recorded."""
    return Lifelines("scheduler", lambda: None)


def dispatch(task_id: int, address: str = "w1:1") -> shm.Dispatch:
    return shm.Dispatch(task_id, 1, 5, 2, address, b"spec", 0)


def broken() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone"
    )


def others() -> set[asyncio.Task[object]]:
    """Tasks of the loop other than the test's own."""
    return asyncio.all_tasks() - {asyncio.current_task()}


async def settle() -> None:
    """Let every callback that is ready run: a few loop turns, no waiting on time."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_broken_stream_closes_its_feed_and_close_waits_for_that() -> None:
    async def main() -> None:
        streams, cell = Streams(), RequeueLog()
        dispatcher = Dispatcher(cell, streams, lifelines())  # type: ignore[arg-type]
        dispatcher.send([dispatch(1), dispatch(2)])
        [stream] = streams.opened
        await stream.until_sent(1)
        stream.release.clear()
        stream.answers_in.put_nowait(broken())
        await stream.closing.wait()  # the feed closes itself, and is stuck in close()

        closer = asyncio.create_task(dispatcher.close())
        await settle()
        assert not closer.done(), "the dispatcher closed while a feed was still closing"
        assert cell.requeued == [], "unanswered tasks wait for the register (RECLAIM_AFTER_S)"
        stream.release.set()
        await closer

        assert stream.closed
        assert cell.requeued == [[(1, 1), (2, 1)]], "closing requeues them at once"
        assert not others(), f"left running: {others()}"

    asyncio.run(main())


def test_tasks_sent_to_a_closing_feed_go_back_to_the_queue() -> None:
    async def main() -> None:
        streams, cell = Streams(), RequeueLog()
        dispatcher = Dispatcher(cell, streams, lifelines())  # type: ignore[arg-type]
        dispatcher.send([dispatch(1)])
        [stream] = streams.opened
        await stream.until_sent(1)
        stream.release.clear()
        stream.answers_in.put_nowait(broken())
        await stream.closing.wait()

        dispatcher.send([dispatch(3)])  # the next round, before the feed is forgotten
        stream.release.set()
        await dispatcher.close()

        assert stream.sent == [[(1, 1)]]
        assert sorted(cell.requeued) == [[(1, 1)], [(3, 1)]]
        assert not others()

    asyncio.run(main())


def test_a_burst_asks_one_answer_and_a_refusal_is_about_the_latest_request() -> None:
    async def main() -> None:
        streams, cell = Streams(), RequeueLog()
        dispatcher = Dispatcher(cell, streams, lifelines())  # type: ignore[arg-type]
        for task_id in (1, 2, 3):  # three rounds before the feed's writer runs: one burst
            dispatcher.send([dispatch(task_id)])
        [stream] = streams.opened
        await stream.until_sent(3)
        assert stream.deferred == [True, True, False], "only the burst's last group asks"
        stream.answers_in.put_nowait(Answer(refused="worker is draining", revoked=[], answers=3))
        await cell.some.wait()
        assert cell.requeued == [[(3, 1)]], "the two deferred groups were taken"
        await dispatcher.close()
        assert cell.requeued == [[(3, 1)]], "nothing was left unanswered to requeue"
        assert not others()

    asyncio.run(main())


def test_a_refused_group_goes_back_after_a_short_delay() -> None:
    async def main() -> None:
        streams, cell = Streams(), RequeueLog()
        dispatcher = Dispatcher(cell, streams, lifelines())  # type: ignore[arg-type]
        dispatcher.send([dispatch(1)])
        dispatcher.send([dispatch(2)])
        [stream] = streams.opened
        await stream.until_sent(2)
        stream.answers_in.put_nowait("worker is draining")
        stream.answers_in.put_nowait("")
        await cell.some.wait()  # both answers were read before the first requeue ran
        await dispatcher.close()

        assert cell.requeued == [[(1, 1)]]  # task 2 was taken: not requeued
        assert not others()

    asyncio.run(main())


def test_a_writer_that_fails_unexpectedly_is_logged_when_its_feed_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bug = RuntimeError("bug in send")

    async def main() -> None:
        dispatcher = Dispatcher(
            RequeueLog(),  # type: ignore[arg-type]
            lambda a: FakeStream(a, send_error=bug),
            lifelines(),
        )
        dispatcher.send([dispatch(1)])
        await settle()
        await dispatcher.close()
        assert not others()

    with caplog.at_level(logging.ERROR, logger="heapd.scheduler.dispatcher"):
        asyncio.run(main())
    assert [r.exc_info[1] for r in caplog.records if r.exc_info] == [bug]


@pytest.fixture
def cell() -> Iterator[shm.Cell]:
    """A fresh cell; no doorbell thread of the scheduler may outlive it (its close joins it)."""
    with scratch_cell_name() as name, shm.Cell.create(name, SMALL) as created:
        yield created
        assert not [t for t in threading.enumerate() if t.name == "bell-scheduler"]


def test_closing_the_scheduler_leaves_no_task_and_requeues_what_was_unanswered(
    cell: shm.Cell,
) -> None:
    now = time.time()
    cell.register_worker("w1:1", 2, os.getpid(), "host", now, now + 60)
    [task_id] = cell.submit([shm.NewTask(b"spec")], now)

    async def main() -> None:
        streams = Streams()
        async with Scheduler(cell, 64, 8, streams):
            await streams.first.wait()  # the first round runs as the dispatch loop starts
            [stream] = streams.opened
            await stream.until_sent(1)
        assert stream.closed
        assert not others(), f"left running: {others()}"

    asyncio.run(main())
    assert cell.get(task_id).state == shm.TaskState.QUEUED


def test_a_dispatch_loop_that_died_stops_the_scheduler_which_then_fails(
    cell: shm.Cell, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    cell.register_worker("w1:1", 2, os.getpid(), "host", now, now + 60)
    cell.submit([shm.NewTask(b"spec")], now)
    bug = RuntimeError("no stream for you")
    opened = asyncio.Event()

    def open_stream(address: str) -> FakeStream:
        opened.set()
        raise bug

    async def main() -> None:
        with pytest.raises(RoleFailed, match="scheduler-dispatch failed") as failed:
            async with Scheduler(cell, 64, 8, open_stream) as scheduler:
                await opened.wait()
                await scheduler.wait_stopped()  # the loop's death stopped it
        assert failed.value.__cause__ is bug
        assert not others()

    with caplog.at_level(logging.ERROR, logger="heapd.runtime.lifelines"):
        asyncio.run(main())
    assert [r.exc_info[1] for r in caplog.records if r.exc_info] == [bug], "logged once"
