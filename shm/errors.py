"""Errors raised by the shared-memory layer, one hierarchy.

    ShmError(Exception)
     ├─ CellNotFound        attach to a cell that does not exist
     ├─ CellExists          create when the cell (or a leftover of it) exists
     ├─ LayoutMismatch      foreign, truncated or other-version segment
     ├─ UntrustedObject     (also PermissionError) an object of the cell is another user's,
     │                      or readable/writable by others (.path, .why)
     ├─ InvalidCapacity     (also ValueError) capacities <= 0 or absurd
     ├─ TaskNotFound        (also KeyError) unknown or released task id
     ├─ WorkerNotFound      unknown worker id
     ├─ StaleEpoch          worker known but not at that epoch, or DEAD (fencing)
     ├─ TableFull           task or worker table full (.table: "tasks" | "workers")
     ├─ BlobTooLarge        (also ValueError) blob above max_blob_bytes (.size, .limit)
     ├─ ArenaFull           no room in the blob arena (.size, .free)
     └─ ResourceNamesFull   (also ValueError) a 17th distinct resource name in one cell

The PLM maps BlobTooLarge and ResourceNamesFull to INVALID_ARGUMENT and ArenaFull / TableFull to
RESOURCE_EXHAUSTED; every message names what to do next.
"""

from __future__ import annotations


class ShmError(Exception):
    """Base of every error raised by `shm`."""


class CellNotFound(ShmError):
    """The cell has no shared memory segment."""

    def __init__(self, cell: str) -> None:
        super().__init__(
            f"cell {cell!r} does not exist (no shared memory segment): "
            f"start it with `heapd up --cell {cell}`"
        )
        self.cell = cell


class CellExists(ShmError):
    """Creating a cell whose segment or semaphores already exist."""

    def __init__(self, cell: str, what: str = "it already exists") -> None:
        super().__init__(
            f"cannot create cell {cell!r}: {what}; attach to it, or remove it with "
            f"`heapd down --cell {cell}`"
        )
        self.cell = cell


class LayoutMismatch(ShmError):
    """The segment is not a heapd cell of this layout version."""

    def __init__(self, cell: str, found: str) -> None:
        super().__init__(
            f"cell {cell!r}: {found}; it was made by another program or another heapd "
            f"version; remove it with `heapd down --cell {cell}` and start the cell again"
        )
        self.cell = cell


class UntrustedObject(ShmError, PermissionError):
    """An object of the cell (segment, semaphore, doorbell) is not this user's own 0600 object:
    someone else made it, or could read or write it, so nothing in it can be trusted."""

    def __init__(self, cell: str, path: str, why: str) -> None:
        super().__init__(
            f"cell {cell!r}: refusing {path}: {why}; heapd uses only objects of its own user with"
            f" mode 0600. Find out who made it; remove it (`heapd down --cell {cell}` as its"
            f" owner, or root) and start the cell again"
        )
        self.cell = cell
        self.path = path
        self.why = why

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidCapacity(ShmError, ValueError):
    """Capacities out of range (message says which and the allowed range)."""


class TaskNotFound(ShmError, KeyError):
    """Unknown or already released task id."""

    def __init__(self, task_id: int) -> None:
        super().__init__(f"task {task_id} not found (unknown or released)")
        self.task_id = task_id

    def __str__(self) -> str:
        return str(self.args[0])


class WorkerNotFound(ShmError):
    """Unknown worker id (never registered, or deregistered)."""

    def __init__(self, worker_id: int) -> None:
        super().__init__(f"worker {worker_id} not found (unknown or deregistered)")
        self.worker_id = worker_id


class StaleEpoch(ShmError):
    """The worker is not at that epoch any more, or was declared DEAD: re-register."""

    def __init__(self, worker_id: int, epoch: int, why: str) -> None:
        super().__init__(f"worker {worker_id} epoch {epoch} is stale ({why}): re-register")
        self.worker_id = worker_id
        self.epoch = epoch


class TableFull(ShmError):
    """No free slot in the task or worker table."""

    def __init__(self, table: str, capacity: int) -> None:
        super().__init__(
            f"{table} table full ({capacity} slots): wait for tasks to finish and be "
            f"released, or start the cell with a larger capacity"
        )
        self.table = table
        self.capacity = capacity


class BlobTooLarge(ShmError, ValueError):
    """One payload or result is larger than max_blob_bytes."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"blob of {size} bytes exceeds the {limit}-byte limit (max_blob_bytes): pass a "
            f"reference (a path, URL or object-store key) instead of the data"
        )
        self.size = size
        self.limit = limit


class ArenaFull(ShmError):
    """The blob arena has no run of free chunks large enough."""

    def __init__(self, size: int, free: int) -> None:
        hint = " (fragmented)" if free >= size else ""
        super().__init__(
            f"blob arena full: {size} bytes requested, {free} bytes free{hint}; retry when "
            f"results are released, or start the cell with a larger arena"
        )
        self.size = size
        self.free = free


class ResourceNamesFull(ShmError, ValueError):
    """A task or worker names a resource the cell has no room left to name."""

    def __init__(self, new: list[str], limit: int) -> None:
        super().__init__(
            f"the cell knows {limit} resource names already (the limit per cell): cannot add "
            f"{', '.join(repr(n) for n in new)}; use one of the names in use, or recreate the cell"
        )
        self.new = new
        self.limit = limit
