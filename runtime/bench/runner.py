"""Runs the floors and the chosen workloads, `repeat` times each; reports medians.

Every target is a ratio to a floor measured in the same run (the machines are shared and noisy).
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from heapd.cli.progress import task_progress
from heapd.runtime.bench import (
    cells,
    fault,
    floors,
    makespan,
    priority,
    profiling,
    queue_scale,
    recover,
    trace,
    worker_scale,
)
from heapd.runtime.bench.workloads import noop
from heapd.runtime.config import Durability, Transport
from heapd.runtime.launch import LocalCell

W1_TASKS = 20_000
W1_SLOTS = 2
W2_ROUNDS = 1000
W2_WARMUP = 50
W2_TICK_EVERY = 50

Figures = dict[str, float]
# Told how many tasks of a run are done; called per batch of TICK_EVERY tasks, never per task,
# so a progress bar costs the timed loops nothing measurable.
Tick = Callable[[int], None]
TICK_EVERY = 1000


def _no_tick(done: int) -> None:
    """The `Tick` of a run nobody watches."""


def run_w1(cell: LocalCell, tick: Tick = _no_tick) -> Figures:
    """W1: 20,000 no-op calls submitted in batches; wait for all; tasks/s."""
    with cells.client(cell) as client:
        start = time.perf_counter()
        futures = client.map(noop, range(W1_TASKS))
        results: list[Any] = []
        for first in range(0, W1_TASKS, TICK_EVERY):  # gather, in batches that tick
            results += client.gather(futures[first : first + TICK_EVERY])
            tick(len(results))
        elapsed = time.perf_counter() - start
    if results != list(range(W1_TASKS)):
        raise AssertionError("W1 returned wrong results")
    return {"tasks_per_s": W1_TASKS / elapsed}


def run_w2(
    cell: LocalCell, tick: Tick = _no_tick, traced: trace.ClientStamps | None = None
) -> Figures:
    """W2: 1,000 sequential round trips of one no-op after 50 warm-ups; p50/p90/p99 ms.
    `traced`: every `traced.every`-th task is traced, its client side stamped there."""
    samples = []
    every = traced.every if traced is not None else 0
    with cells.client(cell, trace_every=every) as client:
        for i in range(W2_WARMUP + W2_ROUNDS):
            start = time.perf_counter()
            if traced is None:
                value = client.submit(noop, i).result(timeout=30)
            else:
                sent = time.time_ns()
                future = client.submit(noop, i)
                traced.sent(future, sent)
                value = future.result(timeout=30)
                traced.resolved(future)
            if i >= W2_WARMUP:
                samples.append((time.perf_counter() - start) * 1000)
            if value != i:
                raise AssertionError("W2 returned a wrong result")
            if (i + 1) % W2_TICK_EVERY == 0:  # outside the timed round trip
                tick(i + 1)
    cuts = statistics.quantiles(samples, n=100)
    return {"p50_ms": statistics.median(samples), "p90_ms": cuts[89], "p99_ms": cuts[98]}


WORKLOADS: dict[str, tuple[Callable[[LocalCell], Figures], int, int]] = {
    # name: (run, workers, slots per worker) — 2 slots in total for W1 and W2
    "W1": (run_w1, 1, W1_SLOTS),
    "W2": (run_w2, 1, W1_SLOTS),
    "W4": (fault.run_w4, fault.WORKERS, 1),
    "W4H": (fault.run_w4_hang, fault.WORKERS, 1),  # W4 with SIGSTOP instead of SIGKILL
    "W7": (priority.run_w7, priority.WORKERS, priority.SLOTS),
}
# Workloads whose runs tell how many of their tasks are done (a bar per run): (run, tasks)
COUNTED: dict[str, tuple[Callable[[LocalCell, Tick], Figures], int]] = {
    "W1": (run_w1, W1_TASKS),
    "W2": (run_w2, W2_WARMUP + W2_ROUNDS),
}
# Workloads that start their own cells (W3: one per placement policy); each reports a dict of
# figures per setting.
MULTI_CELL: dict[str, Callable[[int, Callable[[str], None], cells.OpenCell], dict[str, Any]]] = {
    "W3": makespan.measure,
    "W5": queue_scale.measure,  # queue sizes up to measure()'s queue_tasks
    "W6": worker_scale.measure,  # worker counts up to measure()'s scale_workers
}
# counts: summed over runs, not medians
SUMMED = (
    "lost",
    "duplicates",
    "inversions",
    "inversions_within_rtt",
    "inversions_beyond_rtt",
    "low_started_during_submit",
)


def median_of(runs: Sequence[Figures]) -> Figures:
    """Per key, the median over runs (counts summed, and the worst time kept)."""
    figures = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    for key in SUMMED:
        if key in figures:
            figures[key] = sum(r[key] for r in runs)
    if "total_s" in figures:
        figures["total_s_max"] = max(r["total_s"] for r in runs)
        figures["detect_ms_max"] = max(r["detect_ms"] for r in runs)
        figures["runs"] = float(len(runs))
    return figures


def measure(
    workloads: Sequence[str],
    repeat: int,
    log: Callable[[str], None],
    durability: Durability = Durability.FSYNC,
    recover_tasks: int = 1_000_000,
    profile_dir: Path | None = None,
    progress: Progress | None = None,
    fuzz_requests: int = 10_000,
    queue_tasks: int = queue_scale.MAX_TASKS,
    scale_workers: int = worker_scale.MAX_WORKERS,
    trace_w2: bool = False,
    transport: Transport = Transport.UNIX,
) -> dict[str, Any]:
    """Floors, then each workload against its own fresh cell (journal as `durability` says);
    medians of `repeat` runs. `profile_dir`: each run's cell sampled into a CSV there
    (`profiling`; RECOVER's cells are not). `progress`: a bar over the steps, and one over the
    tasks of each run of W1 and W2. FUZZ runs once, `fuzz_requests` requests. W5 queues up to
    `queue_tasks` tasks, W6 attaches up to `scale_workers` workers. `trace_w2`: W2 traces a
    sample of its tasks and the report gains TRACE, the time per hop (`bench.trace`).
    `transport`: how the cells' roles, workers and the clients of W1 and W2 talk (unix: also
    the floor F1_unix, F1's echo over a Unix socket)."""
    unknown = [
        w
        for w in workloads
        if w not in WORKLOADS and w not in MULTI_CELL and w not in ("RECOVER", "FUZZ")
    ]
    if unknown:
        known = sorted([*WORKLOADS, *MULTI_CELL, "RECOVER", "FUZZ"])
        raise ValueError(f"unknown workload(s) {unknown}; available: {known}")
    unix = transport is Transport.UNIX
    bars = _Bars(progress, steps=(4 if unix else 3) + len(workloads))
    log("F0: process pool round trip floor")
    f0 = statistics.median(
        floors.pool_round_trip_p50_ms(W1_SLOTS, W2_ROUNDS, W2_WARMUP) for _ in range(repeat)
    )
    bars.step_done()
    log("F2: process pool floor")
    f2 = statistics.median(floors.pool_tasks_per_s(W1_SLOTS, W1_TASKS) for _ in range(repeat))
    bars.step_done()
    log("F1: gRPC echo floor")
    f1 = statistics.median(floors.echo_p50_ms() for _ in range(repeat))
    bars.step_done()
    report: dict[str, Any] = {
        "durability": str(durability),
        "transport": str(transport),
        "F0": {"p50_ms": f0},
        "F1": {"p50_ms": f1},
        "F2": {"tasks_per_s": f2},
    }
    if unix:
        log("F1_unix: gRPC echo floor over a Unix socket")
        f1_unix = statistics.median(floors.echo_p50_ms(unix=True) for _ in range(repeat))
        report["F1_unix"] = {"p50_ms": f1_unix}
        bars.step_done()
    for name in workloads:
        if name == "RECOVER":
            runs = [recover.run_recover(recover_tasks, log) for _ in range(repeat)]
            report[name] = median_of(runs)
            bars.step_done()
            continue
        if name == "FUZZ":  # counts at volume, not a timing: one run, no median
            from heapd.runtime.bench import fuzz  # needs hypothesis (heapd[test])

            report[name] = fuzz.bench(fuzz_requests, log, durability)
            bars.step_done()
            continue
        if name in MULTI_CELL:
            open_cell = profiling.opener(cells.opener(durability, transport), profile_dir, name)
            knobs = {"W5": {"max_tasks": queue_tasks}, "W6": {"max_workers": scale_workers}}
            report[name] = MULTI_CELL[name](repeat, log, open_cell, **knobs.get(name, {}))
            bars.step_done()
            continue
        run, workers, slots = WORKLOADS[name]
        log(f"{name}: starting a cell ({workers} worker x {slots} slots, {durability})")
        traced = trace.ClientStamps() if trace_w2 and name == "W2" else None
        counted = COUNTED.get(name)
        if traced is not None:
            run = functools.partial(run_w2, traced=traced)
            counted = (run, COUNTED[name][1])
        opened = cells.bench_cell(name, workers, slots, (), durability, transport)
        with opened as cell:
            runs = []
            for i in range(repeat):
                log(f"{name}: run {i + 1}/{repeat}")
                with profiling.sampled(cell, profile_dir, f"{name}-run{i + 1}"):
                    label = f"{name} run {i + 1}/{repeat}"
                    runs.append(bars.run(run, cell, label, counted))
            if traced is not None:
                report["TRACE"] = trace.report(cell.name, traced)
        report[name] = median_of(runs)
        bars.step_done()
    _add_ratios(report)
    return report


class _Bars:
    """The bench's progress: one bar over its steps (floors, workloads), one over the tasks of
    the run going on when the workload counts them. Redrawn only here, never from a thread
    (`task_progress(auto_refresh=False)`), so a redraw never lands inside a timed round trip."""

    def __init__(self, progress: Progress | None, steps: int) -> None:
        self._progress = progress
        self._steps = None if progress is None else progress.add_task("bench", total=steps)

    def step_done(self) -> None:
        """One floor or workload measured."""
        if self._progress is not None and self._steps is not None:
            self._progress.update(self._steps, advance=1, refresh=True)

    def run(
        self,
        run: Callable[[LocalCell], Figures],
        cell: LocalCell,
        label: str,
        counted: tuple[Callable[[LocalCell, Tick], Figures], int] | None = None,
    ) -> Figures:
        """`run(cell)`; for a workload that counts its tasks (`COUNTED`: the run that ticks,
        and its total), the same run with a bar over its tasks."""
        progress = self._progress
        if counted is None or progress is None:
            return run(cell)
        ticking, total = counted
        bar = progress.add_task(label, total=total)
        try:
            return ticking(cell, lambda done: progress.update(bar, completed=done, refresh=True))
        finally:
            progress.remove_task(bar)


def _add_ratios(report: dict[str, Any]) -> None:
    if "W1" in report:
        report["W1"]["ratio_to_F2"] = report["W1"]["tasks_per_s"] / report["F2"]["tasks_per_s"]
    if "W2" in report:
        report["W2"]["ratio_to_F1"] = report["W2"]["p50_ms"] / report["F1"]["p50_ms"]
        report["W2"]["ratio_to_F0"] = report["W2"]["p50_ms"] / report["F0"]["p50_ms"]
        if "F1_unix" in report:
            ratio = report["W2"]["p50_ms"] / report["F1_unix"]["p50_ms"]
            report["W2"]["ratio_to_F1_unix"] = ratio


def render(report: dict[str, Any]) -> Table:
    """The report as a table: one row per figure; a workload with settings (W3's policies)
    gets one id per setting ("W3 hetero random")."""
    over = f"; over {report['transport']}" if "transport" in report else ""
    table = Table(title=f"heapd bench (medians; counts summed over runs{over})")
    table.add_column("id")
    table.add_column("figure")
    table.add_column("value", justify="right")
    _add_rows(table, "", {key: value for key, value in report.items() if key != "TRACE"})
    return table


def _add_rows(table: Table, prefix: str, figures: dict[str, Any]) -> None:
    for key, value in figures.items():
        if isinstance(value, dict):
            if any(isinstance(v, dict) for v in value.values()):
                _add_rows(table, f"{prefix}{key} ", value)
            else:
                for figure, number in value.items():
                    table.add_row(f"{prefix}{key}", figure, _number(number))
        else:
            text = _number(value) if isinstance(value, float) and prefix else str(value)
            table.add_row(prefix.strip() or key, key if prefix else "", text)


def _number(value: float) -> str:
    if isinstance(value, int):  # a count
        return f"{value:,}"
    return f"{value:,.3f}" if value < 100 else f"{value:,.0f}"


def main(
    workloads: Sequence[str],
    repeat: int,
    as_json: bool,
    durability: Durability = Durability.FSYNC,
    recover_tasks: int = 1_000_000,
    profile_dir: Path | None = None,
    *,
    experiment: str | None = None,
    plot_dir: Path | None = None,
    tasks: int = makespan.TASKS,
    fuzz_requests: int = 10_000,
    queue_tasks: int = queue_scale.MAX_TASKS,
    scale_workers: int = worker_scale.MAX_WORKERS,
    trace_w2: bool = False,
    transport: Transport = Transport.UNIX,
) -> int:
    """`heapd bench`: print the table (or one JSON object); with `experiment`, run that
    instead (`heapd.runtime.bench.experiment`: its table, and plots in `plot_dir`)."""
    console = Console(stderr=True)
    if experiment is not None or plot_dir is not None:
        from heapd.runtime.bench.experiment import main as run_experiment

        opener = cells.opener(durability, transport)
        log = console.log
        return run_experiment(experiment, opener, max(1, repeat), plot_dir, log, tasks)
    with task_progress(console, transient=True, auto_refresh=False) as progress:
        report = measure(
            workloads,
            max(1, repeat),
            lambda m: console.log(m),
            durability,
            recover_tasks,
            profile_dir,
            progress,
            fuzz_requests,
            queue_tasks,
            scale_workers,
            trace_w2,
            transport,
        )
    if as_json:
        print(json.dumps(report))
    else:
        Console().print(render(report))
        if "TRACE" in report:
            Console().print(trace.render(report["TRACE"]))
    return 0
