"""W6 (BENCHMARKS.md): worker scale. The scheduler's CPU per dispatch with 1, 10 and 100
registered workers of 1 slot each, running W1's no-ops; it must grow no faster than log W.

Two measures, reported apart:

- "cell": one cell (`heapd up --workers 0 --metrics-port 0`), workers attached one by one up to
  each count; per count, `repeat` runs of TASKS no-ops (`Client.map`, every result checked). Per
  run, from the scheduler process: its CPU time (every thread, from /proc schedstat, in ns) and,
  from its /metrics, tasks dispatched, dispatch rounds and the time it held the cell lock. So
  `cpu_us_per_dispatch` is all the scheduler spends per task sent (popping, placing, the
  AssignTasks messages), and `lock_hold_us_per_dispatch` the part under the cell lock.
- "direct": `shm.Cell.dispatch_round` alone, in this process, on a scratch cell with W fake
  workers registered (1 slot each, room for every task: only placement varies with W), the
  scheduler's batch per round; `us_per_dispatch` is this thread's CPU per task dispatched.
  W goes to 1,000: it costs no processes.

Each measure fits its figure against W: `exponent`, the slope of log(cost) over log(W) (0: flat,
1: linear), and `ratio_to_log`, the largest cost(W) / cost(W0) / (1 + log2(W / W0)) over the
counts W beyond the first W0 (<= 1: grows no faster than log W).
"""

from __future__ import annotations

import math
import os
import statistics
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from heapd import shm
from heapd.client import Client
from heapd.runtime.bench import cells
from heapd.runtime.bench.cells import OpenCell
from heapd.runtime.bench.workloads import noop
from heapd.runtime.config import SchedulerConfig
from heapd.runtime.launch import LocalCell
from heapd.shm.types import CHUNK_BYTES

COUNTS = (1, 10, 100)
MAX_WORKERS = COUNTS[-1]
TASKS = 20_000  # W1's no-ops per run
DIRECT_COUNTS = (1, 10, 100, 1000)
DIRECT_TASKS = 20_000
RESULT_TIMEOUT_S = 600.0
SCRAPE_TIMEOUT_S = 10.0
# The scheduler's counters read from its /metrics (Prometheus sample names).
DISPATCHED = "heapd_tasks_dispatched_total"
ROUNDS = "heapd_dispatch_rounds_total"
LOCK_HOLD = "heapd_lock_hold_seconds_sum"

Figures = dict[str, float]


def counts_up_to(max_workers: int) -> list[int]:
    """The counts of COUNTS up to `max_workers`, and `max_workers` itself if not one of them."""
    if max_workers < 1:
        raise ValueError(f"W6 needs at least 1 worker, not {max_workers}")
    counts = [w for w in COUNTS if w <= max_workers]
    return counts if max_workers in counts else [*counts, max_workers]


# --- on a cell


def run_once(cell: LocalCell, client: Client, tasks: int = TASKS) -> Figures:
    """One run: `tasks` no-ops through the cell; the scheduler's cost per task it dispatched."""
    pid = int(cell.info["pids"]["scheduler"])
    before, cpu_before = scheduler_counters(cell), process_cpu_s(pid)
    start = time.perf_counter()
    results = client.gather(client.map(noop, range(tasks)), timeout=RESULT_TIMEOUT_S)
    elapsed = time.perf_counter() - start
    after, cpu_after = scheduler_counters(cell), process_cpu_s(pid)
    if results != list(range(tasks)):
        raise AssertionError("W6 returned wrong results")
    dispatched = after[DISPATCHED] - before[DISPATCHED]
    rounds = after[ROUNDS] - before[ROUNDS]
    if dispatched < tasks:
        raise AssertionError(f"W6: the scheduler counted {dispatched:.0f} of {tasks} dispatches")
    return {
        "cpu_us_per_dispatch": (cpu_after - cpu_before) / dispatched * 1e6,
        "lock_hold_us_per_dispatch": (after[LOCK_HOLD] - before[LOCK_HOLD]) / dispatched * 1e6,
        "tasks_per_round": dispatched / max(rounds, 1.0),
        "tasks_per_s": tasks / elapsed,
        "dispatched": dispatched,
        "completed": float(len(results)),
    }


def process_cpu_s(pid: int) -> float:
    """CPU seconds process `pid` has run, all its threads, at nanosecond resolution
    (/proc/PID/task/*/schedstat; utime and stime tick at 10 ms, too coarse for a short run)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            continue
    return total / 1e9


def scheduler_counters(cell: LocalCell) -> dict[str, float]:
    """DISPATCHED, ROUNDS and LOCK_HOLD from the scheduler's /metrics (the cell was started
    with --metrics-port)."""
    address = cell.info.get("metrics", {}).get("scheduler")
    if not address:
        raise ValueError("W6 needs a cell started with --metrics-port (no scheduler endpoint)")
    headers = dict(cell.security.metadata())  # the bearer token, if the cell has one
    request = urllib.request.Request(f"http://{address}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=SCRAPE_TIMEOUT_S) as reply:
        text = reply.read().decode()
    wanted = {DISPATCHED, ROUNDS, LOCK_HOLD}
    found = {
        s.name: float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in wanted
    }
    if set(found) != wanted:
        raise AssertionError(f"W6: the scheduler's /metrics lacks {sorted(wanted - set(found))}")
    return found


def measure_cell(
    repeat: int,
    log: Callable[[str], None],
    open_cell: OpenCell,
    counts: Sequence[int],
    tasks: int = TASKS,
) -> dict[str, Any]:
    """The "cell" measure: one cell, workers added up to each count; {str(W): medians, fit}."""
    report: dict[str, Any] = {}
    with (
        open_cell("w6", 0, 1, ["--metrics-port", "0"]) as cell,
        cells.client(cell) as client,
    ):
        attached = 0
        for workers in counts:
            log(f"W6: attaching workers up to {workers}")
            while attached < workers:
                cell.add_worker(1)
                attached += 1
            alive = [w for w in client.cluster_status().workers if w.state == "ALIVE"]
            if sum(w.slots for w in alive) != workers:
                raise AssertionError(f"W6: {len(alive)} workers alive, not {workers}")
            runs = []
            for i in range(repeat):
                log(f"W6: {workers} workers x 1 slot, run {i + 1}/{repeat}")
                runs.append(run_once(cell, client, tasks))
            report[str(workers)] = _medians(runs)
    report.update(growth_fit({w: report[str(w)]["cpu_us_per_dispatch"] for w in counts}))
    return report


# --- in process


def direct_dispatch(workers: int, tasks: int = DIRECT_TASKS) -> Figures:
    """`tasks` dispatched by `shm.Cell.dispatch_round` onto `workers` fake 1-slot workers of a
    scratch cell (default policy, the scheduler's batch); this thread's CPU per dispatch."""
    name = f"bench-{os.getpid()}-w6-direct"
    arena = 4 * CHUNK_BYTES * tasks
    capacities = shm.Capacities(
        tasks=tasks, workers=workers, arena_bytes=arena, max_blob_bytes=min(arena, 4096)
    )
    shm.Cell.unlink(name)  # a previous run killed midway
    try:
        with shm.Cell.create(name, capacities) as cell:
            now = time.time()
            for i in range(workers):
                cell.register_worker(f"127.0.0.1:{i + 1}", 1, os.getpid(), "bench", now, now + 3600)
            for first in range(0, tasks, 1000):
                cell.submit([shm.NewTask(b"x")] * min(1000, tasks - first), now)
            room = math.ceil(tasks / workers)  # per slot: every task fits, nothing waits on room
            cursor = shm.Cursor()
            dispatched = rounds = 0
            started = time.thread_time()
            while dispatched < tasks:
                done = cell.dispatch_round(SchedulerConfig.batch, now, room, 0, cursor)
                if not done.dispatches:
                    raise AssertionError(f"W6 direct: {dispatched} of {tasks} dispatched")
                dispatched += len(done.dispatches)
                rounds += 1
            cpu_s = time.thread_time() - started
    finally:
        shm.Cell.unlink(name)
    return {"us_per_dispatch": cpu_s / dispatched * 1e6, "tasks_per_round": dispatched / rounds}


def measure_direct(
    repeat: int, log: Callable[[str], None], counts: Sequence[int], tasks: int = DIRECT_TASKS
) -> dict[str, Any]:
    """The "direct" measure: {str(W): medians, fit}."""
    report: dict[str, Any] = {}
    for workers in counts:
        log(f"W6 direct: dispatch_round onto {workers} fake workers")
        report[str(workers)] = _medians([direct_dispatch(workers, tasks) for _ in range(repeat)])
    report.update(growth_fit({w: report[str(w)]["us_per_dispatch"] for w in counts}))
    return report


# --- both


def growth_fit(cost: Mapping[int, float]) -> Figures:
    """How cost(W) grows: `exponent` (least-squares slope of log cost over log W) and
    `ratio_to_log` (max over W > W0 of cost(W) / cost(W0) / (1 + log2(W / W0)), W0 the least
    count). Empty with fewer than two counts or a cost that is not positive."""
    points = sorted(cost.items())
    if len(points) < 2 or any(c <= 0 for _, c in points):
        return {}
    xs = [math.log(w) for w, _ in points]
    ys = [math.log(c) for _, c in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    exponent = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    w0, c0 = points[0]
    ratio = max(c / c0 / (1 + math.log2(w / w0)) for w, c in points[1:])
    return {"exponent": exponent, "ratio_to_log": ratio}


def measure(
    repeat: int,
    log: Callable[[str], None],
    open_cell: OpenCell,
    max_workers: int = MAX_WORKERS,
    counts: Sequence[int] | None = None,
    tasks: int = TASKS,
    direct_counts: Sequence[int] = DIRECT_COUNTS,
    direct_tasks: int = DIRECT_TASKS,
) -> dict[str, Any]:
    """W6: {"cell": {str(W): figures, ..., fit}, "direct": {...}}; the cell's counts are
    `counts`, else COUNTS up to `max_workers`."""
    counts = sorted(counts or counts_up_to(max_workers))
    return {
        "cell": measure_cell(repeat, log, open_cell, counts, tasks),
        "direct": measure_direct(repeat, log, sorted(direct_counts), direct_tasks),
    }


def _medians(runs: Sequence[Figures]) -> Figures:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}
