"""heapd.worker's daemon against a fake register (its `Register` protocol; no gRPC), with a real
pool: draining reports and leaves, a register cut off while draining stops the worker with exit
code 3, and neither leaves a task of the worker running.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc
import pytest

from heapd import convert as client_convert
from heapd.worker.daemon import Worker
from heapd.worker.jobs import Job, JobResult
from heapd.worker.membership import HeartbeatAck, Membership
from heapd.worker.pool import Pool
from tests import tasks_for_worker as t

WORKER_ADDRESS = "127.0.0.1:1"  # never dialled: the servicer is not part of these tests


@dataclass(frozen=True)
class Beat:
    """One heartbeat as the fake register received it."""

    member: Membership
    started: list[tuple[int, int]]
    results: list[JobResult]
    draining: bool


def unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "cut off"
    )


class FakeCall:
    """One heartbeat stream: acknowledges beats as the register does (a beat that defers its
    reply is acknowledged by the next reply), or fails once the register is cut off."""

    def __init__(self, register: FakeRegister) -> None:
        self._register = register
        self._deferred = 0
        self._answers: asyncio.Queue[HeartbeatAck | Exception] = asyncio.Queue()
        if register.cut_off:
            self._answers.put_nowait(unavailable())

    async def send(
        self,
        member: Membership,
        started: Sequence[tuple[int, int]],
        results: Sequence[JobResult],
        running: int,
        draining: bool,
        defer_ack: bool = False,
    ) -> None:
        self._register.received(Beat(member, list(started), list(results), draining))
        self._deferred += 1
        if not defer_ack:
            self._answers.put_nowait(HeartbeatAck(stale=0, cancel=(), acks=self._deferred))
            self._deferred = 0

    async def acks(self) -> AsyncIterator[HeartbeatAck]:
        while True:
            answer = await self._answers.get()
            if isinstance(answer, Exception):
                raise answer
            yield answer

    def cancel(self) -> None:
        self._register.calls.discard(self)

    def cut(self) -> None:
        self._answers.put_nowait(unavailable())


class FakeRegister:
    """Grants membership, records heartbeats and the leave; `cut()` makes it unreachable."""

    address = "fake-register"

    def __init__(self) -> None:
        self.beats: list[Beat] = []
        self.left: list[Membership] = []
        self.calls: set[FakeCall] = set()
        self.cut_off = False
        self._changed = asyncio.Event()

    async def join(
        self, address: str, slots: int, pid: int, hostname: str, timeout_s: float
    ) -> Membership:
        assert (address, slots) == (WORKER_ADDRESS, 1)
        return Membership(worker_id=5, epoch=1, interval_s=0.05, deadline_s=1.0)

    async def leave(self, member: Membership, timeout_s: float) -> None:
        self.left.append(member)

    def heartbeat(self) -> FakeCall:
        call = FakeCall(self)
        self.calls.add(call)
        return call

    def received(self, beat: Beat) -> None:
        self.beats.append(beat)
        self._changed.set()

    def cut(self) -> None:
        self.cut_off = True
        for call in self.calls:
            call.cut()

    async def until(self, check: Callable[[], bool]) -> None:
        while not check():
            self._changed.clear()
            await self._changed.wait()

    def started(self) -> set[tuple[int, int]]:
        return {ref for beat in self.beats for ref in beat.started}

    def results(self) -> list[JobResult]:
        return [r for beat in self.beats for r in beat.results]


@pytest.fixture
def pool() -> Iterator[Pool]:
    started = Pool(1)
    started.start()
    try:
        yield started
    finally:
        started.close()


def job(task_id: int, fn: Callable[..., object], *args: object) -> Job:
    return Job(task_id, 1, client_convert.python_spec(fn, args).SerializeToString())


def others() -> set[asyncio.Task[object]]:
    """Tasks of the loop other than the test's own."""
    return asyncio.all_tasks() - {asyncio.current_task()}


def test_a_drained_worker_reports_its_last_result_then_leaves(pool: Pool) -> None:
    async def main() -> None:
        register = FakeRegister()
        worker = Worker(pool, register, slots=1, register_timeout_s=5.0)
        running = asyncio.create_task(worker.run(WORKER_ADDRESS))
        await register.until(lambda: bool(register.beats))
        worker.assign([job(1, t.add, 2, 3)])
        worker.shutdown()
        assert await running == 0

        member = register.beats[0].member
        assert register.left == [member]
        [result] = register.results()
        assert (result.task_id, result.succeeded) == (1, True)
        assert register.beats[-1].draining
        assert not others(), f"left running: {others()}"

    asyncio.run(main())


def test_a_register_cut_off_while_draining_stops_the_worker_with_code_3(pool: Pool) -> None:
    async def main() -> None:
        register = FakeRegister()
        worker = Worker(pool, register, slots=1, register_timeout_s=0.3)
        running = asyncio.create_task(worker.run(WORKER_ADDRESS))
        await register.until(lambda: bool(register.beats))
        worker.assign([job(1, t.hang)])
        await register.until(lambda: (1, 1) in register.started())
        worker.shutdown()  # waits for the hanging task, which never ends by itself
        register.cut()
        assert await running == 3

        assert register.left == []
        assert pool.running == 0  # the hanging task was killed
        assert not others(), f"left running: {others()}"

    asyncio.run(main())


class SlowRegister(FakeRegister):
    """Holds back its answer to the join until `answer` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = asyncio.Event()

    async def join(
        self, address: str, slots: int, pid: int, hostname: str, timeout_s: float
    ) -> Membership:
        await self.answer.wait()
        return await super().join(address, slots, pid, hostname, timeout_s)


def test_an_assignment_racing_the_registration_answer_is_accepted(pool: Pool) -> None:
    """The register rings the scheduler once it has registered the worker, so the scheduler's
    assignment can arrive before the worker has read its registration's answer: it waits for
    its membership instead of refusing (a refusal would requeue the tasks for nothing)."""

    async def main() -> None:
        register = SlowRegister()
        worker = Worker(pool, register, slots=1, register_timeout_s=5.0)
        running = asyncio.create_task(worker.run(WORKER_ADDRESS))
        judged = asyncio.create_task(worker.refusal(5, 1))  # the membership the join will give
        await asyncio.sleep(0)
        assert not judged.done(), "judged before the worker knew its membership"
        register.answer.set()
        assert await judged is None
        assert await worker.refusal(5, 2) is not None, "another epoch is still refused"
        worker.shutdown()
        assert await running == 0
        assert not others(), f"left running: {others()}"

    asyncio.run(main())
