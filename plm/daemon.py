"""The PLM: owns the cell handle, takes submissions, routes settled tasks to their sessions.

Every settled result is released from the cell at a bounded time: a result delivered on a
WatchTasks stream DELIVERED_HOLD_S after it was written; one nobody watches (no session waits
for it, or its session has no open stream, e.g. its client died) `result_ttl_s` after it
settled, or after the last stream of its session closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from types import TracebackType

from heapd import shm
from heapd.plm.held import HeldResults
from heapd.plm.sessions import Session, Sessions
from heapd.plm.workers import CancelCall, WorkerCanceller
from heapd.runtime.bells import BellListener

log = logging.getLogger(__name__)

FINISHED_BATCH = 4096
# A result written to a client's stream is kept this long before its slot is freed: the bytes
# may die in a socket that breaks (a PLM killed mid-write resets the connection), and the
# client, reconnecting, names what it still awaits. A restarted PLM holds every unreleased
# result for the full result TTL, so this only has to cover a reconnect to a live PLM.
DELIVERED_HOLD_S = 10.0


class Plm:
    """Task intake and result delivery over one attached cell; `cancel_call` kills a cancelled
    task's attempt on its worker (`heapd.plm.convert.cancel_on_worker`)."""

    def __init__(self, cell: shm.Cell, result_ttl_s: float, cancel_call: CancelCall) -> None:
        self.cell = cell
        self._ttl_s = result_ttl_s
        self._sessions = Sessions()
        self._stop = asyncio.Event()
        self._closed = False
        self._held: HeldResults | None = None
        self._delivered: HeldResults | None = None
        self._listener: BellListener | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._canceller = WorkerCanceller(cancel_call)

    async def __aenter__(self) -> Plm:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen to the PLM doorbell and pick up tasks that settled while no PLM ran."""
        loop = asyncio.get_running_loop()
        self._held = HeldResults(self._ttl_s, self._release_unwatched, loop)
        self._delivered = HeldResults(DELIVERED_HOLD_S, self._release, loop)
        settled = self.cell.list_tasks(shm.TERMINAL_STATES, limit=self.cell.capacities.tasks)
        for info in sorted(settled, key=lambda i: i.finished_at):  # deadlines stay FIFO
            self._held.hold(info.task_id, info.finished_at)
        self._listener = BellListener(self.cell.plm_bell, loop, "plm")
        self._listener.start()
        self._drainer = asyncio.create_task(self._drain_finished(), name="plm-finished")

    def shutdown(self) -> None:
        """Ask `wait_stopped` to return and open WatchTasks streams to end, so that stopping
        the server need not wait them out (idempotent; safe from a signal handler)."""
        self._stop.set()
        self._sessions.wake_all()

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

    # --- intake

    def submit(self, session: str, tasks: Sequence[shm.NewTask]) -> list[int]:
        """Queue tasks (all or none) and route their results to `session`."""
        ids = self.cell.submit(tasks, time.time())
        self._sessions.own(session, ids)
        return ids

    def get(self, task_id: int) -> tuple[shm.TaskInfo, bytes | None]:
        """A task's status and, once settled and still held, its outcome."""
        ((_, info, outcome),) = self.cell.read_settled([task_id])  # one lock, not two
        if info is None:
            raise shm.TaskNotFound(task_id)
        return info, outcome if info.state in shm.TERMINAL_STATES else None

    async def cancel(self, task_id: int) -> shm.TaskState:
        """Cancel a task; a running one is also killed on its worker. Returns its state after."""
        result = self.cell.cancel(task_id, time.time())
        before = result.before
        if result.cancelled and before.state in shm.ACTIVE_STATES and result.address:
            await self._canceller.cancel(result.address, task_id, before.attempt)
        return shm.TaskState.CANCELLED if result.cancelled else before.state

    def list_tasks(self, states: list[shm.TaskState] | None, limit: int) -> list[shm.TaskInfo]:
        """Tasks in the given states, oldest first."""
        return self.cell.list_tasks(states, limit)

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
            self._adopt(session, task_ids)
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
                yield batch
        finally:
            self._sessions.detach(session)
            if session.streams == 0 and session.queued:
                self._held.hold_many(session.queued)  # unwatched from now on

    def _adopt(self, session: Session, task_ids: Sequence[int]) -> None:
        """A (re)connecting client names tasks it still waits for: own them, push settled ones."""
        self._sessions.own(session.name, task_ids)
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
        """Hand every task from the completion ring to its session, or hold it."""
        assert self._held is not None
        while ids := self.cell.take_finished(FINISHED_BATCH):
            now = time.time()
            for task_id in ids:
                session = self._sessions.settle(task_id)
                if session is None or session.streams == 0:
                    self._held.hold(task_id, now)
            if len(ids) < FINISHED_BATCH:
                return

    def _release(self, task_ids: Sequence[int]) -> None:
        if task_ids:
            self.cell.release(task_ids)

    def _release_unwatched(self, task_ids: Sequence[int]) -> None:
        """The TTL of results nobody watched ran out: free them, and forget them in sessions."""
        self._release(task_ids)
        self._sessions.forget(task_ids)
