"""A cell's POSIX objects as one unit: create, attach, unlink the segment, semaphores and
doorbell FIFOs.

Create order: the lock semaphore first, at 0 (held by the creator, and exclusive
creation makes it the "someone is creating this cell" marker), then the repair
semaphore, the doorbell FIFOs, then the segment (all 0600), then the header with the
magic written last, then the lock is posted. Any failure unlinks exactly what this call
created.
An attacher that finds the segment missing or its magic still 0 waits (bounded) on
the lock semaphore for the creator to finish instead of polling.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import posix_ipc

from heapd.shm import secret
from heapd.shm.errors import CellExists, CellNotFound, InvalidCapacity, LayoutMismatch, ShmError
from heapd.shm.layout import HEADER_BYTES, HEADER_WORDS, MAGIC, VERSION, H, Layout
from heapd.shm.names import DEV_SHM, CellNames
from heapd.shm.types import CHUNK_BYTES, Capacities

MODE = 0o600
CREATION_WAIT_S = 2.0


@dataclass
class Segment:
    """The mapped segment, its layout and the cell's open semaphores."""

    names: CellNames
    mm: mmap.mmap
    layout: Layout
    capacities: Capacities
    lock: posix_ipc.Semaphore
    repair: posix_ipc.Semaphore
    scheduler_bell: int  # the FIFOs' descriptors, open read-write (see shm.doorbell)
    plm_bell: int

    def close(self) -> None:
        """Close the semaphores and FIFOs and unmap (the objects themselves stay)."""
        for sem in (self.lock, self.repair):
            sem.close()
        for fd in (self.scheduler_bell, self.plm_bell):
            if fd >= 0:  # -1: handed over to a Doorbell, which closes it
                os.close(fd)
        self.scheduler_bell = self.plm_bell = -1
        with contextlib.suppress(BufferError):  # a view still referenced: GC unmaps later
            self.mm.close()


def _check_room(cell: str, size: int) -> None:
    try:
        st = os.statvfs(DEV_SHM)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if size > free:
        raise InvalidCapacity(
            f"cell {cell!r} needs {size} bytes of shared memory but {DEV_SHM} has {free} "
            f"free: lower the capacities"
        )


Init = Callable[[mmap.mmap, Layout], None]


def create(names: CellNames, caps: Capacities, init: Init) -> Segment:
    """Create every object of the cell, run `init` on the zeroed segment, post the lock."""
    caps.validate()
    layout = Layout.of(caps)
    _check_room(names.cell, layout.total)
    created: list[str] = []
    opened: list[posix_ipc.Semaphore] = []
    fds: list[int] = []
    mm: mmap.mmap | None = None
    try:
        for name, value in zip(names.semaphores(), (0, 1), strict=True):
            opened.append(_new_semaphore(names, name, value, first=not created))
            created.append(name)
        for path in names.bells():
            _new_fifo(names, path)
            created.append(path)
            fds.append(_open_fifo(names, path))
        mm = _new_segment(names, layout.total)
        created.append(names.segment)
        init(mm, layout)
        opened[0].release()
        return Segment(names, mm, layout, caps, *opened, *fds)
    except BaseException:
        if mm is not None:
            with contextlib.suppress(BufferError):
                mm.close()
        for sem in opened:
            sem.close()
        for fd in fds:
            os.close(fd)
        for name in reversed(created):
            _unlink_one(names, name)
        raise


def _new_fifo(names: CellNames, path: str) -> None:
    try:
        os.mkfifo(path, MODE)
    except FileExistsError:
        raise CellExists(names.cell, f"a leftover doorbell {path} exists") from None


def _open_fifo(names: CellNames, path: str) -> int:
    """Open a doorbell read-write, non-blocking; refuse anything but our own 0600 FIFO."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LayoutMismatch(names.cell, f"doorbell {path} is missing") from None
    except PermissionError:
        raise _denied(names.cell, path) from None
    st = os.fstat(fd)
    if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.getuid():
        os.close(fd)
        raise ShmError(f"cell {names.cell!r}: {path} is not a doorbell FIFO of this user")
    return fd


def _new_semaphore(names: CellNames, name: str, value: int, first: bool) -> posix_ipc.Semaphore:
    try:
        return posix_ipc.Semaphore(name, posix_ipc.O_CREX, MODE, value)
    except posix_ipc.PermissionsError:
        raise CellExists(names.cell, f"{name} exists and belongs to another user") from None
    except posix_ipc.ExistentialError:
        if first:
            raise CellExists(names.cell) from None
        raise CellExists(names.cell, f"a leftover semaphore {name} exists") from None


def _new_segment(names: CellNames, size: int) -> mmap.mmap:
    try:
        shm = posix_ipc.SharedMemory(names.segment, posix_ipc.O_CREX, MODE, size)
    except posix_ipc.PermissionsError:
        raise CellExists(names.cell, f"{names.segment} belongs to another user") from None
    except posix_ipc.ExistentialError:
        raise CellExists(names.cell, f"a leftover segment {names.segment} exists") from None
    try:
        return mmap.mmap(shm.fd, size)
    finally:
        shm.close_fd()


def write_header(mm: mmap.mmap, layout: Layout, caps: Capacities) -> None:
    """Fill the header of a zeroed segment, magic last (the commit point of creation)."""
    hdr = np.frombuffer(mm, dtype=np.int64, count=HEADER_WORDS)
    hdr[H.VERSION] = VERSION
    hdr[H.TOTAL_BYTES] = layout.total
    hdr[H.TASKS] = caps.tasks
    hdr[H.WORKERS] = caps.workers
    hdr[H.ARENA_BYTES] = caps.arena_bytes
    hdr[H.MAX_BLOB] = caps.max_blob_bytes
    hdr[H.CHUNK] = CHUNK_BYTES
    hdr[H.GENERATION] = time.time_ns()
    secret.write_key(mm)


def commit_header(mm: mmap.mmap) -> None:
    """Write the magic: from now on attachers accept the segment."""
    np.frombuffer(mm, dtype=np.int64, count=1)[0] = MAGIC


def attach(names: CellNames) -> Segment:
    """Map an existing cell after checking its header; open its semaphores."""
    mm = _open_segment(names)
    try:
        header = np.frombuffer(mm, dtype=np.int64, count=HEADER_WORDS).copy()
        if header[H.MAGIC] == 0:
            _wait_for_creator(names)
            header = np.frombuffer(mm, dtype=np.int64, count=HEADER_WORDS).copy()
        caps, layout = _validate_header(names.cell, header, len(mm))
        sems = [_open_semaphore(names, name) for name in names.semaphores()]
        fds: list[int] = []
        try:
            fds = [_open_fifo(names, path) for path in names.bells()]
        except BaseException:
            for sem in sems:
                sem.close()
            raise
    except BaseException:
        mm.close()
        raise
    return Segment(names, mm, layout, caps, *sems, *fds)


def _open_segment(names: CellNames) -> mmap.mmap:
    for _ in range(2):
        try:
            shm = posix_ipc.SharedMemory(names.segment)
        except posix_ipc.PermissionsError:
            raise _denied(names.cell, names.segment) from None
        except posix_ipc.ExistentialError:
            if not _wait_for_creator(names):
                break
            continue
        try:
            size = shm.size
            if size < HEADER_BYTES:
                raise LayoutMismatch(
                    names.cell, f"segment {names.segment} is {size} bytes, too small for a header"
                )
            return mmap.mmap(shm.fd, size)
        finally:
            shm.close_fd()
    raise CellNotFound(names.cell)


def _wait_for_creator(names: CellNames) -> bool:
    """Wait (bounded) until a creator posts the lock; False if there is no lock at all."""
    try:
        sem = posix_ipc.Semaphore(names.lock)
    except posix_ipc.ExistentialError:
        return False
    try:
        sem.acquire(CREATION_WAIT_S)
        sem.release()
    except posix_ipc.BusyError:
        pass
    finally:
        sem.close()
    return True


def _validate_header(
    cell: str, header: npt.NDArray[np.int64], size: int
) -> tuple[Capacities, Layout]:
    magic, version = int(header[H.MAGIC]), int(header[H.VERSION])
    if magic == 0:
        raise LayoutMismatch(cell, "the segment was never finished (its creator died?)")
    if magic != MAGIC:
        raise LayoutMismatch(cell, f"the segment has no heapd header (magic {magic:#x})")
    if version != VERSION:
        raise LayoutMismatch(
            cell, f"the segment has layout version {version}, this heapd reads version {VERSION}"
        )
    caps = Capacities(
        tasks=int(header[H.TASKS]),
        workers=int(header[H.WORKERS]),
        arena_bytes=int(header[H.ARENA_BYTES]),
        max_blob_bytes=int(header[H.MAX_BLOB]),
    )
    try:
        caps.validate()
    except InvalidCapacity as e:
        raise LayoutMismatch(cell, f"the header holds impossible capacities ({e})") from None
    layout = Layout.of(caps)
    if int(header[H.TOTAL_BYTES]) != layout.total or size != layout.total:
        raise LayoutMismatch(
            cell,
            f"the segment is {size} bytes, its header says {int(header[H.TOTAL_BYTES])} and "
            f"its capacities need {layout.total} (truncated?)",
        )
    return caps, layout


def _open_semaphore(names: CellNames, name: str) -> posix_ipc.Semaphore:
    try:
        return posix_ipc.Semaphore(name)
    except posix_ipc.PermissionsError:
        raise _denied(names.cell, name) from None
    except posix_ipc.ExistentialError:
        raise LayoutMismatch(names.cell, f"semaphore {name} is missing") from None


def _denied(cell: str, name: str) -> ShmError:
    return ShmError(f"cell {cell!r}: permission denied on {name}: it belongs to another user")


def _unlink_one(names: CellNames, name: str) -> bool:
    if name in names.bells():
        try:
            os.unlink(name)
        except FileNotFoundError:
            return False
        return True
    try:
        if name == names.segment:
            posix_ipc.unlink_shared_memory(name)
        else:
            posix_ipc.unlink_semaphore(name)
    except posix_ipc.ExistentialError:
        return False
    return True


def unlink(names: CellNames) -> list[str]:
    """Remove the segment and semaphores of a cell, ignoring missing ones; the lock last."""
    order = [names.segment, *names.bells(), *names.semaphores()[1:], names.lock]
    return [name for name in order if _unlink_one(names, name)]


def exists(names: CellNames) -> bool:
    """Whether the cell's segment exists."""
    try:
        posix_ipc.SharedMemory(names.segment).close_fd()
    except posix_ipc.ExistentialError:
        return False
    return True
