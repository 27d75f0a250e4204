"""What the derived state should be, computed from the tables with numpy.

Shared by `shm.check` (compare) and `shm.repair` (overwrite), so both always agree
on what "derived" means.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from heapd.shm.layout import (
    F_RESULT,
    MAX_LOAD,
    PICK_MASK,
    PRIORITY_BITS,
    SLOT_BITS,
    WORKER_SLOT_MASK,
)
from heapd.shm.memory import CellMemory
from heapd.shm.types import TaskState, WorkerState

Mask = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]


def task_keys(mem: CellMemory, slots: Ints) -> Ints:
    """The task heap key of each slot: ((0x7FFF - priority) << 47) | seq."""
    rec = mem.tasks.rec
    priority = rec["priority"][slots].astype(np.int64)
    seq = (rec["id"][slots] >> np.uint64(SLOT_BITS)).astype(np.int64)
    keys: Ints = ((0x7FFF - priority) << PRIORITY_BITS) | seq
    return keys


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
    terminal tasks flagged F_RESULT."""
    rec = mem.tasks.rec
    live = rec["state"] != TaskState.FREE
    results = terminal(mem) & ((rec["flags"] & F_RESULT) != 0)
    chunks = np.concatenate([rec["payload_chunk"][live], rec["result_chunk"][results]])
    sizes = np.concatenate([rec["payload_len"][live], rec["result_len"][results]])
    return chunks, sizes
