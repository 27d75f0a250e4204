"""The PLM's Prometheus metrics: the whole cell (from shared memory), its own lock use, result
delivery and the journal. The cell's totals are exported here only, not by every role."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from heapd.plm.daemon import Plm
from heapd.runtime import metrics


class PlmCollector(Collector):
    """Delivery and journal figures of one PLM, read at scrape time."""

    def __init__(self, plm: Plm) -> None:
        self._plm = plm

    def collect(self) -> Iterator[Metric]:
        """The PLM's own metric families."""
        plm = self._plm
        held, unacknowledged, sessions, streams = plm.holding()
        yield metrics.counter(
            "heapd_results_delivered", "Results written to clients' watch streams.", plm.delivered
        )
        yield metrics.gauge(
            "heapd_results_held", "Settled results kept for nobody (until their TTL).", held
        )
        yield metrics.gauge(
            "heapd_results_unacknowledged",
            "Results delivered, not yet acknowledged.",
            unacknowledged,
        )
        yield metrics.gauge("heapd_sessions", "Client sessions the PLM knows.", sessions)
        yield metrics.gauge("heapd_watch_streams", "Open WatchTasks streams.", streams)
        commits = plm.commits
        if commits is not None:
            yield metrics.counter(
                "heapd_journal_commits", "Journal transactions committed.", commits.commits
            )
            yield metrics.histogram_family(
                commits.commit_seconds,
                "heapd_journal_commit_seconds",
                "One journal transaction and its fsync (group commit).",
            )


def registry(plm: Plm) -> CollectorRegistry:
    """Everything the PLM's /metrics serves."""
    return metrics.registry(
        metrics.CellCollector(plm.cell), metrics.LockCollector(plm.cell), PlmCollector(plm)
    )
