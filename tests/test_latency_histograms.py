"""The shared-memory latency histograms and the lock-free cell sample."""

from __future__ import annotations

import array
import itertools
import math
import time
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from heapd import shm
from heapd.runtime import metrics
from heapd.shm import latency
from heapd.shm.sample import between

SMALL = shm.Capacities(tasks=1024, workers=16, arena_bytes=1 << 20, max_blob_bytes=4096)


@pytest.fixture
def cell(cell_name: str) -> Iterator[shm.Cell]:
    with shm.Cell.create(cell_name, SMALL) as handle:
        yield handle
        assert handle.check() == []


@given(st.floats(min_value=0.0, max_value=1e5, allow_nan=False))
def test_a_duration_falls_inside_its_bucket(seconds: float) -> None:
    index = latency.bucket_of(seconds)
    assert latency.lower_bound(index) <= seconds + 1e-12
    if index < latency.BUCKETS - 1:
        assert seconds < latency.upper_bounds()[index] + 1e-12


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_recording_any_duration_never_raises(seconds: float) -> None:
    counts = array.array("q", bytes(8 * latency.WORDS))
    sums = memoryview(counts).cast("B").cast("d")
    for _ in range(3):
        latency.record(memoryview(counts), sums, latency.TOTAL, seconds)
    base = latency.TOTAL * (latency.BUCKETS + 1)
    assert sum(counts[base : base + latency.BUCKETS]) == 3
    assert math.isfinite(sums[base + latency.BUCKETS])


def test_bounds_increase_and_end_open() -> None:
    bounds = latency.upper_bounds()
    assert len(bounds) == latency.BUCKETS
    assert all(a < b for a, b in itertools.pairwise(bounds))
    assert math.isinf(bounds[-1])
    assert latency.bucket_of(-1.0) == 0  # a clock step back counts as no time


def test_quantiles_of_a_known_mix() -> None:
    counts = np.zeros(latency.BUCKETS, dtype=np.int64)
    for seconds in [0.001] * 90 + [0.5] * 10:
        counts[latency.bucket_of(seconds)] += 1
    p50, p99 = latency.quantile(counts, 0.5), latency.quantile(counts, 0.99)
    assert 0.0008 <= p50 <= 0.0012
    assert 0.49 <= p99 <= 0.66  # inside the bucket of 0.5 s (buckets are up to 1.5x wide)
    assert math.isnan(latency.quantile(np.zeros(latency.BUCKETS, dtype=np.int64), 0.5))


def test_every_terminal_task_is_counted_once(cell: shm.Cell) -> None:
    before = cell.sample()
    now = time.time()
    ids = cell.submit([shm.NewTask(payload=b"x", priority=p) for p in (0, 0, 7, -2)], now)
    cell.register_worker("127.0.0.1:1", 2, 1, "h", now, now + 60)
    done = cell.dispatch(2, now + 0.01)
    assert len(done) == 2
    completions = [shm.Completion(d.task_id, d.attempt, shm.TaskState.SUCCEEDED, b"") for d in done]
    cell.complete(done[0].worker_id, done[0].worker_epoch, completions, now + 0.02)
    queued_left = [t for t in ids if t not in {d.task_id for d in done}]
    cell.cancel(queued_left[0], now + 0.03)
    after = cell.sample()

    assert after.counters["submitted"] - before.counters["submitted"] == 4
    queue_counts, _ = after.latency[shm.Latency.QUEUE]
    run_counts, run_sum = after.latency[shm.Latency.RUN]
    total_counts, _ = after.latency[shm.Latency.TOTAL]
    assert int(queue_counts.sum()) == 2  # first dispatches
    assert int(run_counts.sum()) == 2 and run_sum == pytest.approx(0.02, abs=1e-6)
    assert int(total_counts.sum()) == 3  # two succeeded, one cancelled
    assert after.queued == 1 and sum(after.queued_by_priority.values()) == 1
    interval = between(before, after)
    assert interval.settled == 3
    assert 0.01 <= interval.p50_s <= 0.04


def test_cell_metrics_read_the_sample(cell: shm.Cell) -> None:
    now = time.time()
    cell.submit([shm.NewTask(payload=b"x", priority=p) for p in (100, 0, 0, -5)], now)
    cell.register_worker("127.0.0.1:1", 3, 1, "h", now, now + 60)
    families = {f.name: f for f in metrics.CellCollector(cell).collect()}
    depth = {s.labels["band"]: s.value for s in families["heapd_queue_depth"].samples}
    assert depth == {"high": 1, "medium": 2, "low": 1}
    assert families["heapd_slots"].samples[0].value == 3
    assert families["heapd_tasks_submitted"].samples[0].value == 4
    lock = {f.name: f for f in metrics.LockCollector(cell).collect()}
    holds = [s for s in lock["heapd_lock_hold_seconds"].samples if s.name.endswith("_count")]
    assert holds[0].value >= 2  # the submit and the registration at least
