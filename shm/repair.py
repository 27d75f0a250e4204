"""Repair: rebuild everything derived from the task and worker tables.

Run by whoever takes the lock over from a dead owner, by `Cell.repair`, and on a
fresh cell (where it builds the empty heaps and full free lists). Idempotent; a kill
during repair is repaired by the next one. Besides the derived state it finishes
what a killed `worker_lost` left half done: tasks still running on a worker that is
DEAD, gone or re-registered go back to the queue.
"""

from __future__ import annotations

import numpy as np

from heapd.shm import derived
from heapd.shm.layout import F_NOTIFY, F_RESULT, F_TRACED, F_WAITING, SLOT_BITS, WORKER_SLOT_BITS, H
from heapd.shm.memory import CellMemory
from heapd.shm.types import TaskState, WorkerState


def repair(mem: CellMemory) -> None:
    """Make the derived state agree with the tables."""
    _settle_tables(mem)
    _rebuild_counters(mem)
    mem.task_free.rebuild(mem.tasks.rec["state"] == TaskState.FREE)
    mem.hdr[H.TASK_HWM] = derived.task_high_water(mem)
    mem.worker_free.rebuild(mem.workers.rec["state"] == WorkerState.FREE)
    mem.workers.rec["in_flight"] = derived.in_flight(mem)
    mem.workers.rec["used_milli"] = np.minimum(derived.used_milli(mem), (1 << 32) - 1)
    queued = np.flatnonzero(mem.tasks.rec["state"] == TaskState.QUEUED)  # parked ones too
    mem.task_heap.rebuild(queued, derived.task_keys(mem, queued))
    mem.hdr[H.MIN_QUEUED_PRIORITY] = derived.min_queued_priority(mem)
    mem.hdr[H.PARKED] = 0
    alive = np.flatnonzero(mem.workers.rec["state"] == WorkerState.ALIVE)
    mem.worker_heap.rebuild(alive, derived.worker_keys(mem, alive))
    mem.arena.rebuild(*derived.blob_refs(mem))
    _rebuild_ring(mem)


def _settle_tables(mem: CellMemory) -> None:
    """Fix record-level leftovers of an interrupted change."""
    rec = mem.tasks.rec
    bad = rec["state"] > max(TaskState)
    rec["state"][bad] = TaskState.FAILED  # unknown state byte: settle as failed
    orphans = derived.orphans(mem)
    rec["state"][orphans] = TaskState.QUEUED
    rec["worker_id"][orphans] = 0
    rec["worker_epoch"][orphans] = 0
    mem.hdr[H.REQUEUED] += len(orphans)
    done = derived.terminal(mem)
    waits = (rec["state"] == TaskState.PENDING) & ((rec["flags"] & F_WAITING) != 0)
    rec["deps_len"][~waits] = 0  # a dependency list lives only while its task waits
    # F_RESULT / F_NOTIFY only mean something once terminal, F_WAITING only while PENDING;
    # F_PARKED is dropped: every QUEUED task goes back on the heap, the scheduler parks again.
    # F_TRACED stays with its task.
    traced = rec["flags"] & np.uint8(F_TRACED)
    rec["flags"][done] &= np.uint8(F_RESULT | F_NOTIFY | F_TRACED)
    rec["flags"][~done] = np.where(waits[~done], F_WAITING, 0).astype(np.uint8) | traced[~done]
    rec["result_len"][(rec["flags"] & F_RESULT) == 0] = 0


def _rebuild_counters(mem: CellMemory) -> None:
    """Sequence counters must stay ahead of every id in the tables."""
    hdr, rec, wrec = mem.hdr, mem.tasks.rec, mem.workers.rec
    live = rec["state"] != TaskState.FREE
    if live.any():
        top = int((rec["id"][live] >> np.uint64(SLOT_BITS)).max())
        hdr[H.TASK_SEQ] = max(int(hdr[H.TASK_SEQ]), top)
    used = wrec["state"] != WorkerState.FREE
    if used.any():
        top = int((wrec["id"][used] >> np.uint64(WORKER_SLOT_BITS)).max())
        hdr[H.WORKER_SEQ] = max(int(hdr[H.WORKER_SEQ]), top)
        hdr[H.EPOCH] = max(int(hdr[H.EPOCH]), int(wrec["epoch"][used].max()))
        hdr[H.PICK] = max(int(hdr[H.PICK]), int(wrec["last_pick"][used].max()))


def _rebuild_ring(mem: CellMemory) -> None:
    """Live entries in their order, then finished tasks missing from it by finish time."""
    ring, rec = mem.ring, mem.tasks.rec
    kept: list[int] = []
    seen: set[int] = set()
    for task_id in ring.entries().tolist():
        if task_id not in seen and ring.is_live(task_id):
            seen.add(task_id)
            kept.append(task_id)
    waiting = np.flatnonzero(derived.terminal(mem) & ((rec["flags"] & F_NOTIFY) != 0))
    waiting = waiting[np.argsort(rec["finished_at"][waiting], kind="stable")]
    kept += [int(t) for t in rec["id"][waiting] if int(t) not in seen]
    if mem.hdr[H.RING_HEAD] < 0:
        mem.hdr[H.RING_HEAD] = 0
    ring.rebuild(kept)
