"""The register: admits workers, applies their heartbeats (results included), buries the dead."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Sequence
from types import TracebackType

from heapd import shm
from heapd.register.beats import Beat, Registration
from heapd.register.history import AttemptHistory
from heapd.register.leases import LEASE_GRACE_S, Lease, Leases
from heapd.register.liveness import Deadlines
from heapd.register.outcomes import OutcomeCodec
from heapd.register.stalls import LoopStalls
from heapd.runtime.lifelines import Lifelines
from heapd.shm.histogram import BATCH_SIZES, Histogram

log = logging.getLogger(__name__)

# Heartbeat gaps: the interval (0.5 s by default) and how late a beat can be before death.
GAP_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Register:
    """Worker membership and result intake over one attached cell.

    `outcomes` encodes the failures the register decides itself (the boundary's
    `convert.TaskOutcomes`); `lease_grace_s` is how long past a task's timeout the register
    waits for the worker's report before settling the attempt itself.

    Each registration has a secret (`registration_secret`), handed to the worker once; the
    boundary accepts a Heartbeat stream or a Deregister only from a caller that `proves` it, so
    knowing a worker's (public) id and epoch is never enough to speak for it.
    """

    def __init__(
        self,
        cell: shm.Cell,
        interval_s: float,
        deadline_s: float,
        outcomes: OutcomeCodec,
        lease_grace_s: float = LEASE_GRACE_S,
    ) -> None:
        self.cell = cell
        self.interval_s = interval_s
        self.deadline_s = deadline_s
        self._outcomes = outcomes
        self._lease_grace_s = lease_grace_s
        self._stop = asyncio.Event()
        self._deadlines: Deadlines | None = None
        self._closed = False
        self._retry_timer: asyncio.TimerHandle | None = None
        self._retry_at = 0.0
        self._leases: Leases | None = None
        self._stalls: LoopStalls | None = None
        self._lifelines = Lifelines("register", self.shutdown)
        self._retry_guarded = self._lifelines.guard(self._retry_due, "register-retries")
        self._cancels: dict[int, list[tuple[int, int]]] = {}
        self._history = AttemptHistory(outcomes)
        self.stale_total = 0
        # Read by heapd.register.metrics at scrape time; updated once per heartbeat or event.
        self.heartbeats = 0
        self.succeeded_attempts = 0
        self.failed_attempts: collections.Counter[str] = collections.Counter()  # by kind
        self.worker_losses: collections.Counter[str] = collections.Counter()  # by reason
        self.retries = 0  # failed attempts put back for another try
        self.leases_expired = 0
        self.refused: collections.Counter[str] = collections.Counter()  # calls refused, by why
        self.reprieves = 0  # deadlines that fired after a stall of our own loop, not buried
        self.results_per_beat = Histogram(BATCH_SIZES)
        self.heartbeat_gaps = Histogram(GAP_SECONDS)

    async def __aenter__(self) -> Register:
        self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close; then, unless the body raised, raise RoleFailed if a lifeline died."""
        self.close()
        if kind is None:
            self._lifelines.raise_if_failed()

    def start(self) -> None:
        """Arm a deadline for every worker the cell already knows, and a lease for every running
        attempt with a timeout (after a register restart: timers live only in memory)."""
        # Every timer callback is a lifeline: one that raised would never fire again (a dead
        # worker never buried, a lease never expired), so its death ends the register instead.
        guard = self._lifelines.guard
        self._deadlines = Deadlines(
            asyncio.get_running_loop(), guard(self._expired, "register-deadlines")
        )
        self._leases = Leases(
            asyncio.get_running_loop(),
            guard(self._lease_expired, "register-leases"),
            self._lease_grace_s,
        )
        # Stalls longer than half an interval are noticed; see `_expired`.
        self._stalls = LoopStalls(
            asyncio.get_running_loop(), self.interval_s / 4, self.interval_s / 4
        )
        self._stalls.start()
        now = time.time()
        self._retry_due()  # retries left waiting by a previous register
        for w in self.cell.workers():
            if w.state in shm.LIVE_WORKER_STATES:
                self._deadlines.arm(
                    w.worker_id, w.epoch, max(w.deadline, now + self.deadline_s) - now
                )
        running = self.cell.list_tasks([shm.TaskState.RUNNING], limit=self.cell.capacities.tasks)
        for info in running:
            if info.timeout_ms:  # a full lease from now: late, never early
                lease = Lease(
                    info.task_id,
                    info.attempt,
                    info.worker_id,
                    info.worker_epoch,
                    info.timeout_ms / 1000,
                )
                self._leases.grant(lease)

    @property
    def stopping(self) -> bool:
        """True once shutdown began: broken streams then mean us, not the worker."""
        return self._stop.is_set()

    def shutdown(self) -> None:
        """Ask `wait_stopped` to return (idempotent; safe from a signal handler)."""
        self._stop.set()

    async def wait_stopped(self) -> None:
        """Until `shutdown` is called."""
        await self._stop.wait()

    def close(self) -> None:
        """Stop the deadline timers; workers stay in the table for the next register."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._deadlines is not None:
            self._deadlines.close()
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        if self._leases is not None:
            self._leases.close()
        if self._stalls is not None:
            self._stalls.close()

    @property
    def loop_stalls(self) -> int:
        """Stalls of this register's event loop noticed so far."""
        return self._stalls.count if self._stalls is not None else 0

    def registration_secret(self, worker_id: int, epoch: int) -> bytes:
        """The secret of registration (worker_id, epoch), for the worker that made it."""
        return self.cell.registration_secret(worker_id, epoch)

    def proves(self, worker_id: int, epoch: int, secret: bytes) -> bool:
        """Whether `secret` is that registration's (constant time)."""
        return self.cell.proves_registration(worker_id, epoch, secret)

    def admit(self, reg: Registration) -> shm.WorkerInfo:
        """Register a worker under a new id and epoch and start its deadline."""
        now = time.time()
        info = self.cell.register_worker(
            reg.address,
            reg.slots,
            reg.pid,
            reg.hostname,
            now,
            now + self.deadline_s,
            reg.resources,
            reg.labels,
        )
        self._arm(info.worker_id, info.epoch)
        log.info(
            "worker registered",
            extra={
                "fields": {
                    "worker_id": info.worker_id,
                    "address": reg.address,
                    "resources": info.resources,
                    "labels": info.labels,
                }
            },
        )
        return info

    def beat(self, beat: Beat) -> shm.CompleteOutcome:
        """Apply one heartbeat; StaleEpoch/WorkerNotFound tell the worker to register again."""
        now = time.time()
        self.heartbeats += 1
        try:
            previous = self.cell.heartbeat(beat.worker_id, beat.epoch, now, now + self.deadline_s)
        except (shm.StaleEpoch, shm.WorkerNotFound):
            # A worker declared DEAD is back (it hung, or was cut off): whatever results it
            # carries are for attempts already requeued, so they are dropped; say how many.
            if beat.completions:
                self.stale_total += len(beat.completions)
                log.warning(
                    "late results of a fenced worker dropped",
                    extra={
                        "fields": {
                            "worker_id": beat.worker_id,
                            "epoch": beat.epoch,
                            "dropped": len(beat.completions),
                        }
                    },
                )
            raise
        self.heartbeat_gaps.observe(now - previous)
        self._arm(beat.worker_id, beat.epoch)
        # The worker repeats the flag until it leaves; the cell's worker state is the record.
        if beat.draining and self.cell.drain_worker(beat.worker_id, beat.epoch):
            log.info("worker draining", extra={"fields": {"worker_id": beat.worker_id}})
        if beat.started:
            started = self.cell.mark_running(beat.worker_id, beat.epoch, beat.started, now)
            self._grant_leases(beat, started)
        if not beat.completions:
            return shm.CompleteOutcome(0, 0, 0)
        self.results_per_beat.observe(len(beat.completions))
        outcome = self._settle(beat.worker_id, beat.epoch, beat.completions, now)
        if beat.traces:
            self._trace(beat, outcome)
        return outcome

    def _trace(self, beat: Beat, outcome: shm.CompleteOutcome) -> None:
        """Record the hops of the traced attempts of one heartbeat that settled here (not the
        stale ones: a result sent again after a broken stream): the worker's, its arrival and
        their settling (`shm.trace`)."""
        writer = shm.Writer.REGISTER
        stale = {beat.completions[i].task_id for i in outcome.stale_at}
        traces = [(task_id, stamps) for task_id, stamps in beat.traces if task_id not in stale]
        if not traces:
            return
        for task_id, stamps in traces:
            for hop, ns in zip(shm.WORKER_HOPS, stamps, strict=True):
                if ns:
                    self.cell.trace(writer, hop, (task_id,), ns)
        traced = [task_id for task_id, _ in traces]
        self.cell.trace(writer, shm.Hop.REGISTER_RECEIVED, traced, beat.received_ns)
        self.cell.trace(writer, shm.Hop.REGISTER_SETTLED, traced)

    def _settle(
        self, worker_id: int, epoch: int, completions: Sequence[shm.Completion], now: float
    ) -> shm.CompleteOutcome:
        """The one way finished attempts enter the cell, reported (heartbeats) or decided here
        (expired leases): earlier failures attached, stale ones counted, retries timed.

        Fence first, then act: only the attempts `cell.complete` accepted end their leases and
        change the retry history; a stale or forged (task, attempt) changes nothing here."""
        annotated, changes = self._history.annotate(completions)
        outcome = self.cell.complete(worker_id, epoch, annotated, now)
        if changes:
            self._history.commit(changes, outcome.stale_at)
        if self._leases is not None and len(self._leases) and outcome.accepted:
            fenced = set(outcome.stale_at)
            self._leases.settle(
                (c.task_id, c.attempt) for i, c in enumerate(completions) if i not in fenced
            )
        self.stale_total += outcome.stale
        self.retries += outcome.requeued
        self._count_results(completions, outcome)
        if outcome.retry_at:
            self._arm_retry(outcome.retry_at)
        return outcome

    def leave(self, worker_id: int, epoch: int) -> int:
        """A worker deregisters; its unfinished tasks are requeued (those it never reported
        started without counting a loss). Returns how many. The cell fences the call first: a
        stale epoch raises StaleEpoch and leaves the worker's deadline armed."""
        failure = self._lost_outcome("it left")
        lost = self.cell.deregister(worker_id, epoch, time.time(), failure, count_unstarted=False)
        if self._deadlines is not None:
            self._deadlines.disarm(worker_id)
        log.info(
            "worker left",
            extra={
                "fields": {
                    "worker_id": worker_id,
                    "requeued": len(lost.requeued),
                    "failed": len(lost.failed),
                }
            },
        )
        return len(lost.requeued)

    def stream_broken(self, worker_id: int, epoch: int) -> None:
        """The worker's heartbeat stream ended without a Deregister: it is dead.

        Its connection was up and closed under it (the process or its host died): the tasks
        it was sent but had not yet reported started count a loss too, or a task that kills
        its worker at once would never reach the poison-task cap."""
        if not self.stopping:
            self._bury(worker_id, epoch, "heartbeat stream broke", "stream_broken", True)

    def take_cancels(self, worker_id: int) -> list[tuple[int, int]]:
        """Attempts the worker must stop (their lease ran out); sent with the next reply."""
        return self._cancels.pop(worker_id, [])

    def _grant_leases(self, beat: Beat, started: list[tuple[int, int, int]]) -> None:
        if self._leases is None:
            return
        for task_id, attempt, timeout_ms in started:
            if timeout_ms:
                lease = Lease(task_id, attempt, beat.worker_id, beat.epoch, timeout_ms / 1000)
                self._leases.grant(lease)

    def _lease_expired(self, lease: Lease) -> None:
        """Settle the attempt as timed out (retried if allowed) and tell the worker to kill it."""
        failure = self._outcomes.lease_expired(lease.timeout_s)
        done = shm.Completion(lease.task_id, lease.attempt, shm.TaskState.FAILED, failure, True)
        try:
            outcome = self._settle(lease.worker_id, lease.epoch, [done], time.time())
        except (shm.StaleEpoch, shm.WorkerNotFound):
            return  # the worker is gone; its tasks were requeued with it
        if outcome.accepted:
            self.leases_expired += 1
            log.warning(
                "task lease expired",
                extra={"fields": {"task_id": lease.task_id, "worker_id": lease.worker_id}},
            )
            self._cancels.setdefault(lease.worker_id, []).append((lease.task_id, lease.attempt))

    def _arm_retry(self, at: float) -> None:
        """One timer for the earliest retry backoff to end (no thread or sleep per task)."""
        if self._retry_timer is not None and self._retry_at <= at:
            return
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        self._retry_at = at
        delay = max(0.0, at - time.time())
        self._retry_timer = asyncio.get_running_loop().call_later(delay, self._retry_guarded)

    def _retry_due(self) -> None:
        self._retry_timer = None
        next_due = self.cell.promote_due(time.time())
        if next_due:
            self._arm_retry(next_due)

    def _arm(self, worker_id: int, epoch: int) -> None:
        if self._deadlines is not None:
            self._deadlines.arm(worker_id, epoch, self.deadline_s)

    def _expired(self, worker_id: int, epoch: int) -> None:
        """The worker's deadline passed on our clock: bury it, unless the silence may be ours.

        Silence, unlike a broken stream, may mean the worker never got what it was sent (cut
        off, or never a worker at all): its unstarted tasks go back without counting a loss."""
        delay = self._reprieve(worker_id, epoch)
        if delay > 0 and self._deadlines is not None:
            self._deadlines.arm(worker_id, epoch, delay)
            return
        self._bury(worker_id, epoch, "heartbeat deadline passed", "deadline", False)

    def _reprieve(self, worker_id: int, epoch: int) -> float:
        """Seconds more to give a worker whose deadline timer fired; 0.0 = bury it.

        If our own loop stalled, the worker's beats may be waiting unread in its socket: it
        gets one more interval from the end of the stall. And the cell's record of its last
        heartbeat is checked (a beat applied without this timer, by an earlier register)."""
        if self._stalls is not None:
            loop = asyncio.get_running_loop()
            grace = self._stalls.ended_at() + self.interval_s - loop.time()
            if grace > 0:
                self.reprieves += 1
                log.warning(
                    "deadline of a worker passed during a stall of the register; one more interval",
                    extra={"fields": {"worker_id": worker_id, "grace_s": round(grace, 3)}},
                )
                return grace
        try:
            info = self.cell.worker(worker_id)
        except shm.WorkerNotFound:
            return 0.0
        if info.epoch != epoch or info.state not in shm.LIVE_WORKER_STATES:
            return 0.0
        return min(max(0.0, info.deadline - time.time()), self.deadline_s)

    def _bury(
        self, worker_id: int, epoch: int, reason: str, label: str, count_unstarted: bool
    ) -> None:
        """Declare the worker dead for `reason` (`label`: the same, as a metric label);
        `count_unstarted`: see `shm.Cell.worker_lost`."""
        if self._deadlines is not None:
            self._deadlines.disarm(worker_id)
        try:
            info = self.cell.worker(worker_id)
        except shm.WorkerNotFound:
            return
        if info.epoch != epoch or info.state not in shm.LIVE_WORKER_STATES:
            return  # already buried, or a newer registration
        failure = self._lost_outcome(reason)
        lost = self.cell.worker_lost(worker_id, epoch, time.time(), failure, count_unstarted)
        self.worker_losses[label] += 1
        fields = {"worker_id": worker_id, "reason": reason, "requeued": len(lost.requeued)}
        log.warning("worker dead", extra={"fields": fields})
        if lost.failed:
            log.warning(
                "tasks failed after losing their worker too often",
                extra={"fields": {"task_ids": lost.failed, "losses": shm.MAX_WORKER_LOSSES + 1}},
            )

    def _count_results(
        self, completions: Sequence[shm.Completion], outcome: shm.CompleteOutcome
    ) -> None:
        """Accepted results: successes by count, failures by kind (parsed: they are rare)."""
        self.succeeded_attempts += outcome.accepted - len(outcome.failed_at)
        for i in outcome.failed_at:
            self.failed_attempts[self._outcomes.failure_kind(completions[i].result)] += 1

    def _lost_outcome(self, reason: str) -> bytes:
        """The result of a task that lost its worker once too often (see shm.MAX_WORKER_LOSSES)."""
        return self._outcomes.worker_lost(reason, shm.MAX_WORKER_LOSSES + 1)
