"""`heapd submit` and `heapd cancel`: act on tasks from the shell."""

from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Sequence

from rich.console import Console

from heapd import errors
from heapd.cli.progress import task_progress
from heapd.client import Client
from heapd.futures import TaskFuture
from heapd.options import pairs_from_text, resources_from_text
from heapd.results import CommandResult
from heapd.security import Security

INDEX_ENV = "HEAPD_TASK_INDEX"  # each copy of `heapd submit --count N` learns its index here


def submit(
    address: str,
    argv: Sequence[str],
    priority: int | str,
    timeout: float | None,
    retries: int,
    key: str | None = None,
    resources: str = "",
    labels: str = "",
    after: Sequence[int] = (),
    count: int = 1,
    security: Security | None = None,
) -> int:
    """Run a command task, wait, print its output, exit with its code. With a key the cell
    already knows, it waits for that first task instead (a safe retry).

    `count` > 1 runs `count` copies (an array job): copy i has HEAPD_TASK_INDEX=i in its
    environment and key KEY/i; a progress bar follows them on a terminal; their outputs are
    printed in index order, and the exit code is the first non-zero one. `resources` and
    `labels` are as typed: "gpu=1,cpus=2", "zone=a"; `after` are the ids of the tasks it waits
    on."""
    console = Console(stderr=True)
    if count < 1:
        console.print(f"[red]heapd submit:[/red] --count must be at least 1, not {count}")
        return 2
    try:
        with Client(address, security=security) as client:
            futures = [
                client.submit_command(
                    argv,
                    env={INDEX_ENV: str(i)} if count > 1 else None,
                    priority=priority,
                    timeout=timeout,
                    retries=retries,
                    key=key if key is None or count == 1 else f"{key}/{i}",
                    resources=resources_from_text(resources),
                    labels=pairs_from_text(labels, "labels"),
                    after=after,
                )
                for i in range(count)
            ]
            if count == 1:
                with console.status(f"task {futures[0].task_id}: {' '.join(argv)}"):
                    concurrent.futures.wait(futures)
            else:
                _wait_with_progress(client, futures, console)
    except errors.HeapdError as exc:
        console.print(f"[red]heapd submit:[/red] {exc}")
        return 1
    return _report(futures, console)


def _wait_with_progress(client: Client, futures: list[TaskFuture], console: Console) -> None:
    """Until every task has settled, a bar that moves as results arrive (terminal only)."""
    with task_progress(console, transient=True) as progress:
        bar = progress.add_task("tasks", total=len(futures))
        for _ in client.as_completed(futures):
            progress.advance(bar)


def _report(futures: list[TaskFuture], console: Console) -> int:
    """Each task's stdout and stderr, in submission order; the first non-zero exit code (1 for a
    task that settled without running to its end: timeout, cancelled, lost)."""
    code = 0
    for future in futures:
        try:
            result: CommandResult = future.result()
        except concurrent.futures.CancelledError:  # cancelled in the cell meanwhile
            console.print(f"[red]heapd submit:[/red] task {future.task_id} was cancelled")
            code = code or 1
            continue
        except errors.HeapdError as exc:
            console.print(f"[red]heapd submit:[/red] task {future.task_id}: {exc}")
            code = code or 1
            continue
        sys.stdout.buffer.write(result.stdout)
        sys.stdout.flush()
        sys.stderr.buffer.write(result.stderr)
        sys.stderr.flush()
        code = code or int(result.returncode)
    return code


def cancel(address: str, task_id: int, security: Security | None = None) -> int:
    """Cancel one task; exit 0 if it is now CANCELLED, 1 if it had already settled."""
    try:
        with Client(address, security=security) as client:
            cancelled = client.cancel(task_id)
    except errors.HeapdError as exc:
        print(f"heapd cancel: {exc}", file=sys.stderr)
        return 1
    print(f"task {task_id}: {'cancelled' if cancelled else 'already settled'}")
    return 0 if cancelled else 1
