"""`heapd profile`: the CSV rows against a cell driven by hand, its endings (duration, stop,
the cell gone), its errors, then `heapd profile` against a real cell, stopped by SIGINT, and the
bench's `--profile` files. The sums over rows are checked exactly; no time is asserted."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from heapd import Client
from heapd.runtime import profile
from heapd.runtime.bench import floors, runner
from heapd.runtime.config import Durability
from heapd.shm import Cell, CellNotFound, Completion, NewTask, TaskState
from tests import shm_helpers
from tests import tasks_for_tests as t
from tests.conftest import StartCell
from tests.helpers import assert_eventually
from tests.shm_helpers import SMALL

INTEGERS = (
    "queue_depth",
    "pending",
    "running",
    "parked",
    "workers_alive",
    "slots_total",
    "slots_free",
    "settled",
)
IN_FLIGHT = re.compile(r"(\d+:\d+(;\d+:\d+)*)?")


def read_rows(text: str) -> list[dict[str, str]]:
    """The rows of a profile, after checking the header and that every cell parses."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    assert tuple(header) == profile.COLUMNS
    rows = [dict(zip(header, cells, strict=True)) for cells in reader]
    for r in rows:
        for name in ("time", "elapsed_s", *(c for c in profile.COLUMNS if c.endswith("_per_s"))):
            assert math.isfinite(float(r[name])), (name, r)
        for name in INTEGERS:
            assert int(r[name]) >= 0, (name, r)
        assert IN_FLIGHT.fullmatch(r["in_flight"]), r
        # Percentiles exactly when some task settled in the interval.
        for name in ("p50_latency_s", "p99_latency_s"):
            assert (r[name] == "") == (r["settled"] == "0"), (name, r)
            if r[name]:
                assert float(r[name]) >= 0
    return rows


def settled_sum(rows: list[dict[str, str]]) -> int:
    return sum(int(r["settled"]) for r in rows)


def rate_sum(rows: list[dict[str, str]], column: str) -> float:
    """Σ rate x the row's interval: the count the rates stand for."""
    total, before = 0.0, 0.0
    for r in rows:
        elapsed = float(r["elapsed_s"])
        total += float(r[column]) * (elapsed - before)
        before = elapsed
    return total


# ---- against a cell driven by hand


@pytest.fixture
def cell() -> Iterator[Cell]:
    with shm_helpers.scratch_cell_name() as name, Cell.create(name, SMALL) as c:
        yield c


def test_rows_follow_the_cell_step_by_step(cell: Cell) -> None:
    out = io.StringIO()
    with profile.Profiler(cell.name, 0.5, out) as profiler:
        profiler.begin()
        ids = cell.submit([NewTask(b"x") for _ in range(5)], 1.0)
        assert profiler.step()
        w = cell.register_worker("10.0.0.1:7000", 3, 123, "host", 1.0, 100.0)
        first, second = cell.dispatch(2, 2.0)
        cell.mark_running(w.worker_id, w.epoch, [(first.task_id, first.attempt)], 2.5)
        cell.cancel(ids[4], 3.0)
        assert profiler.step()
        cell.complete(
            w.worker_id,
            w.epoch,
            [
                Completion(first.task_id, first.attempt, TaskState.SUCCEEDED, b"r", False),
                Completion(second.task_id, second.attempt, TaskState.FAILED, b"f", False),
            ],
            4.0,
        )
        assert profiler.step()
    rows = read_rows(out.getvalue())
    assert len(rows) == 3
    picked = {k: [r[k] for r in rows] for k in (*INTEGERS, "in_flight")}
    assert picked == {
        "queue_depth": ["5", "2", "2"],
        "pending": ["0", "0", "0"],
        "running": ["0", "2", "0"],
        "parked": ["0", "0", "0"],
        "workers_alive": ["0", "1", "1"],
        "slots_total": ["0", "3", "3"],
        "slots_free": ["0", "1", "3"],
        "settled": ["0", "1", "2"],
        "in_flight": ["", f"{w.worker_id}:2", f"{w.worker_id}:0"],
    }
    # Rates are non-zero exactly in the rows where that thing happened.
    nonzero = {c: [float(r[c]) > 0 for r in rows] for c in profile.COLUMNS if c.endswith("_per_s")}
    assert nonzero == {
        "submitted_per_s": [True, False, False],
        "succeeded_per_s": [False, False, True],
        "failed_per_s": [False, False, True],
        "cancelled_per_s": [False, True, False],
        "requeued_per_s": [False, False, False],
    }
    counters = cell.sample().counters
    assert settled_sum(rows) == sum(counters[k] for k in ("succeeded", "failed", "cancelled"))
    assert float(rows[0]["elapsed_s"]) > 0


def test_row_rates_and_latencies(cell: Cell) -> None:
    """`row` on samples whose times are set: the rates are exact."""
    before = cell.sample()
    ids = cell.submit([NewTask(b"x") for _ in range(4)], 10.0)
    cell.cancel(ids[0], 10.25)  # 0.25 s end to end
    after = cell.sample()
    first = dataclasses.replace(before, at=100.0)
    before, after = dataclasses.replace(before, at=101.0), dataclasses.replace(after, at=101.5)
    r = dict(zip(profile.COLUMNS, profile.row(first, before, after), strict=True))
    assert r["time"] == "101.500000" and r["elapsed_s"] == "1.500000"
    assert (r["submitted_per_s"], r["cancelled_per_s"], r["succeeded_per_s"]) == (
        "8.000",
        "2.000",
        "0.000",
    )
    assert (r["queue_depth"], r["settled"]) == ("3", "1")
    # One task in the histogram's bucket [0.24576, 0.32768) s: both percentiles inside it.
    for name in ("p50_latency_s", "p99_latency_s"):
        assert 0.24576 <= float(r[name]) <= 0.32768


def test_run_ends_at_the_duration(cell: Cell) -> None:
    out = io.StringIO()
    with profile.Profiler(cell.name, 0.05, out) as profiler:
        assert profiler.run(0.12) is profile.Ending.DURATION
    rows = read_rows(out.getvalue())
    assert rows  # the last row ends at the duration, on the grid or not


def test_a_zero_duration_writes_the_header_only(cell: Cell) -> None:
    out = io.StringIO()
    with profile.Profiler(cell.name, 0.5, out) as profiler:
        assert profiler.run(0) is profile.Ending.DURATION
    assert out.getvalue() == ",".join(profile.COLUMNS) + "\n"


def test_stop_writes_the_partial_interval(cell: Cell) -> None:
    out = io.StringIO()
    with profile.Profiler(cell.name, 3600.0, out) as profiler:
        background = profile.ProfilerThread(profiler)
        background.start()  # the baseline is taken before it returns
        cell.submit([NewTask(b"x") for _ in range(3)], 1.0)
        background.stop()
        assert background.join(10) is profile.Ending.STOPPED
    [last] = read_rows(out.getvalue())
    assert last["queue_depth"] == "3" and float(last["submitted_per_s"]) > 0


def test_a_cell_that_goes_away_ends_the_run(cell: Cell) -> None:
    out = io.StringIO()
    with profile.Profiler(cell.name, 0.02, out) as profiler:
        background = profile.ProfilerThread(profiler)
        background.start()
        assert_eventually(lambda: out.getvalue().count("\n") >= 2)  # a row written
        Cell.unlink(cell.name)
        assert background.join(10) is profile.Ending.CELL_GONE
    read_rows(out.getvalue())


def test_a_recreated_cell_ends_the_run(cell: Cell) -> None:
    out = io.StringIO()
    with profile.Profiler(cell.name, 3600.0, out) as profiler:
        profiler.begin()
        assert profiler.step()
        Cell.unlink(cell.name)
        with Cell.create(cell.name, SMALL):
            assert not profiler.step()  # the same name, another segment


def test_bad_arguments(cell: Cell, capsys: pytest.CaptureFixture[str]) -> None:
    for interval in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="interval must be"):
            profile.Profiler(cell.name, interval, io.StringIO())
    with profile.Profiler(cell.name, 0.5, io.StringIO()) as profiler:
        with pytest.raises(ValueError, match="duration must be"):
            profiler.run(-1.0)
        with pytest.raises(RuntimeError, match="before begin"):
            profiler.step()
    missing = shm_helpers.new_cell_name()
    with pytest.raises(CellNotFound):
        profile.Profiler(missing, 0.5, io.StringIO())
    # The command: one line naming the cell, exit 1; bad numbers, exit 2.
    assert profile.main(missing, 0.5, "-", None) == 1
    assert capsys.readouterr().err == (
        f"heapd profile: no cell named {missing!r} is running on this host\n"
    )
    assert profile.main(cell.name, 0.0, "-", None) == 2
    assert profile.main(cell.name, 0.5, "-", -2.0) == 2
    err = capsys.readouterr().err.splitlines()
    assert ["interval must be" in err[0], "duration must be" in err[1]] == [True, True]


def test_an_unknown_cell_exits_1_and_leaves_no_file(tmp_path: Path) -> None:
    missing = shm_helpers.new_cell_name()
    out = tmp_path / "run.csv"
    done = subprocess.run(
        [sys.executable, "-m", "heapd", "profile", "--cell", missing, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"heapd profile: no cell named {missing!r} is running on this host"
    ]
    assert not out.exists()


# ---- real cells


def test_heapd_profile_on_a_real_cell_until_sigint(start_cell: StartCell, tmp_path: Path) -> None:
    cell = start_cell(workers=1, slots=2)
    out = tmp_path / "run.csv"
    argv = [sys.executable, "-m", "heapd", "profile", "--cell", cell.name, "--interval", "0.1"]
    proc = subprocess.Popen(
        [*argv, "--out", str(out)], stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        # The header is written after the baseline sample: every task below is counted.
        assert_eventually(lambda: out.exists() and out.read_text().count("\n") >= 1, 30)
        n = 40
        with Client(cell.address) as client:
            assert client.gather(client.map(t.square, range(n)), timeout=60) == [
                i * i for i in range(n)
            ]
        rows_then = out.read_text().count("\n")
        assert_eventually(lambda: out.read_text().count("\n") > rows_then, 30)  # still sampling
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert err == ""
    rows = read_rows(out.read_text())
    assert settled_sum(rows) == n  # each settled task counted once, in one row
    assert abs(rate_sum(rows, "succeeded_per_s") - n) < 0.5
    assert abs(rate_sum(rows, "submitted_per_s") - n) < 0.5
    assert rate_sum(rows, "failed_per_s") == 0
    assert max(int(r["workers_alive"]) for r in rows) == 1
    assert {r["slots_total"] for r in rows} == {"2"}
    elapsed = [float(r["elapsed_s"]) for r in rows]
    assert elapsed == sorted(elapsed)


def test_bench_measure_writes_a_profile_per_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`heapd bench --profile DIR` through `runner.measure`, W1 shrunk to 30 tasks."""
    monkeypatch.setattr(runner, "W1_TASKS", 30)
    monkeypatch.setattr(floors, "ECHO_CALLS", 20)
    monkeypatch.setattr(floors, "WARMUP_CALLS", 2)
    monkeypatch.setattr(runner, "W2_ROUNDS", 20)  # F0's round trips
    monkeypatch.setattr(runner, "W2_WARMUP", 2)
    directory = tmp_path / "profiles"
    report = runner.measure(
        ["W1"], 2, lambda _: None, durability=Durability.NONE, profile_dir=directory
    )
    assert report["W1"]["tasks_per_s"] > 0
    assert report["F0"]["p50_ms"] > 0 and report["F1"]["p50_ms"] > 0  # the floors, measured
    assert report["transport"] == "unix" and report["F1_unix"]["p50_ms"] > 0  # the default
    assert sorted(p.name for p in directory.iterdir()) == ["W1-run1.csv", "W1-run2.csv"]
    for run in (1, 2):
        rows = read_rows((directory / f"W1-run{run}.csv").read_text())
        assert settled_sum(rows) == 30
