"""Stalls of the register's own event loop, so that they are not taken for silent workers.

While the loop is stuck (a huge request being parsed, the host starved of CPU) heartbeats
arrive and wait unread in the sockets; when it runs again, the deadline timers that came due
meanwhile fire before those beats are read. A worker's silence measured across a stall is the
register's, not the worker's: the register gives the worker one more interval after a stall
before it buries it.

One timer, re-armed every `period_s`, notices how late it runs; `ended_at()` also looks at it
(a stall that has just ended may not have let the timer run yet). Late by more than
`tolerance_s` means the loop stalled, and the stall ended when that was noticed. A stall
shorter than `period_s + tolerance_s` may go unnoticed; the caller picks a period well under
its deadlines.
"""

from __future__ import annotations

import asyncio
import logging
import math

log = logging.getLogger(__name__)


class LoopStalls:
    """Notices and counts stalls of `loop`; `ended_at()` says when the last one ended."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, period_s: float, tolerance_s: float
    ) -> None:
        self._loop = loop
        self._period_s = period_s
        self._tolerance_s = tolerance_s
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._ended_at = -math.inf  # loop time
        self.count = 0  # stalls noticed (read by heapd.register.metrics)

    def start(self) -> None:
        """Start watching."""
        if self._timer is None:
            self._arm()

    def close(self) -> None:
        """Stop watching (idempotent)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def ended_at(self) -> float:
        """Loop time (`loop.time()`) at which the last stall noticed ended: now, if the loop is
        only now running again; -inf if none was."""
        now = self._loop.time()
        late_s = now - self._due
        if self._timer is not None and late_s > self._tolerance_s:
            if self._ended_at < self._due:  # once per stall
                self.count += 1
                log.warning(
                    "event loop stalled; deadlines get one more heartbeat interval",
                    extra={"fields": {"late_s": round(late_s, 3)}},
                )
            self._ended_at = now
        return self._ended_at

    def _arm(self) -> None:
        self._due = self._loop.time() + self._period_s
        self._timer = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        self.ended_at()
        self._arm()
