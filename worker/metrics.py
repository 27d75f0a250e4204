"""A worker's Prometheus metrics: its slots and queue, tasks assigned, given back and
finished, task processes replaced, heartbeat results sent, registrations."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from heapd.runtime import metrics
from heapd.worker.daemon import Worker


class WorkerCollector(Collector):
    """One worker's figures, read at scrape time."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def collect(self) -> Iterator[Metric]:
        """The worker's metric families."""
        w = self._worker
        pool = w.pool
        yield metrics.gauge("heapd_worker_slots", "Task processes of this worker.", pool.slots)
        yield metrics.gauge("heapd_worker_running", "Tasks running now.", pool.running)
        yield metrics.gauge("heapd_worker_queued", "Tasks held, not started yet.", pool.queued)
        yield metrics.counter("heapd_worker_assigned", "Tasks received.", w.assigned)
        yield metrics.counter(
            "heapd_worker_assign_messages",
            "AssignTasks messages received (tasks per message: assigned ÷ messages).",
            w.assign_messages,
        )
        yield metrics.counter(
            "heapd_worker_revoked", "Unstarted tasks given back to the scheduler.", w.revoked
        )
        yield metrics.labelled(
            CounterMetricFamily(
                "heapd_worker_tasks_finished", "Attempts finished here.", labels=["state"]
            ),
            [("succeeded", w.succeeded), ("failed", w.failed)],
        )
        yield metrics.counter(
            "heapd_worker_process_restarts",
            "Task processes replaced (died, or killed on timeout or cancel).",
            pool.respawns,
        )
        yield metrics.counter(
            "heapd_worker_registrations", "Registrations with the register.", w.registrations
        )
        yield metrics.gauge(
            "heapd_worker_connected",
            "1 while registered with a heartbeat stream to the register.",
            1 if w.link is not None else 0,
        )


def registry(worker: Worker) -> CollectorRegistry:
    """Everything a worker's /metrics serves (a worker holds no cell: no lock metrics)."""
    return metrics.registry(WorkerCollector(worker))
