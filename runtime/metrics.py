"""Prometheus metrics shared by every role: the cell seen from shared memory, the cell lock as
this process used it, and cheap histograms a role fills on its event loop.

Nothing here is called per task. Roles keep plain integer counters (and `Histogram`s observed
once per batch) as attributes; each role's collector turns them into metric families when
Prometheus scrapes, so a role without `--metrics-port` pays nothing and one with it pays only
at scrape time. Conventions: `heapd_` prefix, `_total` counters, `_seconds` histograms, state
and kind as labels, never a task id.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from heapd import shm
from heapd.shm import latency
from heapd.shm.histogram import Histogram

# The shared-memory latency buckets are exported at every octave (10 µs x 2^k) from 40 µs to
# ~3 h: 29 buckets, fine enough for p50/p99 and few enough for a TSDB.
_OCTAVE_INDEXES = list(range(3, latency.BUCKETS - 1, 2))

# The priority bands of the queue depth gauge: the CLI's high/medium/low are 100/0/-100.
BANDS: tuple[tuple[str, int, int], ...] = (
    ("high", 1, 1 << 15),
    ("medium", 0, 0),
    ("low", -(1 << 15), -1),
)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def histogram_family(hist: Histogram, name: str, documentation: str) -> HistogramMetricFamily:
    """A Prometheus histogram from a process-local `shm.histogram.Histogram`."""
    cumulative, buckets = 0, []
    for bound, count in zip([*hist.bounds, float("inf")], hist.counts, strict=True):
        cumulative += count
        buckets.append((_le(bound), float(cumulative)))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=hist.sum)


def latency_family(
    name: str, documentation: str, counts: npt.NDArray[np.int64], sum_s: float
) -> HistogramMetricFamily:
    """A Prometheus histogram from a shared-memory latency histogram (`shm.latency`)."""
    cumulative = np.cumsum(counts)
    bounds = latency.upper_bounds()
    buckets = [(_le(bounds[i]), float(cumulative[i])) for i in _OCTAVE_INDEXES]
    buckets.append(("+Inf", float(cumulative[-1])))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=sum_s)


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """A counter family with one sample (`name` without its `_total`)."""
    return CounterMetricFamily(name, documentation, value=value)


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    """A gauge family with one sample."""
    return GaugeMetricFamily(name, documentation, value=value)


def labelled(
    family: CounterMetricFamily | GaugeMetricFamily,
    samples: Iterable[tuple[str, float]],
) -> CounterMetricFamily | GaugeMetricFamily:
    """Add one sample per label value to a family created with one label."""
    for label, value in samples:
        family.add_metric([label], value)
    return family


class CellCollector(Collector):
    """The whole cell, read lock-free from shared memory (`shm.sample`) at scrape time: task
    totals, tasks by state, queue depth by priority band, workers, slots, latencies, occupancy.
    Exported by the PLM only, so a cell's totals are not counted once per role."""

    def __init__(self, cell: shm.Cell) -> None:
        self._cell = cell

    def collect(self) -> Iterator[Metric]:
        """The cell's metric families, from one snapshot."""
        s = self._cell.sample()
        yield from _task_totals(s)
        yield from _task_gauges(s)
        yield from _worker_gauges(s)
        yield from _latencies(s)
        yield from _occupancy(s)


def _task_totals(s: shm.CellSample) -> Iterator[Metric]:
    c = s.counters
    yield counter("heapd_tasks_submitted", "Tasks accepted by the cell.", c["submitted"])
    yield labelled(
        CounterMetricFamily(
            "heapd_tasks_settled", "Tasks that reached a terminal state.", labels=["state"]
        ),
        [(name, c[name]) for name in shm.sample.SETTLED],
    )
    yield counter(
        "heapd_task_requeues",
        "Attempts put back on the queue (worker lost, retry after a failure, broken stream).",
        c["requeued"],
    )
    yield counter(
        "heapd_stale_results",
        "Results of fenced attempts (an older attempt or a dead worker's) dropped.",
        c["stale"],
    )
    yield counter(
        "heapd_tasks_revoked",
        "Prefetched tasks taken back from workers so a higher priority one could overtake.",
        c["revoked"],
    )
    yield counter(
        "heapd_cell_repairs",
        "Rebuilds of the derived state (after a lock owner died).",
        c["repairs"],
    )
    yield counter(
        "heapd_cell_lock_acquisitions",
        "Acquisitions of the cell lock by every role.",
        c["lock_acquisitions"],
    )


def _task_gauges(s: shm.CellSample) -> Iterator[Metric]:
    yield labelled(
        GaugeMetricFamily("heapd_tasks", "Tasks in the cell by state.", labels=["state"]),
        [(state.name.lower(), n) for state, n in s.states.items()],
    )
    yield labelled(
        GaugeMetricFamily(
            "heapd_queue_depth",
            "Queued tasks by priority band (high > 0, medium = 0, low < 0).",
            labels=["band"],
        ),
        [
            (band, sum(n for p, n in s.queued_by_priority.items() if low <= p <= high))
            for band, low, high in BANDS
        ],
    )
    yield gauge(
        "heapd_tasks_unschedulable",
        "Queued tasks parked because no live worker could run them.",
        s.parked,
    )
    yield gauge("heapd_tasks_running", "Tasks dispatched to or running on a worker.", s.running)


def _worker_gauges(s: shm.CellSample) -> Iterator[Metric]:
    by_state = {state.name.lower(): 0 for state in shm.WorkerState if state.name != "FREE"}
    for w in s.workers:
        by_state[w.state.name.lower()] += 1
    yield labelled(
        GaugeMetricFamily("heapd_workers", "Registered workers by state.", labels=["state"]),
        by_state.items(),
    )
    yield gauge("heapd_slots", "Task slots of the live workers.", s.slots)
    yield gauge("heapd_slots_free", "Task slots of the live workers not in use.", s.slots_free)


def _latencies(s: shm.CellSample) -> Iterator[Metric]:
    docs = {
        shm.Latency.QUEUE: ("heapd_task_queue_seconds", "Submitted to first dispatched."),
        shm.Latency.RUN: ("heapd_task_run_seconds", "Dispatched to settled on a worker."),
        shm.Latency.TOTAL: ("heapd_task_end_to_end_seconds", "Submitted to terminal."),
    }
    for which, (name, doc) in docs.items():
        counts, sum_s = s.latency[which]
        yield latency_family(name, doc, counts, sum_s)


def _occupancy(s: shm.CellSample) -> Iterator[Metric]:
    yield gauge("heapd_task_table_used", "Task slots in use in shared memory.", s.tasks_used)
    yield gauge("heapd_task_table_capacity", "Task slots in shared memory.", s.task_capacity)
    yield gauge("heapd_worker_table_capacity", "Worker slots in shared memory.", s.worker_capacity)
    yield gauge("heapd_arena_used_bytes", "Blob arena bytes in use.", s.arena_used_bytes)
    yield gauge("heapd_arena_bytes", "Blob arena size.", s.arena_bytes)


class LockCollector(Collector):
    """How long this process waited for and held the cell lock (`shm.Cell.lock_times`)."""

    def __init__(self, cell: shm.Cell) -> None:
        self._cell = cell

    def collect(self) -> Iterator[Metric]:
        """Wait and hold histograms, and contended acquisitions."""
        times = self._cell.lock_times
        yield histogram_family(
            times.wait, "heapd_lock_wait_seconds", "Time this role waited to take the cell lock."
        )
        yield histogram_family(
            times.hold, "heapd_lock_hold_seconds", "Time this role held the cell lock."
        )
        yield counter(
            "heapd_lock_contended",
            "Acquisitions by this role that found the lock taken.",
            times.contended,
        )


def registry(*collectors: Collector) -> CollectorRegistry:
    """A registry with these collectors and the process's own CPU, memory and file metrics."""
    reg = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    for c in collectors:
        reg.register(c)
    return reg
