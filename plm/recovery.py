"""Rebuilding a cell from its journal, and checking the two against each other.

A cell whose shared memory is new (nothing was ever submitted to it) while its journal still
holds tasks has lost its memory — a reboot, a power cut, `/dev/shm` wiped, or a segment too
damaged to repair that `heapd up` recreated. Every journaled task goes back: an open one QUEUED
at its original priority and place in line (its next dispatch is a new attempt), a settled one
with its outcome, held for delivery again until its client acknowledges it or its TTL passes.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from heapd import shm
from heapd.plm.journal import OPEN, Journal, JournaledTask

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Recovered:
    """What a rebuild put back, and how long it took."""

    open_tasks: int
    settled_tasks: int
    seconds: float
    owners: dict[str, list[int]] = field(default_factory=dict)  # session -> its open tasks


def is_new(cell: shm.Cell) -> bool:
    """Whether the cell's memory has never taken a submission (so the journal is the truth)."""
    stats = cell.stats()
    return stats.submitted_total == 0 and cell.queue_depth() == 0 and not cell.list_tasks(None, 1)


def rebuild(cell: shm.Cell, journal: Journal) -> Recovered | None:
    """Restore the journal's tasks into a new cell; None when there was nothing to do."""
    started = time.perf_counter()
    if not is_new(cell):
        return None
    tasks, owners = [], defaultdict(list)
    for journaled in journal.tasks():
        tasks.append(_restored(journaled))
        if journaled.state == OPEN and journaled.session:
            owners[journaled.session].append(journaled.task_id)
    if not tasks and journal.task_seq() == 0:
        return None
    restored = cell.restore(tasks, journal.task_seq())
    settled = sum(1 for t in tasks if t.state != shm.TaskState.QUEUED)
    done = Recovered(restored - settled, settled, time.perf_counter() - started, dict(owners))
    log.warning(
        "cell rebuilt from its journal",
        extra={
            "fields": {
                "journal": str(journal.path),
                "open": done.open_tasks,
                "settled": done.settled_tasks,
                "seconds": round(done.seconds, 3),
            }
        },
    )
    return done


def _restored(task: JournaledTask) -> shm.RestoredTask:
    state = shm.TaskState.QUEUED if task.state == OPEN else shm.TaskState(task.state)
    return shm.RestoredTask(
        task_id=task.task_id,
        payload=task.payload,
        priority=task.priority,
        max_retries=task.max_retries,
        timeout_ms=task.timeout_ms,
        submitted_at=task.submitted_at,
        state=state,
        outcome=task.outcome,
        finished_at=task.finished_at,
        resources=task.resources,
        labels=task.labels,
        after=task.after if task.state == OPEN else (),
    )


def check(cell: shm.Cell, journal: Journal) -> list[str]:
    """Disagreements that would lose a task: a journaled open task the cell does not know, or
    a cell whose id counter is behind the journal's (ids would be reused)."""
    problems: list[str] = []
    missing = [tid for tid in journal.open_ids() if not _known(cell, tid)]
    if missing:
        problems.append(
            f"journal: {len(missing)} open task(s) missing from shared memory"
            f" (first {missing[:5]}); restart the cell to rebuild it from {journal.path}"
        )
    if journal.task_seq() > cell.task_seq():
        problems.append(
            f"journal: task counter {journal.task_seq()} is ahead of the cell's"
            f" ({cell.task_seq()}): ids would be reused; restart the cell to rebuild it"
        )
    return problems


def _known(cell: shm.Cell, task_id: int) -> bool:
    try:
        cell.get(task_id)
    except shm.TaskNotFound:
        return False
    return True
