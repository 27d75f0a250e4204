"""examples/ against real cells, and the progress bars of the CLI (`heapd.cli.progress`): drawn
on a terminal, silent everywhere else (pipes, files, tests)."""

from __future__ import annotations

import importlib.util
import io
import itertools
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from rich.console import Console

from heapd.cli.progress import task_progress
from heapd.runtime.bench import runner
from tests.conftest import StartCell

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ESC = "\x1b"  # every escape sequence a bar draws with starts here


def _example(name: str) -> ModuleType:
    """An example module loaded from its file (examples/ is not a package), once."""
    module_name = f"example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # its dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


def test_hyperparam_search_runs_as_a_script_against_a_cell(
    start_cell: StartCell, tmp_path: Path
) -> None:
    """The example as a user runs it: a script (its task function lives in `__main__` and goes
    pickled by value), run from elsewhere so no worker can import it, output into a pipe."""
    cell = start_cell(workers=2, slots=1)
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "hyperparam_search.py"), "--address", cell.address],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    counts = r"tasks: (\d+) coarse \+ (\d+) refinement = (\d+), all succeeded"
    tasks = re.search(counts, done.stdout)
    best = re.search(r"best: ([0-9.]+) (\w+)", done.stdout)
    assert tasks is not None and best is not None, done.stdout
    coarse, refine, total = (int(n) for n in tasks.groups())
    search = _example("hyperparam_search")
    assert coarse == len(search.coarse_grid(search.GRIDS["small"])) == 6
    # At the end every coarse configuration above the median has been refined: at least one.
    assert refine >= 1
    assert total == coarse + refine
    # The coarse grid alone holds an SVC scoring 0.968 (3-fold CV is deterministic).
    assert float(best.group(1)) > 0.9
    assert f"best {min(10, total)} of {total} configurations" in done.stdout
    assert ESC not in done.stdout + done.stderr, "no progress bar into a pipe"


def test_hyperparam_search_refines_neighbours_once() -> None:
    """Neighbours are half a coarse step away, each submitted once however often it is reached."""
    search = _example("hyperparam_search")
    grid = search.GRIDS["small"]
    svc = ("svc", (("C", 1.0), ("gamma", 0.1)))
    assert list(search.refinements(grid, svc)) == [
        ("svc", (("C", 0.316), ("gamma", 0.1))),
        ("svc", (("C", 3.16), ("gamma", 0.1))),
        ("svc", (("C", 1.0), ("gamma", 0.0316))),
        ("svc", (("C", 1.0), ("gamma", 0.316))),
    ]
    assert list(search.refinements(grid, ("knn", (("k", 1.0),)))) == [("knn", (("k", 3.0),))]
    state = search.Search(grid)
    first = state.new_neighbours([svc])
    again = state.new_neighbours([("svc", (("C", 3.16), ("gamma", 0.316)))])
    assert len(first) == 4
    assert ("svc", (("C", 1.0), ("gamma", 0.316))) not in again, "already submitted"
    assert state.refined == {svc, ("svc", (("C", 3.16), ("gamma", 0.316)))}


def test_hyperparam_search_says_when_no_cell_answers(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "hyperparam_search.py"), "--address", "127.0.0.1:1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "no heapd cell answers at 127.0.0.1:1" in done.stderr


# --- progress bars


def _drive(console: Console) -> None:
    """A bar taken to its end, as the commands do; its clock moves one second per reading, so
    it has a rate to show."""
    seconds = itertools.count()
    with task_progress(console) as progress:
        progress.get_time = lambda: float(next(seconds))
        bar = progress.add_task("tasks", total=3)
        for _ in range(3):
            progress.advance(bar)


def test_progress_is_silent_off_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False)
    assert task_progress(console).disable
    _drive(console)
    assert out.getvalue() == ""


def test_progress_draws_bar_count_and_rate_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    assert not task_progress(console).disable
    _drive(console)
    text = out.getvalue()
    assert ESC in text
    assert "tasks" in text
    assert "3/3" in text
    assert re.search(r"[0-9.]+/s", text), "the rate"
    assert "eta" in text


def test_bench_bars_count_steps_and_tasks() -> None:
    """The bench's bars: one over its steps; a run of a counted workload gets a bar of its own,
    moved by the workload's ticks, and removed when the run ends."""
    out = io.StringIO()
    with task_progress(Console(file=out, force_terminal=True, width=100)) as progress:
        bars = runner._Bars(progress, steps=2)
        bars.step_done()
        seen: list[int] = []

        def counted(cell: object, tick: runner.Tick) -> runner.Figures:
            for done in (1000, 2000):
                tick(done)
                seen.append(int(progress.tasks[-1].completed))
            return {"tasks_per_s": 1.0}

        figures = bars.run(lambda cell: {}, None, "TEST run 1/1", (counted, 2000))  # type: ignore[arg-type]
        assert figures == {"tasks_per_s": 1.0}
        assert seen == [1000, 2000]
        assert len(progress.tasks) == 1, "the run's bar is gone"
        assert bars.run(lambda cell: {"x": 1.0}, None, "W4") == {"x": 1.0}  # type: ignore[arg-type]
        bars.step_done()
        assert progress.tasks[0].completed == 2
    assert "TEST run 1/1" in out.getvalue()


def test_heapd_submit_count_into_a_pipe(start_cell: StartCell) -> None:
    """`--count N`: N tasks, each told its index; outputs in index order; exit code the first
    non-zero one; and through a pipe no progress bar, only the tasks' output."""
    cell = start_cell(workers=1, slots=2)
    heapd = [sys.executable, "-m", "heapd", "submit", "--address", cell.address]
    script = 'echo "task $HEAPD_TASK_INDEX"; [ "$HEAPD_TASK_INDEX" != 7 ] || exit 4'
    done = subprocess.run(
        [*heapd, "--count", "12", "--", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 4
    assert done.stdout == "".join(f"task {i}\n" for i in range(12))
    assert ESC not in done.stdout + done.stderr
    assert done.stderr == ""
    zero = subprocess.run(
        [*heapd, "--count", "0", "--", "true"], capture_output=True, text=True, timeout=60
    )
    assert zero.returncode == 2
    assert "--count must be at least 1" in zero.stderr
