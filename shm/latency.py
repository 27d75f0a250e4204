"""Cell-wide latency histograms in the segment header: time in queue, running, end to end.

Each histogram is BUCKETS int64 counts plus one float64 sum (seconds), written under the cell
lock at the one place a task is dispatched (queue time) or settles (run time, end to end), so
monitoring reads them without touching the per-task path again: Prometheus histograms on the
PLM's metrics port and the percentiles of `heapd profile` are differences of these words.

Buckets are log-spaced, two per octave, in units of 10 µs: bucket 0 is [0, 10 µs), 1 is
[10, 20 µs), then [20, 30), [30, 40), [40, 60), [60, 80), [80, 120) ... (bounds 2^k and
1.5 x 2^k units); bucket BUCKETS - 1 takes everything from ~6 h up. The index is a few
integer operations: the per-task cost is well under a microsecond.
"""

from __future__ import annotations

import enum
import math

import numpy as np
import numpy.typing as npt

HISTOGRAMS_AT = 1536  # header byte offset (after the resource name table)
BUCKETS = 64
UNIT_S = 1e-5  # bucket arithmetic in units of 10 µs
_WORDS = BUCKETS + 1  # counts, then the sum (a float64 in seconds)
MAX_S = 1e9  # longer durations (clock jumps) count as this: a record never raises
WORDS = 3 * _WORDS  # header words taken by the three histograms


class Latency(enum.IntEnum):
    """Which histogram: its index in the header area."""

    QUEUE = 0  # submitted -> first dispatched (waiting on dependencies included)
    RUN = 1  # dispatched -> settled, for attempts that settle on a worker
    TOTAL = 2  # submitted -> terminal, per task


# The same as plain ints, for `record` on the per-task path (IntEnum arithmetic costs a call).
QUEUE, RUN, TOTAL = 0, 1, 2


def bucket_of(seconds: float) -> int:
    """The bucket a duration falls in (negative durations, from clock steps, count as 0)."""
    if not seconds < MAX_S:  # also NaN
        return BUCKETS - 1
    if seconds <= 0.0:
        return 0
    q = int(seconds * 100_000.0)
    if q < 2:
        return q
    e = q.bit_length()
    index = 2 * (e - 1) + ((q >> (e - 2)) & 1)
    return index if index < BUCKETS - 1 else BUCKETS - 1


def _upper_units(index: int) -> float:
    if index < 2:
        return float(index + 1)
    e, half = index // 2 + 1, index % 2
    return float((3 + half) << (e - 2))


def upper_bounds() -> list[float]:
    """Each bucket's upper bound in seconds; the last one is +inf."""
    bounds = [_upper_units(i) / 100_000 for i in range(BUCKETS - 1)]
    return [*bounds, math.inf]


def lower_bound(index: int) -> float:
    """A bucket's lower bound in seconds."""
    return 0.0 if index == 0 else _upper_units(index - 1) / 100_000


def record(counts: memoryview[int], sums: memoryview[float], which: int, seconds: float) -> None:
    """Count one duration in histogram `which` (QUEUE, RUN or TOTAL) under the cell lock;
    `counts` and `sums` are the int64 and float64 views of the histogram words
    (`CellMemory.latency`, `CellMemory.latency_sums`)."""
    base = which * _WORDS
    counts[base + bucket_of(seconds)] += 1
    if 0.0 < seconds < MAX_S:
        sums[base + BUCKETS] += seconds


def read(
    counts: npt.NDArray[np.int64], sums: npt.NDArray[np.float64], which: Latency
) -> tuple[npt.NDArray[np.int64], float]:
    """(a copy of the bucket counts, the sum in seconds) of one histogram, without the lock:
    a torn read is off by the tasks of one batch, which monitoring tolerates."""
    base = which * _WORDS
    return counts[base : base + BUCKETS].copy(), float(sums[base + BUCKETS])


def quantile(counts: npt.NDArray[np.int64], q: float) -> float:
    """An estimate of quantile `q` (0..1) of the durations counted in `counts` (e.g. the
    difference of two reads), interpolating linearly inside the bucket; NaN if empty."""
    total = int(counts.sum())
    if total == 0:
        return math.nan
    rank = q * total
    cumulative = np.cumsum(counts)
    index = int(np.searchsorted(cumulative, rank, side="left"))
    index = min(index, BUCKETS - 1)
    below = int(cumulative[index - 1]) if index > 0 else 0
    inside = int(counts[index])
    low = lower_bound(index)
    if index == BUCKETS - 1:
        return low  # open-ended bucket: its lower bound is all we know
    high = _upper_units(index) / 100_000
    fraction = (rank - below) / inside if inside else 0.0
    return low + (high - low) * min(max(fraction, 0.0), 1.0)
