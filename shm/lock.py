"""The cell lock: one POSIX semaphore plus an owner record in the header.

The owner record is (pid, process start time, acquisition count). The start time
(/proc/<pid>/stat field 22) defeats pid reuse. A waiter blocks in `sem_timedwait` for
POLL_S; each time it times out it looks at the owner record. A record is dead when
it is unchanged across two consecutive timeouts and either its pid is no longer that
process, or its pid is 0: the owner died between `sem_wait` and writing its record
(or between clearing it and `sem_post`), and an unchanged count proves nobody took
the lock meanwhile. So a dead owner is noticed within 2 x POLL_S = 0.4 s.

Exactly one waiter takes over: it must win the "repair" semaphore (non-blocking), then
re-read the record; if unchanged it writes itself as owner, inheriting the dead
owner's hold on the semaphore, and the caller repairs the derived state before doing
anything else. A kill inside that short takeover would leave the repair semaphore
taken; that window is a few header writes and is accepted.

Assumption: every process of a cell shares one pid namespace (one host, one container
or none), so /proc/<pid> means the same process to all.
"""

from __future__ import annotations

import os

import posix_ipc

from heapd.shm.histogram import LockTimes
from heapd.shm.layout import H

POLL_S = 0.2

_start_cache: dict[int, int] = {}


def process_start(pid: int) -> int | None:
    """Start time of a live process in clock ticks since boot, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):  # zombie or dead: it will never release anything
        return None
    return int(fields[19])  # field 22 counted from 1 over the whole line


def _me() -> tuple[int, int]:
    pid = os.getpid()
    start = _start_cache.get(pid)
    if start is None:
        start = process_start(pid) or 1
        _start_cache.clear()
        _start_cache[pid] = start
    return pid, start


class CellLock:
    """Mutual exclusion over a cell's control state, robust to a SIGKILLed owner."""

    def __init__(
        self,
        sem: posix_ipc.Semaphore,
        repair: posix_ipc.Semaphore,
        hdr: memoryview,
        times: LockTimes | None = None,
    ):
        self._sem = sem
        self._repair = repair
        self._hdr = hdr
        self._times = times if times is not None else LockTimes()

    def acquire(self) -> bool:
        """Take the lock; True if it was taken over from a dead owner (caller repairs)."""
        try:
            self._sem.acquire(0)
        except posix_ipc.BusyError:
            self._times.contended += 1
            return self._acquire_slow()
        self._own()
        return False

    def release(self) -> None:
        """Give the lock back: clear the record first, then post."""
        hdr = self._hdr
        hdr[H.OWNER_PID] = 0
        hdr[H.OWNER_START] = 0
        self._sem.release()

    def owner(self) -> tuple[int, int, int]:
        """(pid, start time, acquisition count) as recorded now."""
        hdr = self._hdr
        return int(hdr[H.OWNER_PID]), int(hdr[H.OWNER_START]), int(hdr[H.LOCK_COUNT])

    def _own(self) -> None:
        # start before pid: a reader that sees our pid also sees our start time
        pid, start = _me()
        hdr = self._hdr
        hdr[H.LOCK_COUNT] += 1
        hdr[H.OWNER_START] = start
        hdr[H.OWNER_PID] = pid

    def _acquire_slow(self) -> bool:
        seen: tuple[int, int, int] | None = None
        while True:
            try:
                self._sem.acquire(POLL_S)
            except posix_ipc.BusyError:
                pass
            else:
                self._own()
                return False
            record = self.owner()
            if record == seen and _is_dead(record) and self._take_over(record):
                return True
            seen = record

    def _take_over(self, record: tuple[int, int, int]) -> bool:
        try:
            self._repair.acquire(0)
        except posix_ipc.BusyError:
            return False  # another waiter is taking over
        try:
            if self.owner() != record:
                return False  # it already did
            try:
                self._sem.acquire(0)  # freed after all: an ordinary acquisition
            except posix_ipc.BusyError:
                self._own()
                self._hdr[H.REPAIRS] += 1
                return True
            self._own()
            return False
        finally:
            self._repair.release()


def _is_dead(record: tuple[int, int, int]) -> bool:
    pid, start, _ = record
    return pid == 0 or process_start(pid) != start
