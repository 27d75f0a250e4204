"""Task state changes shared by the PLM, scheduler and register operations.

Every change writes the record's other fields first and the state byte last: the
state byte is the commit point. Whatever a kill interrupts, the tables stay a valid
truth and `shm.repair` rebuilds the derived state (heaps, free lists, in-flight
counts, arena map, ring) from them. Callers hold the cell lock.
"""

from __future__ import annotations

from heapd.shm import latency, resources
from heapd.shm.layout import (
    F_NOTIFY,
    F_PARKED,
    F_RESULT,
    F_WAITING,
    SLOT_BITS,
    WORKER_SLOT_MASK,
    H,
    aged_task_key,
    task_key,
    worker_key,
)
from heapd.shm.memory import CellMemory
from heapd.shm.types import TaskState

QUEUED = int(TaskState.QUEUED)
_AGING_NS = int(H.AGING_NS)  # header words as ints: an IntEnum index costs a call
_MIN_QUEUED = int(H.MIN_QUEUED_PRIORITY)
PENDING = int(TaskState.PENDING)
FREE = int(TaskState.FREE)
_STATE_TOTAL = {
    TaskState.SUCCEEDED: H.SUCCEEDED,
    TaskState.FAILED: H.FAILED,
    TaskState.CANCELLED: H.CANCELLED,
}


def key_of(mem: CellMemory, slot: int) -> int:
    """The task's heap key: (priority, submission order), or its aged key when aging is on."""
    tasks, hdr = mem.tasks, mem.hdr
    aging_ns = hdr[_AGING_NS]
    if aging_ns <= 0:
        return task_key(tasks.priority[slot], tasks.id[slot] >> SLOT_BITS)
    waited = tasks.submitted_at[slot] - hdr[H.GENERATION] / 1e9
    return aged_task_key(tasks.priority[slot], tasks.id[slot] >> SLOT_BITS, waited, aging_ns / 1e9)


def queue(mem: CellMemory, slot: int) -> None:
    """Commit a task as QUEUED and push it on the task heap with its original key."""
    mem.tasks.state[slot] = QUEUED
    _push(mem, slot)


def _push(mem: CellMemory, slot: int) -> None:
    """Put a QUEUED task on the heap with its key, lowering the header's floor of the queued
    priorities (H.MIN_QUEUED_PRIORITY: a lower bound over the heap, reset when it empties)."""
    priority = mem.tasks.priority[slot]
    if priority < mem.hdr[_MIN_QUEUED]:
        mem.hdr[_MIN_QUEUED] = priority
    mem.task_heap.push(slot, key_of(mem, slot))


def park(mem: CellMemory, slot: int) -> None:
    """A QUEUED task no live worker could run, already taken off the heap, stays QUEUED off it."""
    mem.tasks.flags[slot] |= F_PARKED
    mem.bump(H.PARKED)


def unpark(mem: CellMemory, slot: int, *, back_on_heap: bool = True) -> bool:
    """Undo `park` for one task, putting it back on the heap unless told not to (a cancel
    that is about to finish it); whether it was parked."""
    tasks = mem.tasks
    if not tasks.flags[slot] & F_PARKED:
        return False
    tasks.flags[slot] &= ~F_PARKED
    mem.bump(H.PARKED, -1)
    if back_on_heap:
        _push(mem, slot)
    return True


def _detach(mem: CellMemory, slot: int) -> tuple[int, int]:
    """Clear an active task's worker; returns the (worker_id, epoch) it had."""
    tasks = mem.tasks
    owner = (tasks.worker_id[slot], tasks.worker_epoch[slot])
    tasks.worker_id[slot] = 0
    tasks.worker_epoch[slot] = 0
    return owner


def requeue_active(mem: CellMemory, slot: int, counter: H = H.REQUEUED) -> None:
    """DISPATCHED/RUNNING -> QUEUED: same key, the worker's load drops by one."""
    worker_id, epoch = _detach(mem, slot)
    queue(mem, slot)
    unload(mem, slot, worker_id, epoch)
    mem.bump(counter)


def delay_active(mem: CellMemory, slot: int, not_before: float) -> None:
    """DISPATCHED/RUNNING -> PENDING until `not_before` (a retry waiting out its backoff).

    A PENDING task is in no heap; `dispatched_at` holds its not-before time until
    `promote_due` queues it (with its original key) and the next dispatch stamps it again.
    """
    worker_id, epoch = _detach(mem, slot)
    mem.tasks.dispatched_at[slot] = not_before
    mem.tasks.state[slot] = PENDING
    unload(mem, slot, worker_id, epoch)
    mem.bump(H.REQUEUED)


def finish(mem: CellMemory, slot: int, state: TaskState, now: float) -> None:
    """Commit a terminal state, announce it on the completion ring, free the payload.

    The caller has removed the task from the heap or the worker's load, and stored
    the result ref (with F_RESULT) if there is one.
    """
    tasks = mem.tasks
    tasks.finished_at[slot] = now
    latency.record(mem.latency, mem.latency_sums, latency.TOTAL, now - tasks.submitted_at[slot])
    tasks.flags[slot] |= F_NOTIFY
    tasks.state[slot] = int(state)
    mem.ring.push(tasks.id[slot])
    chunk, size = tasks.payload_chunk[slot], tasks.payload_len[slot]
    tasks.payload_len[slot] = 0  # ref cleared before the map: a kill here only leaks
    mem.arena.free(chunk, size)
    if tasks.deps_len[slot]:  # only a waiting task has a list (and F_WAITING)
        drop_deps(mem, slot)
    mem.bump(_STATE_TOTAL[state])


def drop_deps(mem: CellMemory, slot: int) -> None:
    """Drop a task's dependency list (it no longer waits: started, settled or cancelled)."""
    tasks = mem.tasks
    size = tasks.deps_len[slot]
    if size:
        tasks.deps_len[slot] = 0  # ref cleared before the map: a kill here only leaks
        mem.arena.free(tasks.deps_chunk[slot], size)
    tasks.flags[slot] &= ~F_WAITING


def finish_active(mem: CellMemory, slot: int, state: TaskState, now: float) -> None:
    """DISPATCHED/RUNNING -> terminal; the worker's load drops by one."""
    tasks = mem.tasks
    latency.record(mem.latency, mem.latency_sums, latency.RUN, now - tasks.dispatched_at[slot])
    finish(mem, slot, state, now)
    unload(mem, slot, tasks.worker_id[slot], tasks.worker_epoch[slot])


def unload(mem: CellMemory, slot: int, worker_id: int, epoch: int) -> None:
    """Task `slot` stopped running on that worker (if it is still that registration): one
    task less in flight there, and its resource needs are free again."""
    workers = mem.workers
    w = worker_id & WORKER_SLOT_MASK
    if w >= workers.capacity or workers.id[w] != worker_id or workers.epoch[w] != epoch:
        return
    if mem.tasks.needs[slot]:
        resources.free(mem, slot, w)
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
