"""`heapd bench --profile DIR`: the cell of each workload run sampled by `heapd.runtime.profile`
while it runs, one CSV per run, named for the workload and the run: `DIR/W1-run1.csv`.

Workloads that open their own cells (W3: one per placement policy, each running every
repetition) get one CSV per cell, named for the workload and the cell's label, covering all
its repetitions: `DIR/W3-w3-least-loaded.csv`, `DIR/W3-w3h-random.csv`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from heapd.runtime import profile
from heapd.runtime.bench.cells import OpenCell
from heapd.runtime.launch import LocalCell


@contextlib.contextmanager
def sampled(cell: LocalCell, directory: Path | None, stem: str) -> Iterator[None]:
    """Profile `cell` into `directory/stem.csv` while the body runs (nothing if `directory` is
    None)."""
    if directory is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    with profile.to_file(cell.name, directory / f"{stem}.csv"):
        yield


def opener(open_cell: OpenCell, directory: Path | None, workload: str) -> OpenCell:
    """`open_cell` whose cells are each profiled, while open, into
    `directory/<workload>-<label>.csv` (`open_cell` itself if `directory` is None)."""
    if directory is None:
        return open_cell

    @contextlib.contextmanager
    def open_sampled(
        label: str, workers: int, slots: int, extra_args: Sequence[str]
    ) -> Iterator[LocalCell]:
        with (
            open_cell(label, workers, slots, extra_args) as cell,
            sampled(cell, directory, f"{workload}-{label}"),
        ):
            yield cell

    def open_profiled(
        label: str, workers: int, slots: int, extra_args: Sequence[str]
    ) -> AbstractContextManager[LocalCell]:
        return open_sampled(label, workers, slots, extra_args)

    return open_profiled
