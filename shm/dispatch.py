"""Scheduler-side operations: dispatch (task heap x workers, by policy), requeue, take back.

Functions over a CellMemory; the caller (`shm.cell.Cell`) holds the lock.

Priorities are never inverted by prefetch (a worker holding more tasks than slots): a task is
sent beyond a worker's free slots only when nothing of lower priority is queued (the header's
MIN_QUEUED_PRIORITY, a lower bound, says so), since otherwise another worker's freed slot would
start a lower task while this one waits in a buffer. A task of higher priority that arrives
after lower ones were prefetched makes the scheduler take those back (`take_back`); it then
waits in the heap for the first slot that frees, anywhere.

A task with resource needs or labels goes only where `shm.resources.fitting` says it fits; one
that fits nowhere now is set aside for this round (tasks behind it still go: no head-of-line
blocking), and one that no live worker could ever run is parked: it stays QUEUED, off the heap,
until the set of workers changes (`unpark_all`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import numpy.typing as npt

from heapd.shm import derived, latency, resources, transitions
from heapd.shm.layout import F_PARKED, F_TRACED, NO_PRIORITY, SLOT_MASK, H, worker_key
from heapd.shm.memory import CellMemory
from heapd.shm.placement import Cursor, Placement
from heapd.shm.types import ACTIVE, Dispatch, DispatchRound, Policy, TaskState

DISPATCHED = int(TaskState.DISPATCHED)
_MIN_QUEUED = int(H.MIN_QUEUED_PRIORITY)
_LEAST_LOADED = Cursor()  # the default: least-loaded keeps no state between rounds
SCAN_FACTOR = 4  # tasks looked at per round, set aside or parked included: SCAN_FACTOR x limit


def dispatch(
    mem: CellMemory,
    limit: int,
    now: float,
    max_per_slot: int,
    min_room_per_slot: int = 0,
    cursor: Cursor | None = None,
) -> DispatchRound:
    """Pair the top tasks with ALIVE workers by the cursor's policy, up to `limit`.

    With `min_room_per_slot` > 0, nothing is dispatched unless the least-loaded worker has
    room for that many tasks per slot (and at least one); once started, workers are filled to
    `max_per_slot` tasks per slot where prefetch cannot invert priorities (see the module
    docstring). So a deep queue goes out in batches instead of one task per freed slot.
    """
    out: list[Dispatch] = []
    parked: list[tuple[int, str]] = []
    task_heap, worker_heap = mem.task_heap, mem.worker_heap
    tasks, workers, hdr = mem.tasks, mem.workers, mem.hdr
    if _too_little_room(mem, max_per_slot, min_room_per_slot):
        return DispatchRound(out, _top_key(mem), parked)
    cursor = cursor or _LEAST_LOADED
    place = Placement(mem, cursor)
    least_loaded = cursor.policy is Policy.LEAST_LOADED
    addresses: dict[int, str] = {}
    aside: list[int] = []
    aside_priority = NO_PRIORITY - 1 - (1 << 16)  # below every priority: nothing set aside yet
    budget = SCAN_FACTOR * limit
    # Hot loop (W1): memoryviews and header words read directly, one heap call per step.
    priorities, needs, nlabels = tasks.priority, tasks.needs, tasks.nlabels
    slots_of, in_flight_of = workers.slots, workers.in_flight
    while len(out) < limit and len(task_heap) and len(worker_heap) and budget > 0:
        budget -= 1
        slot, key = task_heap.top()
        priority = priorities[slot]
        deep = priority <= hdr[_MIN_QUEUED] and priority >= aside_priority
        cap = max_per_slot if deep else 1
        if not (needs[slot] or nlabels[slot]):
            if least_loaded:
                w = worker_heap.peek()
                if in_flight_of[w] >= slots_of[w] * cap:
                    break  # the least loaded is full, so is every worker: nothing behind it goes
            else:
                w = place.pick(cap)
                if w < 0:
                    break
            task_heap.pop()
            out.append(_assign(mem, slot, key, w, now, addresses))
            continue
        room = place.with_room(cap)
        if not len(room) and cap == max_per_slot:
            break  # no worker has room at all: nothing behind it can go either
        task_heap.remove(slot)
        fit = resources.fitting(mem, slot, room)
        if len(fit):
            out.append(_assign(mem, slot, key, place.choose(fit), now, addresses))
        elif not _parked_if_unschedulable(mem, slot, parked):
            aside.append(slot)  # fits somewhere, not now: back on the heap after the round
            aside_priority = max(aside_priority, int(priority))
    for slot in aside:
        transitions.queue(mem, slot)
    if not len(task_heap):  # parked tasks are off the heap: they never run ahead of anything
        hdr[_MIN_QUEUED] = NO_PRIORITY
    return DispatchRound(out, _top_key(mem), parked)


def _too_little_room(mem: CellMemory, max_per_slot: int, min_room_per_slot: int) -> bool:
    """Whether the least-loaded worker has room for fewer than `min_room_per_slot` tasks per
    slot (and at least one): then the round waits for more to free."""
    heap, workers = mem.worker_heap, mem.workers
    if not len(heap) or min_room_per_slot <= 0:
        return False
    w = heap.peek()
    room = workers.slots[w] * max_per_slot - workers.in_flight[w]
    return bool(room < max(1, workers.slots[w] * min_room_per_slot))


def _parked_if_unschedulable(mem: CellMemory, slot: int, parked: list[tuple[int, str]]) -> bool:
    """Park a task (off the heap already) that no live worker could ever run; whether it was."""
    why = resources.unschedulable_reason(mem, slot)
    if why:
        transitions.park(mem, slot)
        parked.append((int(mem.tasks.id[slot]), why))
    return bool(why)


def _top_key(mem: CellMemory) -> int:
    heap = mem.task_heap
    return heap.key_of(heap.peek()) if len(heap) else -1


def _assign(
    mem: CellMemory, slot: int, key: int, w: int, now: float, addresses: dict[int, str]
) -> Dispatch:
    """Commit the task (off the heap already, its heap key `key`) as dispatched to worker `w`."""
    tasks, workers = mem.tasks, mem.workers
    worker_id, epoch = workers.id[w], workers.epoch[w]
    attempt = tasks.attempt[slot] + 1
    tasks.attempt[slot] = attempt
    if attempt == 1:
        latency.record(mem.latency, mem.latency_sums, latency.QUEUE, now - tasks.submitted_at[slot])
    tasks.worker_id[slot] = worker_id
    tasks.worker_epoch[slot] = epoch
    tasks.dispatched_at[slot] = now
    tasks.state[slot] = DISPATCHED
    if tasks.needs[slot]:
        resources.hold(mem, slot, w)
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
        priority=tasks.priority[slot],
        key=key,
        traced=bool(tasks.flags[slot] & F_TRACED),
    )


def unpark_all(mem: CellMemory) -> int:
    """Put every parked task back on the heap (the workers changed: some may fit now)."""
    if not mem.hdr[H.PARKED]:
        return 0
    flags = mem.tasks.rec["flags"]
    count = 0
    for slot in (flags & F_PARKED).nonzero()[0].tolist():
        count += transitions.unpark(mem, slot)
    return count


def take_back(mem: CellMemory, refs: Sequence[tuple[int, int]]) -> int:
    """Requeue (task_id, attempt) pairs a worker gave back unstarted (revoked so a higher task
    can overtake them): still DISPATCHED at that attempt -> QUEUED with their original key. Not
    a failure and not a requeue after a loss: counted as REVOKED."""
    return _requeue_at_attempt(mem, refs, (DISPATCHED,), H.REVOKED)


def _requeue_at_attempt(
    mem: CellMemory, refs: Sequence[tuple[int, int]], states: Collection[int], counter: H
) -> int:
    """Requeue each (task_id, attempt) whose task is in one of `states` at that attempt."""
    tasks = mem.tasks
    count = 0
    for task_id, attempt in refs:
        try:
            slot = tasks.slot_of(task_id)
        except KeyError:
            continue
        if tasks.state[slot] in states and tasks.attempt[slot] == attempt:
            transitions.requeue_active(mem, slot, counter)
            count += 1
    return count


def still_dispatched(
    mem: CellMemory, ids: npt.NDArray[np.uint64], attempts: npt.NDArray[np.int64]
) -> npt.NDArray[np.bool_]:
    """For each (task id, attempt): whether it is DISPATCHED (sent, not started) at that
    attempt. Vectorised: the scheduler checks its recent dispatches to a worker at once."""
    slots = (ids & np.uint64(SLOT_MASK)).astype(np.int64)
    inside = slots < mem.tasks.capacity
    slots = np.where(inside, slots, 0)
    rec = mem.tasks.rec
    ok: npt.NDArray[np.bool_] = (
        inside
        & (rec["id"][slots] == ids)
        & (rec["state"][slots] == DISPATCHED)
        & (rec["attempt"][slots].astype(np.int64) == attempts)
    )
    return ok


def unstarted(mem: CellMemory, worker_id: int, epoch: int) -> list[tuple[int, int, int]]:
    """(heap key, task id, attempt) of the DISPATCHED (sent, not started) tasks of one worker
    registration, worst key first. A pass over the task table (the state column first, then
    the few DISPATCHED): the fallback when the scheduler's record of recent dispatches to that
    worker does not reach back far enough."""
    rec = mem.tasks.rec
    sent = np.flatnonzero(rec["state"] == DISPATCHED)
    mine = sent[(rec["worker_id"][sent] == worker_id) & (rec["worker_epoch"][sent] == epoch)]
    keys = derived.task_keys(mem, mine)
    order = np.argsort(-keys, kind="stable")
    ids, attempts = rec["id"][mine][order], rec["attempt"][mine][order]
    return [(int(k), int(i), int(a)) for k, i, a in zip(keys[order], ids, attempts, strict=True)]


def requeue(mem: CellMemory, refs: Sequence[tuple[int, int]]) -> int:
    """Put (task_id, attempt) pairs still running at that attempt back in the queue. Not a lost
    worker (that is `workers.worker_lost`, which counts the loss): a refused or undelivered
    dispatch, so no loss is counted."""
    return _requeue_at_attempt(mem, refs, ACTIVE, H.REQUEUED)
