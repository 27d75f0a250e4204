"""W5 (BENCHMARKS.md): queue scale. With no workers, submit N no-op tasks; then attach workers
and drain them; N = 1e3, 1e5, 1e6.

Each N runs on a fresh cell (`heapd up --workers 0`), so every submission starts from an empty
queue. Tasks go in as a user would send many: `Client.map` (its batches of `MAP_BATCH` per
message), called on CHUNK items at a time so the rate near the end, with the queue about N deep,
is seen apart from the average. Once all N are queued (checked in the shared memory, which also
gives the bytes each queued task takes), one worker of W1's 2 slots is attached and every result
gathered and checked. Reported per N:

- `submit_tasks_per_s`: N / the time to submit them all; `submit_tail_tasks_per_s`: the rate of
  the last CHUNK (the queue then holds N - CHUNK);
- `shm_bytes_per_task`: shared memory per queued task: its table slot (`bytes_per_task`) and its
  payload's share of the arena;
- `drain_tasks_per_s`: N / `drain_s`, the time from the worker's joining to the last result;
  `attach_s`: its start-up until it joined; `end_to_end_s`: submit, attach and drain.

And for the run: `submit_ratio`, the submit rate at the largest N over the rate at the smallest
(target: >= 0.8), `tail_ratio` the same for the tail rates, and the largest N's `end_to_end_s`
(target: < 60 s at 1e6).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from heapd import shm
from heapd.runtime.bench import cells
from heapd.runtime.bench.cells import OpenCell
from heapd.runtime.bench.workloads import noop
from heapd.runtime.config import UpConfig
from heapd.runtime.launch import LocalCell
from heapd.shm.layout import bytes_per_task

SIZES = (1_000, 100_000, 1_000_000)
MAX_TASKS = SIZES[-1]
CHUNK = 10_000  # items per Client.map call (it sends them MAP_BATCH per message)
DRAIN_SLOTS = 2  # one worker of W1's 2 slots drains the queue
RESULT_TIMEOUT_S = 1800.0
LOG_EVERY = 100_000  # a log line per this many tasks submitted or gathered

Figures = dict[str, float]


def sizes_up_to(max_tasks: int) -> list[int]:
    """The sizes of SIZES up to `max_tasks`, and `max_tasks` itself if it is not one of them."""
    if max_tasks < 1:
        raise ValueError(f"W5 needs at least 1 task, not {max_tasks}")
    sizes = [n for n in SIZES if n <= max_tasks]
    return sizes if max_tasks in sizes else [*sizes, max_tasks]


def cell_args(tasks: int) -> list[str]:
    """`heapd up` flags for a cell holding `tasks` queued tasks (a bigger task table than the
    default only if needed)."""
    return ["--tasks", str(tasks)] if tasks > UpConfig.tasks else []


def run_size(cell: LocalCell, tasks: int, log: Callable[[str], None]) -> Figures:
    """One repetition at one size on a cell without workers: submit, attach a worker, drain."""
    with cells.client(cell) as client:
        client.cluster_status()  # connected before the clock starts
        futures = []
        tail_s, tail = 0.0, 1
        start = time.perf_counter()
        for first in range(0, tasks, CHUNK):
            count = min(CHUNK, tasks - first)
            began = time.perf_counter()
            futures += client.map(noop, range(first, first + count))
            tail_s, tail = time.perf_counter() - began, count
            if (first + count) % LOG_EVERY == 0:
                log(f"W5 {tasks:,}: {first + count:,} submitted")
        submit_s = time.perf_counter() - start
        shm_bytes = queued_bytes_per_task(cell.name, tasks)
        began = time.perf_counter()
        cell.add_worker(DRAIN_SLOTS)
        joined = time.perf_counter()
        results: list[Any] = []
        for first in range(0, tasks, CHUNK):
            results += client.gather(futures[first : first + CHUNK], timeout=RESULT_TIMEOUT_S)
            if len(results) % LOG_EVERY == 0:
                log(f"W5 {tasks:,}: {len(results):,} done")
        attach_s, drain_s = joined - began, time.perf_counter() - joined
    if results != list(range(tasks)):
        raise AssertionError(f"W5 {tasks:,}: wrong or missing results")
    return {
        "submit_tasks_per_s": tasks / submit_s,
        "submit_tail_tasks_per_s": tail / tail_s,
        "submit_s": submit_s,
        "shm_bytes_per_task": shm_bytes,
        "attach_s": attach_s,
        "drain_s": drain_s,
        "drain_tasks_per_s": tasks / drain_s,
        "end_to_end_s": submit_s + attach_s + drain_s,
        "completed": float(len(results)),
    }


def queued_bytes_per_task(cell_name: str, tasks: int) -> float:
    """Shared memory per queued task: a task slot plus its share of the arena in use. Checks
    that all `tasks` are queued (nothing runs them yet)."""
    with shm.Cell.attach(cell_name) as handle:
        sample = handle.sample()
    if sample.queued != tasks:
        raise AssertionError(f"W5: {sample.queued:,} of {tasks:,} tasks queued")
    return bytes_per_task() + sample.arena_used_bytes / tasks


def measure(
    repeat: int,
    log: Callable[[str], None],
    open_cell: OpenCell,
    max_tasks: int = MAX_TASKS,
    sizes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """W5 at each size (`sizes`, else SIZES up to `max_tasks`), `repeat` runs each on a fresh
    cell: {str(N): medians, ..., "submit_ratio", "tail_ratio", "end_to_end_s", "tasks"}."""
    sizes = sorted(sizes or sizes_up_to(max_tasks))
    report: dict[str, Any] = {}
    for tasks in sizes:
        runs = []
        for i in range(repeat):
            log(f"W5: {tasks:,} tasks, run {i + 1}/{repeat}")
            with open_cell(f"w5-{tasks}", 0, DRAIN_SLOTS, cell_args(tasks)) as cell:
                runs.append(run_size(cell, tasks, log))
        report[str(tasks)] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    smallest, largest = report[str(sizes[0])], report[str(sizes[-1])]
    report["submit_ratio"] = largest["submit_tasks_per_s"] / smallest["submit_tasks_per_s"]
    report["tail_ratio"] = largest["submit_tail_tasks_per_s"] / smallest["submit_tail_tasks_per_s"]
    report["end_to_end_s"] = largest["end_to_end_s"]
    report["tasks"] = float(sizes[-1])
    return report
