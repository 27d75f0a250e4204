"""Register-side operations: workers joining, beating, running, completing, leaving.

Functions over a CellMemory; the caller (`shm.cell.Cell`) holds the lock. Fencing:
a worker is named by (worker id, epoch); a stale pair raises StaleEpoch, and a
completion is accepted only for the task's current attempt on that worker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from heapd.shm import catalog, resources, transitions
from heapd.shm.errors import ArenaFull, BlobTooLarge, StaleEpoch, TableFull, WorkerNotFound
from heapd.shm.layout import (
    ADDRESS_BYTES,
    F_RESULT,
    HOSTNAME_BYTES,
    WORKER_SLOT_BITS,
    H,
    worker_key,
)
from heapd.shm.memory import CellMemory
from heapd.shm.types import (
    ACTIVE,
    MAX_WORKER_LOSSES,
    RETRY_BASE_S,
    RETRY_MAX_S,
    CompleteOutcome,
    Completion,
    LostTasks,
    TaskState,
    WorkerInfo,
    WorkerState,
)

ALIVE = int(WorkerState.ALIVE)
DEAD = int(WorkerState.DEAD)
RUNNING = int(TaskState.RUNNING)
DISPATCHED = int(TaskState.DISPATCHED)
_EPOCH_MASK = (1 << 32) - 1


def validate_offers(
    offered: Mapping[str, float] | None, labels: Mapping[str, str] | None, slots: int
) -> tuple[list[tuple[str, int]], list[str]]:
    """A worker's encoded offers (with cpus = slots unless given) and labels, or ValueError
    naming the limit (call after `validate_registration` checked `slots`)."""
    return resources.worker_offers(catalog.offers(offered), slots), catalog.labels(labels, True)


def validate_registration(address: str, slots: int, pid: int, hostname: str) -> tuple[bytes, bytes]:
    """Encoded address and hostname, or ValueError naming the bad argument."""
    if not isinstance(address, str) or not isinstance(hostname, str):
        raise ValueError("worker address and hostname must be str")
    addr, host = address.encode(), hostname.encode()
    if not addr or len(addr) > ADDRESS_BYTES:
        raise ValueError(f"worker address must be 1..{ADDRESS_BYTES} bytes of utf-8: {address!r}")
    if len(host) > HOSTNAME_BYTES:
        raise ValueError(f"hostname must be at most {HOSTNAME_BYTES} bytes of utf-8: {hostname!r}")
    if not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= 65535:
        raise ValueError(f"slots must be an int in 1..65535, got {slots!r}")
    if not isinstance(pid, int) or not 0 <= pid < 1 << 31:
        raise ValueError(f"pid must be an int in 0..2**31-1, got {pid!r}")
    return addr, host


def register(
    mem: CellMemory,
    address: bytes,
    hostname: bytes,
    slots: int,
    pid: int,
    now: float,
    deadline: float,
    offers: tuple[list[tuple[str, int]], list[str]] = ([], []),
) -> WorkerInfo:
    """A new ALIVE worker with a new id and epoch, on the worker heap; `offers` are its
    encoded resources and labels (`validate_offers`)."""
    catalog.intern(mem, (name for name, _ in offers[0]))  # refused before anything changes
    w = mem.worker_free.pop()
    if w < 0:
        w = _reclaim_dead(mem)
    workers = mem.workers
    workers.id[w] = (mem.bump(H.WORKER_SEQ) << WORKER_SLOT_BITS) | w
    workers.epoch[w] = mem.bump(H.EPOCH) & _EPOCH_MASK
    workers.registered_at[w] = now
    workers.last_heartbeat[w] = now
    workers.deadline[w] = deadline
    workers.tasks_done[w] = 0
    workers.last_pick[w] = 0
    workers.pid[w] = pid
    workers.slots[w] = slots
    workers.in_flight[w] = 0
    workers.rec["address"][w] = address
    workers.rec["hostname"][w] = hostname
    resources.write_worker(mem, w, *offers)
    workers.state[w] = ALIVE
    mem.worker_heap.push(w, worker_key(0, slots, 0))
    return info(mem, w)


def _reclaim_dead(mem: CellMemory) -> int:
    """With no FREE slot, reuse the DEAD worker slot that has been silent longest."""
    rec = mem.workers.rec
    dead = np.flatnonzero(rec["state"] == DEAD)
    if not len(dead):
        raise TableFull("workers", mem.workers.capacity)
    return int(dead[np.argmin(rec["last_heartbeat"][dead])])


def live_slot(mem: CellMemory, worker_id: int, epoch: int) -> int:
    """The slot of a worker at its current epoch and not DEAD; else raise."""
    workers = mem.workers
    w = workers.slot_of(worker_id)
    if workers.epoch[w] != epoch:
        raise StaleEpoch(worker_id, epoch, f"current epoch is {workers.epoch[w]}")
    if workers.state[w] == DEAD:
        raise StaleEpoch(worker_id, epoch, "declared dead")
    return w


def heartbeat(mem: CellMemory, worker_id: int, epoch: int, now: float, deadline: float) -> float:
    """Push the worker's deadline forward; returns its previous heartbeat (or registration)."""
    w = live_slot(mem, worker_id, epoch)
    previous = float(mem.workers.last_heartbeat[w])
    mem.workers.last_heartbeat[w] = now
    mem.workers.deadline[w] = deadline
    return previous


def drain(mem: CellMemory, worker_id: int, epoch: int) -> bool:
    """ALIVE -> DRAINING: no new tasks; the ones it runs still complete. Idempotent; True
    when this call made the change."""
    w = live_slot(mem, worker_id, epoch)
    if mem.workers.state[w] == WorkerState.DRAINING:
        return False
    if w in mem.worker_heap:
        mem.worker_heap.remove(w)
    mem.workers.state[w] = int(WorkerState.DRAINING)
    return True


def _owned_slot(mem: CellMemory, task_id: int, attempt: int, worker_id: int, epoch: int) -> int:
    """The task's slot if it runs that attempt on that worker registration, else -1."""
    tasks = mem.tasks
    try:
        slot = tasks.slot_of(task_id)
    except KeyError:
        return -1
    if (
        tasks.state[slot] in ACTIVE
        and tasks.attempt[slot] == attempt
        and tasks.worker_id[slot] == worker_id
        and tasks.worker_epoch[slot] == epoch
    ):
        return slot
    return -1


def mark_running(
    mem: CellMemory, worker_id: int, epoch: int, refs: Sequence[tuple[int, int]]
) -> list[tuple[int, int, int]]:
    """DISPATCHED -> RUNNING for that worker's current attempts; returns (task_id, attempt,
    timeout_ms) of each attempt that started (so the register can hold a lease on it)."""
    live_slot(mem, worker_id, epoch)
    started = []
    for task_id, attempt in refs:
        slot = _owned_slot(mem, task_id, attempt, worker_id, epoch)
        if slot >= 0 and mem.tasks.state[slot] == DISPATCHED:
            mem.tasks.state[slot] = RUNNING
            started.append((task_id, attempt, int(mem.tasks.timeout_ms[slot])))
    return started


def complete(
    mem: CellMemory, worker_id: int, epoch: int, completions: Sequence[Completion], now: float
) -> tuple[CompleteOutcome, bool]:
    """Settle finished attempts; returns the outcome and whether any became terminal."""
    w = live_slot(mem, worker_id, epoch)
    accepted = stale = requeued = 0
    failed_at: list[int] = []
    stale_at: list[int] = []
    retry_at = 0.0
    for i, done in enumerate(completions):
        slot = _owned_slot(mem, done.task_id, done.attempt, worker_id, epoch)
        if slot < 0:
            stale += 1
            stale_at.append(i)
            continue
        accepted += 1
        if done.state == TaskState.FAILED:
            failed_at.append(i)
        due = _settle(mem, slot, done, now)
        if due == 0.0:
            mem.workers.tasks_done[w] += 1
        else:
            requeued += 1
            retry_at = due if retry_at == 0.0 else min(retry_at, due)
    mem.bump(H.STALE, stale)
    outcome = CompleteOutcome(
        accepted=accepted,
        stale=stale,
        requeued=requeued,
        retry_at=retry_at,
        failed_at=tuple(failed_at),
        stale_at=tuple(stale_at),
    )
    return outcome, accepted > requeued


def retry_delay_s(attempt: int) -> float:
    """Exponential backoff before the retry that follows failed attempt `attempt` (1-based)."""
    return float(min(RETRY_MAX_S, RETRY_BASE_S * 2 ** max(0, attempt - 1)))


def _settle(mem: CellMemory, slot: int, done: Completion, now: float) -> float:
    """A retryable failure waits out its backoff as PENDING (returns when it is due); anything
    else stores the result and finishes (returns 0.0)."""
    tasks = mem.tasks
    failed = done.state == TaskState.FAILED
    attempt = int(tasks.attempt[slot])
    if failed and done.retryable and attempt <= tasks.max_retries[slot]:
        due = now + retry_delay_s(attempt)
        transitions.delay_active(mem, slot, due)
        return due
    _finish_with(mem, slot, TaskState.FAILED if failed else TaskState.SUCCEEDED, done.result, now)
    return 0.0


def _finish_with(mem: CellMemory, slot: int, state: TaskState, result: bytes, now: float) -> None:
    """Store the result and end the active task; a result that does not fit fails it without
    one (never lose a completion)."""
    tasks = mem.tasks
    try:
        chunk, size = mem.arena.store(result), len(result)
    except (BlobTooLarge, ArenaFull):
        chunk, size, state = 0, 0, TaskState.FAILED
    tasks.result_chunk[slot] = chunk
    tasks.result_len[slot] = size
    tasks.flags[slot] |= F_RESULT
    transitions.finish_active(mem, slot, state, now)


def worker_lost(
    mem: CellMemory,
    worker_id: int,
    epoch: int,
    now: float,
    failure: bytes,
    count_unstarted: bool = True,
) -> LostTasks:
    """DEAD, off the heap, its running tasks requeued, or failed with `failure` once their
    worker was lost more than MAX_WORKER_LOSSES times; idempotent. A DISPATCHED task (never
    reported started) counts a loss only with `count_unstarted`: a delivery that may never
    have reached the worker is not the task's fault."""
    workers = mem.workers
    try:
        w = workers.slot_of(worker_id)
    except WorkerNotFound:
        return LostTasks([], [])
    if workers.epoch[w] != epoch:
        raise StaleEpoch(worker_id, epoch, f"current epoch is {workers.epoch[w]}")
    if workers.state[w] == DEAD:
        return LostTasks([], [])
    if w in mem.worker_heap:
        mem.worker_heap.remove(w)
    lost = _take_back_all(mem, worker_id, now, failure, count_unstarted)
    workers.in_flight[w] = 0
    workers.rec["used_milli"][w] = 0
    workers.state[w] = DEAD
    return lost


def _take_back_all(
    mem: CellMemory, worker_id: int, now: float, failure: bytes, count_unstarted: bool
) -> LostTasks:
    tasks = mem.tasks
    state = tasks.rec["state"]
    mine = np.flatnonzero(
        ((state == DISPATCHED) | (state == RUNNING)) & (tasks.rec["worker_id"] == worker_id)
    )
    lost = LostTasks([], [])
    for slot in mine.tolist():
        if count_unstarted or state[slot] == RUNNING:
            losses = tasks.losses[slot] + 1
            tasks.losses[slot] = losses
            if losses > MAX_WORKER_LOSSES:
                lost.failed.append(int(tasks.id[slot]))
                _finish_with(mem, slot, TaskState.FAILED, failure, now)
                continue
        lost.requeued.append(int(tasks.id[slot]))
        transitions.requeue_active(mem, slot)
    return lost


def deregister(
    mem: CellMemory,
    worker_id: int,
    epoch: int,
    now: float,
    failure: bytes,
    count_unstarted: bool = True,
) -> LostTasks:
    """Like worker_lost, then the slot becomes FREE."""
    lost = worker_lost(mem, worker_id, epoch, now, failure, count_unstarted)
    workers = mem.workers
    try:
        w = workers.slot_of(worker_id)
    except WorkerNotFound:
        return lost
    workers.state[w] = int(WorkerState.FREE)
    mem.worker_free.push(w)
    return lost


def expired(mem: CellMemory, now: float) -> list[tuple[int, int]]:
    """(worker_id, epoch) of live workers whose deadline has passed.

    DRAINING counts as live: a draining worker that goes silent still holds tasks.
    """
    rec = mem.workers.rec
    state = rec["state"]
    live = (state == ALIVE) | (state == WorkerState.DRAINING)
    late = np.flatnonzero(live & (rec["deadline"] < now))
    return [(int(rec["id"][w]), int(rec["epoch"][w])) for w in late]


def info(mem: CellMemory, w: int) -> WorkerInfo:
    """A copy of one worker record with its offers, what is free of them, and its labels."""
    offered, free, labels = resources.worker_resources(mem, w)
    return dataclasses.replace(
        mem.workers.info(w), resources=offered, resources_free=free, labels=labels
    )


def infos(mem: CellMemory) -> list[WorkerInfo]:
    """Every non-FREE worker."""
    return [info(mem, int(w)) for w in np.flatnonzero(mem.workers.rec["state"] != 0)]
