"""Scheduler-side operations: dispatch (task heap x worker heap) and requeue.

Functions over a CellMemory; the caller (`shm.cell.Cell`) holds the lock.
"""

from __future__ import annotations

from collections.abc import Sequence

from heapd.shm import transitions
from heapd.shm.layout import H, worker_key
from heapd.shm.memory import CellMemory
from heapd.shm.types import ACTIVE, Dispatch, TaskState

DISPATCHED = int(TaskState.DISPATCHED)


def dispatch(
    mem: CellMemory, limit: int, now: float, max_per_slot: int, min_room_per_slot: int = 0
) -> list[Dispatch]:
    """Pair the top tasks with the least-loaded ALIVE workers, up to `limit`.

    Nothing is dispatched unless the least-loaded worker has room for `min_room_per_slot`
    tasks per slot (and at least one); once started, workers are filled to `max_per_slot` tasks
    per slot. So a deep queue goes out in batches instead of one task per freed slot.
    """
    out: list[Dispatch] = []
    task_heap, worker_heap = mem.task_heap, mem.worker_heap
    workers = mem.workers
    addresses: dict[int, str] = {}
    if len(worker_heap):
        w = worker_heap.peek()
        room = workers.slots[w] * max_per_slot - workers.in_flight[w]
        if room < max(1, workers.slots[w] * min_room_per_slot):
            return out
    while len(out) < limit and len(task_heap) and len(worker_heap):
        w = worker_heap.peek()
        if workers.in_flight[w] >= workers.slots[w] * max_per_slot:
            break  # the least loaded is full, so every worker is
        slot = task_heap.pop()
        out.append(_assign(mem, slot, w, now, addresses))
    return out


def _assign(mem: CellMemory, slot: int, w: int, now: float, addresses: dict[int, str]) -> Dispatch:
    tasks, workers = mem.tasks, mem.workers
    worker_id, epoch = workers.id[w], workers.epoch[w]
    attempt = tasks.attempt[slot] + 1
    tasks.attempt[slot] = attempt
    tasks.worker_id[slot] = worker_id
    tasks.worker_epoch[slot] = epoch
    tasks.dispatched_at[slot] = now
    tasks.state[slot] = DISPATCHED
    in_flight = workers.in_flight[w] + 1
    workers.in_flight[w] = in_flight
    pick = mem.bump(H.PICK)
    workers.last_pick[w] = pick
    mem.worker_heap.update(w, worker_key(in_flight, workers.slots[w], pick))
    address = addresses.get(w)
    if address is None:
        address = addresses[w] = workers.address(w)
    return Dispatch(
        task_id=tasks.id[slot],
        attempt=attempt,
        worker_id=worker_id,
        worker_epoch=epoch,
        address=address,
        payload=mem.arena.read(tasks.payload_chunk[slot], tasks.payload_len[slot]),
        timeout_ms=tasks.timeout_ms[slot],
    )


def requeue(mem: CellMemory, refs: Sequence[tuple[int, int]]) -> int:
    """Put (task_id, attempt) pairs still running at that attempt back in the queue. Not a lost
    worker (that is `workers.worker_lost`, which counts the loss): a refused or undelivered
    dispatch, so no loss is counted."""
    tasks = mem.tasks
    count = 0
    for task_id, attempt in refs:
        try:
            slot = tasks.slot_of(task_id)
        except KeyError:
            continue
        if tasks.state[slot] in ACTIVE and tasks.attempt[slot] == attempt:
            transitions.requeue_active(mem, slot)
            count += 1
    return count
