"""Silent stalls: a role whose main loop dies must stop and exit non-zero, never stay up idle.

Failures are injected into the real daemons (`Scheduler`, `Plm`, the scheduler's `Dispatcher`)
running in-process on a real cell; each test would hang (bounded by `asyncio.timeout`, so it
fails instead) or see no failure before the lifelines existed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from heapd import shm
from heapd.plm.convert import DEPENDENCY_MESSAGES, cancel_on_worker
from heapd.plm.daemon import Plm
from heapd.plm.intake import Intake
from heapd.register.convert import TaskOutcomes
from heapd.register.daemon import Register
from heapd.runtime import entry
from heapd.runtime.lifelines import EXIT_FAILED, Lifelines, RoleFailed
from heapd.scheduler.daemon import Scheduler
from heapd.scheduler.dispatcher import Dispatcher
from heapd.v1 import task_pb2
from tests.shm_helpers import SMALL, scratch_cell_name
from tests.test_scheduler_dispatcher import FakeStream, RequeueLog, Streams, dispatch, others

GUARD_S = 30.0  # only bounds a test that would otherwise hang; nothing waits for it
SPEC = task_pb2.TaskSpec(builtin=task_pb2.BuiltinCall(name="sleep")).SerializeToString()


@pytest.fixture
def cell() -> Iterator[shm.Cell]:
    with scratch_cell_name() as name, shm.Cell.create(name, SMALL) as created:
        yield created


class Injected(RuntimeError):
    """The failure a test injects into a loop."""


# --- the scheduler


def test_a_dispatch_loop_dying_mid_run_stops_the_scheduler_which_exits_failed(
    cell: shm.Cell, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Rounds work until a submission's doorbell starts one that raises: the scheduler stops by
    itself (wait_stopped returns) and leaving it raises RoleFailed naming the loop."""
    good_rounds = 0
    real_round = Scheduler.dispatch_round

    def dispatch_round(self: Scheduler) -> int:
        nonlocal good_rounds
        if self.cell.queue_depth() > 0:
            raise Injected("dispatch round failed")
        good_rounds += 1
        return real_round(self)

    monkeypatch.setattr(Scheduler, "dispatch_round", dispatch_round)

    async def main() -> None:
        with pytest.raises(RoleFailed, match="scheduler-dispatch failed: Injected") as failed:
            async with asyncio.timeout(GUARD_S), Scheduler(cell, 64, 8, Streams()) as scheduler:
                while good_rounds == 0:  # the first round runs
                    await asyncio.sleep(0)
                cell.submit([shm.NewTask(SPEC)], time.time())  # rings: the second round
                await scheduler.wait_stopped()
                assert isinstance(scheduler.failure, RoleFailed)
        assert isinstance(failed.value.__cause__, Injected)
        assert not others()

    with caplog.at_level(logging.ERROR, logger="heapd.runtime.lifelines"):
        asyncio.run(main())
    assert good_rounds >= 1
    [record] = [r for r in caplog.records if r.exc_info]
    assert "scheduler-dispatch" in record.getMessage()


def test_a_scheduler_stopped_by_a_signal_leaves_without_error(cell: shm.Cell) -> None:
    async def main() -> None:
        async with Scheduler(cell, 64, 8, Streams()) as scheduler:
            scheduler.shutdown()
            await scheduler.wait_stopped()
        assert scheduler.failure is None

    asyncio.run(main())


def test_a_feed_writer_failing_unexpectedly_closes_its_feed_at_once() -> None:
    """Not a stream error (a bug): before, the writer ended and its feed stayed open, taking
    groups into an outbox nobody wrote."""
    bug = Injected("bug in send")
    opened: list[FakeStream] = []

    def open_stream(address: str) -> FakeStream:
        opened.append(FakeStream(address, send_error=bug if not opened else None))
        return opened[-1]

    async def main() -> None:
        lifelines = Lifelines("scheduler", lambda: None)
        dispatcher = Dispatcher(RequeueLog(), open_stream, lifelines)  # type: ignore[arg-type]
        async with asyncio.timeout(GUARD_S):
            dispatcher.send([dispatch(1)])
            await opened[0].closing.wait()  # closed without anyone calling close()
            while len(opened) == 1:  # forgotten once closed: the next group opens a new stream
                await asyncio.sleep(0)
                dispatcher.send([dispatch(2)])
            await opened[1].until_sent(1)
        await dispatcher.close()
        assert lifelines.failure is None, "a feed's failure is contained: it closes"
        assert not others()

    asyncio.run(main())


class FailingRequeue(RequeueLog):
    """A cell whose requeue raises: the tasks would stay DISPATCHED with nobody to move them."""

    def requeue(self, refs: list[tuple[int, int]], now: float) -> int:
        raise Injected("requeue failed")


def test_a_requeue_that_fails_stops_the_scheduler() -> None:
    async def main() -> None:
        stopped = asyncio.Event()
        lifelines = Lifelines("scheduler", stopped.set)
        streams = Streams()
        dispatcher = Dispatcher(FailingRequeue(), streams, lifelines)  # type: ignore[arg-type]
        async with asyncio.timeout(GUARD_S):
            dispatcher.send([dispatch(1)])
            [stream] = streams.opened
            await stream.until_sent(1)
            stream.answers_in.put_nowait("worker is draining")  # refused: requeue soon
            await stopped.wait()
        assert lifelines.failure is not None
        assert "scheduler-requeue failed: Injected" in str(lifelines.failure)
        await dispatcher.close()
        assert not others()

    asyncio.run(main())


# --- the PLM


def plm(cell: shm.Cell, ttl_s: float = 60.0) -> Plm:
    return Plm(cell, ttl_s, cancel_call=cancel_on_worker, messages=DEPENDENCY_MESSAGES)


def test_a_finished_task_drain_dying_stops_the_plm_which_exits_failed(
    cell: shm.Cell, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real_route = Plm._route_finished

    def route(self: Plm) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise Injected("routing failed")
        real_route(self)

    monkeypatch.setattr(Plm, "_route_finished", route)

    async def main() -> None:
        with pytest.raises(RoleFailed, match="plm-finished failed: Injected"):
            async with asyncio.timeout(GUARD_S), plm(cell) as daemon:
                [task_id] = await daemon.submit(Intake("s", [shm.NewTask(SPEC)]))
                cell.cancel(task_id, time.time())  # settles it and rings the PLM
                await daemon.wait_stopped()
        assert not others()

    asyncio.run(main())
    assert calls == 2


def test_a_release_timer_that_fails_stops_the_plm(
    cell: shm.Cell, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A result nobody watches is released after the TTL by a timer; a release that raised
    there would leave every later result held forever."""

    def release(self: Plm, task_ids: Any) -> None:
        raise Injected("release failed")

    monkeypatch.setattr(Plm, "_release_unwatched", release)

    async def main() -> None:
        with pytest.raises(RoleFailed, match="plm-release-unwatched failed: Injected"):
            async with asyncio.timeout(GUARD_S), plm(cell, ttl_s=0.0) as daemon:
                [task_id] = await daemon.submit(Intake("gone", [shm.NewTask(SPEC)]))
                cell.cancel(task_id, time.time())
                await daemon.wait_stopped()
        assert not others()

    asyncio.run(main())


# --- the entry point


def test_a_role_whose_lifeline_died_exits_non_zero(
    cell: shm.Cell, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the supervisor sees: run_attached returns EXIT_FAILED (it restarts the role)."""

    def dispatch_round(self: Scheduler) -> int:
        raise Injected("no rounds at all")

    monkeypatch.setattr(Scheduler, "dispatch_round", dispatch_round)

    async def serve(attached: shm.Cell) -> None:
        async with Scheduler(attached, 64, 8, Streams()) as scheduler:
            await scheduler.wait_stopped()

    assert entry.run_attached("scheduler", cell.name, serve) == EXIT_FAILED != 0
    assert "heapd scheduler: scheduler: scheduler-dispatch failed" in capsys.readouterr().err


def test_a_role_that_stops_normally_exits_zero(cell: shm.Cell) -> None:
    async def serve(attached: shm.Cell) -> None:
        async with Scheduler(attached, 64, 8, Streams()) as scheduler:
            scheduler.shutdown()
            await scheduler.wait_stopped()

    assert entry.run_attached("scheduler", cell.name, serve) == 0


# --- the register


def test_a_liveness_timer_that_fails_stops_the_register(
    cell: shm.Cell, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A deadline callback that raises would never fire again (a dead worker never buried):
    the register stops instead, and leaving it raises RoleFailed naming the timer."""

    def expired(self: Register, worker_id: int, epoch: int) -> None:
        raise Injected("deadline handling failed")

    monkeypatch.setattr(Register, "_expired", expired)
    cell.register_worker("127.0.0.1:1", 1, 1, "h", time.time(), time.time() + 0.05)

    async def run() -> None:
        async with Register(cell, 0.02, 0.05, TaskOutcomes()) as register:
            async with asyncio.timeout(GUARD_S):
                await register.wait_stopped()

    with caplog.at_level(logging.ERROR), pytest.raises(RoleFailed, match="register-deadlines"):
        asyncio.run(run())
