"""Task state changes shared by the PLM, scheduler and register operations.

Every change writes the record's other fields first and the state byte last: the
state byte is the commit point. Whatever a kill interrupts, the tables stay a valid
truth and `shm.repair` rebuilds the derived state (heaps, free lists, in-flight
counts, arena map, ring) from them. Callers hold the cell lock.
"""

from __future__ import annotations

from heapd.shm.layout import (
    F_NOTIFY,
    F_RESULT,
    SLOT_BITS,
    WORKER_SLOT_MASK,
    H,
    task_key,
    worker_key,
)
from heapd.shm.memory import CellMemory
from heapd.shm.types import TaskState

QUEUED = int(TaskState.QUEUED)
PENDING = int(TaskState.PENDING)
FREE = int(TaskState.FREE)
_STATE_TOTAL = {
    TaskState.SUCCEEDED: H.SUCCEEDED,
    TaskState.FAILED: H.FAILED,
    TaskState.CANCELLED: H.CANCELLED,
}


def queue(mem: CellMemory, slot: int) -> None:
    """Commit a task as QUEUED and push it on the task heap with its original key."""
    tasks = mem.tasks
    tasks.state[slot] = QUEUED
    mem.task_heap.push(slot, task_key(tasks.priority[slot], tasks.id[slot] >> SLOT_BITS))


def _detach(mem: CellMemory, slot: int) -> tuple[int, int]:
    """Clear an active task's worker; returns the (worker_id, epoch) it had."""
    tasks = mem.tasks
    owner = (tasks.worker_id[slot], tasks.worker_epoch[slot])
    tasks.worker_id[slot] = 0
    tasks.worker_epoch[slot] = 0
    return owner


def requeue_active(mem: CellMemory, slot: int) -> None:
    """DISPATCHED/RUNNING -> QUEUED: same key, the worker's load drops by one."""
    worker_id, epoch = _detach(mem, slot)
    queue(mem, slot)
    unload(mem, worker_id, epoch)
    mem.bump(H.REQUEUED)


def delay_active(mem: CellMemory, slot: int, not_before: float) -> None:
    """DISPATCHED/RUNNING -> PENDING until `not_before` (a retry waiting out its backoff).

    A PENDING task is in no heap; `dispatched_at` holds its not-before time until
    `promote_due` queues it (with its original key) and the next dispatch stamps it again.
    """
    worker_id, epoch = _detach(mem, slot)
    mem.tasks.dispatched_at[slot] = not_before
    mem.tasks.state[slot] = PENDING
    unload(mem, worker_id, epoch)
    mem.bump(H.REQUEUED)


def finish(mem: CellMemory, slot: int, state: TaskState, now: float) -> None:
    """Commit a terminal state, announce it on the completion ring, free the payload.

    The caller has removed the task from the heap or the worker's load, and stored
    the result ref (with F_RESULT) if there is one.
    """
    tasks = mem.tasks
    tasks.finished_at[slot] = now
    tasks.flags[slot] |= F_NOTIFY
    tasks.state[slot] = int(state)
    mem.ring.push(tasks.id[slot])
    chunk, size = tasks.payload_chunk[slot], tasks.payload_len[slot]
    tasks.payload_len[slot] = 0  # ref cleared before the map: a kill here only leaks
    mem.arena.free(chunk, size)
    mem.bump(_STATE_TOTAL[state])


def finish_active(mem: CellMemory, slot: int, state: TaskState, now: float) -> None:
    """DISPATCHED/RUNNING -> terminal; the worker's load drops by one."""
    tasks = mem.tasks
    finish(mem, slot, state, now)
    unload(mem, tasks.worker_id[slot], tasks.worker_epoch[slot])


def unload(mem: CellMemory, worker_id: int, epoch: int) -> None:
    """One task of that worker (if it is still that registration) stopped running."""
    workers = mem.workers
    w = worker_id & WORKER_SLOT_MASK
    if w >= workers.capacity or workers.id[w] != worker_id or workers.epoch[w] != epoch:
        return
    in_flight = workers.in_flight[w]
    if in_flight > 0:
        workers.in_flight[w] = in_flight - 1
        reload(mem, w)


def reload(mem: CellMemory, w: int) -> None:
    """Refresh a worker's heap key from its record, if it is on the heap."""
    if w in mem.worker_heap:
        workers = mem.workers
        key = worker_key(workers.in_flight[w], workers.slots[w], workers.last_pick[w])
        mem.worker_heap.update(w, key)


def release(mem: CellMemory, slot: int) -> None:
    """Terminal -> FREE: commit first, then free the blobs and the slot."""
    tasks = mem.tasks
    has_result = tasks.flags[slot] & F_RESULT
    tasks.state[slot] = FREE
    tasks.flags[slot] = 0
    mem.arena.free(tasks.payload_chunk[slot], tasks.payload_len[slot])
    if has_result:
        mem.arena.free(tasks.result_chunk[slot], tasks.result_len[slot])
    tasks.payload_len[slot] = 0
    tasks.result_len[slot] = 0
    mem.task_free.push(slot)
