"""PLM-side operations: submit, look up, cancel, take finished, release, list, stats.

Functions over a CellMemory; the caller (`shm.cell.Cell`) holds the lock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence

import numpy as np

from heapd.shm import catalog, deps, resources, transitions
from heapd.shm.arena import chunks_for
from heapd.shm.errors import ArenaFull, ShmError, TableFull, TaskNotFound
from heapd.shm.layout import F_NOTIFY, F_RESULT, F_TRACED, F_WAITING, MAX_SEQ, SLOT_BITS, H
from heapd.shm.memory import CellMemory
from heapd.shm.types import (
    ACTIVE,
    CHUNK_BYTES,
    TERMINAL,
    CancelResult,
    NewTask,
    TaskInfo,
    TaskState,
)

_U32 = (1 << 32) - 1
_HWM = int(H.TASK_HWM)  # header words as ints: an IntEnum index costs a call

# A task's needs (name, milli) and labels ("key=value"), as `validate_new` encodes them.
Constraints = tuple[list[tuple[str, int]], list[str]]
NO_CONSTRAINTS: Constraints = ([], [])


def _check_range(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in {low}..{high}, got {value!r}")


def validate_new(task: NewTask) -> Constraints:
    """ValueError naming the first bad setting of a new task; its encoded needs and labels."""
    if not isinstance(task.payload, bytes | bytearray | memoryview):
        raise ValueError(f"payload must be bytes, got {type(task.payload).__name__}")
    _check_range("priority", task.priority, -32768, 32767)
    _check_range("max_retries", task.max_retries, 0, _U32)
    _check_range("timeout_ms", task.timeout_ms, 0, _U32)
    if task.after:
        deps.validate_after(task.after)
    if not task.resources and not task.labels:
        return NO_CONSTRAINTS
    return catalog.needs(task.resources), catalog.labels(task.labels)


def submit(
    mem: CellMemory,
    tasks: Sequence[NewTask],
    now: float,
    constraints: Sequence[Constraints] | None = None,
) -> list[int]:
    """Queue a batch, all or nothing; returns the new task ids. `constraints` are the tasks'
    encoded needs and labels (from `validate_new`; None = none asks any)."""
    _preflight(mem, tasks)
    if constraints is not None:
        resources.intern_all(mem, [needs for needs, _ in constraints])
    done: list[int] = []
    try:
        for i, task in enumerate(tasks):
            asked = NO_CONSTRAINTS if constraints is None else constraints[i]
            done.append(_submit_one(mem, task, now, asked))
    except BaseException:
        _undo(mem, done)
        raise
    mem.bump(H.SUBMITTED, len(done))
    return [mem.tasks.id[slot] for slot in done]


def _preflight(mem: CellMemory, tasks: Sequence[NewTask]) -> None:
    if int(mem.hdr[H.TASK_SEQ]) + len(tasks) > MAX_SEQ:
        raise ShmError("task id space exhausted (2**40 submissions): recreate the cell")
    if len(tasks) > len(mem.task_free):
        raise TableFull("tasks", mem.tasks.capacity)
    waits = [t.after for t in tasks if t.after]
    for after in waits:
        deps.check_known(mem, after)
    chunks = sum(chunks_for(len(t.payload)) for t in tasks)
    need = (chunks + sum(chunks_for(8 * len(after)) for after in waits)) * CHUNK_BYTES
    if need > mem.arena.free_bytes:
        raise ArenaFull(need, mem.arena.free_bytes)


def _submit_one(mem: CellMemory, task: NewTask, now: float, asked: Constraints) -> int:
    slot = mem.task_free.pop()
    if slot < 0:
        raise TableFull("tasks", mem.tasks.capacity)
    if slot >= mem.hdr[_HWM]:
        mem.hdr[_HWM] = slot + 1
    try:
        chunk = mem.arena.store(task.payload)
    except BaseException:
        mem.task_free.push(slot)
        raise
    seq = mem.bump(H.TASK_SEQ)
    t = mem.tasks
    t.id[slot] = (seq << SLOT_BITS) | slot
    t.worker_id[slot] = 0
    t.submitted_at[slot] = now
    t.dispatched_at[slot] = 0.0
    t.finished_at[slot] = 0.0
    t.payload_chunk[slot] = chunk
    t.payload_len[slot] = len(task.payload)
    t.result_chunk[slot] = 0
    t.result_len[slot] = 0
    t.attempt[slot] = 0
    t.max_retries[slot] = task.max_retries
    t.timeout_ms[slot] = task.timeout_ms
    t.worker_epoch[slot] = 0
    t.priority[slot] = task.priority
    resources.write_task(mem, slot, *asked)
    t.flags[slot] = F_TRACED if task.traced else 0
    t.losses[slot] = 0
    t.deps_len[slot] = 0
    if task.after:
        deps.wait(mem, slot, deps.blob(task.after))
    else:
        transitions.queue(mem, slot)
    return slot


def _undo(mem: CellMemory, slots: list[int]) -> None:
    """Take back the tasks of a failed batch as if never submitted."""
    t = mem.tasks
    for slot in reversed(slots):
        if slot in mem.task_heap:
            mem.task_heap.remove(slot)
        t.state[slot] = transitions.FREE
        transitions.drop_deps(mem, slot)
        mem.arena.free(t.payload_chunk[slot], t.payload_len[slot])
        t.payload_len[slot] = 0
        mem.task_free.push(slot)


def read_result(mem: CellMemory, task_id: int) -> bytes | None:
    """A copy of the task's result blob, None if it has none."""
    return _result_at(mem, mem.tasks.slot_of(task_id))


def _result_at(mem: CellMemory, slot: int) -> bytes | None:
    t = mem.tasks
    if not t.flags[slot] & F_RESULT:
        return None
    return mem.arena.read(t.result_chunk[slot], t.result_len[slot])


def read_settled(
    mem: CellMemory, task_ids: Sequence[int]
) -> list[tuple[int, TaskInfo | None, bytes | None]]:
    """(id, record copy or None if unknown, result copy or None) for each task."""
    out: list[tuple[int, TaskInfo | None, bytes | None]] = []
    t = mem.tasks
    for task_id in task_ids:
        try:
            slot = t.slot_of(task_id)
        except TaskNotFound:
            out.append((task_id, None, None))
            continue
        out.append((task_id, t.info(slot), _result_at(mem, slot)))
    return out


def take_finished(mem: CellMemory, max_n: int) -> list[int]:
    """Pop up to max_n ids of tasks that became terminal, skipping stale entries."""
    out: list[int] = []
    ring, t = mem.ring, mem.tasks
    while len(out) < max_n:
        task_id = ring.pop()
        if task_id == 0:
            break
        if ring.is_live(task_id):
            slot = task_id & ((1 << SLOT_BITS) - 1)
            t.flags[slot] &= ~F_NOTIFY
            out.append(task_id)
    return out


def release(mem: CellMemory, task_ids: Sequence[int]) -> int:
    """Free slots and blobs of terminal tasks; others are ignored."""
    count = 0
    t = mem.tasks
    for task_id in task_ids:
        try:
            slot = t.slot_of(task_id)
        except KeyError:
            continue
        if t.state[slot] in TERMINAL:
            transitions.release(mem, slot)
            count += 1
    return count


def cancel(mem: CellMemory, task_id: int, now: float) -> CancelResult:
    """Make a task CANCELLED at once, wherever it is; terminal tasks are left alone."""
    t = mem.tasks
    slot = t.slot_of(task_id)
    before = t.info(slot)
    state = before.state
    if state in TERMINAL:
        return CancelResult(before=before, address="", cancelled=False)
    address = ""
    if state in ACTIVE:
        address = _worker_address(mem, before.worker_id)
        transitions.finish_active(mem, slot, TaskState.CANCELLED, now)
    else:
        if slot in mem.task_heap:
            mem.task_heap.remove(slot)
        transitions.unpark(mem, slot, back_on_heap=False)
        transitions.finish(mem, slot, TaskState.CANCELLED, now)
    return CancelResult(before=before, address=address, cancelled=True)


def _worker_address(mem: CellMemory, worker_id: int) -> str:
    try:
        return mem.workers.address(mem.workers.slot_of(worker_id))
    except ShmError:
        return ""


def list_tasks(mem: CellMemory, states: Collection[TaskState] | None, limit: int) -> list[TaskInfo]:
    """Non-FREE tasks (of the given states), ordered by task id, at most `limit`."""
    if limit <= 0:
        return []
    state = mem.tasks.rec["state"]
    mask = state != 0
    if states is not None:
        mask &= np.isin(state, [int(s) for s in states])
    slots = np.flatnonzero(mask)
    ids = mem.tasks.rec["id"][slots]
    if len(slots) > limit:
        keep = np.argpartition(ids, limit - 1)[:limit]
        slots, ids = slots[keep], ids[keep]
    infos = [mem.tasks.info(int(s)) for s in slots[np.argsort(ids)]]
    return [_with_after(mem, info) if info.state == TaskState.PENDING else info for info in infos]


def _with_after(mem: CellMemory, info: TaskInfo) -> TaskInfo:
    """A PENDING task's record with the dependencies it waits on."""
    after = deps.deps_of(mem, mem.tasks.slot_of(info.task_id))
    return dataclasses.replace(info, after=after) if after else info


def state_counts(mem: CellMemory) -> dict[TaskState, int]:
    """Live task slots per state (FREE excluded)."""
    counts = np.bincount(mem.tasks.rec["state"], minlength=len(TaskState))
    return {s: int(counts[s]) for s in TaskState if s != TaskState.FREE}


def info(mem: CellMemory, task_id: int) -> TaskInfo:
    """A copy of one task record with its needs and labels (TaskNotFound)."""
    slot = mem.tasks.slot_of(task_id)
    needs, labels = resources.task_resources(mem, slot)
    after = deps.deps_of(mem, slot)
    return dataclasses.replace(mem.tasks.info(slot), resources=needs, labels=labels, after=after)


def unschedulable_reason(mem: CellMemory, task_id: int) -> str:
    """Why no live worker could run the task while it is QUEUED; "" otherwise or if unknown."""
    try:
        slot = mem.tasks.slot_of(task_id)
    except TaskNotFound:
        return ""
    if mem.tasks.state[slot] != TaskState.QUEUED:
        return ""
    return resources.unschedulable_reason(mem, slot)


def describe(mem: CellMemory, task_id: int) -> tuple[TaskInfo, bytes | None, str]:
    """A task with its needs and labels, its result (None if none) and, while QUEUED, why no
    live worker could run it ("" if one could): what GetTask shows."""
    task = info(mem, task_id)
    slot = task_id & ((1 << SLOT_BITS) - 1)
    why = resources.unschedulable_reason(mem, slot) if task.state == TaskState.QUEUED else ""
    return task, _result_at(mem, slot), why


def seq_of(task_id: int) -> int:
    """The submission sequence number inside a task id."""
    return task_id >> SLOT_BITS


def promote_due(mem: CellMemory, now: float) -> tuple[int, float]:
    """Queue every PENDING retry whose backoff has passed (original key: it keeps its place in
    line). Returns (how many were queued, when the next one is due or 0.0)."""
    rec = mem.tasks.rec
    retrying = (rec["state"] == TaskState.PENDING) & ((rec["flags"] & F_WAITING) == 0)
    pending = np.flatnonzero(retrying)  # not the tasks waiting on dependencies
    if not len(pending):
        return 0, 0.0
    not_before = rec["dispatched_at"][pending]
    due = pending[not_before <= now]
    for slot in due:
        transitions.queue(mem, int(slot))
    later = not_before[not_before > now]
    return len(due), float(later.min()) if len(later) else 0.0
