"""Signal handling for entry points: first SIGTERM/SIGINT graceful, second immediate."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

log = logging.getLogger(__name__)


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd command


def exit_now() -> None:
    """A daemon's immediate stop: exit without cleanup (its supervisor or the OS cleans up)."""
    os._exit(EXIT_INTERRUPTED)


def install(
    loop: asyncio.AbstractEventLoop,
    graceful: Callable[[], object],
    immediate: Callable[[], object] = exit_now,
) -> None:
    """On the first SIGTERM/SIGINT call `graceful()`; on each later one `immediate()`."""
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            log.info("signal received, shutting down", extra={"fields": {"signal": signum}})
            graceful()
        else:
            log.warning("second signal, stopping now", extra={"fields": {"signal": signum}})
            immediate()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
