"""Submissions over one long-lived `SubmitStream` per client (blocking and asyncio flavours).

A message on an open stream reaches the PLM in about half the time of a new unary call (no call
set-up on either side), and a single task's round trip pays it on every submit. Each lane opens
its stream on first use and again after it breaks; one request is in flight at a time and waits
for its own answer, so answers never need matching. A broken stream surfaces as an UNAVAILABLE
`grpc.RpcError`, which the clients retry with backoff, as they do a unary call. The requests
and answers are built and read by `heapd.convert`.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

import grpc

from heapd import convert


class StreamBroken(grpc.RpcError):  # type: ignore[misc]
    """The stream ended before answering (the PLM stopped): retried like UNAVAILABLE."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the PLM closed the submit stream"


class SubmitLane:
    """Blocking submissions; safe to share between threads (they take turns)."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue[convert.SubmitRequest | None] | None = None
        self._call: Any = None

    def submit(self, request: convert.SubmitRequest) -> list[int]:
        """Send one request and wait for its answer (grpc.RpcError if the stream fails)."""
        with self._lock:
            if self._call is None or self._outbox is None:
                self._outbox = queue.SimpleQueue()
                self._call = self._stub.SubmitStream(iter(self._outbox.get, None))
            self._outbox.put(request)
            try:
                reply = next(self._call)
            except grpc.RpcError:
                self._drop()
                raise
            except StopIteration:
                self._drop()
                raise StreamBroken() from None
        return convert.submitted_ids(reply)

    def close(self) -> None:
        """End the stream (a submit blocked on it gets CANCELLED)."""
        self._drop()

    def _drop(self) -> None:
        outbox, call = self._outbox, self._call
        self._outbox = self._call = None
        if outbox is not None:
            outbox.put(None)  # ends the request iterator grpc reads on its own thread
        if call is not None:
            call.cancel()


class AsyncSubmitLane:
    """asyncio submissions; concurrent tasks take turns."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self._lock = asyncio.Lock()
        self._call: Any = None

    async def submit(self, request: convert.SubmitRequest) -> list[int]:
        """Send one request and await its answer (grpc.RpcError if the stream fails)."""
        async with self._lock:
            if self._call is None:
                self._call = self._stub.SubmitStream()
            try:
                await self._call.write(request)
                reply = await self._call.read()
            except (grpc.RpcError, asyncio.CancelledError):
                self.close()
                raise
            if reply is grpc.aio.EOF:
                self.close()
                raise StreamBroken()
        return convert.submitted_ids(reply)

    def close(self) -> None:
        """End the stream."""
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
