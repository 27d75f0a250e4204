"""W7 (BENCHMARKS.md): 2,000 low-priority 10 ms tasks queued on 2 slots (1 worker x 2), then 50
high-priority ones (10 ms too).

Every task returns the time it started (`started_sleep`), so nothing but the results is needed.
Reported:

- the high tasks' queue wait (start - submit, from the start of the submit call as the client
  sees it): p50, p99 and max, in ms and in units of one task's duration;
- `floor_p99_units`: the p99 those waits would have if each slot took the next high task the
  instant it freed (50 tasks on 2 slots queue behind each other: the k-th cannot start before
  k // 2 task durations);
- `high_submit_ms`: how long the call submitting them took (the journal commits first);
- inversions: low tasks that started while a high one was queued, i.e. after the call
  submitting it returned (surely queued by then) and before it started. Must be 0, except for a
  low task the scheduler had already sent when the high one arrived: `inversions_within_rtt`
  counts those that started within one dispatch round trip (RTT_S) of that moment,
  `inversions_beyond_rtt` the rest (must be 0). `low_started_during_submit` counts the low
  tasks that started while that call was in flight: not inversions (the high task may not have
  been queued yet), shown so the raw count from the first submit byte on is their sum.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from heapd.runtime.bench import cells
from heapd.runtime.bench.workloads import started_sleep
from heapd.runtime.launch import LocalCell

LOW_TASKS = 2000
HIGH_TASKS = 50
TASK_S = 0.010
WORKERS, SLOTS = 1, 2
RTT_S = 0.002  # one dispatch round trip: a low task already on its way may still start
RESULT_TIMEOUT_S = 600.0

Figures = dict[str, float]


def run_w7(cell: LocalCell, low: int = LOW_TASKS, high: int = HIGH_TASKS) -> Figures:
    """One repetition: queue the low tasks, and once they run, submit the high ones at once."""
    with cells.client(cell) as client:
        lows = client.map(started_sleep, [TASK_S] * low, priority="low")
        lows[0].result(timeout=RESULT_TIMEOUT_S)  # the low tasks are running, the queue is deep
        submitted = time.time()
        highs = client.map(started_sleep, [TASK_S] * high, priority="high")
        accepted = time.time()
        high_starts = client.gather(highs, timeout=RESULT_TIMEOUT_S)
        low_starts = client.gather(lows, timeout=RESULT_TIMEOUT_S)
    waits_ms = [(s - submitted) * 1000 for s in high_starts]
    within, beyond = inversions(low_starts, [(accepted, s) for s in high_starts])
    unit_ms = TASK_S * 1000
    p50, p99 = _p50_p99(waits_ms)
    return {
        "high_wait_p50_ms": p50,
        "high_wait_p99_ms": p99,
        "high_wait_max_ms": max(waits_ms),
        "high_wait_p50_units": p50 / unit_ms,
        "high_wait_p99_units": p99 / unit_ms,
        "high_wait_max_units": max(waits_ms) / unit_ms,
        "high_submit_ms": (accepted - submitted) * 1000,
        "floor_p99_units": _p50_p99([float(k // SLOTS) for k in range(high)])[1],
        "inversions": float(within + beyond),
        "inversions_within_rtt": float(within),
        "inversions_beyond_rtt": float(beyond),
        "low_started_during_submit": float(sum(submitted < s <= accepted for s in low_starts)),
        "completed": float(len(low_starts) + len(high_starts)),
    }


def inversions(
    low_starts: Sequence[float], highs: Sequence[tuple[float, float]]
) -> tuple[int, int]:
    """Low tasks that started while a high task (queued, started) was queued: (those within
    RTT_S of the earliest such high task's queueing, the others)."""
    within = beyond = 0
    for start in low_starts:
        queued_since = [sub for sub, began in highs if sub < start < began]
        if queued_since:
            if start - min(queued_since) <= RTT_S:
                within += 1
            else:
                beyond += 1
    return within, beyond


def _p50_p99(samples: Sequence[float]) -> tuple[float, float]:
    if len(samples) < 2:
        return samples[0], samples[0]
    return statistics.median(samples), statistics.quantiles(samples, n=100, method="inclusive")[98]
