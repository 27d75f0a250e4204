"""The scheduler's Prometheus metrics: dispatch rounds and batch sizes, revocations, requeues
of broken streams, and its lock use."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from heapd.runtime import metrics
from heapd.scheduler.daemon import Scheduler


class SchedulerCollector(Collector):
    """Dispatch figures of one scheduler, read at scrape time."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        """The scheduler's own metric families."""
        s = self._scheduler
        requeued = s.dispatcher_counts()[0]
        yield metrics.counter("heapd_dispatch_rounds", "Dispatch rounds (one lock each).", s.rounds)
        yield metrics.counter("heapd_tasks_dispatched", "Tasks sent to workers.", s.dispatched)
        yield metrics.histogram_family(
            s.batch_sizes, "heapd_dispatch_batch_size", "Tasks dispatched per lock acquisition."
        )
        yield metrics.counter(
            "heapd_tasks_parked", "Tasks found unschedulable and parked.", s.parked
        )
        yield metrics.counter(
            "heapd_revocation_requests",
            "Requests to workers to give back unstarted prefetched tasks.",
            s.revoke_requests,
        )
        yield metrics.counter(
            "heapd_dispatch_requeues",
            "Tasks requeued because their worker's assign stream broke before it took them.",
            requeued,
        )


def registry(scheduler: Scheduler) -> CollectorRegistry:
    """Everything the scheduler's /metrics serves."""
    return metrics.registry(metrics.LockCollector(scheduler.cell), SchedulerCollector(scheduler))
