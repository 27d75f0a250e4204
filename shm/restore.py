"""Restore: put tasks read back from the journal into an empty cell, under their own ids.

A task id is (seq << 24) | slot, so each task goes back into its own slot, and its heap key
(priority, then seq) puts it back at its original place in line. A task that had not settled
comes back QUEUED with attempt 0 (its next dispatch is a new attempt); a settled one comes back
in its terminal state with its outcome as the result blob, to be delivered again. The records
are written, then `repair` builds every index (heaps, free lists, arena map, counters) from the
tables, as it does after a crash. The caller (`shm.cell.Cell`) holds the lock.
"""

from __future__ import annotations

from collections.abc import Sequence

from heapd.shm import catalog, deps, resources
from heapd.shm import repair as repair_mod
from heapd.shm.arena import chunks_for
from heapd.shm.errors import ArenaFull, InvalidCapacity, ShmError
from heapd.shm.layout import F_RESULT, MAX_SEQ, SLOT_BITS, SLOT_MASK, H
from heapd.shm.memory import CellMemory
from heapd.shm.types import CHUNK_BYTES, TERMINAL, RestoredTask, TaskState


def newest_per_slot(tasks: Sequence[RestoredTask]) -> list[RestoredTask]:
    """One task per slot, the newest: an older one still journaled in a reused slot had been
    released (delivered or expired) before the journal recorded it."""
    newest: dict[int, RestoredTask] = {}
    for task in tasks:
        slot = task.task_id & SLOT_MASK
        kept = newest.get(slot)
        if kept is None or task.task_id > kept.task_id:
            newest[slot] = task
    return sorted(newest.values(), key=lambda t: t.task_id)


def restore(mem: CellMemory, tasks: Sequence[RestoredTask], task_seq: int) -> None:
    """Write `tasks` (one per slot) into an empty cell and rebuild its indexes; ids issued
    from now on are above `task_seq`."""
    _preflight(mem, tasks, task_seq)
    asked = [(catalog.needs(t.resources), catalog.labels(t.labels)) for t in tasks]
    resources.intern_all(mem, [needs for needs, _ in asked])
    for task, (needs, labels) in zip(tasks, asked, strict=True):
        resources.write_task(mem, task.task_id & SLOT_MASK, needs, labels)  # before the state
        _write(mem, task)
    mem.hdr[H.TASK_SEQ] = max(int(mem.hdr[H.TASK_SEQ]), task_seq)
    mem.bump(H.SUBMITTED, len(tasks))
    repair_mod.repair(mem)


def _preflight(mem: CellMemory, tasks: Sequence[RestoredTask], task_seq: int) -> None:
    if (mem.tasks.rec["state"] != TaskState.FREE).any():
        raise ShmError("a journal can only be restored into an empty cell")
    if task_seq > MAX_SEQ:
        raise ShmError(f"journal task counter {task_seq} is beyond the id space")
    capacity = mem.tasks.capacity
    need_slots = max((t.task_id & SLOT_MASK for t in tasks), default=-1) + 1
    if need_slots > capacity:
        raise InvalidCapacity(
            f"the journal holds task ids up to slot {need_slots - 1}, but this cell's task "
            f"table has {capacity} slots: start the cell with --tasks {need_slots} or more"
        )
    need = sum(chunks_for(len(_blob(t))) + chunks_for(8 * len(t.after)) for t in tasks)
    need *= CHUNK_BYTES
    if need > mem.arena.free_bytes:
        raise ArenaFull(need, mem.arena.free_bytes)


def _blob(task: RestoredTask) -> bytes:
    if task.state in TERMINAL:
        return task.outcome or b""
    return task.payload


def _write(mem: CellMemory, task: RestoredTask) -> None:
    t = mem.tasks
    slot = task.task_id & SLOT_MASK
    if task.task_id >> SLOT_BITS == 0:
        raise ShmError(f"task id {task.task_id} has no sequence number")
    t.id[slot] = task.task_id
    t.worker_id[slot] = 0
    t.worker_epoch[slot] = 0
    t.submitted_at[slot] = task.submitted_at
    t.dispatched_at[slot] = 0.0
    t.attempt[slot] = 0
    t.max_retries[slot] = task.max_retries
    t.timeout_ms[slot] = task.timeout_ms
    t.priority[slot] = task.priority
    t.losses[slot] = 0
    t.payload_chunk[slot] = t.payload_len[slot] = 0
    t.result_chunk[slot] = t.result_len[slot] = 0
    t.flags[slot] = 0
    t.deps_len[slot] = 0
    if task.state in TERMINAL:
        t.finished_at[slot] = task.finished_at
        if task.outcome is not None:
            t.result_chunk[slot] = mem.arena.store(task.outcome)
            t.result_len[slot] = len(task.outcome)
            t.flags[slot] = F_RESULT
        t.state[slot] = int(task.state)
    elif task.state == TaskState.QUEUED:
        t.finished_at[slot] = 0.0
        t.payload_chunk[slot] = mem.arena.store(task.payload)
        t.payload_len[slot] = len(task.payload)
        if task.after:  # it waits on its dependencies again; the PLM resolves it at start
            deps.wait(mem, slot, deps.blob(task.after))
            return
        t.state[slot] = int(TaskState.QUEUED)
    else:
        raise ShmError(f"task {task.task_id}: cannot restore a task as {task.state.name}")
