"""Bridge a shared-memory doorbell (a POSIX semaphore) into an asyncio event loop.

A semaphore cannot be waited on by epoll, so one thread per doorbell blocks in sem_wait (which
releases the GIL) and hands each ring to the loop. The wait has a timeout only so that `stop()`
is noticed; coordination never depends on it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Protocol


class Bell(Protocol):
    """What the bridge needs of a doorbell."""

    def wait(self, timeout: float | None) -> bool: ...

    def ring(self) -> None: ...


class BellListener:
    """Sets `event` in the loop each time the doorbell rings (rings coalesce)."""

    def __init__(self, bell: Bell, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self.event = asyncio.Event()
        self._bell = bell
        self._loop = loop
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"bell-{name}", daemon=True)

    def start(self) -> None:
        """Start listening; call from the loop thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop (it leaves within one wait timeout); `close` also waits."""
        self._stopping.set()

    async def close(self) -> None:
        """Stop the thread and wait until it has left: it must never outlive the cell handle
        whose semaphore it waits on (a wait on an unmapped semaphore crashes the process)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._bell.ring()  # wake it now instead of at the end of its wait timeout
            await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        while not self._stopping.is_set():
            if self._bell.wait(0.25) and not self._stopping.is_set():
                try:
                    self._loop.call_soon_threadsafe(self.event.set)
                except RuntimeError:  # loop closed during shutdown
                    return
