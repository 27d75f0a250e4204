"""Fixed-bucket histograms in process memory, for one thread (no lock).

`observe` is a bisect and two additions: cheap enough once per batch or per lock acquisition.
The cell lock times itself with these, and roles count batch sizes and delays with them;
`heapd.runtime.metrics` turns them into Prometheus histograms at scrape time.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

# Bounds in seconds for waits and holds of microseconds to seconds.
SHORT_SECONDS = (1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
# Bounds for batch sizes (tasks per message, results per heartbeat).
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Histogram:
    """Counts per bucket (the last one unbounded) and the sum of what was observed."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = list(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one value (in the first bucket whose bound is >= it)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class LockTimes:
    """How long this process waited for the cell lock and held it, and how often it found the
    lock taken."""

    __slots__ = ("contended", "hold", "wait")

    def __init__(self) -> None:
        self.wait = Histogram(SHORT_SECONDS)
        self.hold = Histogram(SHORT_SECONDS)
        self.contended = 0
