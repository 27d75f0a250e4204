"""Doorbells: a FIFO per waiting role that the other roles write a byte to, instead of polling.

Every handle on a cell opens both FIFOs read-write and non-blocking (Linux allows O_RDWR on a
FIFO: the open never blocks, and a FIFO someone holds open for reading never refuses a write).
So `ring` is one `write` that cannot block or fail for want of a reader, and the waiting role
registers the same descriptor with its event loop (`loop.add_reader`): a ring wakes the loop
directly, with no thread between the doorbell and the loop.

Rings coalesce: the waiter drains every byte at once, so a burst of rings is one wake-up; a
full pipe (64 KiB of rings nobody drained) drops the ring, which is fine: the waiter has one
pending. Nothing is shared but the pipe, so a peer SIGKILLed while ringing or waiting leaves
nothing to repair: the next waiter drains the stale bytes and does one needless round.
"""

from __future__ import annotations

import contextlib
import os
import select

_DRAIN_BYTES = 65536


class Doorbell:
    """Wake-up signal between processes of one cell, over a FIFO descriptor."""

    __slots__ = ("_fd", "name")

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self.name = name

    def fileno(self) -> int:
        """The descriptor the waiter's event loop watches for reading."""
        return self._fd

    def ring(self) -> None:
        """Wake the waiter (a full pipe means it has a wake-up pending already)."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._fd, b"\x01")

    def drain(self) -> bool:
        """Consume every pending ring; True if there was any."""
        rung = False
        while True:
            try:
                chunk = os.read(self._fd, _DRAIN_BYTES)
            except BlockingIOError:
                return rung
            rung = rung or bool(chunk)
            if len(chunk) < _DRAIN_BYTES:
                return rung

    def wait(self, timeout: float | None) -> bool:
        """Block until rung (True) or `timeout` seconds pass (False); None waits forever.
        For callers without an event loop; rings since the last wait count."""
        readable, _, _ = select.select([self._fd], [], [], timeout)
        return bool(readable) and self.drain()

    def close(self) -> None:
        """Close this process's descriptor (the FIFO itself stays)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
