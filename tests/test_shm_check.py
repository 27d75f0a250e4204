"""check() names each kind of damage in words; repair() rebuilds the derived state."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from heapd.shm import Cell, Completion, NewTask, TaskState, WorkerState
from heapd.shm import dispatch as shm_dispatch
from heapd.shm.layout import H
from heapd.shm.memory import CellMemory
from tests import shm_helpers
from tests.shm_helpers import SMALL


@pytest.fixture
def cell() -> Iterator[Cell]:
    """A cell with queued, running, finished tasks and two workers."""
    with shm_helpers.scratch_cell_name() as name, Cell.create(name, SMALL) as c:
        ids = c.submit([NewTask(bytes(100 * i), priority=i % 3) for i in range(12)], 1.0)
        w = c.register_worker("a:1", 3, 1, "h", 1.0, 9.0)
        c.register_worker("b:1", 2, 2, "h", 1.0, 9.0)
        mine = [d for d in c.dispatch(4, 2.0) if d.worker_id == w.worker_id]
        report = Completion(mine[0].task_id, 1, TaskState.SUCCEEDED, b"ok")
        c.complete(w.worker_id, w.epoch, [report], 3.0)
        c.cancel(ids[-1], 3.0)
        assert c.check() == []
        yield c


def mem(cell: Cell) -> CellMemory:
    return cell._m


def snapshot(cell: Cell) -> list[tuple[int, TaskState, int]]:
    return [(t.task_id, t.state, t.attempt) for t in cell.list_tasks(limit=1000)]


def damaged(cell: Cell, *expected: str) -> None:
    """check() reports each expected phrase; repair() fixes it without touching the truth."""
    before = snapshot(cell)
    problems = cell.check()
    for phrase in expected:
        assert any(phrase in p for p in problems), (phrase, problems)
    cell.repair()
    assert cell.check() == []
    assert [s[:1] for s in snapshot(cell)] == [s[:1] for s in before]


def test_queued_task_missing_from_heap(cell: Cell) -> None:
    depth = cell.queue_depth()
    mem(cell).task_heap.pop()
    damaged(cell, "is QUEUED but not in the task heap")
    assert cell.queue_depth() == depth


def test_heap_order(cell: Cell) -> None:
    keys = mem(cell).task_heap._keys
    keys[0], keys[1] = keys[1], keys[0]
    damaged(cell, "below its parent", "has key")


def test_heap_position_index(cell: Cell) -> None:
    heap = mem(cell).task_heap
    heap._pos[heap.peek()] = 5
    damaged(cell, "has index")


def test_wrong_in_flight(cell: Cell) -> None:
    w = mem(cell).workers
    w.in_flight[0] = w.in_flight[0] + 3
    damaged(cell, "in_flight is", "has key")


def test_leaked_and_lost_arena_chunks(cell: Cell) -> None:
    arena = mem(cell).arena
    arena._map[-1] = 1
    arena._map[0] = 0
    damaged(cell, "owned by no blob", "live blobs marked free")


def test_arena_counter(cell: Cell) -> None:
    mem(cell).hdr[H.ARENA_USED] += 2
    damaged(cell, "used counter says")


def test_free_list(cell: Cell) -> None:
    assert mem(cell).task_free.pop() >= 0
    damaged(cell, "missing from the free list")
    stack = mem(cell).task_free
    stack.push(0)  # slot 0 holds a live task
    damaged(cell, "on the free list but in use")


def test_task_running_on_a_dead_worker_is_requeued(cell: Cell) -> None:
    m = mem(cell)
    running = [t for t in cell.list_tasks() if t.state == TaskState.DISPATCHED]
    slot = running[0].worker_id & 0xFFFF
    m.workers.state[slot] = int(WorkerState.DEAD)  # a worker_lost killed half way
    damaged(cell, "which is not live at that epoch", "is in the worker heap but not ALIVE")
    orphans = [t for t in running if t.worker_id & 0xFFFF == slot]
    assert all(cell.get(t.task_id).state == TaskState.QUEUED for t in orphans)


def test_finished_task_missing_from_ring(cell: Cell) -> None:
    hdr = mem(cell).hdr
    hdr[H.RING_HEAD] = hdr[H.RING_TAIL]
    damaged(cell, "is not in the ring")
    assert len(cell.take_finished(10)) == 2


def test_unknown_state_byte(cell: Cell) -> None:
    mem(cell).tasks.state[3] = 42
    assert any("unknown state 42" in p for p in cell.check())
    cell.repair()
    assert cell.check() == []


def test_garbage_in_every_derived_area_is_rebuilt(cell: Cell) -> None:
    m = mem(cell)
    before = snapshot(cell)
    rng = np.random.default_rng(3)
    for heap in (m.task_heap, m.worker_heap):
        heap._keys_np[:] = rng.integers(-1000, 1000, len(heap._keys_np))
        heap._items_np[:] = rng.integers(-5, 70, len(heap._items_np))
        heap._pos_np[:] = rng.integers(-5, 70, len(heap._pos_np))
    m.task_free._stack_np[:] = rng.integers(-5, 70, len(m.task_free._stack_np))
    m.ring._ring_np[:] = rng.integers(0, 1 << 40, len(m.ring._ring_np), dtype=np.uint64)
    m.arena._map[:] = rng.integers(0, 2, len(m.arena._map))
    m.workers.rec["in_flight"] = 7
    assert len(cell.check()) > 5
    cell.repair()
    assert cell.check() == []
    assert snapshot(cell) == before


def test_a_crash_inside_an_operation_is_repaired_before_unlock(
    cell: Cell, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: object) -> None:
        raise RuntimeError("bug after the pop")

    monkeypatch.setattr(shm_dispatch, "_assign", crash)
    depth = cell.queue_depth()
    with pytest.raises(RuntimeError):
        cell.dispatch(1, 5.0)
    assert cell.queue_depth() == depth
    assert cell.check() == []
