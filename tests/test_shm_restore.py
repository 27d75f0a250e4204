"""Restoring journaled tasks into an empty cell: same ids, same place in line, results kept."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from heapd.shm import (
    Capacities,
    Cell,
    InvalidCapacity,
    NewTask,
    RestoredTask,
    ShmError,
    TaskState,
)
from tests import shm_helpers
from tests.shm_helpers import SMALL


@pytest.fixture
def pair() -> Iterator[tuple[Cell, Cell]]:
    """A cell that ran some tasks, and an empty one to restore into."""
    with (
        shm_helpers.scratch_cell_name() as a,
        shm_helpers.scratch_cell_name() as b,
        Cell.create(a, SMALL) as before,
        Cell.create(b, SMALL) as after,
    ):
        yield before, after
        assert before.check() == []
        assert after.check() == []


def journaled(cell: Cell, task_id: int, payload: bytes) -> RestoredTask:
    info = cell.get(task_id)
    return RestoredTask(
        task_id=task_id,
        payload=payload,
        priority=info.priority,
        max_retries=info.max_retries,
        timeout_ms=info.timeout_ms,
        submitted_at=info.submitted_at,
    )


def test_restored_tasks_keep_their_ids_order_and_outcomes(pair: tuple[Cell, Cell]) -> None:
    before, after = pair
    payloads = [b"low-1", b"high", b"low-2", b"done"]
    priorities = [0, 5, 0, 0]
    ids = before.submit(
        [NewTask(p, priority=q) for p, q in zip(payloads, priorities, strict=True)], 1.0
    )
    records = [journaled(before, i, p) for i, p in zip(ids[:3], payloads[:3], strict=True)]
    done = RestoredTask(
        task_id=ids[3],
        payload=b"",
        priority=0,
        max_retries=0,
        timeout_ms=0,
        submitted_at=1.0,
        state=TaskState.SUCCEEDED,
        outcome=b"result",
        finished_at=2.0,
    )
    seq = ids[-1] >> 24
    assert after.restore([*records, done], task_seq=seq + 10) == 4
    assert after.get(ids[3]).state == TaskState.SUCCEEDED
    assert after.read_result(ids[3]) == b"result"
    after.register_worker("10.0.0.1:7000", 3, 1, "h", 3.0, 100.0)
    got = after.dispatch(3, 3.0)
    assert [(d.task_id, d.payload, d.attempt) for d in got] == [
        (ids[1], b"high", 1),
        (ids[0], b"low-1", 1),
        (ids[2], b"low-2", 1),
    ], "priority first, then the original order; a new attempt"
    (fresh,) = after.submit([NewTask(b"new")], 4.0)
    assert fresh >> 24 == seq + 11, "ids continue above the journal's counter, never reused"


def test_restore_keeps_the_newest_task_of_a_reused_slot(pair: tuple[Cell, Cell]) -> None:
    _, after = pair
    old = (1 << 24) | 7
    new = (9 << 24) | 7
    tasks = [
        RestoredTask(new, b"new", 0, 0, 0, 1, 2.0),
        RestoredTask(old, b"", 0, 0, 0, 1, 1.0, TaskState.FAILED, b"x", 1.5),
    ]
    assert after.restore(tasks, task_seq=9) == 1
    assert after.get(new).state == TaskState.QUEUED


def test_restore_refuses_a_cell_that_is_not_empty(pair: tuple[Cell, Cell]) -> None:
    before, _ = pair
    (task_id,) = before.submit([NewTask(b"x")], 1.0)
    with pytest.raises(ShmError, match="empty cell"):
        before.restore([RestoredTask((50 << 24) | 3, b"y", 0, 0, 0, 1, 1.0)], task_seq=50)
    assert before.get(task_id).state == TaskState.QUEUED


def test_restore_names_the_table_size_it_needs() -> None:
    small = Capacities(tasks=8, workers=2, arena_bytes=64 * 64, max_blob_bytes=512)
    with shm_helpers.scratch_cell_name() as name, Cell.create(name, small) as cell:
        with pytest.raises(InvalidCapacity, match="--tasks 21"):
            cell.restore([RestoredTask((3 << 24) | 20, b"y", 0, 0, 0, 1, 1.0)], task_seq=3)
        assert cell.check() == []
