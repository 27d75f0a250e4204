"""A lock-free snapshot of a cell for monitoring: counters, per-state counts, queue depth by
priority, workers, latency histograms and occupancy.

Read by numpy straight from the segment without taking the cell lock, so a profiler sampling
every 0.5 s or a Prometheus scrape never delays the roles. A read can be torn (a batch half
applied); monitoring tolerates that, nothing decides on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from heapd.shm import latency
from heapd.shm.latency import Latency
from heapd.shm.layout import H
from heapd.shm.memory import CellMemory
from heapd.shm.types import TaskState, WorkerState

PRIORITY_OFFSET = 1 << 15  # int16 priorities shifted to bincount indexes

# Header counters reported by name (all monotonic, except over a recreated cell).
COUNTERS: dict[str, H] = {
    "submitted": H.SUBMITTED,
    "succeeded": H.SUCCEEDED,
    "failed": H.FAILED,
    "cancelled": H.CANCELLED,
    "requeued": H.REQUEUED,
    "stale": H.STALE,
    "revoked": H.REVOKED,
    "repairs": H.REPAIRS,
    "lock_acquisitions": H.LOCK_COUNT,
}


@dataclass(frozen=True, slots=True)
class WorkerSample:
    """One registered worker, as its record reads now."""

    worker_id: int
    epoch: int
    state: WorkerState
    address: str
    slots: int
    in_flight: int
    tasks_done: int
    last_heartbeat: float


@dataclass(frozen=True, slots=True)
class CellSample:
    """What a cell's segment says at `at` (unix seconds)."""

    at: float
    counters: dict[str, int]
    states: dict[TaskState, int]  # live task slots per state (FREE excluded)
    queued: int  # on the task heap (parked tasks are QUEUED but off it)
    parked: int
    queued_by_priority: dict[int, int]  # tasks on the heap per priority
    workers: list[WorkerSample]
    latency: dict[Latency, tuple[npt.NDArray[np.int64], float]]  # bucket counts, sum (s)
    task_capacity: int
    worker_capacity: int
    arena_bytes: int
    arena_used_bytes: int

    @property
    def running(self) -> int:
        """Tasks dispatched to or running on a worker."""
        return self.states.get(TaskState.DISPATCHED, 0) + self.states.get(TaskState.RUNNING, 0)

    @property
    def alive(self) -> list[WorkerSample]:
        """The ALIVE workers: the ones that take new tasks (a DRAINING one does not)."""
        return [w for w in self.workers if w.state == WorkerState.ALIVE]

    @property
    def slots(self) -> int:
        """Task slots of the ALIVE workers."""
        return sum(w.slots for w in self.alive)

    @property
    def slots_free(self) -> int:
        """Of those, slots not holding a task."""
        return sum(max(w.slots - w.in_flight, 0) for w in self.alive)

    @property
    def tasks_used(self) -> int:
        """Task slots in use (any state but FREE)."""
        return sum(self.states.values())


def sample(mem: CellMemory) -> CellSample:
    """Read the snapshot (no lock)."""
    hdr = mem.hdr
    now = time.time()
    used = mem.tasks.rec[: min(int(hdr[H.TASK_HWM]), mem.tasks.capacity)]
    counts = np.bincount(used["state"], minlength=len(TaskState))
    # Priorities of what is on the heap: its items are a dense array of task slots.
    on_heap = mem.tasks.rec["priority"][mem.task_heap.items()].astype(np.int64)
    per_prio = np.bincount(on_heap + PRIORITY_OFFSET, minlength=1) if len(on_heap) else on_heap
    prios = np.flatnonzero(per_prio)
    return CellSample(
        at=now,
        counters={name: int(hdr[word]) for name, word in COUNTERS.items()},
        states={s: int(counts[s]) for s in TaskState if s != TaskState.FREE},
        queued=int(hdr[H.TASK_HEAP_SIZE]),
        parked=int(hdr[H.PARKED]),
        queued_by_priority={int(p) - PRIORITY_OFFSET: int(per_prio[p]) for p in prios},
        workers=_workers(mem),
        latency={
            which: latency.read(mem.latency_np, mem.latency_sums_np, which) for which in Latency
        },
        task_capacity=mem.tasks.capacity,
        worker_capacity=mem.workers.capacity,
        arena_bytes=int(hdr[H.ARENA_BYTES]),
        arena_used_bytes=int(hdr[H.ARENA_USED]) * int(hdr[H.CHUNK]),
    )


def _workers(mem: CellMemory) -> list[WorkerSample]:
    rec = mem.workers.rec
    out = []
    for w in np.flatnonzero(rec["state"] != WorkerState.FREE):
        state = int(rec["state"][w])
        if state == WorkerState.FREE:
            continue  # freed between the two reads
        out.append(
            WorkerSample(
                worker_id=int(rec["id"][w]),
                epoch=int(rec["epoch"][w]),
                state=WorkerState(state),
                address=bytes(rec["address"][w]).decode(errors="replace"),
                slots=int(rec["slots"][w]),
                in_flight=int(rec["in_flight"][w]),
                tasks_done=int(rec["tasks_done"][w]),
                last_heartbeat=float(rec["last_heartbeat"][w]),
            )
        )
    return out


SETTLED = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class Interval:
    """What happened between two samples of one cell: rates per second and the end-to-end
    latency (submitted -> terminal) percentiles of the tasks that settled in between (NaN if
    none did)."""

    seconds: float
    submitted_per_s: float
    settled_per_s: dict[str, float]  # succeeded / failed / cancelled
    requeued_per_s: float
    settled: int  # tasks that settled in between
    p50_s: float
    p99_s: float


def between(before: CellSample, after: CellSample) -> Interval:
    """The rates and latency percentiles from `before` to `after` (a counter that went back,
    a recreated cell, counts as zero)."""
    seconds = max(after.at - before.at, 1e-9)

    def rate(name: str) -> float:
        return max(after.counters[name] - before.counters[name], 0) / seconds

    counts = after.latency[Latency.TOTAL][0] - before.latency[Latency.TOTAL][0]
    counts = np.maximum(counts, 0)
    return Interval(
        seconds=seconds,
        submitted_per_s=rate("submitted"),
        settled_per_s={name: rate(name) for name in SETTLED},
        requeued_per_s=rate("requeued"),
        settled=int(counts.sum()),
        p50_s=latency.quantile(counts, 0.5),
        p99_s=latency.quantile(counts, 0.99),
    )
