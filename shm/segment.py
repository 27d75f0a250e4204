"""A cell's POSIX objects as one unit: create, attach, unlink the segment, semaphores and
doorbell FIFOs.

Create order: the lock semaphore first, at 0 (held by the creator, and exclusive
creation makes it the "someone is creating this cell" marker), then the repair
semaphore, the doorbell FIFOs, then the segment (all 0600), then the header with the
magic written last, then the lock is posted. Any failure unlinks exactly what this call
created.
An attacher that finds the segment missing or its magic still 0 waits (bounded) on
the lock semaphore for the creator to finish instead of polling.

Trust: an attacher uses only objects that belong to its own (effective) user with mode
exactly 0600, checked on the open descriptor for the segment and the doorbells, and on the
file before and after opening for the semaphores (sem_open gives no descriptor; /dev/shm is
sticky, so nobody else can swap our own file between the two checks). Anything else (another
user's segment with a valid header, a 0644 segment anyone could have written) is refused with
UntrustedObject before it is mapped or used. Creation sets the modes explicitly, so the umask
cannot widen or narrow them.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import overload

import numpy as np
import numpy.typing as npt
import posix_ipc

from heapd.shm import secret
from heapd.shm.errors import (
    CellExists,
    CellNotFound,
    InvalidCapacity,
    LayoutMismatch,
    ShmError,
    UntrustedObject,
)
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
    try:
        os.chmod(path, MODE)  # exactly 0600 whatever the umask (ours: /dev/shm is sticky)
    except BaseException:
        os.unlink(path)
        raise


def _open_fifo(names: CellNames, path: str) -> int:
    """Open a doorbell read-write, non-blocking; refuse anything but our own 0600 FIFO.

    A FIFO is checked before it is opened (opening a planted device or symlink target could
    have effects of its own) and again on the descriptor: the object used is the one checked."""
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        raise LayoutMismatch(names.cell, f"doorbell {path} is missing") from None
    if not stat.S_ISFIFO(before.st_mode):
        raise UntrustedObject(names.cell, path, "it is not a doorbell FIFO")
    require_private(names.cell, path, before)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise LayoutMismatch(names.cell, f"doorbell {path} is missing") from None
    except PermissionError:
        raise _denied(names.cell, path) from None
    except OSError as exc:  # ELOOP: replaced by a symlink since the check
        raise UntrustedObject(names.cell, path, f"it changed while being opened ({exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode) or (st.st_dev, st.st_ino) != (
            before.st_dev,
            before.st_ino,
        ):
            raise UntrustedObject(names.cell, path, "it was replaced while being opened")
        require_private(names.cell, path, st)
    except BaseException:
        os.close(fd)
        raise
    return fd


def require_private(cell: str, path: str, st: os.stat_result) -> None:
    """Refuse (UntrustedObject) an object that is not this user's own with mode 0600: another
    user may have planted it (a valid header is easy to forge) or may read and write it."""
    uid = os.geteuid()
    if st.st_uid != uid:
        raise UntrustedObject(
            cell, path, f"it belongs to uid {st.st_uid}, not to this user (uid {uid})"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode != MODE:
        raise UntrustedObject(cell, path, f"its mode is {mode:04o}, not {MODE:04o}")


def _new_semaphore(names: CellNames, name: str, value: int, first: bool) -> posix_ipc.Semaphore:
    try:
        sem = posix_ipc.Semaphore(name, posix_ipc.O_CREX, MODE, value)
    except posix_ipc.PermissionsError:
        raise CellExists(names.cell, f"{name} exists and belongs to another user") from None
    except posix_ipc.ExistentialError:
        if first:
            raise CellExists(names.cell) from None
        raise CellExists(names.cell, f"a leftover semaphore {name} exists") from None
    try:
        os.chmod(names.path(name), MODE)  # exactly 0600 whatever the umask
    except BaseException:
        sem.close()
        posix_ipc.unlink_semaphore(name)
        raise
    return sem


def _new_segment(names: CellNames, size: int) -> mmap.mmap:
    try:
        shm = posix_ipc.SharedMemory(names.segment, posix_ipc.O_CREX, MODE, size)
    except posix_ipc.PermissionsError:
        raise CellExists(names.cell, f"{names.segment} belongs to another user") from None
    except posix_ipc.ExistentialError:
        raise CellExists(names.cell, f"a leftover segment {names.segment} exists") from None
    try:
        os.fchmod(shm.fd, MODE)  # exactly 0600 whatever the umask
        return mmap.mmap(shm.fd, size)
    except BaseException:
        posix_ipc.unlink_shared_memory(names.segment)
        raise
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
        sems: list[posix_ipc.Semaphore] = []
        fds: list[int] = []
        try:  # appended one by one: a refusal closes exactly what was opened before it
            for name in names.semaphores():
                sems.append(_open_semaphore(names, name))
            for path in names.bells():
                fds.append(_open_fifo(names, path))
        except BaseException:
            for sem in sems:
                sem.close()
            for fd in fds:
                os.close(fd)
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
            require_private(names.cell, names.path(names.segment), os.fstat(shm.fd))
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
    sem = _open_semaphore(names, names.lock, missing_ok=True)
    if sem is None:
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


@overload
def _open_semaphore(names: CellNames, name: str) -> posix_ipc.Semaphore: ...
@overload
def _open_semaphore(
    names: CellNames, name: str, missing_ok: bool
) -> posix_ipc.Semaphore | None: ...


def _open_semaphore(
    names: CellNames, name: str, missing_ok: bool = False
) -> posix_ipc.Semaphore | None:
    """Open one of the cell's semaphores if it is our own 0600 file, checked before opening
    and again after (same file): sem_open gives no descriptor to check instead."""
    path = names.path(name)
    try:
        before = os.lstat(path)
        if not stat.S_ISREG(before.st_mode):
            raise UntrustedObject(names.cell, path, "it is not a semaphore file")
        require_private(names.cell, path, before)
        sem = posix_ipc.Semaphore(name)
    except (FileNotFoundError, posix_ipc.ExistentialError):
        if missing_ok:
            return None
        raise LayoutMismatch(names.cell, f"semaphore {name} is missing") from None
    except posix_ipc.PermissionsError:
        raise _denied(names.cell, path) from None
    try:
        after = os.lstat(path)
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise UntrustedObject(names.cell, path, "it was replaced while being opened")
    except BaseException as exc:
        sem.close()
        if isinstance(exc, FileNotFoundError):
            raise UntrustedObject(names.cell, path, "it was removed while being opened") from None
        raise
    return sem


def _denied(cell: str, path: str) -> ShmError:
    return UntrustedObject(cell, path, "permission denied: it belongs to another user")


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
