"""The fresh cell each workload runs against: `heapd up` with its logs and journal in a scratch
directory that goes away with it, its roles and workers talking over the run's transport."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from heapd.client import Client
from heapd.runtime.config import Durability, Transport
from heapd.runtime.launch import LocalCell

# (label, workers, slots per worker, extra `heapd up` flags) -> a started cell, stopped on exit.
# The workloads that need several cells (W3: one per policy) take one of these, so a test can
# hand them its own (cells it checks and cleans up).
OpenCell = Callable[[str, int, int, Sequence[str]], AbstractContextManager[LocalCell]]


@contextlib.contextmanager
def bench_cell(
    label: str,
    workers: int,
    slots: int,
    extra_args: Sequence[str] = (),
    durability: Durability = Durability.FSYNC,
    transport: Transport = Transport.UNIX,
) -> Iterator[LocalCell]:
    """A started cell named after the bench process and `label`, journal as `durability`,
    over `transport`."""
    with (
        tempfile.TemporaryDirectory() as scratch,
        LocalCell(
            f"bench-{os.getpid()}-{label.lower()}",
            workers=workers,
            slots=slots,
            log_dir=Path(scratch) / "logs",
            state_dir=Path(scratch) / "state",
            extra_args=["--durability", str(durability), *extra_args],
            transport=str(transport),
        ) as cell,
    ):
        yield cell


def client(cell: LocalCell, trace_every: int = 0) -> Client:
    """A client of `cell` the way its host reaches it: over the PLM's Unix socket when the
    cell has one, with the cell's token."""
    return Client(cell.local_address, security=cell.security, trace_every=trace_every)


def opener(durability: Durability, transport: Transport = Transport.UNIX) -> OpenCell:
    """`bench_cell` with the run's durability and transport."""

    def open_cell(
        label: str, workers: int, slots: int, extra_args: Sequence[str]
    ) -> AbstractContextManager[LocalCell]:
        return bench_cell(label, workers, slots, extra_args, durability, transport)

    return open_cell
