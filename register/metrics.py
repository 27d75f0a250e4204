"""The register's Prometheus metrics: heartbeats and their gaps, attempt results by kind,
worker losses, retries, fenced stale results, expired leases, refused calls, stalls of its own
loop, and its lock use."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from heapd.register.daemon import Register
from heapd.runtime import metrics


class RegisterCollector(Collector):
    """Liveness and result intake figures of one register, read at scrape time."""

    def __init__(self, register: Register) -> None:
        self._register = register

    def collect(self) -> Iterator[Metric]:
        """The register's own metric families."""
        r = self._register
        yield metrics.counter("heapd_heartbeats", "Heartbeats received.", r.heartbeats)
        yield metrics.histogram_family(
            r.heartbeat_gaps,
            "heapd_heartbeat_gap_seconds",
            "Time between two heartbeats of one worker (the interval, plus any lag).",
        )
        yield metrics.histogram_family(
            r.results_per_beat, "heapd_heartbeat_results", "Results carried per heartbeat."
        )
        yield metrics.counter(
            "heapd_attempts_succeeded",
            "Attempts that succeeded (results accepted from workers).",
            r.succeeded_attempts,
        )
        yield metrics.labelled(
            CounterMetricFamily(
                "heapd_attempts_failed",
                "Attempts that failed, by failure kind (exception, timeout, crashed, ...):"
                " reported by workers, or timed out by the register.",
                labels=["kind"],
            ),
            sorted(r.failed_attempts.items()),
        )
        yield metrics.labelled(
            CounterMetricFamily(
                "heapd_worker_losses", "Workers declared dead, by reason.", labels=["reason"]
            ),
            sorted(r.worker_losses.items()),
        )
        yield metrics.counter(
            "heapd_retries", "Failed attempts put back for another try.", r.retries
        )
        yield metrics.counter(
            "heapd_fenced_results",
            "Results dropped by fencing (a stale attempt, or a worker already declared dead).",
            r.stale_total,
        )
        yield metrics.counter(
            "heapd_leases_expired",
            "Attempts the register settled as timed out because the worker never reported.",
            r.leases_expired,
        )
        yield metrics.labelled(
            CounterMetricFamily(
                "heapd_register_refused",
                "Calls refused, by reason: secret (does not prove the registration it names),"
                " rebound (a heartbeat stream naming another registration), oversized (too"
                " many results in one heartbeat), registration (a bad RegisterWorker).",
                labels=["reason"],
            ),
            sorted(r.refused.items()),
        )
        yield metrics.counter(
            "heapd_register_loop_stalls",
            "Stalls of the register's own event loop (heartbeats may have waited unread).",
            r.loop_stalls,
        )
        yield metrics.counter(
            "heapd_register_reprieves",
            "Worker deadlines that passed during a stall of the register; given one more"
            " interval instead of being buried.",
            r.reprieves,
        )


def registry(register: Register) -> CollectorRegistry:
    """Everything the register's /metrics serves."""
    return metrics.registry(metrics.LockCollector(register.cell), RegisterCollector(register))
