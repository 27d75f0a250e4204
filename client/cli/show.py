"""`heapd status`, `heapd tasks`, `heapd fsck`: look at a cell."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from heapd import errors, shm
from heapd.client import Client
from heapd.plm import recovery
from heapd.plm.journal import Journal, JournalError
from heapd.security import Security
from heapd.status import ClusterStatus, TaskStatus, status_document

RECHECK_S = 0.5  # fsck looks again at a journal disagreement after this long
UNSCHEDULABLE_SHOWN = 3  # unschedulable tasks named by `heapd status`
UNSCHEDULABLE_SCAN = 1000  # queued tasks looked at to find them (oldest first)
DEPENDENCIES_SHOWN = 5  # dependencies of a PENDING task named in `heapd tasks` (--json: all)


def status(address: str, as_json: bool, security: Security | None = None) -> int:
    """Print the cell's workers, queue and totals."""
    try:
        with Client(address, security=security) as client:
            cluster = client.cluster_status()
            stuck = _unschedulable(client) if cluster.unschedulable else []
    except errors.HeapdError as exc:
        print(f"heapd status: {exc}", file=sys.stderr)
        return 1
    if as_json:
        shown = [(t.task_id, t.unschedulable) for t in stuck]
        print(json.dumps(status_document(cluster, shown), indent=2))
        return 0
    console = Console()
    console.print(_workers_table(cluster))
    console.print(
        f"cell [bold]{cluster.cell}[/bold]: queued {cluster.queued}, running {cluster.running}, "
        f"pending {cluster.pending}; done {cluster.succeeded_total} succeeded, "
        f"{cluster.failed_total} failed, {cluster.cancelled_total} cancelled "
        f"of {cluster.submitted_total} submitted"
    )
    aging = f", aging 1 priority level per {cluster.aging_s:g} s" if cluster.aging_s else ""
    console.print(f"scheduling: {cluster.policy or 'least-loaded'}{aging}")
    if cluster.unschedulable:
        console.print(
            f"[yellow]{cluster.unschedulable} queued task(s) no live worker can run[/yellow]"
            + ("; for example:" if stuck else "")
        )
        for t in stuck:
            console.print(f"  task {t.task_id}: {t.unschedulable}", markup=False)
    return 0


def _unschedulable(client: Client) -> list[TaskStatus]:
    """A few of the oldest queued tasks that no live worker could run, with the reason."""
    queued = client.list_tasks(["QUEUED"], UNSCHEDULABLE_SCAN)
    return [t for t in queued if t.unschedulable][:UNSCHEDULABLE_SHOWN]


def _amounts(values: dict[str, float]) -> str:
    return ",".join(f"{name}={amount:g}" for name, amount in sorted(values.items())) or "-"


def _free_of(offered: dict[str, float], free: dict[str, float]) -> str:
    """ "gpu 1/2, cpus 0/4": free of offered, per resource."""
    parts = [f"{n} {free.get(n, 0.0):g}/{a:g}" for n, a in sorted(offered.items())]
    return ", ".join(parts) or "-"


def _workers_table(cluster: ClusterStatus) -> Table:
    table = Table(title="workers")
    for column in (
        "id",
        "address",
        "host",
        "pid",
        "slots",
        "in flight",
        "state",
        "done",
        "last beat",
        "resources free/offered",
        "labels",
    ):
        table.add_column(column)
    now = time.time()
    for w in cluster.workers:
        table.add_row(
            str(w.worker_id),
            w.address,
            w.hostname,
            str(w.pid),
            str(w.slots),
            str(w.in_flight),
            w.state,
            str(w.tasks_done),
            f"{now - w.last_heartbeat:.1f}s ago" if w.last_heartbeat else "-",
            _free_of(w.resources, w.resources_free),
            ",".join(f"{k}={v}" for k, v in sorted(w.labels.items())) or "-",
        )
    return table


def tasks(
    address: str,
    states: Sequence[str],
    limit: int,
    as_json: bool,
    security: Security | None = None,
) -> int:
    """List tasks, oldest first."""
    try:
        with Client(address, security=security) as client:
            found = client.list_tasks(states, limit)
    except (errors.HeapdError, ValueError) as exc:
        print(f"heapd tasks: {exc}", file=sys.stderr)
        return 1
    if as_json:
        rows = [{k: v for k, v in dataclasses.asdict(t).items() if k != "outcome"} for t in found]
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"tasks ({len(found)})")
    for column in ("id", "state", "priority", "attempt", "worker", "waits on"):
        table.add_column(column)
    for t in found:
        table.add_row(
            str(t.task_id),
            t.state,
            str(t.priority),
            str(t.attempt),
            str(t.worker_id or "-"),
            _waits_on(t.after),
        )
    Console().print(table)
    return 0


def _waits_on(after: Sequence[int]) -> str:
    """A PENDING task's dependencies: "3,4,9" (the first few, and how many more)."""
    if not after:
        return "-"
    shown = ",".join(str(task_id) for task_id in after[:DEPENDENCIES_SHOWN])
    more = len(after) - DEPENDENCIES_SHOWN
    return f"{shown} (+{more} more)" if more > 0 else shown


def fsck(cell: str, repair: bool, state_dir: Path | None = None) -> int:
    """Check the cell's shared memory, and its journal against it when `state_dir` holds one;
    exit 0 when consistent, 1 with the problems listed."""
    try:
        with shm.Cell.attach(cell) as handle:
            problems = handle.check()
            if problems and repair:
                handle.repair()
                problems_after = handle.check()
            else:
                problems_after = problems
            journal_problems = _journal_problems(handle, cell, state_dir)
    except (shm.ShmError, JournalError) as exc:
        print(f"heapd fsck: {exc}", file=sys.stderr)
        return 2
    problems += journal_problems
    problems_after += journal_problems
    for problem in problems:
        print(f"problem: {problem}")
    if repair and problems:
        print(
            "repaired"
            if not problems_after
            else f"{len(problems_after)} problem(s) remain after repair"
        )
        return 0 if not problems_after else 1
    if not problems:
        print(f"cell {cell!r}: consistent")
    return 0 if not problems else 1


def _journal_problems(handle: shm.Cell, cell: str, state_dir: Path | None) -> list[str]:
    """The journal checked against the shared memory ([] without a journal). A running PLM
    records a settled task a moment after it settles: a disagreement is looked at twice."""
    if state_dir is None:
        return []
    journal = Journal.open_existing(state_dir, cell)
    if journal is None:
        return []
    with journal:
        problems = recovery.check(handle, journal)
        if problems:
            time.sleep(RECHECK_S)
            problems = recovery.check(handle, journal)
    return problems
