"""`heapd bench` W3 (makespan per policy) and W7 (priority) at small sizes, through the same
functions the bench runs: the report's shape, and every task completed. No time is asserted."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from heapd.runtime.bench import makespan, priority, profiling, runner
from heapd.runtime.bench.cells import OpenCell
from tests.conftest import StartCell
from tests.test_profile import read_rows, settled_sum

FIGURES = {
    "ratio",
    "ratio_max",
    "makespan_s",
    "bound_s",
    "greedy_s",
    "ratio_to_greedy",
    "completed",
}


def test_w3_reports_every_policy_on_both_cells(open_cell: OpenCell, tmp_path: Path) -> None:
    """Also through the bench's profiling opener (`heapd bench --profile`): one CSV per cell."""
    policies = ("least-loaded", "power-of-two")
    profiles = tmp_path / "profiles"
    opened = profiling.opener(open_cell, profiles, "W3")
    report = makespan.measure(1, lambda _: None, opened, tasks=8, policies=policies)
    assert set(report) == {*policies, "hetero"}
    assert set(report["hetero"]) == set(policies)
    for figures in [*(report[p] for p in policies), *report["hetero"].values()]:
        assert set(figures) == FIGURES
        assert figures["completed"] == 8
    # The table shows one id per setting.
    out = io.StringIO()
    Console(file=out, width=200).print(runner.render({"W3": report}))
    text = out.getvalue()
    assert "W3 least-loaded" in text and "W3 hetero power-of-two" in text
    files = sorted(p.name for p in profiles.iterdir())
    assert files == [f"W3-{cell}-{p}.csv" for cell in ("w3", "w3h") for p in policies]
    for name in files:
        assert settled_sum(read_rows((profiles / name).read_text())) == 8


def test_w3_durations_are_the_workloads() -> None:
    seconds = makespan.durations()
    assert len(seconds) == 200
    assert all(0.01 <= s <= 1.0 for s in seconds)
    assert seconds == makespan.durations()  # seeded: the same on every run and system


def test_w7_reports_waits_and_inversions(start_cell: StartCell) -> None:
    cell = start_cell(workers=priority.WORKERS, slots=priority.SLOTS)
    figures = priority.run_w7(cell, low=40, high=6)
    assert figures["completed"] == 46
    assert {
        "high_wait_p50_ms",
        "high_wait_p99_ms",
        "high_wait_max_ms",
        "high_wait_p99_units",
        "floor_p99_units",
        "inversions",
        "inversions_within_rtt",
        "inversions_beyond_rtt",
        "low_started_during_submit",
        "high_submit_ms",
    } <= set(figures)


def test_inversions_count_low_starts_while_a_high_task_waits() -> None:
    highs = [(10.0, 10.5), (10.0, 11.0)]  # (submitted, started)
    lows = [9.0, 10.001, 10.2, 10.7, 11.5]
    # 10.001: within RTT of the submission; 10.2 and 10.7: a high one was still waiting.
    assert priority.inversions(lows, highs) == (1, 2)
