"""The PLM with its journal, in process: a full disk fails the submission and loses nothing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from heapd import errors, shm
from heapd.plm.convert import DEPENDENCY_MESSAGES, cancel_on_worker
from heapd.plm.daemon import Plm
from heapd.plm.intake import Intake
from heapd.plm.journal import Durability, Journal


@pytest.fixture
def cell(cell_name: str) -> Iterator[shm.Cell]:
    caps = shm.Capacities(tasks=256, workers=4, arena_bytes=1 << 20, max_blob_bytes=8192)
    with shm.Cell.create(cell_name, caps) as c:
        yield c
        assert c.check() == []
        assert not [t for t in threading.enumerate() if t.name == "bell-plm"]


def test_a_full_disk_refuses_the_submission_and_keeps_what_was_accepted(
    cell: shm.Cell, tmp_path: Path
) -> None:
    """SQLite's own SQLITE_FULL (max_page_count): RESOURCE_EXHAUSTED naming the journal, the
    refused tasks are taken back, and the accepted ones and the cell carry on."""
    journal = Journal.open(tmp_path, cell.name, Durability.FSYNC)

    async def scenario() -> tuple[list[int], list[int]]:
        async with Plm(cell, 60.0, cancel_on_worker, DEPENDENCY_MESSAGES, journal) as plm:
            (kept,) = await plm.submit(Intake("s", [shm.NewTask(b"small")], ["k1"]))
            (pages,) = journal._conn.execute("PRAGMA page_count").fetchone()
            journal._conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is now full
            big = [shm.NewTask(b"x" * 4000) for _ in range(40)]
            with pytest.raises(errors.ResourceExhausted, match=str(journal.path)):
                await plm.submit(Intake("s", big, ["k2"] + [""] * 39))
            refused = [i.task_id for i in cell.list_tasks([shm.TaskState.CANCELLED], 100)]
            journal._conn.execute("PRAGMA max_page_count = 1000000")
            (later,) = await plm.submit(Intake("s", [shm.NewTask(b"later")], ["k2"]))
            return [kept, later], refused

    accepted, refused = asyncio.run(scenario())
    assert len(refused) == 40, "the refused batch was taken back"
    assert cell.get(accepted[0]).state == shm.TaskState.QUEUED
    assert refused[0] not in accepted, "the refused task's key was forgotten with it"
    with Journal.open(tmp_path, cell.name, Durability.OS) as again:
        assert again.open_ids() == accepted
        assert again.keys() == {"k1": accepted[0], "k2": accepted[1]}
