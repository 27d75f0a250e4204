"""What the derived state should be, computed from the tables with numpy.

Shared by `shm.check` (compare) and `shm.repair` (overwrite), so both always agree
on what "derived" means.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from heapd.shm.layout import (
    AGE_TICKS,
    F_PARKED,
    F_RESULT,
    MAX_AGE_TICKS,
    MAX_LOAD,
    NO_PRIORITY,
    PICK_MASK,
    PRIORITY_BITS,
    SEQ_TIE_BITS,
    SLOT_BITS,
    WORKER_SLOT_MASK,
    H,
)
from heapd.shm.memory import CellMemory
from heapd.shm.types import TaskState, WorkerState

Mask = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]


def task_keys(mem: CellMemory, slots: Ints) -> Ints:
    """The task heap key of each slot, as `transitions.key_of` computes it one at a time:
    ((0x7FFF - priority) << 47) | seq, or the aged key (`layout.aged_task_key`)."""
    rec, hdr = mem.tasks.rec, mem.hdr
    priority = rec["priority"][slots].astype(np.int64)
    seq = (rec["id"][slots] >> np.uint64(SLOT_BITS)).astype(np.int64)
    aging_ns = int(hdr[H.AGING_NS])
    if aging_ns <= 0:
        keys: Ints = ((0x7FFF - priority) << PRIORITY_BITS) | seq
        return keys
    waited = rec["submitted_at"][slots] - int(hdr[H.GENERATION]) / 1e9
    ticks = np.floor(waited * AGE_TICKS / (aging_ns / 1e9))
    ticks = np.clip(ticks, 0, MAX_AGE_TICKS).astype(np.int64)
    aged: Ints = (((0x7FFF - priority) * AGE_TICKS + ticks) << SEQ_TIE_BITS) | (
        seq & ((1 << SEQ_TIE_BITS) - 1)
    )
    return aged


def task_high_water(mem: CellMemory) -> int:
    """One past the highest task slot in use (0 if none): H.TASK_HWM."""
    used = np.flatnonzero(mem.tasks.rec["state"] != TaskState.FREE)
    return int(used[-1]) + 1 if len(used) else 0


def min_queued_priority(mem: CellMemory) -> int:
    """The lowest priority on the heap (QUEUED and not parked), NO_PRIORITY when none is."""
    rec = mem.tasks.rec
    queued = rec["priority"][(rec["state"] == TaskState.QUEUED) & ((rec["flags"] & F_PARKED) == 0)]
    return int(queued.min()) if len(queued) else NO_PRIORITY


def worker_keys(mem: CellMemory, slots: Ints) -> Ints:
    """The worker heap key of each slot: load, then least recently picked."""
    rec = mem.workers.rec
    in_flight = rec["in_flight"][slots].astype(np.int64)
    capacity = np.maximum(rec["slots"][slots].astype(np.int64), 1)
    load = np.minimum((in_flight << 16) // capacity, MAX_LOAD)
    keys: Ints = (load << 32) | (rec["last_pick"][slots].astype(np.int64) & PICK_MASK)
    return keys


def active(mem: CellMemory) -> Mask:
    """Tasks DISPATCHED or RUNNING."""
    state = mem.tasks.rec["state"]
    mask: Mask = (state == TaskState.DISPATCHED) | (state == TaskState.RUNNING)
    return mask


def worker_slot_of_tasks(mem: CellMemory) -> tuple[Ints, Mask]:
    """Each task's worker slot, and whether that worker registration is live."""
    rec, wrec = mem.tasks.rec, mem.workers.rec
    w = (rec["worker_id"] & np.uint64(WORKER_SLOT_MASK)).astype(np.int64)
    inside = w < mem.workers.capacity
    w = np.where(inside, w, 0)
    wstate = wrec["state"][w]
    ok: Mask = (
        inside
        & (wrec["id"][w] == rec["worker_id"])
        & (wrec["epoch"][w] == rec["worker_epoch"])
        & ((wstate == WorkerState.ALIVE) | (wstate == WorkerState.DRAINING))
    )
    return w, ok


def in_flight(mem: CellMemory) -> Ints:
    """Per worker slot: tasks DISPATCHED/RUNNING on that live registration."""
    w, ok = worker_slot_of_tasks(mem)
    counts: Ints = np.bincount(w[active(mem) & ok], minlength=mem.workers.capacity)
    return counts.astype(np.int64)


def used_milli(mem: CellMemory) -> Ints:
    """Per worker slot and resource index: the needs (milli units) of its DISPATCHED/RUNNING
    tasks on that live registration (workers x RESOURCE_NAMES)."""
    rec, wrec = mem.tasks.rec, mem.workers.rec
    used: Ints = np.zeros(wrec["used_milli"].shape, dtype=np.int64)
    w, ok = worker_slot_of_tasks(mem)
    holding = np.flatnonzero(active(mem) & ok & (rec["needs"] > 0))
    if len(holding):
        counts = rec["needs"][holding].astype(np.int64)
        mine = np.arange(rec["need_res"].shape[1])[None, :] < counts[:, None]
        rows = np.broadcast_to(w[holding][:, None], mine.shape)[mine]
        cols = rec["need_res"][holding][mine].astype(np.int64)
        cols = np.minimum(cols, used.shape[1] - 1)  # a torn index cannot write outside
        np.add.at(used, (rows, cols), rec["need_milli"][holding][mine].astype(np.int64))
    return used


def orphans(mem: CellMemory) -> Ints:
    """Slots of tasks running on a worker that is gone, DEAD or re-registered."""
    _, ok = worker_slot_of_tasks(mem)
    slots: Ints = np.flatnonzero(active(mem) & ~ok)
    return slots


def terminal(mem: CellMemory) -> Mask:
    """Tasks SUCCEEDED, FAILED or CANCELLED."""
    mask: Mask = mem.tasks.rec["state"] >= TaskState.SUCCEEDED
    return mask


def blob_refs(mem: CellMemory) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
    """(first chunk, length) of every live blob: payloads of live tasks, results of
    terminal tasks flagged F_RESULT, dependency lists of waiting tasks."""
    rec = mem.tasks.rec
    live = rec["state"] != TaskState.FREE
    results = terminal(mem) & ((rec["flags"] & F_RESULT) != 0)
    waits = live & (rec["deps_len"] > 0)
    chunks = np.concatenate(
        [rec["payload_chunk"][live], rec["result_chunk"][results], rec["deps_chunk"][waits]]
    )
    sizes = np.concatenate(
        [rec["payload_len"][live], rec["result_len"][results], rec["deps_len"][waits]]
    )
    return chunks, sizes
