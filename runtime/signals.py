"""Signal handling for daemon entry points: first SIGTERM/SIGINT graceful, second immediate."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

log = logging.getLogger(__name__)


def install(loop: asyncio.AbstractEventLoop, graceful: Callable[[], object]) -> None:
    """On the first SIGTERM/SIGINT call `graceful()`; on the second exit at once (code 130)."""
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            log.info("signal received, shutting down", extra={"fields": {"signal": signum}})
            graceful()
        else:
            log.warning("second signal, exiting now")
            os._exit(130)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
