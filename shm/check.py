"""The consistency check behind `Cell.check` and `heapd fsck`.

Returns readable problems, [] when consistent: header, heap order and position
indexes, heap <-> table membership and keys, free lists, in-flight counts, tasks on
dead workers, flags, arena accounting, the completion ring. Together these say that
every slot is in exactly one place: FREE slots on the free list, QUEUED ones in the
heap (once), running ones counted by one live worker, finished ones on the ring or
already taken.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from heapd.shm import catalog, derived
from heapd.shm.heap import IndexedHeap
from heapd.shm.layout import F_PARKED, F_RESULT, F_WAITING, MAGIC, SLOT_BITS, SLOT_MASK, VERSION, H
from heapd.shm.memory import CellMemory
from heapd.shm.types import TaskState, WorkerState

LIMIT = 5  # problems listed per kind; the rest are counted


def check(mem: CellMemory) -> list[str]:
    """Every inconsistency found, as readable strings."""
    problems = _header(mem)
    problems += _task_records(mem)
    problems += mem.task_heap.check() + mem.worker_heap.check()
    rec = mem.tasks.rec
    parked = (rec["flags"] & F_PARKED) != 0
    queued = rec["state"] == TaskState.QUEUED
    problems += _membership(mem.task_heap, queued & ~parked, "task", "QUEUED")
    problems += _parked(mem, parked & ~queued)
    problems += _waiting(mem)
    problems += _membership(
        mem.worker_heap, mem.workers.rec["state"] == WorkerState.ALIVE, "worker", "ALIVE"
    )
    problems += _keys(mem)
    problems += mem.task_free.check(mem.tasks.rec["state"] == TaskState.FREE)
    problems += mem.worker_free.check(mem.workers.rec["state"] == WorkerState.FREE)
    problems += _in_flight(mem)
    problems += _resources(mem)
    problems += mem.arena.check(*derived.blob_refs(mem))
    problems += mem.ring.check()
    return problems


def _waiting(mem: CellMemory) -> list[str]:
    """A task waits on dependencies only while PENDING, and then has its list."""
    rec = mem.tasks.rec
    waits = (rec["flags"] & F_WAITING) != 0
    odd = np.flatnonzero(waits & ((rec["state"] != TaskState.PENDING) | (rec["deps_len"] == 0)))
    return [
        f"task slot {int(s)}: waits on dependencies but is not PENDING with a list"
        for s in odd[:LIMIT]
    ]


def _parked(mem: CellMemory, stray: npt.NDArray[np.bool_]) -> list[str]:
    """Parking marks QUEUED tasks only; the queue's priority floor is a lower bound."""
    problems = [f"task slot {int(s)}: parked but not QUEUED" for s in np.flatnonzero(stray)[:LIMIT]]
    count = int(np.count_nonzero((mem.tasks.rec["flags"] & F_PARKED) != 0))
    if count != mem.hdr[H.PARKED]:
        problems.append(f"header: PARKED is {int(mem.hdr[H.PARKED])}, {count} tasks are parked")
    floor = int(mem.hdr[H.MIN_QUEUED_PRIORITY])
    lowest = derived.min_queued_priority(mem)
    if floor > lowest:
        problems.append(
            f"header: MIN_QUEUED_PRIORITY is {floor} but a queued task has priority {lowest}"
        )
    return problems


def _listed(items: list[str], total: int, what: str) -> list[str]:
    if total > len(items):
        items.append(f"... and {total - len(items)} more {what}")
    return items


def _header(mem: CellMemory) -> list[str]:
    hdr = mem.hdr
    problems = []
    if hdr[H.MAGIC] != MAGIC or hdr[H.VERSION] != VERSION:
        problems.append("header: magic or layout version overwritten")
    for word in (H.TASK_SEQ, H.WORKER_SEQ, H.EPOCH, H.PICK, H.ARENA_USED):
        if hdr[word] < 0:
            problems.append(f"header: {word.name} is negative ({int(hdr[word])})")
    high = derived.task_high_water(mem)
    if not high <= hdr[H.TASK_HWM] <= mem.tasks.capacity:
        problems.append(f"header: TASK_HWM {int(hdr[H.TASK_HWM])} but slot {high - 1} is in use")
    return problems


def _task_records(mem: CellMemory) -> list[str]:
    rec = mem.tasks.rec
    state = rec["state"]
    problems = []
    bad = np.flatnonzero(state > max(TaskState))
    problems += [f"task slot {int(s)}: unknown state {int(state[s])}" for s in bad[:LIMIT]]
    live = np.flatnonzero(state != TaskState.FREE)
    ids = rec["id"][live]
    wrong = live[(ids & np.uint64(SLOT_MASK)) != live.astype(np.uint64)]
    problems += [
        f"task slot {int(s)}: id {int(rec['id'][s])} names another slot" for s in wrong[:LIMIT]
    ]
    seq = ids >> np.uint64(SLOT_BITS)
    future = live[(seq == 0) | (seq > np.uint64(max(int(mem.hdr[H.TASK_SEQ]), 0)))]
    problems += [
        f"task slot {int(s)}: sequence {int(rec['id'][s]) >> SLOT_BITS} was never issued"
        for s in future[:LIMIT]
    ]
    stray = np.flatnonzero(~derived.terminal(mem) & ((rec["flags"] & F_RESULT) != 0))
    problems += [
        f"task slot {int(s)}: result flag on a task that is not finished" for s in stray[:LIMIT]
    ]
    return problems


def _membership(
    heap: IndexedHeap, should: npt.NDArray[np.bool_], kind: str, state: str
) -> list[str]:
    items, _ = heap.entries()
    inside = np.zeros(heap.capacity, dtype=np.bool_)
    inside[items[(items >= 0) & (items < heap.capacity)]] = True
    missing = np.flatnonzero(should & ~inside)
    extra = np.flatnonzero(inside & ~should)
    problems = [
        f"{kind} slot {int(s)} is {state} but not in the {heap.name}" for s in missing[:LIMIT]
    ]
    problems = _listed(problems, len(missing), f"{state} {kind}s missing from the {heap.name}")
    more = [f"{kind} slot {int(s)} is in the {heap.name} but not {state}" for s in extra[:LIMIT]]
    return problems + _listed(more, len(extra), f"{kind}s wrongly in the {heap.name}")


def _keys(mem: CellMemory) -> list[str]:
    problems = []
    for heap, expect, kind in (
        (mem.task_heap, derived.task_keys, "task"),
        (mem.worker_heap, derived.worker_keys, "worker"),
    ):
        raw, keys = heap.entries()
        items = raw.astype(np.int64)
        inside = (items >= 0) & (items < heap.capacity)
        items, keys = items[inside], keys[inside]
        wrong = np.flatnonzero(expect(mem, items) != keys)
        problems += [
            f"{heap.name}: {kind} slot {int(items[i])} has key {int(keys[i])}, "
            f"its record says {int(expect(mem, items[i : i + 1])[0])}"
            for i in wrong[:LIMIT]
        ]
    return problems


def _in_flight(mem: CellMemory) -> list[str]:
    wrec = mem.workers.rec
    expect = derived.in_flight(mem)
    wrong = np.flatnonzero(wrec["in_flight"].astype(np.int64) != expect)
    problems = [
        f"worker slot {int(w)}: in_flight is {int(wrec['in_flight'][w])}, "
        f"the task table says {int(expect[w])}"
        for w in wrong[:LIMIT]
    ]
    orphans = derived.orphans(mem)
    problems += [
        f"task {int(mem.tasks.rec['id'][s])} is running on worker "
        f"{int(mem.tasks.rec['worker_id'][s])}, which is not live at that epoch"
        for s in orphans[:LIMIT]
    ]
    return problems


def _resources(mem: CellMemory) -> list[str]:
    """Resources in use agree with the tasks that hold them; needs name known resources."""
    rec, wrec = mem.tasks.rec, mem.workers.rec
    expect = derived.used_milli(mem)
    wrong = np.argwhere(wrec["used_milli"].astype(np.int64) != expect)
    names = catalog.names(mem)
    problems = [
        f"worker slot {int(w)}: {names[i] if i < len(names) else f'resource #{i}'} in use is "
        f"{int(wrec['used_milli'][w, i])} milli, the task table says {int(expect[w, i])}"
        for w, i in wrong[:LIMIT]
    ]
    live = rec["state"] != TaskState.FREE
    counts = rec["needs"].astype(np.int64)
    mine = np.arange(rec["need_res"].shape[1])[None, :] < counts[:, None]
    unknown = np.flatnonzero(live & (mine & (rec["need_res"] >= len(names))).any(axis=1))
    problems += [
        f"task slot {int(s)}: needs a resource the cell never named" for s in unknown[:LIMIT]
    ]
    return problems
