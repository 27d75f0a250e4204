"""`heapd bench --workload W2 --trace`: where a single task's round trip spends its time.

W2's client traces every TRACE_EVERY-th task (`Client(trace_every=...)`); the roles record each
traced task's hops in the cell's trace rings (`heapd.shm.trace`), and the client side stamps
when it sent the task, when its result reached the client (the future's done callback, run by
the thread that read it from the stream) and when the caller had it. After the runs, the bench
joins them by task id and reports, per hop, the time since the hop before it on the path:
client → PLM → scheduler → worker → child → worker → register → PLM → client. Hops off that
path (`BRANCHES`) are reported from the hop they follow.

Every stamp is the wall clock in ns (one clock for every process of the host): the bench's cells
run on the bench's host.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.table import Table

from heapd import shm
from heapd.futures import TaskFuture
from heapd.shm import Hop, Stamp

TRACE_EVERY = 10  # of W2's round trips, every 10th is traced: ~100 per run
# Hops off the path, timed from the hop they follow: the journal commit (the submitter's
# answer) runs beside the task; and a role that rings a doorbell inside a cell call stamps
# "queued" or "settled" after the call returns, which the woken role may beat.
BRANCHES = {
    Hop.PLM_QUEUED: Hop.PLM_RECEIVED,
    Hop.PLM_COMMITTED: Hop.PLM_QUEUED,
    Hop.REGISTER_SETTLED: Hop.REGISTER_RECEIVED,
}
# The hops on a round trip's path, in order; each is timed from the one before it.
PATH = [hop for hop in Hop if hop not in BRANCHES]


@dataclass
class ClientStamps:
    """The client side of traced round trips: per task id, sent, received and resolved ns."""

    every: int = TRACE_EVERY
    stamps: dict[int, dict[Hop, int]] = field(default_factory=dict)

    def sent(self, future: TaskFuture, sent_ns: int) -> None:
        """A task was submitted at `sent_ns`; stamp when its result reaches the client."""
        stamps = self.stamps[future.task_id] = {Hop.CLIENT_SENT: sent_ns}
        future.add_done_callback(lambda _: stamps.setdefault(Hop.CLIENT_RECEIVED, time.time_ns()))

    def resolved(self, future: TaskFuture) -> None:
        """The caller has the task's result."""
        self.stamps[future.task_id][Hop.CLIENT_RESOLVED] = time.time_ns()


def report(cell: str, client: ClientStamps) -> dict[str, dict[str, float]]:
    """The per-hop report of the traced tasks of `cell` (a cell on this host)."""
    with shm.Cell.attach(cell) as handle:
        stamps = handle.trace_stamps()
    return summarize(join(stamps, client))


def join(cell_stamps: Sequence[Stamp], client: ClientStamps) -> dict[int, dict[Hop, int]]:
    """Every traced task's stamps, the cell's and the client's, by task id; only tasks with a
    stamp at every hop of the path (a ring may have wrapped over the earliest; a cell without a
    journal stamps no PLM_COMMITTED)."""
    tasks: dict[int, dict[Hop, int]] = {}
    for stamp in cell_stamps:
        if stamp.task_id in client.stamps:
            tasks.setdefault(stamp.task_id, dict(client.stamps[stamp.task_id]))[stamp.hop] = (
                stamp.ns
            )
    return {task_id: hops for task_id, hops in tasks.items() if all(h in hops for h in PATH)}


def summarize(tasks: dict[int, dict[Hop, int]]) -> dict[str, dict[str, float]]:
    """Per hop (in path order, then the branches): p50 and p90 of the µs since the hop before
    it, and the p50 of the µs since the client sent the task."""
    if not tasks:
        return {}
    report: dict[str, dict[str, float]] = {}
    steps = [*itertools.pairwise(PATH), *((b, h) for h, b in BRANCHES.items())]
    for before, hop in steps:
        if not all(hop in t and before in t for t in tasks.values()):
            continue  # a branch this cell does not stamp (no journal: no PLM_COMMITTED)
        gaps = [(t[hop] - t[before]) / 1000 for t in tasks.values()]
        since = [(t[hop] - t[Hop.CLIENT_SENT]) / 1000 for t in tasks.values()]
        report[f"{before.name.lower()} -> {hop.name.lower()}"] = {
            "p50_us": statistics.median(gaps),
            "p90_us": _p90(gaps),
            "at_p50_us": statistics.median(since),
        }
    total = [(t[Hop.CLIENT_RESOLVED] - t[Hop.CLIENT_SENT]) / 1000 for t in tasks.values()]
    report["round trip"] = {
        "p50_us": statistics.median(total),
        "p90_us": _p90(total),
        "tasks": float(len(tasks)),
    }
    return report


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[8] if len(values) > 1 else values[0]


def render(summary: dict[str, dict[str, float]]) -> Table:
    """The per-hop report as a table: one row per hop, then the round trip."""
    table = Table(title=f"W2 per hop (every {TRACE_EVERY}th round trip traced; µs)")
    for column in ("hop", "p50", "p90", "p50 since sent"):
        table.add_column(column, justify="left" if column == "hop" else "right")
    for step, figures in summary.items():
        since = figures.get("at_p50_us")
        table.add_row(
            step,
            f"{figures['p50_us']:,.0f}",
            f"{figures['p90_us']:,.0f}",
            "" if since is None else f"{since:,.0f}",
        )
    return table
