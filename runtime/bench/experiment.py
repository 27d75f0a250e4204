"""The `policies` experiment (BENCHMARKS.md, "Experiments"): W3's durations on a heterogeneous
cell, one of its workers slowed by a CPU hog, under each placement policy.

The cell has workers of 1, 2 and 3 slots (W3's heterogeneous cell, `makespan.HETERO_SLOTS`); the
3-slot one is slowed. The tasks are `spin.spin`: W3's duration, a fifth of it CPU time in short
bursts and the rest sleep. W3's own `sleep` tasks would not do: a hog slows nothing that sleeps.
Pure CPU work would not do either: six slots of it on two cores run at a third of their speed
whatever the policy, and the figure would measure the machine.

How the worker is slowed, and why so (measured on the 2-core machine this was written on):

- The hog (`spin.hog`, a process started here and killed whatever happens) spins on the last
  CPU; the slowed worker runs pinned to that CPU (`taskset`), task processes included.
- Pinning alone barely slows a task: the kernel shares a CPU fairly among runnable tasks and
  favours one waking from sleep, so bursts of 2 ms among 8 ms sleeps still get the CPU at once
  (1.0 s of `spin` took 1.3 s beside the hog, 1.3 s on the other CPU).
- So the slowed worker also runs at nice `NICE` (10: a tenth of the hog's weight). Linux's
  autogroup scheduling (on by default) shares CPU among sessions before it looks at nice, and
  every task process leads its own session, so the nice value is also written to each of the
  worker's sessions (/proc/PID/autogroup). Then 1.0 s of `spin` takes about 3 s beside the
  hog (three tasks at once). In the full experiment the slowed worker's tasks ran at 0.36 to
  0.38 of their nominal speed, the others' at 0.88 to 0.90 (sleeps overshoot, and the rest of
  the machine shares the other CPU).

The experiment measures each worker's speed (nominal seconds / seconds its tasks took) in the
same run; the "bound" is the speed-weighted lower bound max(sum / sum(slots x speed), longest /
fastest speed), the best any placement could do on workers as fast as they proved to be. The
nominal bound of W3, max(sum / 6 slots, longest), is reported beside it.

Timings come from the tasks themselves (`spin.Ran`, on the same clock as the client's): the
cell releases a task once its client acknowledges the result, so nothing is left to ask it
after the run. All tasks go out in one burst (`Client.map`); a task's latency runs from the
burst to its end, and the queue depth is the number not yet started (in the cell's queue or in
a worker's prefetch buffer).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from heapd.runtime.bench import cells, makespan, spin
from heapd.runtime.bench.cells import OpenCell
from heapd.runtime.launch import LocalCell

EXPERIMENTS = ("policies",)
SLOWED = len(makespan.HETERO_SLOTS) - 1  # the worker with the most slots
NICE = 10
HOG_START_TIMEOUT_S = 30.0
UTILISATION_BINS = 100


@dataclass(frozen=True, slots=True)
class Worker:
    """One worker of the cell: its slots, whether the hog slows it, its pid."""

    slots: int
    slowed: bool
    pid: int

    @property
    def label(self) -> str:
        """e.g. "3-slot (hog)"."""
        return f"{self.slots}-slot{' (hog)' if self.slowed else ''}"


@dataclass(frozen=True, slots=True)
class TaskRun:
    """One task: its W3 duration, where it ran (worker index, and which of that worker's task
    processes: its lane), and when it started and finished, in seconds since the burst."""

    seconds: float
    worker: int
    lane: int
    started_s: float
    finished_s: float


@dataclass(frozen=True, slots=True)
class PolicyRun:
    """One run of the workload under `policy`; `ratios` are those of every repetition (this
    one is the median)."""

    policy: str
    workers: tuple[Worker, ...]
    tasks: tuple[TaskRun, ...]
    makespan_s: float
    ratios: tuple[float, ...] = ()


def measure(
    open_cell: OpenCell,
    repeat: int = 1,
    log: Callable[[str], None] = lambda _: None,
    tasks: int = makespan.TASKS,
    policies: Sequence[str] = makespan.POLICIES,
) -> list[PolicyRun]:
    """Per policy: a fresh cell and hog, `repeat` runs of the first `tasks` W3 durations; the
    run of median ratio, with every run's ratio."""
    if shutil.which("taskset") is None:
        raise RuntimeError("the policies experiment pins a worker with taskset (util-linux)")
    seconds = makespan.durations(tasks)
    cpu = max(os.sched_getaffinity(0))
    out = []
    for policy in policies:
        log(f"policies: {policy}, workers of {makespan.HETERO_SLOTS} slots, hog on CPU {cpu}")
        with cpu_hog(cpu), open_cell(f"policies-{policy}", 0, 1, ["--policy", policy]) as cell:
            workers = start_workers(cell, cpu)
            runs = [run_once(cell, policy, workers, seconds) for _ in range(repeat)]
        ratios = [figures(r)["ratio"] for r in runs]
        median = sorted(range(len(runs)), key=ratios.__getitem__)[(len(runs) - 1) // 2]
        out.append(_with_ratios(runs[median], tuple(ratios)))
    return out


@contextlib.contextmanager
def cpu_hog(cpu: int) -> Iterator[int]:
    """A process spinning on CPU `cpu` (yields its pid); killed on exit, whatever happened."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: never fork
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=spin.hog, args=(cpu, sender), daemon=True)
    try:
        process.start()
        sender.close()
        if not receiver.poll(HOG_START_TIMEOUT_S):
            raise RuntimeError(f"the CPU hog did not start within {HOG_START_TIMEOUT_S}s")
        try:
            pid = int(receiver.recv())
        except EOFError:
            raise RuntimeError(f"the CPU hog exited with {process.exitcode}") from None
        yield pid
    finally:
        receiver.close()
        if process.pid is not None:
            process.kill()
            process.join()
            process.close()


def start_workers(cell: LocalCell, cpu: int) -> tuple[Worker, ...]:
    """Add the workers of `makespan.HETERO_SLOTS` slots; the slowed one pinned to `cpu` (the
    hog's) at nice `NICE`, each of its sessions too (see the module docstring)."""
    workers = []
    for i, slots in enumerate(makespan.HETERO_SLOTS):
        slowed = i == SLOWED
        launcher = ["taskset", "-c", str(cpu), "nice", "-n", str(NICE)] if slowed else []
        pid = cell.add_worker(slots, launcher)
        if slowed:
            for process in (pid, *_children(pid)):
                _renice_session(process, NICE)
        workers.append(Worker(slots, slowed, pid))
    return tuple(workers)


def run_once(
    cell: LocalCell, policy: str, workers: Sequence[Worker], seconds: Sequence[float]
) -> PolicyRun:
    """Submit every task in one burst, wait for all; where and when each ran."""
    worker_of = {w.pid: i for i, w in enumerate(workers)}
    with cells.client(cell) as client:
        makespan.wait_for_slots(client, sum(w.slots for w in workers))
        start = time.time()
        futures = client.map(spin.spin, seconds)
        results = client.gather(futures, timeout=makespan.RESULT_TIMEOUT_S)
        makespan_s = time.time() - start
    if len(results) != len(seconds) or not all(isinstance(r, spin.Ran) for r in results):
        raise AssertionError("policies: a task returned a wrong result")
    lanes: dict[int, int] = {}  # task process -> its lane on its worker, in order of use
    used = [0] * len(workers)  # lanes per worker
    tasks = []
    for s, ran in sorted(zip(seconds, results, strict=True), key=lambda p: p[1].started_at):
        worker = worker_of.get(ran.worker_pid)
        if worker is None:
            raise AssertionError(f"policies: a task ran under pid {ran.worker_pid}, no worker")
        if ran.pid not in lanes:
            lanes[ran.pid] = used[worker]
            used[worker] += 1
        start_s, end_s = ran.started_at - start, ran.finished_at - start
        tasks.append(TaskRun(s, worker, lanes[ran.pid], start_s, end_s))
    return PolicyRun(policy, tuple(workers), tuple(tasks), makespan_s)


# --- figures


def speeds(run: PolicyRun) -> list[float]:
    """Per worker: nominal seconds / seconds its tasks took (1.0 if it ran none)."""
    nominal = [0.0] * len(run.workers)
    taken = [0.0] * len(run.workers)
    for t in run.tasks:
        nominal[t.worker] += t.seconds
        taken[t.worker] += t.finished_s - t.started_s
    return [n / d if d > 0 else 1.0 for n, d in zip(nominal, taken, strict=True)]


def bounds(run: PolicyRun) -> tuple[float, float]:
    """(speed-weighted, nominal) lower bounds of the makespan; see the module docstring."""
    seconds = [t.seconds for t in run.tasks]
    speed = speeds(run)
    capacity = sum(w.slots * s for w, s in zip(run.workers, speed, strict=True))
    weighted = max(sum(seconds) / capacity, max(seconds) / max(speed))
    nominal = max(sum(seconds) / sum(w.slots for w in run.workers), max(seconds))
    return weighted, nominal


def figures(run: PolicyRun) -> dict[str, float]:
    """The run's figures (seconds, ratios, fractions)."""
    weighted, nominal = bounds(run)
    busy = sum(t.finished_s - t.started_s for t in run.tasks)
    slots = sum(w.slots for w in run.workers)
    speed = speeds(run)
    slowed = {i for i, w in enumerate(run.workers) if w.slowed}
    cuts = statistics.quantiles(latencies(run), n=100, method="inclusive")
    return {
        "makespan_s": run.makespan_s,
        "bound_s": weighted,
        "ratio": run.makespan_s / weighted,
        "nominal_bound_s": nominal,
        "nominal_ratio": run.makespan_s / nominal,
        "utilisation": busy / (slots * run.makespan_s),
        "p50_s": cuts[49],
        "p99_s": cuts[98],
        # the slowest of the slowed workers, the slowest of the others (1.0 if none)
        "slowed_speed": min((s for i, s in enumerate(speed) if i in slowed), default=1.0),
        "other_speed": min((s for i, s in enumerate(speed) if i not in slowed), default=1.0),
        "slowed_share": sum(t.seconds for t in run.tasks if t.worker in slowed)
        / sum(t.seconds for t in run.tasks),
    }


def latencies(run: PolicyRun) -> list[float]:
    """Each task's latency (burst to its end), sorted."""
    return sorted(t.finished_s for t in run.tasks)


def queue_depth(run: PolicyRun) -> tuple[list[float], list[int]]:
    """Tasks not yet started over time, as steps: (times, depth from each time on)."""
    starts = sorted(t.started_s for t in run.tasks)
    depth = len(starts)
    return [0.0, *starts], [depth, *(depth - i for i in range(1, depth + 1))]


def utilisation(
    run: PolicyRun, bins: int = UTILISATION_BINS
) -> tuple[list[float], list[list[float]]]:
    """Per worker, the fraction of its slots busy in each of `bins` equal bins of the makespan:
    (bin starts, [fractions per bin] per worker)."""
    width = run.makespan_s / bins
    starts = [i * width for i in range(bins)]
    busy = [[0.0] * bins for _ in run.workers]
    for t in run.tasks:
        first = min(int(t.started_s / width), bins - 1)
        last = min(int(t.finished_s / width), bins - 1)
        for b in range(first, last + 1):
            overlap = min(t.finished_s, starts[b] + width) - max(t.started_s, starts[b])
            busy[t.worker][b] += max(overlap, 0.0)
    return starts, [
        [b / (w.slots * width) for b in row] for w, row in zip(run.workers, busy, strict=True)
    ]


# --- report


def markdown(runs: Sequence[PolicyRun], images: Sequence[str] = ()) -> str:
    """The results as Markdown: what ran, the table, how the bound is taken, the images."""
    first = runs[0]
    workers = ", ".join(str(w.slots) for w in first.workers)
    hogged = " and ".join(f"{w.slots}-slot" for w in first.workers if w.slowed) or "no"
    lines = [
        "# Placement policies on a heterogeneous cell, one worker slowed by a CPU hog",
        "",
        f"{len(first.tasks)} tasks of W3's durations (`spin`: {spin.DUTY:.0%} CPU in bursts, the"
        f" rest sleep), submitted in one burst to workers of {workers} slots, the"
        f" {hogged} one pinned, at nice {NICE}, to the CPU a hog keeps busy."
        f" Each policy on a fresh cell, hog included; the run of median ratio of"
        f" {len(first.ratios) or 1}.",
        "",
        "| policy | makespan s | bound s | ratio | ratio range | nominal ratio |"
        " mean utilisation | p50 latency s | p99 latency s | slowed speed | other speed |"
        " on slowed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        f = figures(run)
        ratios = run.ratios or (f["ratio"],)
        lines.append(
            f"| {run.policy} | {f['makespan_s']:.2f} | {f['bound_s']:.2f} | {f['ratio']:.2f} |"
            f" {min(ratios):.2f} to {max(ratios):.2f} | {f['nominal_ratio']:.2f} |"
            f" {f['utilisation']:.0%} | {f['p50_s']:.2f} | {f['p99_s']:.2f} |"
            f" {f['slowed_speed']:.2f} | {f['other_speed']:.2f} | {f['slowed_share']:.0%} |"
        )
    lines += [
        "",
        "Bound: max(sum of durations / sum(slots x speed), longest / fastest speed), each"
        " worker's speed (nominal seconds / seconds its tasks took) measured in the same run;"
        " the nominal ratio divides by W3's bound max(sum / slots, longest) instead. Other"
        ' speed: the slowest unslowed worker\'s. "On slowed": the share of the work the slowed'
        " worker ran. Latency: from the burst to the task's end.",
    ]
    if images:
        lines += ["", *(f"![{Path(i).stem}]({i})" for i in images)]
    return "\n".join(lines) + "\n"


def main(
    name: str | None,
    open_cell: OpenCell,
    repeat: int,
    plot_dir: Path | None,
    log: Callable[[str], None],
    tasks: int = makespan.TASKS,
    policies: Sequence[str] = makespan.POLICIES,
) -> int:
    """`heapd bench --experiment NAME [--plot DIR]`: run it (on `policies`), print the
    Markdown table, and with `plot_dir` write the PNGs and results.md there (saying where).
    Bad arguments: a message and 2."""
    if name not in EXPERIMENTS:
        what = "--plot needs --experiment" if name is None else f"no experiment {name!r}"
        log(f"{what}; experiments: {', '.join(EXPERIMENTS)}")
        return 2
    if tasks < 2:
        log(f"--tasks must be at least 2, not {tasks}")
        return 2
    write = None
    if plot_dir is not None:
        try:  # before the experiment: a missing matplotlib must not cost a run
            from heapd.runtime.bench import plots
        except ImportError as exc:
            log(str(exc))
            return 2
        write = plots.write
    runs = measure(open_cell, repeat, log, tasks, policies)
    if write is None or plot_dir is None:
        print(markdown(runs))
        return 0
    images = write(runs, plot_dir)
    report = plot_dir / "results.md"
    report.write_text(markdown(runs, [p.name for p in images]))
    print(markdown(runs))
    for path in [*images, report]:
        print(f"wrote {path}")
    return 0


def _with_ratios(run: PolicyRun, ratios: tuple[float, ...]) -> PolicyRun:
    return PolicyRun(run.policy, run.workers, run.tasks, run.makespan_s, ratios)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
    return out


def _renice_session(pid: int, nice: int) -> None:
    """Set the autogroup nice of `pid`'s session (a no-op where the kernel has none)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
