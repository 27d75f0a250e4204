"""`make demo`: start a cell with local workers, run a mixed workload with a progress bar, print
a summary, stop the cell. The task functions below run on the workers (imported by reference).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from heapd.cli.progress import task_progress
from heapd.client import Client
from heapd.futures import TaskFuture
from heapd.runtime.launch import LocalCell
from heapd.status import ClusterStatus

COLLATZ_TASKS = 2000


def collatz_steps(n: int) -> int:
    """Steps for n to reach 1 under the Collatz map (a small CPU-bound Python task)."""
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def fragile(n: int) -> int:
    """Fails for n == 13, to show a remote exception coming back with its type."""
    if n == 13:
        raise ValueError(f"unlucky number {n}")
    return n


def run(console: Console) -> int:
    """The demo itself; returns the exit code."""
    with (
        tempfile.TemporaryDirectory() as scratch,
        LocalCell(
            f"demo-{os.getpid()}",
            workers=2,
            slots=2,
            log_dir=Path(scratch) / "logs",
            state_dir=Path(scratch) / "state",  # the demo's journal goes with it
        ) as cell,
    ):
        console.print(
            f"[bold]heapd demo[/bold]: cell up, PLM at {cell.address} (2 workers x 2 slots)"
        )
        with Client(cell.address, security=cell.security) as client:
            started = time.perf_counter()
            futures = client.map(collatz_steps, range(1, COLLATZ_TASKS + 1))
            futures += [
                client.submit_builtin("cpu", steps=20, size=256, priority="high") for _ in range(8)
            ]
            futures += [client.submit(fragile, n) for n in (12, 13)]
            command = client.submit_command(["uname", "-sr"])
            futures.append(command)
            outcomes = _wait_with_progress(client, futures, console)
            elapsed = time.perf_counter() - started
            status = client.cluster_status()
        _summary(console, futures, outcomes, elapsed, status)
        console.print(
            f"command task [cyan]uname -sr[/cyan] said: {command.result().stdout.decode().strip()}"
        )
        longest = max(range(COLLATZ_TASKS), key=lambda i: futures[i].result())
        steps = futures[longest].result()
        console.print(
            f"longest Collatz chain up to {COLLATZ_TASKS}: n={longest + 1}, {steps} steps"
        )
        failed = [f for f in futures if f.exception() is not None]
        for f in failed:
            exc = f.exception()
            name = type(exc).__name__
            console.print(
                f"task {f.task_id} raised [red]{name}: {exc}[/red] (remote traceback kept)"
            )
    console.print("cell stopped; nothing left running.")
    return 0


def _wait_with_progress(
    client: Client, futures: list[TaskFuture], console: Console
) -> Counter[str]:
    """Outcomes counted as results arrive, with a bar on a terminal."""
    outcomes: Counter[str] = Counter()
    with task_progress(console) as progress:
        bar = progress.add_task("tasks", total=len(futures))
        for future in client.as_completed(futures, timeout=300):
            outcomes["failed" if future.exception() is not None else "succeeded"] += 1
            progress.advance(bar)
    return outcomes


def _summary(
    console: Console,
    futures: list[TaskFuture],
    outcomes: Counter[str],
    elapsed: float,
    status: ClusterStatus,
) -> None:
    table = Table(title="results")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("tasks", str(len(futures)))
    table.add_row("succeeded", str(outcomes["succeeded"]))
    table.add_row("failed (on purpose)", str(outcomes["failed"]))
    table.add_row("wall time", f"{elapsed:.2f} s")
    table.add_row("throughput", f"{len(futures) / elapsed:,.0f} tasks/s")
    for w in status.workers:
        table.add_row(f"worker {w.worker_id} ({w.address})", f"{w.tasks_done} tasks")
    console.print(table)


if __name__ == "__main__":
    sys.exit(run(Console()))
