"""A hyperparameter search on scikit-learn's digits, fanned out over a heapd cell.

Round one scores a coarse grid of models (SVC, k-nearest neighbours, a random forest) at
normal priority with `client.map`. As scores come back, every coarse configuration that beats
the running median of all scores so far is *refined*: its neighbours (half a grid step away on
each axis) are submitted at high priority, so they overtake the rest of the coarse grid still
queued instead of waiting behind it. The best configurations are printed as a table.

Run it against a cell started with `heapd up` (see examples/README.md):

    .venv/bin/python examples/hyperparam_search.py --grid small

The task function `evaluate` is defined in this script, that is in `__main__`, which a worker
cannot import: heapd sends it pickled by value (cloudpickle), so the workers need scikit-learn
but not this file. The dataset ships with scikit-learn (nothing is downloaded) and each task
loads it itself: ~4 ms of a ~250 ms task, where sending it as arguments would hold 114 kB
(uint8) to 912 kB (as loaded) of the cell's arena per queued task (README: "Data: load it in
the task, or send it?").
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import statistics
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from heapd import Client, HeapdError, Unavailable

DEFAULT_ADDRESS = "127.0.0.1:7070"  # the PLM of `heapd up`
FOLDS = 3
TOP = 10  # rows of the final table

# A configuration: the model's name and its hyperparameters, as plain (picklable) types.
Params = tuple[tuple[str, float], ...]
Config = tuple[str, Params]


def evaluate(config: Config) -> dict[str, float]:
    """Runs on a worker: the mean and spread of FOLDS-fold cross-validated accuracy of one
    configuration on the digits dataset, and the seconds it took."""
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    started = time.perf_counter()
    model_name, params = config
    p = dict(params)
    x, y = load_digits(return_X_y=True)
    x = x / 16.0  # pixels are 0..16: scaled to 0..1, the same for every model
    model: Any
    if model_name == "svc":
        model = SVC(C=p["C"], gamma=p["gamma"])
    elif model_name == "knn":
        model = KNeighborsClassifier(n_neighbors=int(p["k"]))
    elif model_name == "forest":
        model = RandomForestClassifier(n_estimators=50, max_depth=int(p["depth"]), random_state=0)
    else:
        raise ValueError(f"unknown model {model_name!r}")
    scores = cross_val_score(model, x, y, cv=FOLDS)
    return {
        "score": float(scores.mean()),
        "std": float(scores.std()),
        "seconds": time.perf_counter() - started,
    }


@dataclass(frozen=True)
class Axis:
    """One hyperparameter: its coarse values, and how a refinement steps away from one.

    On a log axis the coarse values are `factor` apart and a neighbour is sqrt(factor) away;
    on an integer axis they are `step` apart and a neighbour is step/2 away (at least 1)."""

    name: str
    values: tuple[float, ...]
    log: bool
    step: float

    def neighbours(self, value: float) -> tuple[float, ...]:
        """The values half a coarse step either side of `value`."""
        if self.log:
            half = math.sqrt(self.step)
            return (_round(value / half), _round(value * half))
        half = max(1, int(self.step // 2))
        return tuple(v for v in (value - half, value + half) if v >= 1)


def _round(value: float) -> float:
    """Three significant digits: neighbours reached from two sides compare equal."""
    return float(f"{value:.3g}")


# Per grid, per model, its axes. Coarse log axes go by factors of 10 (refined by ~3.16).
GRIDS: dict[str, dict[str, tuple[Axis, ...]]] = {
    "small": {
        "svc": (
            Axis("C", (1.0, 100.0), log=True, step=10),
            Axis("gamma", (0.001, 0.1), log=True, step=10),
        ),
        "knn": (Axis("k", (1, 9), log=False, step=4),),
    },
    "full": {
        "svc": (
            Axis("C", (0.1, 1.0, 10.0, 100.0, 1000.0), log=True, step=10),
            Axis("gamma", (0.001, 0.01, 0.1, 1.0, 10.0), log=True, step=10),
        ),
        "knn": (Axis("k", (1, 5, 9, 13, 17, 21), log=False, step=4),),
        "forest": (Axis("depth", (4, 8, 12, 16), log=False, step=4),),
    },
}


def coarse_grid(grid: dict[str, tuple[Axis, ...]]) -> list[Config]:
    """Every combination of coarse values, model by model."""
    configs: list[Config] = []
    for model, axes in grid.items():
        combos: list[Params] = [()]
        for axis in axes:
            combos = [(*c, (axis.name, float(v))) for c in combos for v in axis.values]
        configs += [(model, c) for c in combos]
    return configs


def refinements(grid: dict[str, tuple[Axis, ...]], config: Config) -> Iterator[Config]:
    """The neighbours of `config`: one axis moved half a coarse step, the others kept."""
    model, params = config
    for i, axis in enumerate(grid[model]):
        for value in axis.neighbours(params[i][1]):
            moved = list(params)
            moved[i] = (axis.name, value)
            yield model, tuple(moved)


@dataclass
class Search:
    """What is known so far: the scores, which configurations were submitted, and which coarse
    ones were refined."""

    grid: dict[str, tuple[Axis, ...]]
    scores: dict[Config, dict[str, float]] = field(default_factory=dict)
    kind: dict[Config, str] = field(default_factory=dict)  # "coarse" or "refine"
    refined: set[Config] = field(default_factory=set)
    finish_order: list[Config] = field(default_factory=list)

    def promising(self) -> list[Config]:
        """Coarse configurations scored above the running median, not refined yet."""
        median = statistics.median(s["score"] for s in self.scores.values())
        return [
            c
            for c, s in self.scores.items()
            if self.kind[c] == "coarse" and c not in self.refined and s["score"] > median
        ]

    def new_neighbours(self, configs: Iterable[Config]) -> list[Config]:
        """Neighbours of `configs` not submitted yet (each once); marks `configs` refined."""
        fresh: list[Config] = []
        for config in configs:
            self.refined.add(config)
            for n in refinements(self.grid, config):
                if n not in self.kind:
                    self.kind[n] = "refine"
                    fresh.append(n)
        return fresh


def run(client: Client, grid_name: str, console: Console) -> Search:
    """The search: the coarse grid, then refinements at high priority as results arrive."""
    search = Search(GRIDS[grid_name])
    coarse = coarse_grid(search.grid)
    search.kind.update(dict.fromkeys(coarse, "coarse"))
    futures = client.map(evaluate, coarse)
    pending: dict[concurrent.futures.Future[Any], Config] = dict(zip(futures, coarse, strict=True))
    with _progress(console) as progress:
        bars = {
            "coarse": progress.add_task("coarse grid", total=len(coarse)),
            "refine": progress.add_task("refinements (high priority)", total=0),
        }
        while pending:
            done, _ = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                config = pending.pop(future)
                search.scores[config] = future.result()  # a failed task raises: exit 1
                search.finish_order.append(config)
                progress.advance(bars[search.kind[config]])
            fresh = search.new_neighbours(search.promising())
            if fresh:
                futures = client.map(evaluate, fresh, priority="high")
                pending.update(zip(futures, fresh, strict=True))
                _grow(progress, bars["refine"], len(fresh))
    return search


def _progress(console: Console) -> Progress:
    """Bars with done/total and elapsed time; nothing at all when not on a terminal."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )


def _grow(progress: Progress, bar: TaskID, more: int) -> None:
    """Add `more` to a bar's total."""
    total = progress.tasks[progress.task_ids.index(bar)].total or 0
    progress.update(bar, total=total + more)


def report(search: Search, console: Console, elapsed: float) -> None:
    """The best configurations as a table, then the figures a script (or test) can read."""
    ranked = sorted(search.scores.items(), key=lambda item: -item[1]["score"])
    table = Table(title=f"best {min(TOP, len(ranked))} of {len(ranked)} configurations")
    table.add_column("#", justify="right")
    table.add_column("model")
    table.add_column("hyperparameters")
    table.add_column("accuracy", justify="right")
    table.add_column("± std", justify="right")
    table.add_column("round")
    table.add_column("task s", justify="right")
    for rank, (config, s) in enumerate(ranked[:TOP], start=1):
        table.add_row(
            str(rank),
            config[0],
            _describe(config[1]),
            f"{s['score']:.4f}",
            f"{s['std']:.4f}",
            search.kind[config],
            f"{s['seconds']:.2f}",
        )
    console.print(table)
    coarse = sum(1 for k in search.kind.values() if k == "coarse")
    refine = len(search.kind) - coarse
    # Refinements that finished while coarse tasks were still to come: they overtook them.
    last_coarse = max(i for i, c in enumerate(search.finish_order) if search.kind[c] == "coarse")
    overtook = sum(1 for c in search.finish_order[:last_coarse] if search.kind[c] == "refine")
    best_config, best = ranked[0]
    console.print(
        f"tasks: {coarse} coarse + {refine} refinement = {coarse + refine}, all succeeded"
        f" in {elapsed:.1f} s"
    )
    console.print(f"refinements finished before the coarse grid did: {overtook} of {refine}")
    console.print(f"best: {best['score']:.4f} {best_config[0]} {_describe(best_config[1])}")


def _describe(params: Params) -> str:
    """Hyperparameters as typed: "C=10 gamma=0.316"."""
    return " ".join(f"{name}={value:g}" for name, value in params)


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, search, report; 1 if the cell cannot be reached or a task fails."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help="the PLM's HOST:PORT")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="small")
    args = parser.parse_args(argv)
    console = Console()
    started = time.perf_counter()
    try:
        with Client(args.address) as client:
            search = run(client, args.grid, console)
    except Unavailable:
        Console(stderr=True).print(
            f"[red]hyperparam_search:[/red] no heapd cell answers at {args.address}"
            " (start one with `heapd up`, or pass --address)"
        )
        return 1
    except HeapdError as exc:
        Console(stderr=True).print(f"[red]hyperparam_search:[/red] {exc}")
        return 1
    except Exception as exc:  # a task raised its own error (e.g. a bad hyperparameter)
        Console(stderr=True).print(f"[red]hyperparam_search: a task failed:[/red] {exc!r}")
        return 1
    report(search, console, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
