"""The common tail of a control-role entry point: attach the cell, run, detach."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from heapd import shm
from heapd.runtime.lifelines import EXIT_FAILED, RoleFailed


def run_attached(
    role: str, cell_name: str, serve: Callable[[shm.Cell], Coroutine[Any, Any, None]]
) -> int:
    """Attach to the cell and run `serve(cell)`; exit code 2 with a clear message if the cell
    cannot be attached (missing, or another layout), EXIT_FAILED if a lifeline of the role died
    (logged when it died) so that the supervisor restarts it."""
    try:
        cell = shm.Cell.attach(cell_name)
    except shm.ShmError as exc:
        print(f"heapd {role}: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(cell))
    except RoleFailed as exc:
        print(f"heapd {role}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        cell.close()
    return 0
