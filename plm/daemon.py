"""The PLM: owns the cell handle and its journal, takes submissions, routes settled tasks to
their sessions.

Every settled result is released from the cell at a bounded time: when its client acknowledges
it, or `result_ttl_s` after it was delivered, or — when nobody watches it (no session waits for
it, or its session has no open stream, e.g. its client died) — `result_ttl_s` after it settled
or after the last stream of its session closed.

With a journal (durability fsync or os), a submission is answered only once it is committed
(`heapd.plm.commits`: group commit), settled outcomes and cancellations are recorded, and a
released result is deleted from it; a PLM that starts on a new cell rebuilds the cell from it.

The finished-task drain is a lifeline (`heapd.runtime.lifelines`): if it died, no result would
reach a client again while the PLM looked healthy, so its death stops the PLM, whose exit then
raises RoleFailed (exit code 1: the supervisor restarts it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

from heapd import errors, shm
from heapd.plm import recovery
from heapd.plm.commits import GroupCommit
from heapd.plm.dependents import DependencyMessages, Dependents
from heapd.plm.held import HeldResults
from heapd.plm.intake import Intake
from heapd.plm.journal import Journal, JournalWriteFailed, Settled, Started, Submitted
from heapd.plm.sessions import Sessions
from heapd.plm.workers import CancelCall, WorkerCanceller
from heapd.runtime.bells import BellListener
from heapd.runtime.lifelines import Lifelines, RoleFailed
from heapd.security import Security
from heapd.shm import Hop, Writer

log = logging.getLogger(__name__)

FINISHED_BATCH = 4096


class Plm:
    """Task intake and result delivery over one attached cell; `cancel_call` kills a cancelled
    task's attempt on its worker (`heapd.plm.convert.cancel_on_worker`), `messages` builds what
    dependencies need (`heapd.plm.convert.DEPENDENCY_MESSAGES`)."""

    def __init__(
        self,
        cell: shm.Cell,
        result_ttl_s: float,
        cancel_call: CancelCall,
        messages: DependencyMessages,
        journal: Journal | None = None,
        security: Security | None = None,
    ) -> None:
        self.cell = cell
        self._ttl_s = result_ttl_s
        self._journal = journal
        self._commits: GroupCommit | None = None
        self._keys: dict[str, int] = {}  # idempotency key -> the first task submitted with it
        self._traced: set[int] = set()  # traced tasks (shm.trace) not yet sent to a client
        self._sessions = Sessions()
        self._stop = asyncio.Event()
        self._lifelines = Lifelines("plm", self.shutdown)
        # SubmitStream handlers waiting for their next request: the stop ends them at once.
        self.idle_streams: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._held: HeldResults | None = None
        self._delivered: HeldResults | None = None
        self._listener: BellListener | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._canceller = WorkerCanceller(cancel_call, security)  # how to call workers
        self._dependents = Dependents(cell, messages, self._journal_started)
        # Read by heapd.plm.metrics at scrape time; updated once per request or batch.
        self.delivered = 0  # results written to watch streams

    async def __aenter__(self) -> Plm:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close; then, unless the body raised, raise RoleFailed if a lifeline died."""
        await self.close()
        if kind is None:
            self._lifelines.raise_if_failed()

    @property
    def failure(self) -> RoleFailed | None:
        """Why the PLM stopped on its own (a lifeline died), None otherwise."""
        return self._lifelines.failure

    async def start(self) -> None:
        """Rebuild a new cell from the journal, listen to the PLM doorbell and pick up tasks
        that settled while no PLM ran."""
        loop = asyncio.get_running_loop()
        if self._journal is not None:
            self._recover(self._journal)
            self._commits = GroupCommit(self._journal)
            self._lifelines.watch(self._commits.start(), may_return=True)
        # Lifelines too: a release that raised in a timer would stop releasing for good.
        guard = self._lifelines.guard
        self._held = HeldResults(
            self._ttl_s, guard(self._release_unwatched, "plm-release-unwatched"), loop
        )
        # Delivered but not acknowledged: the bytes may have died with a broken socket, and the
        # client, reconnecting, names what it still awaits; a client that never acknowledges
        # (an old one, grpcurl) has its results for the TTL.
        self._delivered = HeldResults(self._ttl_s, guard(self._release, "plm-release"), loop)
        settled = self.cell.list_tasks(shm.TERMINAL_STATES, limit=self.cell.capacities.tasks)
        for info in sorted(settled, key=lambda i: i.finished_at):  # deadlines stay FIFO
            self._held.hold(info.task_id, info.finished_at)
        self._dependents.rebuild()  # what a previous PLM (or the journal) left waiting
        self._listener = BellListener(self.cell.plm_bell, loop, "plm")
        self._listener.start()
        self._drainer = asyncio.create_task(self._drain_finished(), name="plm-finished")
        self._lifelines.watch(self._drainer)

    def shutdown(self) -> None:
        """Ask `wait_stopped` to return and open WatchTasks streams to end, so that stopping
        the server need not wait them out (idempotent; safe from a signal handler). Also called
        when a lifeline dies."""
        self._stop.set()
        self._sessions.wake_all()
        for stream in list(self.idle_streams):
            stream.cancel()

    @property
    def stopping(self) -> bool:
        """Whether `shutdown` was called."""
        return self._stop.is_set()

    async def wait_stopped(self) -> None:
        """Until `shutdown` is called."""
        await self._stop.wait()

    async def close(self) -> None:
        """Stop background work; held results stay in shared memory for the next PLM."""
        if self._closed:
            return
        self._closed = True
        self.shutdown()
        if self._listener is not None:
            await self._listener.close()
        if self._drainer is not None:
            self._drainer.cancel()
            await asyncio.wait([self._drainer])
        for held in (self._held, self._delivered):
            if held is not None:
                held.close()
        await self._canceller.close()
        if self._commits is not None:
            await self._commits.close()
        elif self._journal is not None:
            self._journal.close()

    def _recover(self, journal: Journal) -> None:
        """Rebuild a new cell from the journal; learn its keys; route restored tasks to the
        sessions that submitted them."""
        recovered = recovery.rebuild(self.cell, journal)
        self._keys = journal.keys()
        if recovered is not None:
            for session, task_ids in recovered.owners.items():
                self._sessions.own(session, task_ids)

    # --- intake

    async def submit(self, intake: Intake) -> list[int]:
        """Take a session's acknowledgements and adoptions, then queue its tasks (all or none)
        and route their results to it; returns once they are in the journal. A task whose key
        the cell already knows is not queued again: its first task's id is returned."""
        if intake.acks:
            self.acknowledge(intake.acks)
        if intake.adopt:
            self._adopt(intake.session, intake.adopt, take_over=True)
        received = time.time_ns()
        now = received / 1e9
        ids, fresh = self._queue(intake, now) if intake.tasks else ([], [])
        traced = intake.traced(ids) if ids else []
        if traced:  # traced to their delivery (shm.trace)
            self._traced.update(traced)
            self.cell.trace(Writer.PLM, Hop.PLM_RECEIVED, traced, received)
            self.cell.trace(Writer.PLM, Hop.PLM_QUEUED, traced)
        if self._commits is not None and fresh:
            await self._journal_submitted(intake, ids, fresh, now)
            if traced:
                self.cell.trace(Writer.PLM, Hop.PLM_COMMITTED, traced)
        elif self._commits is not None and intake.acks:
            await self._journal_acks()  # acknowledged means gone, also after a restart
        return ids

    async def _journal_acks(self) -> None:
        """Wait until the deletions of acknowledged results are committed."""
        assert self._commits is not None
        try:
            await self._commits.barrier()
        except JournalWriteFailed as exc:
            raise errors.Unavailable(f"{exc}; the acknowledgements will be written later") from exc

    def _queue(self, intake: Intake, now: float) -> tuple[list[int], list[int]]:
        """Queue the tasks with no known key; (the id of every task, the indexes queued)."""
        if not intake.keys:  # no task has a key: every one is new
            ids = self._submit(intake.tasks, now)
            self._sessions.own(intake.session, ids)
            self._resolve_new(intake, list(range(len(ids))), ids)
            return ids, list(range(len(ids)))
        keys = [intake.key_of(i) for i in range(len(intake.tasks))]
        known: list[int | None] = [self._keys.get(k) if k else None for k in keys]
        fresh, first = [], {}
        for index, key in enumerate(keys):
            if known[index] is None and (not key or key not in first):
                fresh.append(index)
                if key:
                    first[key] = index
        new_ids = self._submit([intake.tasks[i] for i in fresh], now)
        for index, task_id in zip(fresh, new_ids, strict=True):
            known[index] = task_id
            if keys[index]:
                self._keys[keys[index]] = task_id
        ids = [self._keys[k] if tid is None else tid for k, tid in zip(keys, known, strict=True)]
        self._sessions.own(intake.session, new_ids)
        queued = set(fresh)
        reused = [tid for i, tid in enumerate(ids) if i not in queued]
        if reused:
            self._adopt(intake.session, reused, take_over=True)
        self._resolve_new(intake, fresh, new_ids)
        return ids, fresh

    def _submit(self, tasks: list[shm.NewTask], now: float) -> list[int]:
        """Put tasks in the cell; a bad one (an unknown dependency, found under the lock) is the
        submitter's error."""
        try:
            return self.cell.submit(tasks, now)
        except ValueError as exc:
            raise errors.InvalidArgument(str(exc)) from None

    def _resolve_new(self, intake: Intake, indexes: list[int], ids: list[int]) -> None:
        """New tasks that wait on dependencies: remember them, start those already resolved."""
        if any(intake.tasks[i].after for i in indexes):
            self._dependents.submitted(
                [(tid, intake.tasks[i].after) for i, tid in zip(indexes, ids, strict=True)]
            )

    async def _journal_submitted(
        self, intake: Intake, ids: list[int], fresh: list[int], now: float
    ) -> None:
        """Commit the new tasks; if the journal cannot take them, take them back (cancel) and
        fail the submission, naming the journal."""
        assert self._commits is not None
        records = [
            Submitted(
                task_id=ids[i],
                session=intake.session,
                submitted_at=now,
                priority=intake.tasks[i].priority,
                max_retries=intake.tasks[i].max_retries,
                timeout_ms=intake.tasks[i].timeout_ms,
                payload=bytes(intake.tasks[i].payload),
                key=intake.key_of(i),
                resources=intake.tasks[i].resources,
                labels=intake.tasks[i].labels,
                after=intake.tasks[i].after,
            )
            for i in fresh
        ]
        try:
            await self._commits.submitted(records)
        except JournalWriteFailed as exc:
            for i in fresh:
                key = intake.key_of(i)
                if key and self._keys.get(key) == ids[i]:
                    del self._keys[key]
                await self.cancel(ids[i], journal=False)
            kind = errors.ResourceExhausted if exc.disk_full else errors.Unavailable
            raise kind(f"{exc}; the tasks were not accepted") from exc

    def acknowledge(self, task_ids: Sequence[int]) -> None:
        """A client has these results and no longer needs them: release them now, and stop
        holding them (their TTL must not release them, and delete them from the journal, again)."""
        assert self._held is not None and self._delivered is not None
        self._held.discard(task_ids)
        self._delivered.discard(task_ids)
        self._release(task_ids)  # forgets them in the sessions too

    def get(self, task_id: int) -> tuple[shm.TaskInfo, bytes | None, str]:
        """A task's status with its needs and labels; once settled and still held, its outcome;
        while QUEUED, why no live worker could run it ("" if one could)."""
        info, outcome, unschedulable = self.cell.describe(task_id)  # one lock
        return info, outcome if info.state in shm.TERMINAL_STATES else None, unschedulable

    async def cancel(self, task_id: int, *, journal: bool = True) -> shm.TaskState:
        """Cancel a task; a running one is also killed on its worker. Returns its state after,
        once the cancellation is in the journal."""
        now = time.time()
        result = self.cell.cancel(task_id, now)
        before = result.before
        if result.cancelled and journal and self._commits is not None:
            self._commits.settled([Settled(task_id, int(shm.TaskState.CANCELLED), None, now)])
            await self._commits.barrier()
        if result.cancelled and before.state in shm.ACTIVE_STATES and result.address:
            await self._canceller.cancel(result.address, task_id, before.attempt)
        return shm.TaskState.CANCELLED if result.cancelled else before.state

    def list_tasks(
        self, states: list[shm.TaskState] | None, limit: int
    ) -> list[tuple[shm.TaskInfo, str]]:
        """Tasks in the given states, oldest first, each with why no live worker could run it
        ("" unless QUEUED and unschedulable)."""
        infos = self.cell.list_tasks(states, limit)
        queued = [i.task_id for i in infos if i.state == shm.TaskState.QUEUED]
        reasons = dict(zip(queued, self.cell.unschedulable_reasons(queued), strict=True))
        return [(info, reasons.get(info.task_id, "")) for info in infos]

    def holding(self) -> tuple[int, int, int, int]:
        """(results held for nobody, delivered but not yet acknowledged, sessions known, open
        watch streams)."""
        held = len(self._held or ())
        return held, len(self._delivered or ()), len(self._sessions), self._sessions.streams()

    @property
    def commits(self) -> GroupCommit | None:
        """The journal's group commit (None without a journal)."""
        return self._commits

    def stats(self) -> tuple[shm.CellStats, int]:
        """The cell's statistics and the number of results held for nobody."""
        return self.cell.stats(), len(self._held or ())

    # --- delivery

    async def watch(
        self, name: str, task_ids: Sequence[int]
    ) -> AsyncIterator[list[tuple[int, shm.TaskInfo | None, bytes | None]]]:
        """Yield batches of (task id, info or None if unknown, outcome) for session `name`,
        until the stream is closed or the PLM stops."""
        assert self._held is not None and self._delivered is not None
        session = self._sessions.attach(name)
        try:
            self._adopt(session.name, task_ids)
            while not self._stop.is_set():
                await session.event.wait()
                if self._stop.is_set():
                    break  # what is queued stays in the cell: the next PLM holds it again
                ids = self._sessions.take(session)
                if not ids:
                    continue
                batch = self.cell.read_settled(ids)
                known = [i for i, info, _ in batch if info is not None]
                # Held before the write, which may die with the socket: the client, reconnecting,
                # names what it still awaits.
                self._held.discard(known)
                self._delivered.hold_many(known)
                self.delivered += len(known)
                if self._traced:
                    self._traced_sent(known)
                yield batch
        finally:
            self._sessions.detach(session)
            if session.streams == 0 and session.queued:
                self._held.hold_many(session.queued)  # unwatched from now on

    def _traced_sent(self, task_ids: list[int]) -> None:
        """Traced tasks among these are being written to their client: their last PLM hop."""
        sent = [task_id for task_id in task_ids if task_id in self._traced]
        if sent:
            self._traced.difference_update(sent)
            self.cell.trace(Writer.PLM, Hop.PLM_SENT, sent)

    def _adopt(self, session: str, task_ids: Sequence[int], take_over: bool = False) -> None:
        """A (re)connecting client names tasks it still waits for: own them, push settled ones
        (`take_over`: even those another session waits for)."""
        self._sessions.own(session, task_ids, take_over=take_over)
        for task_id in task_ids:
            try:
                settled = self.cell.get(task_id).state in shm.TERMINAL_STATES
            except shm.TaskNotFound:
                settled = True  # delivered as unknown
            if settled:
                self._sessions.settle(task_id)

    async def _drain_finished(self) -> None:
        assert self._listener is not None
        event = self._listener.event
        while True:
            self._route_finished()
            await event.wait()
            event.clear()

    def _route_finished(self) -> None:
        """Hand every task from the completion ring to its session, and hold it: a result has
        a deadline from the moment it settles, also one queued for a stream whose client
        stopped reading (its write never completes); the stream that takes it hands it on to
        the delivered TTL."""
        assert self._held is not None
        while ids := self.cell.take_finished(FINISHED_BATCH):
            if self._traced and (collected := [i for i in ids if i in self._traced]):
                self.cell.trace(Writer.PLM, Hop.PLM_COLLECTED, collected)
            # The streams waiting for these are woken first, so their writes run before the
            # journal's commit (in its thread) competes with them for the GIL; the journal and
            # the dependents read the results in this call, before anything can release them.
            for task_id in ids:
                self._sessions.settle(task_id)
            if self._commits is not None:
                self._commits.settled(_outcomes(self.cell.read_settled(ids)))
            self._dependents.settled(ids)
            self._held.hold_many(ids)
            if len(ids) < FINISHED_BATCH:
                return

    def _journal_started(self, records: list[Started]) -> None:
        if self._commits is not None:
            self._commits.started(records)

    def _release(self, task_ids: Sequence[int]) -> None:
        """Free these results in the cell, delete them from the journal and forget them in
        the sessions (one may have adopted a delivered result again since)."""
        if task_ids:
            if self._traced:
                self._traced.difference_update(task_ids)
            self.cell.release(task_ids)
            self._sessions.forget(task_ids)
            if self._commits is not None:
                self._commits.forget(task_ids)

    def _release_unwatched(self, task_ids: Sequence[int]) -> None:
        """The TTL of results nobody took ran out: free them."""
        self._release(task_ids)


def _outcomes(batch: Sequence[tuple[int, shm.TaskInfo | None, bytes | None]]) -> list[Settled]:
    """Journal records of settled tasks read from the cell."""
    return [
        Settled(task_id, int(info.state), outcome, info.finished_at)
        for task_id, info, outcome in batch
        if info is not None and info.state in shm.TERMINAL_STATES
    ]
