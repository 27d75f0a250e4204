"""The journal file: schema, refusal of foreign or damaged files, group commit, write failures."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from heapd.plm.commits import GroupCommit
from heapd.plm.journal import (
    FILE_NAME,
    OPEN,
    Batch,
    Durability,
    Journal,
    JournalError,
    JournalRefused,
    JournalWriteFailed,
    Settled,
    Submitted,
)


def task(seq: int, key: str = "") -> Submitted:
    return Submitted((seq << 24) | seq, "s", float(seq), 0, 0, 0, b"p%d" % seq, key=key)


def test_records_read_back_in_order(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "st", "c", Durability.FSYNC)
    journal.write(Batch(submitted=[task(1, "k1"), task(2), task(3)]))
    journal.write(Batch(settled=[Settled(task(2).task_id, 5, b"out", 9.0)]))
    journal.write(Batch(forgotten=[task(3).task_id]))
    journal.close()
    again = Journal.open(tmp_path / "st", "c", Durability.OS)
    got = list(again.tasks())
    assert [t.task_id for t in got] == [task(1).task_id, task(2).task_id]
    assert (got[0].state, got[0].payload) == (OPEN, b"p1")
    assert (got[1].state, got[1].outcome, got[1].finished_at) == (5, b"out", 9.0)
    assert again.task_seq() == 3, "the counter keeps the highest id ever issued"
    assert again.keys() == {"k1": task(1).task_id}
    assert again.open_ids() == [task(1).task_id]
    again.close()


def test_state_dir_is_private(tmp_path: Path) -> None:
    Journal.open(tmp_path / "a" / "b", "c", Durability.OS).close()
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "a" / "b" / FILE_NAME).stat().st_mode & 0o777 == 0o600


def test_another_cells_journal_is_refused(tmp_path: Path) -> None:
    Journal.open(tmp_path, "mine", Durability.OS).close()
    with pytest.raises(JournalRefused, match=r"belongs to cell 'mine', not 'yours'") as info:
        Journal.open(tmp_path, "yours", Durability.OS)
    assert str(tmp_path / FILE_NAME) in str(info.value) and "--state-dir" in str(info.value)


def test_another_schema_version_is_refused(tmp_path: Path) -> None:
    Journal.open(tmp_path, "c", Durability.OS).close()
    with sqlite3.connect(tmp_path / FILE_NAME) as conn:
        conn.execute("UPDATE meta SET value = 99 WHERE name = 'schema'")
    with pytest.raises(JournalRefused, match="schema version 99"):
        Journal.open(tmp_path, "c", Durability.OS)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_journal_is_refused(tmp_path: Path, damage: str) -> None:
    journal = Journal.open(tmp_path, "c", Durability.FSYNC)
    journal.write(Batch(submitted=[task(i) for i in range(1, 2000)]))
    journal.checkpoint()
    journal.close()
    path = tmp_path / FILE_NAME
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"this is not a database" * 100)
    else:
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(JournalRefused, match=str(path)):
        Journal.open(tmp_path, "c", Durability.OS)


def test_an_unwritable_state_dir_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(JournalError, match=str(blocker)):
        Journal.open(blocker / "state", "c", Durability.OS)


def test_a_full_disk_fails_the_write_and_loses_nothing_written(tmp_path: Path) -> None:
    """SQLite's own SQLITE_FULL, reached through max_page_count (no mount needed)."""
    journal = Journal.open(tmp_path, "c", Durability.FSYNC)
    journal.write(Batch(submitted=[task(1)]))
    journal._conn.execute("PRAGMA max_page_count = 8")
    big = [Submitted((n << 24) | n, "s", 0.0, 0, 0, 0, b"x" * 4096) for n in range(2, 40)]
    with pytest.raises(JournalWriteFailed, match="disk is full") as info:
        journal.write(Batch(submitted=big))
    assert info.value.disk_full
    assert [t.task_id for t in journal.tasks()] == [task(1).task_id], "all or nothing"
    journal.close()


def test_concurrent_submitters_share_commits(tmp_path: Path) -> None:
    async def scenario() -> int:
        commits = GroupCommit(Journal.open(tmp_path, "c", Durability.FSYNC))
        commits.start()
        await asyncio.gather(*(commits.submitted([task(n)]) for n in range(1, 101)))
        count = commits.commits
        await commits.close()
        return count

    count = asyncio.run(scenario())
    assert 1 <= count <= 3, f"100 concurrent submitters took {count} commits"
    journal = Journal.open(tmp_path, "c", Durability.OS)
    assert journal.count() == 100
    journal.close()


def test_a_failed_commit_fails_its_submitters_and_keeps_unawaited_records(tmp_path: Path) -> None:
    async def scenario(journal: Journal) -> None:
        commits = GroupCommit(journal)
        commits.start()
        await commits.submitted([task(1)])
        commits.settled([Settled(task(1).task_id, 5, b"r", 1.0)])
        journal._conn.execute("PRAGMA max_page_count = 1")
        with pytest.raises(JournalWriteFailed):
            await commits.submitted([task(n) for n in range(2, 200)])
        journal._conn.execute("PRAGMA max_page_count = 1000000")
        await commits.barrier()
        await commits.close()

    journal = Journal.open(tmp_path, "c", Durability.FSYNC)
    asyncio.run(scenario(journal))
    again = Journal.open(tmp_path, "c", Durability.OS)
    (only,) = list(again.tasks())
    assert (only.task_id, only.state, only.outcome) == (task(1).task_id, 5, b"r")
    again.close()
