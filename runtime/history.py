"""The cell's recent past for the PLM's status page: one point per sampling interval, the last
few minutes of them, in bounded memory.

The PLM's HTTP server calls `History.record` with `cell.sample()` every `interval_s`; each point
is what happened between that sample and the previous one (`shm.sample.between`): rates,
latency percentiles, and the queue and worker figures of the newer sample. Nothing here reads
the clock or the segment: the caller owns both, so the history is a plain value to test.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from heapd.shm import CellSample, TaskState
from heapd.shm.sample import between

WINDOW_S = 600.0  # how far back the page looks
INTERVAL_S = 2.0  # how often the server samples the cell


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """The cell at `at` (unix seconds) and over the interval that ended there. Rates are per
    second; `p50_s` / `p99_s` are the end-to-end latency (submitted -> terminal) of the tasks
    that settled in the interval, NaN when none did. Workers and slots count ALIVE workers
    only: a draining worker takes no new task."""

    at: float
    queued: int  # on the task heap (parked, unschedulable tasks excluded)
    pending: int  # waiting on dependencies
    running: int  # dispatched to or running on a worker
    workers_alive: int
    slots_free: int
    slots_total: int
    submitted_per_s: float
    settled_per_s: float  # succeeded + failed + cancelled
    p50_s: float
    p99_s: float


class History:
    """The last `window_s` of points, oldest first, at most `ceil(window_s / interval_s) + 1`
    of them whatever the caller's pace."""

    def __init__(self, window_s: float = WINDOW_S, interval_s: float = INTERVAL_S) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"history interval_s must be a positive number, got {interval_s!r}")
        if not (math.isfinite(window_s) and window_s >= interval_s):
            raise ValueError(
                f"history window_s must be at least interval_s={interval_s:g}, got {window_s!r}"
            )
        self.window_s = window_s
        self.interval_s = interval_s
        self._points: deque[HistoryPoint] = deque(maxlen=math.ceil(window_s / interval_s) + 1)
        self._previous: CellSample | None = None

    def record(self, sample: CellSample) -> HistoryPoint | None:
        """Add the point from the previous sample to this one and return it; the first sample,
        or one not later than the previous (the clock stepped back), only becomes the baseline
        (a rate over no time means nothing)."""
        previous, self._previous = self._previous, sample
        if previous is None or sample.at <= previous.at:
            return None
        point = _point(previous, sample)
        self._points.append(point)
        horizon = sample.at - self.window_s
        while self._points[0].at < horizon:
            self._points.popleft()
        return point

    def points(self) -> list[HistoryPoint]:
        """The points of the window, oldest first."""
        return list(self._points)

    def __len__(self) -> int:
        return len(self._points)


def _point(before: CellSample, after: CellSample) -> HistoryPoint:
    interval = between(before, after)
    return HistoryPoint(
        at=after.at,
        queued=after.queued,
        pending=after.states.get(TaskState.PENDING, 0),
        running=after.running,
        workers_alive=len(after.alive),
        slots_free=after.slots_free,
        slots_total=after.slots,
        submitted_per_s=interval.submitted_per_s,
        settled_per_s=sum(interval.settled_per_s.values()),
        p50_s=interval.p50_s,
        p99_s=interval.p99_s,
    )
