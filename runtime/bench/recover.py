"""RECOVER (BENCHMARKS.md): a cell holding N queued tasks (journal on) loses its shared memory;
how long `heapd up` takes to rebuild it from the journal and answer.

The cell has no workers, so the N tasks stay queued. Then every process of the cell is
SIGKILLed and its /dev/shm entries removed (what a reboot leaves), and `heapd up` starts again
on the same state directory: the figure is the time from that start until the PLM answers with
all N tasks queued again. Reports tasks, seconds and the journal's size in MB.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from heapd.runtime.bench import cells
from heapd.runtime.bench.workloads import noop
from heapd.runtime.config import Durability
from heapd.runtime.launch import LocalCell

SUBMIT_BATCH = 10_000

Figures = dict[str, float]


def run_recover(tasks: int, log: Callable[[str], None]) -> Figures:
    """One repetition: fill, crash, time the rebuild."""
    name = f"bench-{os.getpid()}-recover"
    with tempfile.TemporaryDirectory() as scratch:
        state = Path(scratch) / "state"
        first = _cell(name, state)
        try:
            first.start()
            log(f"RECOVER: queueing {tasks:,} tasks")
            with cells.client(first) as client:
                for start in range(0, tasks, SUBMIT_BATCH):
                    count = min(SUBMIT_BATCH, tasks - start)
                    client.map(noop, range(start, start + count), batch_size=SUBMIT_BATCH)
            log("RECOVER: crashing the cell (SIGKILL everything, remove /dev/shm)")
        finally:
            first.crash()
        journal_mb = sum(p.stat().st_size for p in state.glob("journal.sqlite3*")) / 1e6
        second = _cell(name, state)
        started = time.perf_counter()
        try:
            second.start()
            with cells.client(second) as client:
                queued = client.cluster_status().queued
            seconds = time.perf_counter() - started
        finally:
            second.stop()
    if queued != tasks:
        raise AssertionError(f"RECOVER: {queued} of {tasks} tasks came back")
    return {"tasks": float(tasks), "seconds": seconds, "journal_mb": journal_mb}


def _cell(name: str, state: Path) -> LocalCell:
    return LocalCell(
        name,
        workers=0,
        slots=1,
        state_dir=state,
        extra_args=["--durability", str(Durability.FSYNC)],
    )
