"""Dependencies in the shared cell: waiting tasks, their lists, start, fail, cancel, repair."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from heapd.shm import Cell, Completion, NewTask, RestoredTask, TaskNotFound, TaskState
from tests import shm_helpers
from tests.shm_helpers import SMALL

OK = TaskState.SUCCEEDED


@pytest.fixture
def cell() -> Iterator[Cell]:
    with shm_helpers.scratch_cell_name() as name, Cell.create(name, SMALL) as c:
        yield c
        assert c.check() == []


def run_to(cell: Cell, task_id: int, state: TaskState, result: bytes) -> None:
    """Dispatch the queue's top (which must be `task_id`) and settle it."""
    w = cell.register_worker(f"10.0.0.{task_id % 200}:1", 1, 1, "h", 1.0, 1e12)
    [d] = cell.dispatch(1, 2.0)
    assert d.task_id == task_id
    cell.complete(w.worker_id, w.epoch, [Completion(d.task_id, d.attempt, state, result)], 3.0)


def test_a_dependent_waits_pending_until_started_with_its_inputs(cell: Cell) -> None:
    [a] = cell.submit([NewTask(b"A")], 1.0)
    [b] = cell.submit([NewTask(b"B", after=(a, a))], 1.0)
    assert cell.get(b).state == TaskState.PENDING
    assert cell.waiting() == [(b, (a,))]
    assert cell.describe(b)[0].after == (a,)
    assert [(s.task_id, s.state) for s in cell.dependency_states([a, b])[b]] == [
        (a, TaskState.QUEUED)
    ]
    assert cell.promote_due(1e12) == 0.0, "a waiting task is not a retry"
    run_to(cell, a, OK, b"result-of-a")
    [dep] = cell.dependency_states([b])[b]
    assert (dep.state, dep.result) == (OK, b"result-of-a")
    assert cell.start_waiting([(b, b"+inputs")]) == ({b: b"B+inputs"}, [])
    assert cell.waiting() == [] and cell.get(b).state == TaskState.QUEUED
    assert cell.describe(b)[0].after == ()
    cell.register_worker("10.0.0.9:1", 1, 1, "h", 1.0, 1e12)
    [d] = cell.dispatch(1, 4.0)
    assert (d.task_id, d.payload) == (b, b"B+inputs")
    assert cell.start_waiting([(b, b"again")]) == ({}, []), "only waiting tasks start"


def test_an_unknown_dependency_is_refused_and_nothing_is_queued(cell: Cell) -> None:
    [a] = cell.submit([NewTask(b"A")], 1.0)
    with pytest.raises(ValueError, match="unknown dependency 12345"):
        cell.submit([NewTask(b"B", after=(a,)), NewTask(b"C", after=(12345,))], 1.0)
    assert [t.task_id for t in cell.list_tasks()] == [a]
    with pytest.raises(ValueError, match="MAX_DEPENDENCIES"):
        cell.submit([NewTask(b"D", after=tuple(range(1, 1002)))], 1.0)
    with pytest.raises(ValueError, match="positive"):
        cell.submit([NewTask(b"E", after=(0,))], 1.0)


def test_fail_settles_a_waiting_task_with_the_given_outcome(cell: Cell) -> None:
    [a] = cell.submit([NewTask(b"A")], 1.0)
    [b, c] = cell.submit([NewTask(b"B", after=(a,)), NewTask(b"C", after=(a,))], 1.0)
    assert cell.fail_waiting([(b, b"dependency failed")], 5.0) == [b]
    assert cell.get(b).state == TaskState.FAILED
    assert cell.read_result(b) == b"dependency failed"
    assert cell.take_finished(10) == [b]
    assert cell.fail_waiting([(b, b"twice")], 5.0) == [], "settled already"
    assert cell.waiting() == [(c, (a,))]


def test_cancelling_a_waiting_task_drops_its_list(cell: Cell) -> None:
    [a] = cell.submit([NewTask(b"A")], 1.0)
    [b] = cell.submit([NewTask(b"B", after=(a,))], 1.0)
    assert cell.cancel(b, 2.0).cancelled
    assert cell.get(b).state == TaskState.CANCELLED and cell.waiting() == []
    assert cell.start_waiting([(b, b"x")]) == ({}, [])


def test_repair_keeps_waiting_tasks_waiting(cell: Cell) -> None:
    [a] = cell.submit([NewTask(b"A")], 1.0)
    [b] = cell.submit([NewTask(b"B", after=(a,))], 1.0)
    cell.repair()
    assert cell.waiting() == [(b, (a,))]
    assert cell.get(b).state == TaskState.PENDING


def test_released_dependencies_read_as_unknown(cell: Cell) -> None:
    [a] = cell.submit([NewTask(b"A")], 1.0)
    [b] = cell.submit([NewTask(b"B", after=(a,))], 1.0)
    run_to(cell, a, OK, b"r")
    cell.take_finished(10)
    assert cell.release([a]) == 1
    with pytest.raises(TaskNotFound):
        cell.get(a)
    [dep] = cell.dependency_states([b])[b]
    assert (dep.task_id, dep.state, dep.result) == (a, None, None)


def test_a_restored_open_dependent_waits_again() -> None:
    with shm_helpers.scratch_cell_name() as name, Cell.create(name, SMALL) as cell:
        a, b = (1 << 24) | 1, (2 << 24) | 2
        restored = [
            RestoredTask(a, b"A", 0, 0, 0, 1.0, TaskState.SUCCEEDED, b"ra", 2.0),
            RestoredTask(b, b"B", 0, 0, 0, 1.0, after=(a,)),
        ]
        assert cell.restore(restored, 2) == 2
        assert cell.waiting() == [(b, (a,))]
        assert cell.check() == []
