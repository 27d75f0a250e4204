"""The PLM's HTTP pages beside /metrics: `GET /status`, the JSON `heapd status --json` prints,
and `GET /`, a self-contained HTML page of the cell with its last minutes of history.

The history is sampled from shared memory (lock-free) every `INTERVAL_S` by a timer on the
PLM's loop, only while the endpoint is served.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from heapd import convert as client_convert
from heapd.plm import convert
from heapd.plm.daemon import Plm
from heapd.runtime import history, status_page
from heapd.runtime.endpoint import Body, Route
from heapd.status import status_document

UNSCHEDULABLE_SHOWN = 3  # as `heapd status`


class Pages:
    """The routes, and the history sampler behind the HTML page."""

    def __init__(self, plm: Plm, interval_s: float = history.INTERVAL_S) -> None:
        self._plm = plm
        self._history = history.History(interval_s=interval_s)
        self._timer: asyncio.TimerHandle | None = None

    def routes(self) -> dict[str, Route]:
        """Path -> handler, for `heapd.runtime.endpoint.Endpoint`."""
        return {"/status": self.status_json, "/": self.page}

    def start(self) -> None:
        """Begin sampling the cell for the page's history (on the running loop)."""
        self._sample()

    def close(self) -> None:
        """Stop sampling."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def document(self) -> dict[str, Any]:
        """The status as `heapd status --json` prints it."""
        stats, held = self._plm.stats()
        cluster = client_convert.cluster_from_proto(convert.cluster_to_proto(stats, held))
        return status_document(cluster, stats.unschedulable_examples[:UNSCHEDULABLE_SHOWN])

    def status_json(self) -> Body:
        """GET /status."""
        return "application/json", json.dumps(self.document(), indent=2).encode()

    def page(self) -> Body:
        """GET /."""
        html = status_page.render(self.document(), self._history.points())
        return "text/html; charset=utf-8", html.encode()

    def _sample(self) -> None:
        self._history.record(self._plm.cell.sample())
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._history.interval_s, self._sample)
