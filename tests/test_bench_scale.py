"""`heapd bench` W5 (queue scale) and W6 (worker scale) at tiny sizes, through the same functions
the bench runs: the report's shape, and every task completed. No time is asserted."""

from __future__ import annotations

import io
import math

import pytest
from rich.console import Console

from heapd.cli import main as cli_main
from heapd.runtime.bench import queue_scale, runner, worker_scale
from heapd.runtime.bench.cells import OpenCell
from heapd.shm.layout import bytes_per_task

W5_FIGURES = {
    "submit_tasks_per_s",
    "submit_tail_tasks_per_s",
    "submit_s",
    "shm_bytes_per_task",
    "attach_s",
    "drain_s",
    "drain_tasks_per_s",
    "end_to_end_s",
    "completed",
}
W6_CELL_FIGURES = {
    "cpu_us_per_dispatch",
    "lock_hold_us_per_dispatch",
    "tasks_per_round",
    "tasks_per_s",
    "dispatched",
    "completed",
}


def test_w5_queues_then_drains_every_task(open_cell: OpenCell) -> None:
    report = queue_scale.measure(1, lambda _: None, open_cell, max_tasks=1000)
    assert set(report) == {"1000", "submit_ratio", "tail_ratio", "end_to_end_s", "tasks"}
    figures = report["1000"]
    assert set(figures) == W5_FIGURES
    assert figures["completed"] == 1000
    # A queued task costs its table slot and at least one arena chunk for its payload.
    assert figures["shm_bytes_per_task"] > bytes_per_task()
    assert report["submit_ratio"] == 1.0  # one size: its rate over itself
    assert report["end_to_end_s"] == figures["end_to_end_s"]
    assert "W5 1000" in _table({"W5": report})


def test_w6_measures_each_worker_count_on_a_cell_and_directly(open_cell: OpenCell) -> None:
    report = worker_scale.measure(
        1,
        lambda _: None,
        open_cell,
        max_workers=4,
        tasks=200,
        direct_counts=(1, 4),
        direct_tasks=500,
    )
    assert set(report) == {"cell", "direct"}
    cell, direct = report["cell"], report["direct"]
    assert set(cell) == {"1", "4", "exponent", "ratio_to_log"}
    for workers in ("1", "4"):
        assert set(cell[workers]) == W6_CELL_FIGURES
        assert cell[workers]["completed"] == 200
        assert cell[workers]["dispatched"] >= 200  # each task once, plus any taken back
        assert cell[workers]["cpu_us_per_dispatch"] > 0
    assert set(direct) == {"1", "4", "exponent", "ratio_to_log"}
    assert all(direct[w]["us_per_dispatch"] > 0 for w in ("1", "4"))
    text = _table({"W6": report})
    assert "W6 cell 4" in text and "W6 direct 1" in text


def test_sizes_and_counts_follow_benchmarks_md_up_to_the_knob() -> None:
    assert queue_scale.sizes_up_to(1_000_000) == [1_000, 100_000, 1_000_000]
    assert queue_scale.sizes_up_to(2_000) == [1_000, 2_000]
    assert queue_scale.sizes_up_to(500) == [500]
    assert worker_scale.counts_up_to(100) == [1, 10, 100]
    assert worker_scale.counts_up_to(4) == [1, 4]
    with pytest.raises(ValueError):
        queue_scale.sizes_up_to(0)
    # The default cell holds 1e6 tasks; only a bigger W5 asks `heapd up` for a bigger table.
    assert queue_scale.cell_args(1_000_000) == []
    assert queue_scale.cell_args(3_000_000) == ["--tasks", "3000000"]


def test_growth_fit_tells_log_from_linear() -> None:
    flat = worker_scale.growth_fit({1: 5.0, 10: 5.0, 100: 5.0})
    assert flat["exponent"] == pytest.approx(0.0, abs=1e-12)
    assert flat["ratio_to_log"] < 1
    logarithmic = worker_scale.growth_fit({w: 1 + math.log2(w) for w in (1, 10, 100)})
    assert logarithmic["ratio_to_log"] == pytest.approx(1.0)
    linear = worker_scale.growth_fit({1: 1.0, 10: 10.0, 100: 100.0})
    assert linear["exponent"] == pytest.approx(1.0)
    assert linear["ratio_to_log"] > 1
    assert worker_scale.growth_fit({1: 5.0}) == {}
    assert worker_scale.growth_fit({1: 0.0, 10: 1.0}) == {}


def test_bench_flags_reach_w5_and_w6() -> None:
    args = cli_main.parser().parse_args(
        ["bench", "--workload", "W5,W6", "--queue-tasks", "2000", "--scale-workers", "4"]
    )
    assert (args.queue_tasks, args.scale_workers) == (2000, 4)
    assert {"W5", "W6"} <= set(runner.MULTI_CELL)


def _table(report: dict[str, object]) -> str:
    out = io.StringIO()
    Console(file=out, width=200).print(runner.render(report))
    return out.getvalue()
