"""The main scheduler: on every doorbell, pop the task heap while workers have room, dispatch.

Tasks stay in the shared heap until a worker has room, so a high-priority task submitted late
overtakes queued low ones. Room is `slots` tasks per worker while the queue is shallow; once it
is deep (>= DEEP_FACTOR x total slots) each slot may hold as many tasks as finish within the
dispatch round trip at the observed rate (HIDE_S), at most `prefetch_per_slot`: short tasks get
deep prefetch (children never idle across a round trip), long ones about 2 per slot, so a late
high-priority task waits behind few of them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from types import TracebackType

from heapd import shm
from heapd.runtime.bells import BellListener
from heapd.runtime.lifelines import Lifelines, RoleFailed
from heapd.scheduler.dispatcher import Dispatcher, OpenStream, Revoke
from heapd.scheduler.prefetched import Overtaken, Prefetched
from heapd.shm.histogram import BATCH_SIZES, Histogram

log = logging.getLogger(__name__)

DEEP_FACTOR = 4
# The dispatch round trip (refill decision -> task in a child) that prefetch must hide.
HIDE_S = 0.01
RATE_WINDOW_S = 0.1
_LIVE = frozenset(shm.LIVE_WORKER_STATES)


class TaskRate:
    """Attempts ended per second, from a monotonic counter sampled when dispatching."""

    def __init__(self) -> None:
        self._t = time.monotonic()
        self._count = -1
        self.per_s = 0.0

    def update(self, count: int) -> float:
        """Fold in the counter's current value; returns the smoothed rate."""
        now = time.monotonic()
        if self._count < 0:
            self._t, self._count = now, count
        elif now - self._t >= RATE_WINDOW_S:
            rate = (count - self._count) / (now - self._t)
            self.per_s = rate if self.per_s == 0.0 else 0.5 * self.per_s + 0.5 * rate
            self._t, self._count = now, count
        return self.per_s


class Scheduler:
    """Pops the task heap and hands tasks to the dispatcher."""

    def __init__(
        self,
        cell: shm.Cell,
        batch: int,
        prefetch_per_slot: int,
        open_stream: OpenStream,
        policy: shm.Policy = shm.Policy.LEAST_LOADED,
        aging_s: float = 0.0,
    ) -> None:
        """`open_stream(address)` opens the AssignStream to the worker at `address`; `aging_s`
        is the aging period (a task's priority grows by 1 per `aging_s` waited; 0 = off)."""
        self.cell = cell
        self._batch = batch
        self._prefetch = max(1, prefetch_per_slot)
        self._policy = policy
        self._aging_s = aging_s
        self._cursor = shm.Cursor(policy)
        self._prefetched = Prefetched(cell.unstarted, cell.still_dispatched, self._room_of)
        self._worker_seq = -1
        self._maybe_surplus = False  # a worker may hold more tasks than slots (see _idle_slot_work)
        self._stop = asyncio.Event()
        self._lifelines = Lifelines("scheduler", self.shutdown)
        self._dispatcher = Dispatcher(cell, open_stream, self._lifelines)
        self._rate = TaskRate()
        self._listener: BellListener | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False
        # Read by heapd.scheduler.metrics at scrape time; updated once per round or batch.
        self.rounds = 0
        self.dispatched = 0
        self.parked = 0
        self.revoke_requests = 0
        self.batch_sizes = Histogram(BATCH_SIZES)

    async def __aenter__(self) -> Scheduler:
        self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close; then, unless the body raised, raise RoleFailed if a lifeline died (the
        dispatch loop): the entry point exits non-zero and the supervisor restarts us."""
        await self.close()
        if kind is None:
            self._lifelines.raise_if_failed()

    @property
    def failure(self) -> RoleFailed | None:
        """Why the scheduler stopped on its own (its dispatch loop died), None otherwise."""
        return self._lifelines.failure

    def start(self) -> None:
        """Take back what a previous scheduler may have left half-sent, listen to the doorbell
        and dispatch what is queued."""
        self.cell.configure_scheduling(self._policy, self._aging_s)
        self._reclaim_unsent()
        loop = asyncio.get_running_loop()
        self._listener = BellListener(self.cell.scheduler_bell, loop, "scheduler")
        self._listener.start()
        # A lifeline: if it dies, nothing dispatches any more; the scheduler must stop.
        self._loop_task = asyncio.create_task(self._run(), name="scheduler-dispatch")
        self._lifelines.watch(self._loop_task)

    def shutdown(self) -> None:
        """Ask `wait_stopped` to return (idempotent; safe from a signal handler). Also called
        when a lifeline dies."""
        self._stop.set()

    async def wait_stopped(self) -> None:
        """Until `shutdown` is called."""
        await self._stop.wait()

    async def close(self) -> None:
        """Stop dispatching, then close the workers' streams (their unanswered tasks go back
        to the queue)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._listener is not None:
            await self._listener.close()
        if self._loop_task is not None:
            self._loop_task.cancel()  # a death was logged by the lifeline already
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await self._dispatcher.close()

    def _reclaim_unsent(self) -> int:
        """Requeue every DISPATCHED (not yet started) task.

        A scheduler killed between committing a dispatch and writing it to the worker's stream
        leaves tasks DISPATCHED that no worker holds; nothing else would ever move them. Which
        of them did reach a worker is unknown, so all are requeued: a copy a worker did get runs
        too (at least once), and its result is dropped as stale (fenced by attempt).
        """
        stuck = self.cell.list_tasks([shm.TaskState.DISPATCHED], limit=self.cell.capacities.tasks)
        count = self.cell.requeue([(i.task_id, i.attempt) for i in stuck], time.time())
        if count:
            log.warning(
                "requeued tasks a previous scheduler left unsent",
                extra={"fields": {"tasks": count}},
            )
        return count

    async def _run(self) -> None:
        assert self._listener is not None
        event = self._listener.event
        while True:
            self.dispatch_round()
            await event.wait()
            event.clear()

    def dispatch_round(self) -> int:
        """Dispatch until the heap is empty or no worker has room, then take back prefetched
        tasks that a queued one must overtake; returns tasks dispatched."""
        total = 0
        self._forget_gone_workers()
        per_slot = self._per_slot()
        # Deep queue: refill a worker only once half its prefetch room is free, so tasks go out
        # in batches rather than one AssignTasks per finished task.
        min_room = per_slot // 2
        while True:
            done = self.cell.dispatch_round(
                self._batch, time.time(), per_slot, min_room, self._cursor
            )
            min_room = 0
            self.rounds += 1
            self.parked += len(done.parked)
            for task_id, why in done.parked:
                log.warning(
                    "task is unschedulable: no live worker could run it; parked until workers "
                    "change",
                    extra={"fields": {"task_id": task_id, "why": why}},
                )
            if done.dispatches:
                self._dispatcher.send(done.dispatches)
                self._prefetched.sent(done.dispatches)
                total += len(done.dispatches)
                self.batch_sizes.observe(len(done.dispatches))
                # Only a round that may fill beyond free slots can leave a worker holding more
                # than it runs: until none does, an empty queue looks for idle slots.
                self._maybe_surplus |= per_slot > 1
            if len(done.dispatches) < self._batch:
                self._revoke_overtaken(done.top_key)
                self.dispatched += total
                return total

    def dispatcher_counts(self) -> tuple[int, int]:
        """(tasks requeued after a broken assign stream, tasks given back by revocation)."""
        return self._dispatcher.requeued, self._dispatcher.revoked

    def _revoke_overtaken(self, top_key: int) -> None:
        """Ask workers to give back unstarted tasks worse than the best one still queued; with
        nothing queued, tasks held beyond their slots by some workers while others idle."""
        lots = self._prefetched.overtaken(top_key) if top_key >= 0 else self._idle_slot_work()
        self.revoke_requests += len(lots)
        for lot in lots:
            self._dispatcher.revoke(lot.address, Revoke(lot.worker_id, lot.epoch, lot.refs))

    def _idle_slot_work(self) -> list[Overtaken]:
        """The queue is empty: unstarted tasks to move from workers holding more than they can
        run to idle slots elsewhere (the end of a drain on unequal workers), at most as many
        as there are idle slots."""
        if not self._maybe_surplus:
            return []
        free, owners = self.cell.loads()
        self._maybe_surplus = bool(owners)
        if free == 0 or not owners:
            return []
        budget: dict[tuple[int, int], int] = {}
        for owner, extra in sorted(owners.items(), key=lambda item: -item[1]):
            take = min(extra, free)
            if take > 0:
                budget[owner] = take
                free -= take
        return self._prefetched.surplus(budget)

    def _room_of(self, worker_id: int) -> int:
        """The most tasks a worker may hold: its slots x the deepest prefetch."""
        try:
            return self.cell.worker(worker_id).slots * self._prefetch
        except shm.WorkerNotFound:
            return 0

    def _forget_gone_workers(self) -> None:
        """When a worker joins (one header word read per round), forget what was sent to
        registrations that are no longer live."""
        seq = self.cell.worker_seq()
        if seq != self._worker_seq:
            self._worker_seq = seq
            live = {(w.worker_id, w.epoch) for w in self.cell.workers() if w.state in _LIVE}
            self._prefetched.forget(live)

    def _per_slot(self) -> int:
        """Tasks per slot for this round: 1 on a shallow queue; on a deep one, enough to cover
        the dispatch round trip at the observed task rate, at most `prefetch_per_slot`."""
        if self._prefetch == 1:
            return 1
        depth = self.cell.queue_depth()
        if depth < DEEP_FACTOR:  # shallow whatever the slots: skip the table scan
            return 1
        slots = self.cell.alive_slots()
        if depth < DEEP_FACTOR * max(1, slots):
            return 1
        per_slot_rate = self._rate.update(self.cell.settled_total()) / max(1, slots)
        return min(self._prefetch, 1 + math.ceil(per_slot_rate * HIDE_S))
