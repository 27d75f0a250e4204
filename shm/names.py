"""Every POSIX name of a cell, derived from the cell name in this one module.

A cell `NAME` owns `/heapd.NAME.shm` (the segment), two semaphores `/heapd.NAME.lock` and
`.repair`, and two doorbells, FIFOs `/dev/shm/heapd.NAME.sched.bell` and `.plm.bell`. Linux
shows the segment as `/dev/shm/heapd.NAME.shm` and each semaphore as
`/dev/shm/sem.heapd.NAME.<x>`; those files' owner and mode are what attach checks (only this
user's own 0600 objects are used, see `shm.segment`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CELL_RE = re.compile(r"[A-Za-z0-9_.-]{1,40}")
DEV_SHM = "/dev/shm"


def validate_cell_name(name: str) -> str:
    """Return `name` if it is 1-40 chars of [A-Za-z0-9_.-], else raise ValueError."""
    if not isinstance(name, str) or not _CELL_RE.fullmatch(name):
        raise ValueError(f"bad cell name {name!r}: use 1-40 characters of A-Z a-z 0-9 _ . -")
    return name


@dataclass(frozen=True, slots=True)
class CellNames:
    """The POSIX names of one cell's segment and semaphores."""

    cell: str

    def __post_init__(self) -> None:
        validate_cell_name(self.cell)

    @property
    def prefix(self) -> str:
        return f"/heapd.{self.cell}."

    @property
    def segment(self) -> str:
        return self.prefix + "shm"

    @property
    def lock(self) -> str:
        return self.prefix + "lock"

    @property
    def repair(self) -> str:
        return self.prefix + "repair"

    @property
    def scheduler_bell(self) -> str:
        """The scheduler's doorbell: a FIFO path."""
        return f"{DEV_SHM}/heapd.{self.cell}.sched.bell"

    @property
    def plm_bell(self) -> str:
        """The PLM's doorbell: a FIFO path."""
        return f"{DEV_SHM}/heapd.{self.cell}.plm.bell"

    def semaphores(self) -> list[str]:
        """Semaphore names, the lock first (it is created first and unlinked last)."""
        return [self.lock, self.repair]

    def bells(self) -> list[str]:
        """The doorbell FIFOs' paths."""
        return [self.scheduler_bell, self.plm_bell]

    def all(self) -> list[str]:
        """Every object of the cell: POSIX names of the segment and semaphores, bell paths."""
        return [self.segment, *self.semaphores(), *self.bells()]

    def path(self, name: str) -> str:
        """Where Linux shows one object of the cell (one of `all()`) under /dev/shm: the file
        whose owner and mode say whether the object can be trusted."""
        if name == self.segment:
            return f"{DEV_SHM}/{name[1:]}"
        if name in self.semaphores():
            return f"{DEV_SHM}/sem.{name[1:]}"
        if name in self.bells():
            return name
        raise ValueError(f"{name!r} is not an object of cell {self.cell!r}")

    def dev_shm_paths(self) -> list[str]:
        """Where Linux shows each object under /dev/shm: segment, semaphores, bells."""
        return [self.path(name) for name in self.all()]
