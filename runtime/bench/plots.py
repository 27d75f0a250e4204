"""PNG plots of the policies experiment (`heapd.runtime.bench.experiment`); the only module that
needs matplotlib (the optional `plot` extra), so import it only to draw.

Figures are drawn on matplotlib's object API with the Agg canvas: no pyplot, no global state,
no display needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from heapd.runtime.bench import experiment
from heapd.runtime.bench.experiment import PolicyRun

try:
    from matplotlib.axes import Axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError as exc:  # the optional extra is missing
    raise ImportError(
        f"heapd bench --plot needs matplotlib: pip install 'heapd[plot]' ({exc})"
    ) from exc

DPI = 120
WORKER_COLOURS = ("tab:blue", "tab:green", "tab:red")  # by worker index; the slowed one is last


def write(runs: Sequence[PolicyRun], directory: Path) -> list[Path]:
    """Write makespan.png, timeline-<policy>.png per policy, queue.png and latency-cdf.png to
    `directory` (created if need be); their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [_save(makespan(runs), directory / "makespan.png")]
    paths += [_save(timeline(r), directory / f"timeline-{r.policy}.png") for r in runs]
    paths.append(_save(queue(runs), directory / "queue.png"))
    paths.append(_save(latency_cdf(runs), directory / "latency-cdf.png"))
    return paths


def makespan(runs: Sequence[PolicyRun]) -> Figure:
    """Bars: makespan / speed-weighted bound and / nominal bound, per policy."""
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot()
    xs = range(len(runs))
    weighted = [experiment.figures(r)["ratio"] for r in runs]
    nominal = [experiment.figures(r)["nominal_ratio"] for r in runs]
    width = 0.38
    bars = ax.bar([x - width / 2 for x in xs], weighted, width, label="÷ speed-weighted bound")
    ax.bar_label(bars, fmt="%.2f")
    bars = ax.bar(
        [x + width / 2 for x in xs], nominal, width, label="÷ nominal bound", color="lightgray"
    )
    ax.bar_label(bars, fmt="%.2f")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(list(xs), [r.policy for r in runs])
    ax.set_ylabel("makespan ÷ lower bound")
    slots = " + ".join(str(w.slots) for w in runs[0].workers)
    ax.set_title(f"Makespan per placement policy ({slots} slots, one worker hogged)")
    ax.legend(loc="upper center", ncols=2)
    ax.margins(y=0.25)
    return fig


def timeline(run: PolicyRun) -> Figure:
    """Gantt chart, one row per task process (slot) grouped by worker, over the utilisation of
    each worker's slots."""
    fig = _figure(9.0, 6.0)
    gantt, busy = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    _gantt(gantt, run)
    starts, fractions = experiment.utilisation(run)
    for i, (worker, row) in enumerate(zip(run.workers, fractions, strict=True)):
        busy.step(starts, row, where="post", color=_colour(i), label=worker.label)
    busy.set_ylim(0, 1.05)
    busy.set_ylabel("slots busy")
    busy.set_xlabel("seconds since the burst")
    busy.legend(loc="lower left", fontsize="small", ncols=len(run.workers))
    f = experiment.figures(run)
    gantt.set_title(
        f"{run.policy}: makespan {f['makespan_s']:.2f} s = {f['ratio']:.2f} x bound"
        f" ({f['bound_s']:.2f} s); slowed worker at {f['slowed_speed']:.2f}x speed"
    )
    return fig


def _gantt(ax: Axes, run: PolicyRun) -> None:
    """One row per lane (task process) of each worker, top down; a bar per task."""
    rows: list[tuple[int, int]] = []  # (worker, lane), in drawing order
    for i, worker in enumerate(run.workers):
        lanes = max([worker.slots, *(t.lane + 1 for t in run.tasks if t.worker == i)])
        rows += [(i, lane) for lane in range(lanes)]
    for y, (i, lane) in enumerate(rows):
        spans = [
            (t.started_s, t.finished_s - t.started_s)
            for t in run.tasks
            if (t.worker, t.lane) == (i, lane)
        ]
        ax.broken_barh(spans, (y + 0.1, 0.8), facecolor=_colour(i), edgecolor="white")
    labels = [f"{run.workers[i].label} #{lane + 1}" for i, lane in rows]
    ax.set_yticks([y + 0.5 for y in range(len(rows))], labels)
    ax.set_ylim(len(rows), 0)  # the first worker on top
    ax.axvline(run.makespan_s, color="black", linewidth=0.8)


def queue(runs: Sequence[PolicyRun]) -> Figure:
    """Tasks not yet started over time, one line per policy."""
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot()
    for run in runs:
        times, depth = experiment.queue_depth(run)
        ax.step(times, depth, where="post", label=run.policy)
    ax.set_xlabel("seconds since the burst")
    ax.set_ylabel("tasks not yet started")
    ax.set_title("Queue depth (cell queue and worker buffers)")
    ax.legend()
    return fig


def latency_cdf(runs: Sequence[PolicyRun]) -> Figure:
    """Fraction of tasks done by each latency, one line per policy."""
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot()
    for run in runs:
        done = experiment.latencies(run)
        fractions = [(i + 1) / len(done) for i in range(len(done))]
        ax.step(done, fractions, where="post", label=run.policy)
    ax.set_xlabel("latency, s (burst to the task's end)")
    ax.set_ylabel("fraction of tasks")
    ax.set_ylim(0, 1.02)
    ax.set_title("Latency CDF")
    ax.legend(loc="lower right")
    return fig


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # draw with Agg: no display, no pyplot
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def _colour(worker: int) -> str:
    return WORKER_COLOURS[worker % len(WORKER_COLOURS)]
