"""A shared-memory doorbell (a FIFO, `heapd.shm.Doorbell`) watched by an asyncio event loop.

The loop waits on the doorbell's descriptor itself (`loop.add_reader`): a ring wakes the loop
directly, with no thread in between, and the callback drains every pending ring at once (a
burst of rings is one wake-up).
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Bell(Protocol):
    """What the listener needs of a doorbell."""

    def fileno(self) -> int: ...

    def drain(self) -> bool: ...


class BellListener:
    """Sets `event` in the loop each time the doorbell rings (rings coalesce)."""

    def __init__(self, bell: Bell, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self.event = asyncio.Event()
        self.name = name
        self._bell = bell
        self._loop = loop
        self._watching = False

    def start(self) -> None:
        """Watch the doorbell; call from the loop thread. Rings from before the start are
        dropped and `event` is set once: the owner does a full round first anyway."""
        self._bell.drain()
        self._loop.add_reader(self._bell.fileno(), self._rung)
        self._watching = True
        self.event.set()

    def stop(self) -> None:
        """Stop watching (idempotent); call from the loop thread."""
        if self._watching:
            self._watching = False
            self._loop.remove_reader(self._bell.fileno())

    async def close(self) -> None:
        """Stop watching: the doorbell's descriptor may then be closed with the cell handle."""
        self.stop()

    def _rung(self) -> None:
        if self._bell.drain():
            self.event.set()
