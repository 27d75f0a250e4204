"""One asyncio timer per key, re-armable and cancellable: the register's deadlines and leases."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class KeyedTimers(Generic[K]):
    """`start(key, after_s, callback)` runs callback once after_s passes unless cancelled."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timers: dict[K, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._timers)

    def __contains__(self, key: object) -> bool:
        return key in self._timers

    def start(self, key: K, after_s: float, callback: Callable[[], None]) -> None:
        """(Re)start the timer of `key`."""
        self.cancel(key)
        self._timers[key] = self._loop.call_later(max(0.0, after_s), self._fire, key, callback)

    def cancel(self, key: K) -> None:
        """Stop the timer of `key`, if any."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def close(self) -> None:
        """Cancel every timer."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _fire(self, key: K, callback: Callable[[], None]) -> None:
        self._timers.pop(key, None)
        callback()
