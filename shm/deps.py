"""Dependencies: tasks that wait, PENDING, until the tasks they depend on have succeeded.

A waiting task is PENDING with F_WAITING, in no heap (a retry waiting out its backoff is PENDING
without it); its dependency ids are an arena blob (`deps_chunk`/`deps_len`, little-endian u8
each). What becomes of it is the PLM's decision, since it builds the messages involved: `states`
reads its dependencies; `start` appends the inputs the PLM built (the dependencies' outcomes) to
its payload and queues it; `fail` settles it FAILED with the outcome the PLM built. A task can
only depend on tasks already in the cell, so there are no cycles.

Functions over a CellMemory; the caller (`shm.cell.Cell`) holds the lock.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from heapd.shm import transitions
from heapd.shm.errors import ArenaFull, BlobTooLarge, TaskNotFound
from heapd.shm.layout import F_RESULT, F_WAITING
from heapd.shm.memory import CellMemory
from heapd.shm.types import DependencyState, TaskState

MAX_DEPENDENCIES = 1000  # per task; the client's limit is the same (heapd.options)
PENDING = int(TaskState.PENDING)
FREE = int(TaskState.FREE)


def validate_after(after: Sequence[int]) -> None:
    """ValueError naming the limit or the bad id of a dependency list."""
    if len(after) > MAX_DEPENDENCIES:
        raise ValueError(
            f"a task may depend on at most {MAX_DEPENDENCIES} tasks (MAX_DEPENDENCIES), "
            f"got {len(after)}"
        )
    for dep in after:
        if not isinstance(dep, int) or isinstance(dep, bool) or not 0 < dep < 1 << 64:
            raise ValueError(f"dependency ids are positive 64-bit task ids, got {dep!r}")


def check_known(mem: CellMemory, after: Sequence[int]) -> None:
    """ValueError naming the first dependency the cell does not know (never submitted, or
    already settled and released)."""
    for dep in after:
        try:
            mem.tasks.slot_of(dep)
        except TaskNotFound:
            raise ValueError(
                f"unknown dependency {dep}: no such task in the cell (never submitted, or "
                "settled and its result already released)"
            ) from None


def blob(after: Sequence[int]) -> bytes:
    """The dependency list as stored in the arena."""
    return np.asarray(list(dict.fromkeys(after)), dtype="<u8").tobytes()


def wait(mem: CellMemory, slot: int, deps_blob: bytes) -> None:
    """Make a new task wait on its dependencies: blob stored, F_WAITING, PENDING (the state
    written last; the caller has written every other field)."""
    tasks = mem.tasks
    tasks.deps_chunk[slot] = mem.arena.store(deps_blob)
    tasks.deps_len[slot] = len(deps_blob)
    tasks.dispatched_at[slot] = 0.0
    tasks.flags[slot] |= F_WAITING
    tasks.state[slot] = PENDING


def deps_of(mem: CellMemory, slot: int) -> tuple[int, ...]:
    """The dependency ids of a waiting task (empty otherwise)."""
    tasks = mem.tasks
    size = tasks.deps_len[slot]
    if not size or not tasks.flags[slot] & F_WAITING:
        return ()
    data = mem.arena.read(tasks.deps_chunk[slot], size)
    return tuple(int(x) for x in np.frombuffer(data, dtype="<u8"))


def is_waiting(mem: CellMemory, slot: int) -> bool:
    """Whether the task in `slot` waits on dependencies."""
    tasks = mem.tasks
    return bool(tasks.state[slot] == PENDING and tasks.flags[slot] & F_WAITING)


def waiting(mem: CellMemory) -> list[tuple[int, tuple[int, ...]]]:
    """(task id, dependency ids) of every waiting task, by id."""
    rec = mem.tasks.rec
    slots = np.flatnonzero((rec["state"] == PENDING) & ((rec["flags"] & F_WAITING) != 0))
    slots = slots[np.argsort(rec["id"][slots], kind="stable")]
    return [(int(rec["id"][s]), deps_of(mem, int(s))) for s in slots]


def states(mem: CellMemory, task_ids: Sequence[int]) -> dict[int, list[DependencyState]]:
    """For each of `task_ids` that still waits: its dependencies' states and results."""
    out: dict[int, list[DependencyState]] = {}
    tasks = mem.tasks
    for task_id in task_ids:
        try:
            slot = tasks.slot_of(task_id)
        except TaskNotFound:
            continue
        if is_waiting(mem, slot):
            out[task_id] = [_state_of(mem, dep) for dep in deps_of(mem, slot)]
    return out


def _state_of(mem: CellMemory, dep: int) -> DependencyState:
    tasks = mem.tasks
    try:
        slot = tasks.slot_of(dep)
    except TaskNotFound:
        return DependencyState(dep, None, None)
    state = TaskState(int(tasks.state[slot]))
    result = None
    if tasks.flags[slot] & F_RESULT:
        result = mem.arena.read(tasks.result_chunk[slot], tasks.result_len[slot])
    return DependencyState(dep, state, result)


def start(
    mem: CellMemory, items: Sequence[tuple[int, bytes]]
) -> tuple[dict[int, bytes], list[int]]:
    """Queue waiting tasks, each with `suffix` appended to its payload. Returns ({id queued: its
    new payload}, for the journal; the ids whose payload with the suffix does not fit: they
    still wait, and the caller fails them). Tasks no longer waiting (cancelled meanwhile) are
    skipped."""
    tasks = mem.tasks
    queued: dict[int, bytes] = {}
    too_big: list[int] = []
    for slot, task_id, suffix in _still_waiting(mem, items):
        old_chunk, old_len = tasks.payload_chunk[slot], tasks.payload_len[slot]
        payload = mem.arena.read(old_chunk, old_len) + suffix
        try:
            chunk = mem.arena.store(payload)
        except (BlobTooLarge, ArenaFull):
            too_big.append(task_id)
            continue
        tasks.payload_chunk[slot] = chunk
        tasks.payload_len[slot] = len(payload)
        mem.arena.free(old_chunk, old_len)
        transitions.drop_deps(mem, slot)
        transitions.queue(mem, slot)
        queued[task_id] = payload
    return queued, too_big


def fail(mem: CellMemory, items: Sequence[tuple[int, bytes]], now: float) -> list[int]:
    """Settle waiting tasks FAILED with the given outcomes; returns the ids settled."""
    tasks = mem.tasks
    failed: list[int] = []
    for slot, task_id, outcome in _still_waiting(mem, items):
        try:
            chunk, size = mem.arena.store(outcome), len(outcome)
        except (BlobTooLarge, ArenaFull):
            chunk, size = 0, 0
        tasks.result_chunk[slot] = chunk
        tasks.result_len[slot] = size
        tasks.flags[slot] |= F_RESULT
        transitions.finish(mem, slot, TaskState.FAILED, now)
        failed.append(task_id)
    return failed


def _still_waiting(
    mem: CellMemory, items: Sequence[tuple[int, bytes]]
) -> Iterator[tuple[int, int, bytes]]:
    """(slot, task id, data) of the items whose task still waits on its dependencies."""
    for task_id, data in items:
        try:
            slot = mem.tasks.slot_of(task_id)
        except TaskNotFound:
            continue
        if is_waiting(mem, slot):
            yield slot, task_id, data
