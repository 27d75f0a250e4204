"""Cell: one process's handle on a cell's shared state.

Every mutating method takes the cell lock once and does its whole batch under it;
input is validated before the lock is taken so critical sections stay short. If the
lock was taken over from a dead owner, or an operation fails half way for a reason
other than a domain error, the derived state is repaired before the lock is given back.
"""

from __future__ import annotations

import math
import mmap
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType

import numpy as np
import numpy.typing as npt

from heapd.shm import check as check_mod
from heapd.shm import deps as deps_mod
from heapd.shm import derived, secret, segment, tasks, workers
from heapd.shm import dispatch as dispatch_mod
from heapd.shm import repair as repair_mod
from heapd.shm import resources as resources_mod
from heapd.shm import restore as restore_mod
from heapd.shm import sample as sample_mod
from heapd.shm.doorbell import Doorbell
from heapd.shm.errors import CellExists, CellNotFound, ShmError
from heapd.shm.histogram import LockTimes
from heapd.shm.layout import F_PARKED, H, Layout
from heapd.shm.lock import CellLock
from heapd.shm.memory import CellMemory
from heapd.shm.names import CellNames
from heapd.shm.placement import Cursor
from heapd.shm.sample import CellSample
from heapd.shm.trace import Hop, Stamp, Writer
from heapd.shm.types import (
    CancelResult,
    Capacities,
    CellStats,
    CompleteOutcome,
    Completion,
    DependencyState,
    Dispatch,
    DispatchRound,
    LostTasks,
    NewTask,
    Policy,
    RestoredTask,
    TaskInfo,
    TaskState,
    WorkerInfo,
    WorkerState,
)

_OPEN_ATTEMPTS = 5
UNSCHEDULABLE_EXAMPLES = 5  # unschedulable tasks named by `stats`
DEFAULT_CAPACITIES = Capacities()


class Cell:
    """Handle on one cell: tables, heaps, arena, lock and doorbells in shared memory."""

    def __init__(self, seg: segment.Segment, mem: CellMemory) -> None:
        self._seg = seg
        self._mem: CellMemory | None = mem
        self.name = seg.names.cell
        self.capacities = seg.capacities
        self.generation = int(mem.hdr[H.GENERATION])
        self._key = secret.read_key(seg.mm)
        self.lock_times = LockTimes()  # this process's waits and holds, for its metrics
        self._lock = CellLock(seg.lock, seg.repair, mem.hdr, self.lock_times)
        self.scheduler_bell = Doorbell(seg.scheduler_bell, seg.names.scheduler_bell)
        self.plm_bell = Doorbell(seg.plm_bell, seg.names.plm_bell)
        seg.scheduler_bell = seg.plm_bell = -1  # the doorbells own their descriptors now

    # ---- lifecycle

    @classmethod
    def create(cls, name: str, capacities: Capacities = DEFAULT_CAPACITIES) -> Cell:
        """Create a new cell (CellExists if it exists); nothing is left if this fails."""
        names = CellNames(name)
        made: list[CellMemory] = []

        def init(mm: mmap.mmap, layout: Layout) -> None:
            segment.write_header(mm, layout, capacities)
            made.append(CellMemory(mm, layout))
            repair_mod.repair(made[0])  # empty heaps, full free lists
            segment.commit_header(mm)

        try:
            seg = segment.create(names, capacities, init)
        except BaseException:
            for mem in made:
                mem.release()
            raise
        return cls(seg, made[0])

    @classmethod
    def attach(cls, name: str) -> Cell:
        """Attach to an existing cell (CellNotFound / LayoutMismatch)."""
        seg = segment.attach(CellNames(name))
        return cls(seg, CellMemory(seg.mm, seg.layout))

    @classmethod
    def open(cls, name: str, capacities: Capacities = DEFAULT_CAPACITIES) -> Cell:
        """Attach if the cell exists, else create it; safe when several race."""
        for _ in range(_OPEN_ATTEMPTS):
            try:
                return cls.attach(name)
            except CellNotFound:
                pass
            try:
                return cls.create(name, capacities)
            except CellExists:
                continue
        return cls.attach(name)

    @staticmethod
    def unlink(name: str) -> list[str]:
        """Remove the cell's segment and semaphores (missing ones ignored); names removed."""
        return segment.unlink(CellNames(name))

    @staticmethod
    def exists(name: str) -> bool:
        """Whether the cell's segment exists."""
        return segment.exists(CellNames(name))

    def close(self) -> None:
        """Unmap and close this handle; idempotent. The cell itself stays."""
        if self._mem is None:
            return
        self._mem.release()
        self._mem = None
        self.scheduler_bell.close()
        self.plm_bell.close()
        self._seg.close()

    def __enter__(self) -> Cell:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Cell({self.name!r}, generation={self.generation})"

    # ---- locking

    @property
    def _m(self) -> CellMemory:
        if self._mem is None:
            raise ShmError(f"cell {self.name!r}: handle is closed")
        return self._mem

    @contextmanager
    def _locked(self) -> Iterator[CellMemory]:
        """Hold the cell lock; repair first after a takeover, and after a crash inside."""
        mem = self._m
        times = self.lock_times
        asked = time.perf_counter()
        took_over = self._lock.acquire()
        held = time.perf_counter()
        try:
            if took_over:
                repair_mod.repair(mem)
            yield mem
        except ShmError:
            raise  # domain errors are raised before anything changes, or after an undo
        except BaseException:
            repair_mod.repair(mem)
            raise
        finally:
            self._lock.release()
            times.hold.observe(time.perf_counter() - held)
            times.wait.observe(held - asked)

    # ---- PLM side

    def submit(self, tasks_: Sequence[NewTask], now: float) -> list[int]:
        """Queue tasks all-or-nothing; returns their ids and rings the scheduler."""
        asked = []
        for task in tasks_:
            asked.append(tasks.validate_new(task))
            self._m.arena.check_size(len(task.payload))
        if not tasks_:
            return []
        constrained = any(needs or labels for needs, labels in asked)
        with self._locked() as mem:
            ids = tasks.submit(mem, tasks_, now, asked if constrained else None)
        self.scheduler_bell.ring()
        return ids

    def restore(self, tasks_: Sequence[RestoredTask], task_seq: int) -> int:
        """Rebuild an empty cell from journaled tasks (see `shm.restore`); returns how many
        were restored and rings the scheduler."""
        kept = restore_mod.newest_per_slot(tasks_)
        with self._locked() as mem:
            restore_mod.restore(mem, kept, task_seq)
        self.scheduler_bell.ring()
        return len(kept)

    def waiting(self) -> list[tuple[int, tuple[int, ...]]]:
        """(task id, dependency ids) of every task waiting on dependencies (see shm.deps)."""
        with self._locked() as mem:
            return deps_mod.waiting(mem)

    def dependency_states(self, task_ids: Sequence[int]) -> dict[int, list[DependencyState]]:
        """For each of `task_ids` still waiting: its dependencies' states and results."""
        with self._locked() as mem:
            return deps_mod.states(mem, task_ids)

    def start_waiting(
        self, items: Sequence[tuple[int, bytes]]
    ) -> tuple[dict[int, bytes], list[int]]:
        """Queue waiting tasks with these suffixes appended to their payloads; returns ({queued:
        its new payload}, too big to fit: still waiting). Rings the scheduler."""
        if not items:
            return {}, []
        with self._locked() as mem:
            queued, too_big = deps_mod.start(mem, items)
        if queued:
            self.scheduler_bell.ring()
        return queued, too_big

    def fail_waiting(self, items: Sequence[tuple[int, bytes]], now: float) -> list[int]:
        """Settle waiting tasks FAILED with these outcomes; rings the PLM."""
        if not items:
            return []
        with self._locked() as mem:
            failed = deps_mod.fail(mem, items, now)
        if failed:
            self.plm_bell.ring()
        return failed

    def get(self, task_id: int) -> TaskInfo:
        """A copy of one task with its needs and labels (TaskNotFound)."""
        with self._locked() as mem:
            return tasks.info(mem, task_id)

    def describe(self, task_id: int) -> tuple[TaskInfo, bytes | None, str]:
        """A task with its needs and labels, its result (None if none) and why no live worker
        could run it ("" unless QUEUED and unschedulable), under one lock (TaskNotFound)."""
        with self._locked() as mem:
            return tasks.describe(mem, task_id)

    def unschedulable_reason(self, task_id: int) -> str:
        """Why no live worker could run this QUEUED task; "" if one could or it is not QUEUED."""
        return self.describe(task_id)[2]

    def unschedulable_reasons(self, task_ids: Sequence[int]) -> list[str]:
        """`unschedulable_reason` of each task under one lock ("" for unknown ones)."""
        if not task_ids:
            return []
        with self._locked() as mem:
            return [tasks.unschedulable_reason(mem, task_id) for task_id in task_ids]

    def read_result(self, task_id: int) -> bytes | None:
        """A copy of the task's result, None if it has none (TaskNotFound)."""
        with self._locked() as mem:
            return tasks.read_result(mem, task_id)

    def read_settled(
        self, task_ids: Sequence[int]
    ) -> list[tuple[int, TaskInfo | None, bytes | None]]:
        """For each id: (id, a copy of the task or None if unknown, its result or None), all
        under one lock: the PLM delivers a batch of results with one acquisition."""
        with self._locked() as mem:
            return tasks.read_settled(mem, task_ids)

    def take_finished(self, max_n: int) -> list[int]:
        """Ids of tasks that became terminal since last taken, oldest first."""
        with self._locked() as mem:
            return tasks.take_finished(mem, max_n)

    def release(self, task_ids: Sequence[int]) -> int:
        """Free the slots and blobs of terminal tasks; returns how many."""
        with self._locked() as mem:
            return tasks.release(mem, task_ids)

    def cancel(self, task_id: int, now: float) -> CancelResult:
        """Cancel a task at once unless terminal; rings the PLM (and scheduler if it ran)."""
        with self._locked() as mem:
            result = tasks.cancel(mem, task_id, now)
        if result.cancelled:
            self.plm_bell.ring()
            if result.address:
                self.scheduler_bell.ring()
        return result

    def list_tasks(
        self, states: Collection[TaskState] | None = None, limit: int = 100
    ) -> list[TaskInfo]:
        """Tasks (of these states), ordered by id, at most `limit`."""
        with self._locked() as mem:
            return tasks.list_tasks(mem, states, limit)

    def stats(self, unschedulable_examples: int = UNSCHEDULABLE_EXAMPLES) -> CellStats:
        """Counters, per-state counts, workers and unschedulable tasks, read under the lock."""
        with self._locked() as mem:
            hdr = mem.hdr
            stuck, examples = resources_mod.unschedulable(mem, unschedulable_examples)
            return CellStats(
                cell=self.name,
                capacities=self.capacities,
                counts=tasks.state_counts(mem),
                queued=len(mem.task_heap),
                workers=workers.infos(mem),
                submitted_total=int(hdr[H.SUBMITTED]),
                succeeded_total=int(hdr[H.SUCCEEDED]),
                failed_total=int(hdr[H.FAILED]),
                cancelled_total=int(hdr[H.CANCELLED]),
                requeued_total=int(hdr[H.REQUEUED]),
                stale_total=int(hdr[H.STALE]),
                arena_used_bytes=mem.arena.used_bytes,
                revoked_total=int(hdr[H.REVOKED]),
                parked=int(hdr[H.PARKED]),
                policy=Policy(int(hdr[H.POLICY])),
                aging_s=int(hdr[H.AGING_NS]) / 1e9,
                unschedulable=stuck,
                unschedulable_examples=examples,
            )

    def sample(self) -> CellSample:
        """A lock-free snapshot for monitoring (`shm.sample`): never waits on the lock."""
        return sample_mod.sample(self._m)

    def trace(self, writer: Writer, hop: Hop, task_ids: Iterable[int], ns: int = 0) -> None:
        """Record `hop` of these traced tasks at `ns` (now if 0) in `writer`'s ring: no lock,
        each role writes only its own (`shm.trace`)."""
        self._m.trace.record(writer, hop, task_ids, ns)

    def trace_stamps(self) -> list[Stamp]:
        """Every per-hop stamp the trace rings hold (`shm.trace`)."""
        return self._m.trace.read()

    def task_seq(self) -> int:
        """The highest task sequence number issued so far (ids are (seq << 24) | slot)."""
        return int(self._m.hdr[H.TASK_SEQ])

    def queue_depth(self) -> int:
        """Task heap size: one word read without the lock."""
        return int(self._m.hdr[H.TASK_HEAP_SIZE])

    def settled_total(self) -> int:
        """Attempts that ended (tasks settled plus attempts requeued): header words read
        without the lock, for rate estimates."""
        hdr = self._m.hdr
        return int(hdr[H.SUCCEEDED] + hdr[H.FAILED] + hdr[H.CANCELLED] + hdr[H.REQUEUED])

    def alive_slots(self) -> int:
        """Slots of ALIVE workers, summed by numpy without the lock (a heuristic's input: a
        torn read only skews one round's prefetch)."""
        rec = self._m.workers.rec
        return int(rec["slots"][rec["state"] == WorkerState.ALIVE].sum())

    def loads(self) -> tuple[int, dict[tuple[int, int], int]]:
        """(free slots summed over ALIVE workers, {(worker id, epoch): tasks held beyond its
        slots} for those holding more), read by numpy without the lock: a heuristic's input,
        a torn read only delays or wastes one revocation."""
        rec = self._m.workers.rec
        alive = np.flatnonzero(rec["state"] == WorkerState.ALIVE)
        slots = rec["slots"][alive].astype(np.int64)
        held = rec["in_flight"][alive].astype(np.int64)
        free = int(np.maximum(slots - held, 0).sum())
        over = np.flatnonzero(held > slots)
        owners = {
            (int(rec["id"][alive[i]]), int(rec["epoch"][alive[i]])): int(held[i] - slots[i])
            for i in over
        }
        return free, owners

    # ---- scheduler side

    def dispatch(
        self,
        limit: int,
        now: float,
        max_per_slot: int = 1,
        min_room_per_slot: int = 0,
        cursor: Cursor | None = None,
    ) -> list[Dispatch]:
        """`dispatch_round`, for callers that want the dispatches only."""
        return self.dispatch_round(limit, now, max_per_slot, min_room_per_slot, cursor).dispatches

    def dispatch_round(
        self,
        limit: int,
        now: float,
        max_per_slot: int = 1,
        min_room_per_slot: int = 0,
        cursor: Cursor | None = None,
    ) -> DispatchRound:
        """Pop up to `limit` tasks onto ALIVE workers by the cursor's policy (least-loaded by
        default; see shm.dispatch); also says which tasks it parked and the best key left."""
        if limit <= 0:
            return DispatchRound([], -1, [])
        with self._locked() as mem:
            return dispatch_mod.dispatch(mem, limit, now, max_per_slot, min_room_per_slot, cursor)

    def take_back(self, refs: Sequence[tuple[int, int]]) -> int:
        """Requeue (task_id, attempt) pairs a worker gave back unstarted (see
        shm.dispatch.take_back); rings the scheduler."""
        with self._locked() as mem:
            count = dispatch_mod.take_back(mem, refs)
        if count:
            self.scheduler_bell.ring()
        return count

    def still_dispatched(
        self, ids: npt.NDArray[np.uint64], attempts: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.bool_]:
        """Whether each (task id, attempt) is sent but not started; read without the lock, as
        `unstarted`."""
        return dispatch_mod.still_dispatched(self._m, ids, attempts)

    def unstarted(self, worker_id: int, epoch: int) -> list[tuple[int, int, int]]:
        """(heap key, task id, attempt) of that worker registration's tasks sent but not
        started, worst key first (see shm.dispatch.unstarted). Read without the lock (a pass
        over the whole table must not stall the cell): a revocation is fenced by attempt, so a
        torn read at worst asks for a task the worker no longer holds."""
        return dispatch_mod.unstarted(self._m, worker_id, epoch)

    def worker_seq(self) -> int:
        """Registrations so far (one word, no lock): changes when a worker joins."""
        return int(self._m.hdr[H.WORKER_SEQ])

    def configure_scheduling(self, policy: Policy, aging_s: float) -> None:
        """Record the scheduler's policy and aging period (0 = off) in the header; a changed
        aging period re-keys the whole task heap once."""
        if not (aging_s >= 0.0 and math.isfinite(aging_s)):
            raise ValueError(f"aging_s must be a finite number >= 0, got {aging_s!r}")
        aging_ns = round(aging_s * 1e9)
        with self._locked() as mem:
            mem.hdr[H.POLICY] = int(policy)
            if mem.hdr[H.AGING_NS] != aging_ns:
                mem.hdr[H.AGING_NS] = aging_ns
                rec = mem.tasks.rec
                heaped = (rec["state"] == TaskState.QUEUED) & ((rec["flags"] & F_PARKED) == 0)
                queued = np.flatnonzero(heaped)
                mem.task_heap.rebuild(queued, derived.task_keys(mem, queued))

    def requeue(self, refs: Sequence[tuple[int, int]], now: float) -> int:
        """Requeue (task_id, attempt) pairs still running at that attempt (no loss counted)."""
        with self._locked() as mem:
            count = dispatch_mod.requeue(mem, refs)
        if count:
            self.scheduler_bell.ring()
        return count

    # ---- register side

    def register_worker(
        self,
        address: str,
        slots: int,
        pid: int,
        hostname: str,
        now: float,
        deadline: float,
        resources: Mapping[str, float] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> WorkerInfo:
        """A new ALIVE worker (new id and epoch) offering `resources` (cpus = slots unless
        given) and carrying `labels`; tasks parked as unschedulable go back on the heap (it may
        fit them); rings the scheduler. TableFull, ResourceNamesFull, ValueError."""
        addr, host = workers.validate_registration(address, slots, pid, hostname)
        offers = workers.validate_offers(resources, labels, slots)
        with self._locked() as mem:
            info = workers.register(mem, addr, host, slots, pid, now, deadline, offers)
            dispatch_mod.unpark_all(mem)
        self.scheduler_bell.ring()
        return info

    def registration_secret(self, worker_id: int, epoch: int) -> bytes:
        """The secret proving registration (worker_id, epoch): see `shm.secret`."""
        return secret.registration_secret(self._key, worker_id, epoch)

    def proves_registration(self, worker_id: int, epoch: int, token: bytes) -> bool:
        """Whether `token` is the secret of registration (worker_id, epoch)."""
        return secret.proves(self._key, worker_id, epoch, token)

    def heartbeat(self, worker_id: int, epoch: int, now: float, deadline: float) -> float:
        """Push the worker's deadline forward (WorkerNotFound / StaleEpoch); returns the
        time of its previous heartbeat (of its registration, for the first)."""
        with self._locked() as mem:
            return workers.heartbeat(mem, worker_id, epoch, now, deadline)

    def mark_running(
        self, worker_id: int, epoch: int, refs: Sequence[tuple[int, int]], now: float
    ) -> list[tuple[int, int, int]]:
        """DISPATCHED -> RUNNING for these (task_id, attempt) of that worker; returns
        (task_id, attempt, timeout_ms) of those that started."""
        with self._locked() as mem:
            return workers.mark_running(mem, worker_id, epoch, refs)

    def complete(
        self, worker_id: int, epoch: int, completions: Sequence[Completion], now: float
    ) -> CompleteOutcome:
        """Settle finished attempts (fenced by worker, epoch and attempt)."""
        for done in completions:
            if done.state not in (TaskState.SUCCEEDED, TaskState.FAILED):
                raise ValueError(f"completion of task {done.task_id}: state {done.state!r}")
        with self._locked() as mem:
            outcome, finished = workers.complete(mem, worker_id, epoch, completions, now)
            queued = len(mem.task_heap)
        # The result's path first: a client may be waiting on it. Freed slots matter to the
        # scheduler only while tasks wait in the heap (a later submit rings it itself); a
        # needless wake costs a core on a small host exactly when the result is on its way.
        if finished:
            self.plm_bell.ring()
        if outcome.accepted and queued:
            self.scheduler_bell.ring()
        return outcome

    def promote_due(self, now: float) -> float:
        """Queue retries whose backoff has passed (rings the scheduler if any); returns when the
        next one is due, 0.0 if none waits."""
        with self._locked() as mem:
            queued, next_due = tasks.promote_due(mem, now)
        if queued:
            self.scheduler_bell.ring()
        return next_due

    def worker_lost(
        self,
        worker_id: int,
        epoch: int,
        now: float,
        failure: bytes,
        count_unstarted: bool = True,
    ) -> LostTasks:
        """Declare a worker DEAD and requeue its tasks; a task that has now lost its worker
        more than MAX_WORKER_LOSSES times ends FAILED with `failure` as its result. Its
        DISPATCHED (not started) tasks count a loss only with `count_unstarted`. Idempotent."""
        with self._locked() as mem:
            lost = workers.worker_lost(mem, worker_id, epoch, now, failure, count_unstarted)
        self._announce(lost)
        return lost

    def deregister(
        self,
        worker_id: int,
        epoch: int,
        now: float,
        failure: bytes,
        count_unstarted: bool = True,
    ) -> LostTasks:
        """Like worker_lost, then free the worker's slot."""
        with self._locked() as mem:
            lost = workers.deregister(mem, worker_id, epoch, now, failure, count_unstarted)
        self._announce(lost)
        return lost

    def _announce(self, lost: LostTasks) -> None:
        if lost.failed:
            self.plm_bell.ring()
        if lost.requeued:
            self.scheduler_bell.ring()

    def drain_worker(self, worker_id: int, epoch: int) -> bool:
        """ALIVE -> DRAINING: off the worker heap; its running tasks still complete."""
        with self._locked() as mem:
            return workers.drain(mem, worker_id, epoch)

    def expired_workers(self, now: float) -> list[tuple[int, int]]:
        """(worker_id, epoch) of ALIVE (and DRAINING) workers whose deadline < now."""
        with self._locked() as mem:
            return workers.expired(mem, now)

    def workers(self) -> list[WorkerInfo]:
        """Every non-FREE worker."""
        with self._locked() as mem:
            return workers.infos(mem)

    def worker(self, worker_id: int) -> WorkerInfo:
        """One worker (WorkerNotFound)."""
        with self._locked() as mem:
            return workers.info(mem, mem.workers.slot_of(worker_id))

    # ---- consistency

    def check(self) -> list[str]:
        """Readable problems; [] = consistent."""
        with self._locked() as mem:
            return check_mod.check(mem)

    def repair(self) -> None:
        """Rebuild everything derived from the tables."""
        with self._locked() as mem:
            repair_mod.repair(mem)

    @property
    def repairs(self) -> int:
        """How many dead-owner takeovers this cell has seen."""
        return int(self._m.hdr[H.REPAIRS])
