"""Rebuilding a new cell from its journal, and fsck's journal-against-memory check."""

from __future__ import annotations

from pathlib import Path

from heapd.plm import recovery
from heapd.plm.journal import Batch, Durability, Journal, Settled, Submitted
from heapd.shm import Cell, NewTask, TaskState
from tests import shm_helpers
from tests.shm_helpers import SMALL


def journal_of(cell: Cell, path: Path, payloads: list[bytes]) -> tuple[Journal, list[int]]:
    journal = Journal.open(path, cell.name, Durability.OS)
    ids = cell.submit([NewTask(p, priority=i % 2) for i, p in enumerate(payloads)], 1.0)
    journal.write(
        Batch(
            submitted=[
                Submitted(tid, "s", 1.0, i % 2, 0, 0, p)
                for i, (tid, p) in enumerate(zip(ids, payloads, strict=True))
            ]
        )
    )
    return journal, ids


def test_a_new_cell_is_rebuilt_and_a_live_one_is_left_alone(tmp_path: Path) -> None:
    with shm_helpers.scratch_cell_name() as name:
        with Cell.create(name, SMALL) as old:
            journal, ids = journal_of(old, tmp_path, [b"a", b"b", b"c"])
            journal.write(Batch(settled=[Settled(ids[2], TaskState.FAILED, b"why", 2.0)]))
            assert recovery.check(old, journal) == []
            assert recovery.rebuild(old, journal) is None, "a cell in use is the truth"
        Cell.unlink(name)
        with Cell.create(name, SMALL) as new:
            problems = recovery.check(new, journal)
            assert len(problems) == 2 and "2 open task(s) missing" in problems[0]
            done = recovery.rebuild(new, journal)
            assert done is not None and (done.open_tasks, done.settled_tasks) == (2, 1)
            assert [new.get(i).state for i in ids] == [
                TaskState.QUEUED,
                TaskState.QUEUED,
                TaskState.FAILED,
            ]
            assert new.read_result(ids[2]) == b"why"
            assert recovery.check(new, journal) == []
            assert new.check() == []
        journal.close()
