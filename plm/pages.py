"""The PLM's HTTP pages beside /metrics: `GET /status`, the JSON `heapd status --json` prints,
and `GET /`, a self-contained HTML page of the cell with its last minutes of history.

The history is sampled from shared memory (lock-free, in a thread: a sample of a big table
takes milliseconds) every `INTERVAL_S`, only while the endpoint is served. The status document
is built at most once per `CACHE_S`, however often the page reloads or is fetched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from heapd import convert as client_convert
from heapd.plm import convert
from heapd.plm.daemon import Plm
from heapd.runtime import history, status_page
from heapd.runtime.endpoint import Body, Route
from heapd.status import status_document

UNSCHEDULABLE_SHOWN = 3  # as `heapd status`
CACHE_S = 1.0

log = logging.getLogger(__name__)


class Pages:
    """The routes, and the history sampler behind the HTML page."""

    def __init__(self, plm: Plm, interval_s: float = history.INTERVAL_S) -> None:
        self._plm = plm
        self._history = history.History(interval_s=interval_s)
        self._sampler: asyncio.Task[None] | None = None
        self._cached: tuple[float, dict[str, Any]] | None = None

    def routes(self) -> dict[str, Route]:
        """Path -> handler, for `heapd.runtime.endpoint.Endpoint`."""
        return {"/status": self.status_json, "/": self.page}

    def start(self) -> None:
        """Begin sampling the cell for the page's history (on the running loop)."""
        self._sampler = asyncio.create_task(self._sample_forever(), name="plm-history")

    async def close(self) -> None:
        """Stop sampling."""
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None

    def document(self) -> dict[str, Any]:
        """The status as `heapd status --json` prints it (at most CACHE_S old)."""
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < CACHE_S:
            return self._cached[1]
        stats, held = self._plm.stats()
        cluster = client_convert.cluster_from_proto(convert.cluster_to_proto(stats, held))
        document = status_document(cluster, stats.unschedulable_examples[:UNSCHEDULABLE_SHOWN])
        self._cached = (now, document)
        return document

    def status_json(self) -> Body:
        """GET /status."""
        return "application/json", json.dumps(self.document(), indent=2).encode()

    def page(self) -> Body:
        """GET /."""
        html = status_page.render(self.document(), self._history.points())
        return "text/html; charset=utf-8", html.encode()

    async def _sample_forever(self) -> None:
        cell = self._plm.cell
        while True:
            try:
                self._history.record(await asyncio.to_thread(cell.sample))
            except Exception:  # a monitoring read must never end the sampling
                log.exception("sampling the cell for the status page failed")
            await asyncio.sleep(self._history.interval_s)
