"""`heapd bench --experiment policies --plot DIR` at a tiny size, through the function the CLI
runs, on real cells: every PNG is written and decodes, the Markdown table has a row per policy,
and the CPU hog is gone afterwards. The figures themselves are checked on a run made by hand.
No time is asserted."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import shutil
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import matplotlib.image
import pytest

from heapd.runtime import bench
from heapd.runtime.bench import experiment
from heapd.runtime.bench.cells import OpenCell
from heapd.runtime.bench.experiment import PolicyRun, TaskRun, Worker
from heapd.runtime.launch import LocalCell


@pytest.mark.skipif(
    shutil.which("taskset") is None or not hasattr(os, "sched_setaffinity"),
    reason="the experiment pins its slowed worker with taskset (util-linux, Linux)",
)
def test_policies_experiment_writes_plots_and_table(
    open_cell: OpenCell, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plots = tmp_path / "plots"
    policies = ("power-of-two",)  # one of the four: the same code for each (the suite stays short)
    assert experiment.main("policies", open_cell, 1, plots, lambda _: None, 8, policies) == 0

    names = ["makespan.png", "queue.png", "latency-cdf.png"]
    names += [f"timeline-{policy}.png" for policy in policies]
    for name in names:
        path = plots / name
        assert path.stat().st_size > 0, name
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, name
    table = (plots / "results.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert rows == ["policy", "---", *policies]  # the header, a row per policy
    for name in names:
        assert f"]({name})" in table  # the figures are linked
    out = capsys.readouterr().out
    assert f"wrote {plots / 'results.md'}" in out
    assert multiprocessing.active_children() == []  # the hog was killed


def test_figures_of_a_run() -> None:
    # Two 1-slot workers, the second at half speed: 3 tasks of 1 s fill both for 2 s.
    run = PolicyRun(
        "least-loaded",
        (Worker(1, False, 100), Worker(1, True, 200)),
        (
            TaskRun(1.0, 0, 0, 0.0, 1.0),
            TaskRun(1.0, 1, 0, 0.0, 2.0),
            TaskRun(1.0, 0, 0, 1.0, 2.0),
        ),
        makespan_s=2.0,
    )
    assert experiment.speeds(run) == [1.0, 0.5]
    assert experiment.bounds(run) == (2.0, 1.5)  # 3 s over 1.5 slots of speed; 3 s over 2
    figures = experiment.figures(run)
    assert figures["ratio"] == 1.0 and figures["nominal_ratio"] == pytest.approx(4 / 3)
    assert figures["utilisation"] == 1.0
    assert figures["slowed_speed"] == 0.5 and figures["slowed_share"] == pytest.approx(1 / 3)
    assert experiment.latencies(run) == [1.0, 2.0, 2.0]
    assert experiment.queue_depth(run) == ([0.0, 0.0, 0.0, 1.0], [3, 2, 1, 0])
    starts, busy = experiment.utilisation(run, bins=4)
    assert starts == [0.0, 0.5, 1.0, 1.5]
    assert busy == [[1.0] * 4, [1.0] * 4]
    assert "| least-loaded | 2.00 | 2.00 | 1.00 |" in experiment.markdown([run])


def test_without_matplotlib_the_plots_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)  # what import sees of a missing package
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.delitem(sys.modules, "heapd.runtime.bench.plots", raising=False)
    monkeypatch.delattr(bench, "plots", raising=False)  # or `from bench import plots` finds it
    with pytest.raises(ImportError, match=r"pip install 'heapd\[plot\]'"):
        importlib.import_module("heapd.runtime.bench.plots")

    def no_cell(
        label: str, workers: int, slots: int, extra_args: Sequence[str]
    ) -> AbstractContextManager[LocalCell]:
        raise AssertionError("the experiment ran without matplotlib")

    said: list[str] = []
    code = experiment.main("policies", no_cell, 1, Path("unused"), said.append, tasks=8)
    assert code == 2 and "heapd[plot]" in said[0]
