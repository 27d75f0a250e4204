"""Results nobody is watching: held in the cell until fetched or until their time to live ends.

Deadlines are FIFO (one TTL for all), so a deque and a single timer at its head suffice.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence


class HeldResults:
    """Releases each held task `ttl_s` after it settled, through `release`."""

    def __init__(
        self,
        ttl_s: float,
        release: Callable[[Sequence[int]], object],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._ttl_s = ttl_s
        self._release = release
        self._loop = loop
        self._queue: deque[tuple[float, int]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def hold(self, task_id: int, settled_at: float | None = None) -> None:
        """Keep `task_id`'s result until its TTL passes."""
        self._queue.append(((settled_at or time.time()) + self._ttl_s, task_id))
        if self._timer is None:
            self._arm()

    def hold_many(self, task_ids: Sequence[int]) -> None:
        """Keep these results for the TTL from now."""
        deadline = time.time() + self._ttl_s
        self._queue.extend((deadline, task_id) for task_id in task_ids)
        if self._timer is None:
            self._arm()

    def close(self) -> None:
        """Stop the timer (held results stay in the cell for a restarted PLM)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        if not self._queue:
            self._timer = None
            return
        delay = max(0.0, self._queue[0][0] - time.time())
        self._timer = self._loop.call_later(delay, self._expire)

    def _expire(self) -> None:
        now = time.time()
        due = []
        while self._queue and self._queue[0][0] <= now:
            due.append(self._queue.popleft()[1])
        if due:
            self._release(due)
        self._arm()
