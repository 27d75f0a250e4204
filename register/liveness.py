"""Worker liveness as deadlines: each heartbeat pushes a worker's deadline forward.

One timer per worker, re-armed on every heartbeat; the worker is declared dead when its timer
fires (silence) — not by a periodic sweep. A broken stream is handled by the caller at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial

from heapd.register.timers import KeyedTimers


class Deadlines:
    """Calls `on_expired(worker_id, epoch)` when a worker stays silent past its deadline."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_expired: Callable[[int, int], None]
    ) -> None:
        self._timers: KeyedTimers[int] = KeyedTimers(loop)
        self._on_expired = on_expired

    def arm(self, worker_id: int, epoch: int, after_s: float) -> None:
        """(Re)start the worker's timer."""
        self._timers.start(worker_id, after_s, partial(self._on_expired, worker_id, epoch))

    def disarm(self, worker_id: int) -> None:
        """Forget the worker (deregistered or already declared dead)."""
        self._timers.cancel(worker_id)

    def close(self) -> None:
        """Cancel every timer."""
        self._timers.close()
