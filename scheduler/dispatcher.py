"""Sends dispatched tasks to workers over one long-lived AssignStream per worker address.

Each request carries the tasks of one dispatch round for one worker; the worker answers each
request in order, so the unanswered requests are exactly the tasks whose delivery is unknown.
Tasks a worker refused (it is draining) and tasks never sent go back to the queue after
REQUEUE_DELAY_S. When a stream breaks, the unanswered ones are left to the register first: a
worker that died is buried within its deadline, and the register takes back everything it held,
counting one loss per attempt (the poison-task cap). Only what is still dispatched at the same
attempt RECLAIM_AFTER_S later — a live worker whose stream broke before the tasks reached it — is
requeued here, fenced by attempt (a copy the worker did get is harmless: its late result is
dropped as stale). Counting here too would count an attempt twice, or count a dispatch to a
worker that was already dead and never ran it; requeueing here at once would feed a dead worker
its task again before the register buried it.

Answers are cumulative: a group of tasks written while more wait in the outbox defers its answer
(while fewer than ANSWER_EVERY requests are unanswered), and the worker's next answer — to the
last group of the burst, which never defers, a revocation, or a request it refuses — covers it
with those before it, in order (all taken): a burst costs one answer, not one per group. As the
last group of every burst asks, what is unanswered once a burst is written is only what is in
flight, as before: deferring adds no task to what a broken stream or a stopping scheduler
requeues.

A feed's writer or reader that fails unexpectedly (not a stream error) closes its feed like a
broken stream, so its tasks go back to the queue. A feed's closing and a delayed requeue are the
scheduler's lifelines (`heapd.runtime.lifelines`): if one raised, tasks would stay DISPATCHED
with nobody to move them, so the scheduler stops and is restarted (a new scheduler requeues every
DISPATCHED task).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc

from heapd import shm
from heapd.runtime.lifelines import Lifelines

log = logging.getLogger(__name__)

REQUEUE_DELAY_S = 0.1
# Longer than the register takes to bury a dead worker (a broken stream: ~30 ms; silence: its
# deadline, 2 s by default).
RECLAIM_AFTER_S = 5.0
ANSWER_EVERY = 16  # requests a feed sends at most before one asks for an answer

Requeue = Callable[[list[shm.Dispatch], float], None]  # (tasks, after how many seconds)
Ref = tuple[int, int]  # (task_id, attempt)


@dataclass(frozen=True, slots=True)
class Revoke:
    """Ask one worker registration to give back these attempts if it has not started them."""

    worker_id: int
    epoch: int
    refs: list[Ref]


@dataclass(frozen=True, slots=True)
class Answer:
    """A worker's answer to its latest `answers` requests (the deferred ones before the latest
    were all taken): why it refused the latest (empty: taken), and for a revoke, the attempts
    it gave back."""

    refused: str
    revoked: list[Ref]
    answers: int = 1


Request = list[shm.Dispatch] | Revoke


class AssignStream(Protocol):
    """One AssignStream to one worker (`heapd.scheduler.convert.AssignCall` over gRPC)."""

    async def send(self, request: Request, defer: bool = False) -> None:
        """Write one group of dispatches (one worker id and epoch) or one revocation; `defer`:
        the worker may answer it with a later answer."""

    def answers(self) -> AsyncIterator[Answer]:
        """Answers in order, each covering one request or more (`Answer.answers`)."""

    async def close(self) -> None:
        """End the stream and release its channel."""


OpenStream = Callable[[str], AssignStream]


class WorkerFeed:
    """One AssignStream to one worker: a writer task, a reader task, and the unanswered groups."""

    def __init__(
        self,
        address: str,
        stream: AssignStream,
        on_lost: Requeue,
        on_closed: Callable[[WorkerFeed], None],
        on_revoked: Callable[[list[Ref]], None],
        lifelines: Lifelines,
        on_sent: Callable[[list[shm.Dispatch]], None],
    ) -> None:
        """`on_sent` is told of each group of dispatches as it is written to the stream."""
        self.address = address
        self._on_sent = on_sent
        self._lifelines = lifelines
        self._on_lost = on_lost
        self._on_closed = on_closed
        self._on_revoked = on_revoked
        self._stream = stream
        self._outbox: deque[Request] = deque()
        self._unanswered: deque[Request] = deque()
        self._wake = asyncio.Event()
        self._closing: asyncio.Task[None] | None = None
        self._tasks = [asyncio.create_task(self._write()), asyncio.create_task(self._read())]
        for task in self._tasks:
            task.add_done_callback(self._task_ended)

    def send(self, group: list[shm.Dispatch]) -> None:
        """Queue one group for this worker (never blocks). A feed that is closing hands it back
        at once, as it does its unsent groups: nothing may wait in an outbox nobody writes."""
        if self._closing is not None:
            self._on_lost(group, REQUEUE_DELAY_S)  # never sent
            return
        self._outbox.append(group)
        self._wake.set()

    def revoke(self, revoke: Revoke) -> None:
        """Ask the worker to give back unstarted attempts; what it gives back is requeued. A
        feed that is closing drops the request: its worker's tasks are reclaimed anyway."""
        if self._closing is None:
            self._outbox.append(revoke)
            self._wake.set()

    async def close(self) -> None:
        """End the stream; what was not sent is requeued after REQUEUE_DELAY_S, what was not
        answered after RECLAIM_AFTER_S (or at once when the scheduler stops: `Dispatcher.close`).
        Every caller waits until the feed is closed (the first call, or a broken stream, starts
        the closing)."""
        await asyncio.shield(self._start_closing())

    def _start_closing(self) -> asyncio.Task[None]:
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(), name=f"feed-close {self.address}")
            self._lifelines.watch(self._closing, may_return=True)
        return self._closing

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """A writer or reader that raised something other than a stream error (a bug) would
        leave the feed half alive: tasks queued in an outbox nobody writes. Close it instead
        (its closing logs the exception)."""
        if not task.cancelled() and task.exception() is not None:
            self._start_closing()

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        unanswered = [d for group in self._unanswered if isinstance(group, list) for d in group]
        unsent = [d for group in self._outbox if isinstance(group, list) for d in group]
        self._unanswered.clear()
        self._outbox.clear()
        if unanswered:
            self._on_lost(unanswered, RECLAIM_AFTER_S)
        if unsent:
            self._on_lost(unsent, REQUEUE_DELAY_S)
        for ended in await asyncio.gather(*self._tasks, return_exceptions=True):
            if isinstance(ended, Exception):  # not a stream failure: those end in _failed
                log.error("assign stream task failed", exc_info=ended)
        await self._stream.close()
        self._on_closed(self)

    async def _write(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._outbox:
                    group = self._outbox.popleft()
                    self._unanswered.append(group)
                    defer = (
                        isinstance(group, list)
                        and bool(self._outbox)
                        and len(self._unanswered) < ANSWER_EVERY
                    )
                    if isinstance(group, list):
                        self._on_sent(group)
                    await self._stream.send(group, defer)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
            self._failed(exc)

    async def _read(self) -> None:
        try:
            async for answer in self._stream.answers():
                for _ in range(min(answer.answers, len(self._unanswered)) - 1):
                    self._unanswered.popleft()  # deferred, and taken
                request = self._unanswered.popleft() if self._unanswered else []
                if isinstance(request, Revoke):
                    if answer.revoked:
                        self._on_revoked(answer.revoked)
                elif answer.refused:
                    log.info(
                        "worker refused tasks; requeueing",
                        extra={"fields": {"address": self.address, "reason": answer.refused}},
                    )
                    self._on_lost(request, REQUEUE_DELAY_S)
            self._failed(None)
        except grpc.aio.AioRpcError as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException | None) -> None:
        """The stream ended: the worker closed it (it is leaving; None) or it broke."""
        if self._closing is not None:
            return
        if exc is None:
            log.info("worker closed its assign stream", extra={"fields": {"address": self.address}})
        else:
            code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            log.warning(
                "assign stream broke", extra={"fields": {"address": self.address, "why": code}}
            )
        self._start_closing()


class Dispatcher:
    """Groups dispatches by worker and feeds them to that worker's stream."""

    def __init__(self, cell: shm.Cell, open_stream: OpenStream, lifelines: Lifelines) -> None:
        """`lifelines` are the scheduler's: a feed's closing or a requeue that fails stops it."""
        self._cell = cell
        self._open_stream = open_stream
        self._lifelines = lifelines
        self._feeds: dict[str, WorkerFeed] = {}
        self._pending_requeues: set[asyncio.Task[None]] = set()
        self.requeued = 0
        self.revoked = 0

    def send(self, dispatches: Sequence[shm.Dispatch]) -> None:
        """Hand each worker its share of this round (does not wait); the traced tasks among
        them were popped now (`shm.trace`)."""
        by_address: dict[str, list[shm.Dispatch]] = defaultdict(list)
        traced = []
        for d in dispatches:
            by_address[d.address].append(d)
            if d.traced:
                traced.append(d.task_id)
        if traced:
            self._cell.trace(shm.Writer.SCHEDULER, shm.Hop.SCHEDULER_POPPED, traced)
        for address, group in by_address.items():
            self._feed(address).send(group)

    async def close(self) -> None:
        """Close every stream; delayed requeues run now instead of waiting out their delay. The
        one exception to leaving unanswered tasks to the register first (module docstring): a
        stopping scheduler cannot wait, and a task a live worker got runs again at most once
        more, its late result dropped as stale."""
        await asyncio.gather(*(feed.close() for feed in list(self._feeds.values())))
        pending = list(self._pending_requeues)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def revoke(self, address: str, revoke: Revoke) -> None:
        """Ask the worker at `address` to give back these unstarted attempts (does not wait);
        the ones it gives back go back to the queue with their original keys."""
        self._feed(address).revoke(revoke)

    def _take_back(self, refs: list[Ref]) -> None:
        count = self._cell.take_back(refs)
        self.revoked += count
        if count:
            log.debug("took back prefetched tasks", extra={"fields": {"tasks": count}})

    def _feed(self, address: str) -> WorkerFeed:
        feed = self._feeds.get(address)
        if feed is None:
            stream = self._open_stream(address)
            feed = WorkerFeed(
                address,
                stream,
                self._requeue_later,
                self._forget,
                self._take_back,
                self._lifelines,
                self._sent,
            )
            self._feeds[address] = feed
        return feed

    def _sent(self, group: list[shm.Dispatch]) -> None:
        """A group is being written: record the hop of its traced tasks (`shm.trace`)."""
        traced = [d.task_id for d in group if d.traced]
        if traced:
            self._cell.trace(shm.Writer.SCHEDULER, shm.Hop.SCHEDULER_SENT, traced)

    def _forget(self, feed: WorkerFeed) -> None:
        if self._feeds.get(feed.address) is feed:
            del self._feeds[feed.address]

    def _requeue_later(self, lost: list[shm.Dispatch], delay_s: float) -> None:
        if not lost:
            return
        task = asyncio.get_running_loop().create_task(
            self._requeue(lost, delay_s), name="scheduler-requeue"
        )
        self._lifelines.watch(task, may_return=True)
        self._pending_requeues.add(task)
        task.add_done_callback(self._pending_requeues.discard)

    async def _requeue(self, lost: list[shm.Dispatch], delay_s: float) -> None:
        """Requeue what is still dispatched at the same attempt after `delay_s` (at once when
        the scheduler stops: the wait is cancelled, the requeue still runs)."""
        try:
            await asyncio.sleep(delay_s)
        finally:
            refs = [(d.task_id, d.attempt) for d in lost]
            count = self._cell.requeue(refs, time.time())
            self.requeued += count
            if count:
                log.info(
                    "requeued tasks of a broken assign stream",
                    extra={"fields": {"tasks": count, "after_s": delay_s}},
                )
