"""Task leases: the register's backstop for task timeouts.

The worker kills a task at its timeout and reports it. Should a worker fail to (a stuck pool,
a bug), the register settles the attempt itself at timeout + a grace (LEASE_GRACE_S unless
the register is given another) after it learned the attempt started, and asks the worker to
stop it. One timer per started attempt that has a timeout; a reported result disarms it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

from heapd.register.timers import KeyedTimers

LEASE_GRACE_S = 1.0


@dataclass(frozen=True, slots=True)
class Lease:
    """One running attempt with a timeout, on one worker membership."""

    task_id: int
    attempt: int
    worker_id: int
    epoch: int
    timeout_s: float


class Leases:
    """Calls `on_expired(lease)` when a lease runs out before its result arrives."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_expired: Callable[[Lease], None],
        grace_s: float = LEASE_GRACE_S,
    ) -> None:
        self._timers: KeyedTimers[tuple[int, int]] = KeyedTimers(loop)
        self._on_expired = on_expired
        self._grace_s = grace_s

    def grant(self, lease: Lease) -> None:
        """Start the lease of an attempt that just started (once per attempt)."""
        key = (lease.task_id, lease.attempt)
        if key not in self._timers:
            delay = lease.timeout_s + self._grace_s
            self._timers.start(key, delay, partial(self._on_expired, lease))

    def settle(self, refs: Iterable[tuple[int, int]]) -> None:
        """These attempts reported: their leases end."""
        for key in refs:
            self._timers.cancel(key)

    def close(self) -> None:
        """Cancel every timer."""
        self._timers.close()

    def __len__(self) -> int:
        return len(self._timers)
