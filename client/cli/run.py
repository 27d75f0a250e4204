"""`heapd submit` and `heapd cancel`: act on tasks from the shell."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rich.console import Console

from heapd import errors
from heapd.client import Client
from heapd.options import pairs_from_text, resources_from_text


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
) -> int:
    """Run a command task, wait with a spinner, print its output, exit with its code. With a
    key the cell already knows, it waits for that first task instead (a safe retry).
    `resources` and `labels` are as typed: "gpu=1,cpus=2", "zone=a"; `after` are the ids of
    the tasks it waits on."""
    console = Console(stderr=True)
    try:
        with Client(address) as client:
            future = client.submit_command(
                argv,
                priority=priority,
                timeout=timeout,
                retries=retries,
                key=key,
                resources=resources_from_text(resources),
                labels=pairs_from_text(labels, "labels"),
                after=after,
            )
            with console.status(f"task {future.task_id}: {' '.join(argv)}"):
                result = future.result()
    except errors.HeapdError as exc:
        console.print(f"[red]heapd submit:[/red] {exc}")
        return 1
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr)
    sys.stderr.flush()
    return int(result.returncode)


def cancel(address: str, task_id: int) -> int:
    """Cancel one task; exit 0 if it is now CANCELLED, 1 if it had already settled."""
    try:
        with Client(address) as client:
            cancelled = client.cancel(task_id)
    except errors.HeapdError as exc:
        print(f"heapd cancel: {exc}", file=sys.stderr)
        return 1
    print(f"task {task_id}: {'cancelled' if cancelled else 'already settled'}")
    return 0 if cancelled else 1
