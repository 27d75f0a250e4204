"""Results kept in the cell for a while, then released: one time to live for all of them.

Deadlines are FIFO (one TTL for all, counted from when a result is held), so a deque and a
single timer at its head suffice. A result handed on before its deadline is `discard`ed: its
queue entry stays until its deadline passes and is then skipped, or until such stale entries
outnumber the live ones and the queue is compacted (at 100,000 results a second and a TTL of
ten minutes, stale entries kept to their deadline would number 60 million).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

COMPACT_AT = 4096  # stale queue entries tolerated, whatever the number held


class HeldResults:
    """Releases each held task `ttl_s` after it was held (or settled), through `release`."""

    def __init__(
        self,
        ttl_s: float,
        release: Callable[[Sequence[int]], object],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._ttl_s = ttl_s
        self._release = release
        self._loop = loop
        self._deadline: dict[int, float] = {}
        self._queue: deque[tuple[float, int]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._deadline)

    def hold(self, task_id: int, settled_at: float | None = None) -> None:
        """Keep `task_id`'s result until the TTL from `settled_at` (default now) passes."""
        self.hold_many([task_id], settled_at)

    def hold_many(self, task_ids: Iterable[int], since: float | None = None) -> None:
        """Keep these results for the TTL from `since` (default now); holding a held result
        again starts its TTL over. `since` must not go back in time between calls (FIFO)."""
        deadline = (since or time.time()) + self._ttl_s
        for task_id in task_ids:
            self._deadline[task_id] = deadline
            self._queue.append((deadline, task_id))
        self._compact_if_stale()
        if self._timer is None:
            self._arm()

    def discard(self, task_ids: Iterable[int]) -> None:
        """Stop holding these (someone else now decides when they go)."""
        if self._deadline:
            for task_id in task_ids:
                self._deadline.pop(task_id, None)
            self._compact_if_stale()

    def queued(self) -> int:
        """Entries in the deadline queue, stale ones included (bounded by `_compact_if_stale`)."""
        return len(self._queue)

    def _compact_if_stale(self) -> None:
        """Drop the entries of results no longer held (or held again since) once they are over
        half the queue: amortized O(1) per entry, and the queue stays FIFO."""
        if len(self._queue) > 2 * len(self._deadline) + COMPACT_AT:
            deadline = self._deadline
            self._queue = deque(e for e in self._queue if deadline.get(e[1]) == e[0])

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
            deadline, task_id = self._queue.popleft()
            if self._deadline.get(task_id) == deadline:
                del self._deadline[task_id]
                due.append(task_id)
        if due:
            self._release(due)
        self._arm()
