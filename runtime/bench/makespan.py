"""W3 (BENCHMARKS.md): makespan of 200 `sleep` builtin tasks of lognormal durations, per
placement policy.

Durations are `random.Random(42).lognormvariate(log(0.07), 0.9)` seconds clipped to 0.01-1.0.
The makespan runs from the first submit to the last result; the figure is its ratio to the lower
bound max(sum / slots, longest task). That bound cannot always be met, even by a scheduler of
no overhead that knows nothing of durations: `greedy_s` is what such a one achieves (each task,
in submission order, on the first slot to free), and `ratio_to_greedy` the makespan over it,
which is the scheduler's own cost. Each policy runs on 4 workers x 1 slot, and again on a
heterogeneous cell of workers with 1, 2 and 3 slots (6 slots), where the policy has to weigh
unequal workers.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from heapd import shm
from heapd.client import Client
from heapd.runtime.bench import cells
from heapd.runtime.bench.cells import OpenCell
from heapd.runtime.launch import LocalCell

TASKS = 200
SEED = 42
MEDIAN_S = 0.07
SIGMA = 0.9
SHORTEST_S, LONGEST_S = 0.01, 1.0
WORKERS = 4  # x 1 slot
HETERO_SLOTS = (1, 2, 3)  # slots of each worker of the heterogeneous cell
POLICIES = tuple(p.label for p in shm.Policy)
RESULT_TIMEOUT_S = 600.0
JOIN_TIMEOUT_S = 30.0

Figures = dict[str, float]


def durations(tasks: int = TASKS) -> list[float]:
    """The workload's task durations (seconds), the same on every run and every system."""
    rng = random.Random(SEED)
    return [
        min(max(rng.lognormvariate(math.log(MEDIAN_S), SIGMA), SHORTEST_S), LONGEST_S)
        for _ in range(tasks)
    ]


def run_makespan(cell: LocalCell, seconds: Sequence[float], slots: int) -> Figures:
    """One repetition: submit every sleep, wait for all; makespan against its lower bound."""
    bound = max(sum(seconds) / slots, max(seconds))
    greedy = greedy_makespan(seconds, slots)
    with cells.client(cell) as client:
        wait_for_slots(client, slots)
        start = time.perf_counter()
        futures = [client.submit_builtin("sleep", seconds=s) for s in seconds]
        results = client.gather(futures, timeout=RESULT_TIMEOUT_S)
        makespan = time.perf_counter() - start
    # The wire carries params as floats: compare loosely.
    if len(results) != len(seconds) or not all(
        math.isclose(r, s, rel_tol=1e-6) for r, s in zip(results, seconds, strict=True)
    ):
        raise AssertionError("W3: a sleep task returned a wrong result")
    return {
        "ratio": makespan / bound,
        "makespan_s": makespan,
        "bound_s": bound,
        "greedy_s": greedy,
        "ratio_to_greedy": makespan / greedy,
        "completed": float(len(results)),
    }


def greedy_makespan(seconds: Sequence[float], slots: int) -> float:
    """The makespan of list scheduling with no overhead: each task in order on the slot that
    frees first."""
    free_at = [0.0] * slots
    for s in seconds:
        heapq.heappush(free_at, heapq.heappop(free_at) + s)
    return max(free_at)


def measure(
    repeat: int,
    log: Callable[[str], None],
    open_cell: OpenCell,
    tasks: int = TASKS,
    policies: Sequence[str] = POLICIES,
) -> dict[str, Any]:
    """W3 under each policy on the 4 x 1 cell, then on the 1+2+3 cell ("hetero"); per policy
    the medians of `repeat` runs, each cell fresh: {policy: figures, "hetero": {policy: ...}}."""
    seconds = durations(tasks)
    report: dict[str, Any] = {}
    hetero: dict[str, Figures] = {}
    for policy in policies:
        log(f"W3: {policy}, {WORKERS} workers x 1 slot")
        with open_cell(f"w3-{policy}", WORKERS, 1, ["--policy", policy]) as cell:
            runs = [run_makespan(cell, seconds, WORKERS) for _ in range(repeat)]
        report[policy] = _medians(runs)
    for policy in policies:
        log(f"W3: {policy}, heterogeneous workers of {HETERO_SLOTS} slots")
        with open_cell(f"w3h-{policy}", 0, 1, ["--policy", policy]) as cell:
            for slots in HETERO_SLOTS:
                cell.add_worker(slots)
            runs = [run_makespan(cell, seconds, sum(HETERO_SLOTS)) for _ in range(repeat)]
        hetero[policy] = _medians(runs)
    report["hetero"] = hetero
    return report


def _medians(runs: Sequence[Figures]) -> Figures:
    figures = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    figures["ratio_max"] = max(r["ratio"] for r in runs)
    return figures


def wait_for_slots(client: Client, slots: int) -> None:
    """Wait until ALIVE workers offer `slots` slots (a worker may still be registering)."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    alive = 0
    while time.monotonic() < deadline:
        alive = sum(w.slots for w in client.cluster_status().workers if w.state == "ALIVE")
        if alive == slots:
            return
        time.sleep(0.05)
    raise TimeoutError(f"W3: the cell offers {alive} slots, not {slots}")
