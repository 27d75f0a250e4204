"""Doorbells: POSIX semaphores one role rings to wake another, instead of polling.

Rings coalesce: `ring` posts only when nobody has rung since the last wait, and `wait`
drains extra posts, so a burst of rings is one wake-up and the count never overflows.
`wait` blocks in `sem_timedwait` with the GIL released.
"""

from __future__ import annotations

import posix_ipc


class Doorbell:
    """Wake-up signal between processes of one cell."""

    __slots__ = ("_sem", "name")

    def __init__(self, sem: posix_ipc.Semaphore) -> None:
        self._sem = sem
        self.name: str = sem.name

    def ring(self) -> None:
        """Wake the waiter (cheap when already rung; two racing ringers may both post)."""
        if self._sem.value < 1:
            self._sem.release()

    def wait(self, timeout: float | None) -> bool:
        """Block until rung (True) or `timeout` seconds pass (False); None waits forever.

        A signal interrupting the wait returns False: callers loop anyway.
        """
        try:
            self._sem.acquire(None if timeout is None else max(0.0, timeout))
        except (posix_ipc.BusyError, posix_ipc.SignalError):
            return False
        self._drain()
        return True

    def _drain(self) -> None:
        while True:
            try:
                self._sem.acquire(0)
            except posix_ipc.BusyError:
                return

    def close(self) -> None:
        """Close this process's handle (the semaphore itself stays)."""
        self._sem.close()
