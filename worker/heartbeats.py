"""The worker's heartbeat stream: liveness, started attempts and results, coalesced.

Everything that happens between two turns of the event loop goes out in one message; with
nothing to report a message still goes out every interval. Acknowledgements are cumulative: a
message carrying results defers its reply (while fewer than ACK_EVERY are unacknowledged), and
the register's next reply — to a periodic beat, a flush, the ACK_EVERY-th message, or one it
sends to deliver cancels — acknowledges it with those before it, in order; and a message asks
for a reply whenever the last one is an interval old, so the worker hears the register as often
as a periodic beat would tell it. So a busy worker's
results cost the register no reply message each, and results sent but not acknowledged when a
stream breaks are sent again on the next stream (the register drops duplicates as stale). A
backlog too large for one message (many results at once, or what a broken stream left
unacknowledged) goes out over several, back to back: never a heartbeat too big to send
(`BEAT_RESULT_BYTES`, `BEAT_RESULTS`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence

from heapd.runtime.channels import MAX_MESSAGE_BYTES
from heapd.worker.jobs import JobResult
from heapd.worker.membership import HeartbeatCall, Membership, Register

COALESCE_S = 0.002
# What one heartbeat carries at most: half the message limit in outcomes (each weighs at most
# the pool's max_result_bytes, a quarter of it), and a count the register accepts.
BEAT_RESULT_BYTES = MAX_MESSAGE_BYTES // 2
BEAT_RESULTS = 1024
ACK_EVERY = 16  # messages a worker sends at most before one asks for a reply


class HeartbeatLink:
    """Reports for one membership (worker id + epoch), over successive streams."""

    def __init__(
        self,
        member: Membership,
        running: Callable[[], int],
        busy: Callable[[], bool],
        draining: Callable[[], bool],
        on_cancel: Callable[[int, int], object],
        on_heard: Callable[[], object] = lambda: None,
    ) -> None:
        """`on_heard` is called once, on the register's first answer: from then on the register
        holds this worker's stream (and learns at once if the worker dies)."""
        self.member = member
        self._on_heard: Callable[[], object] | None = on_heard
        self._running = running
        self._busy = busy
        self._draining = draining
        self._on_cancel = on_cancel
        self._flush_timer: asyncio.TimerHandle | None = None
        self._started: list[tuple[int, int]] = []
        self._results: list[JobResult] = []
        self._unacked: deque[list[JobResult]] = deque()
        self._wake = asyncio.Event()
        self._acked = asyncio.Event()
        self._flushing = 0  # flush() calls waiting: every message asks for a reply
        self._answered = False  # the register has answered on the current stream
        self.acked_at = 0.0  # time.monotonic() of the last reply from the register
        self.sent_results = 0
        self.stale_results = 0

    def started(self, refs: Sequence[tuple[int, int]]) -> None:
        """Attempts that began running in a child: they ride with the next message (results
        or the periodic beat) rather than costing a message of their own."""
        self._started.extend(refs)

    def drain(self) -> None:
        """Tell the register at once that this worker takes no new tasks (every message says
        so from now on, read from the worker's own state)."""
        self._flush_now()

    def finished(self, results: Sequence[JobResult]) -> None:
        """Attempts that settled. They go out on the next turn of the loop, or — while the pool
        has more queued work, when nobody waits on a single result — within COALESCE_S, so a
        busy worker sends one message per batch of results instead of one per result."""
        self._results.extend(results)
        if self._busy():
            if self._flush_timer is None:
                loop = asyncio.get_running_loop()
                self._flush_timer = loop.call_later(COALESCE_S, self._flush_now)
        else:
            self._flush_now()

    def _flush_now(self) -> None:
        self._cancel_flush_timer()
        self._wake.set()

    def _cancel_flush_timer(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None

    async def run(self, register: Register) -> None:
        """Hold one stream open until it fails (raises grpc.aio.AioRpcError) or ends."""
        while self._unacked:  # resend what the last stream may have lost
            self._results[:0] = self._unacked.pop()
        call = register.heartbeat()
        self._answered = False
        reader = asyncio.create_task(self._read(call))
        loop = asyncio.get_running_loop()
        try:
            while not reader.done():
                started, results = self._next_reports()
                defer = self._defers(started, results)
                await call.send(
                    self.member, started, results, self._running(), self._draining(), defer
                )
                # Wait for news or the periodic beat; the reader also wakes us when it ends.
                tick = loop.call_later(self.member.interval_s, self._wake.set)
                await self._wake.wait()
                tick.cancel()
            reader.result()  # re-raise why the stream ended
        finally:
            call.cancel()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, call: HeartbeatCall) -> None:
        try:
            async for ack in call.acks():
                for _ in range(min(ack.acks, len(self._unacked))):
                    self._unacked.popleft()
                self.stale_results += ack.stale
                self.acked_at = time.monotonic()
                self._answered = True
                if self._on_heard is not None:
                    heard, self._on_heard = self._on_heard, None
                    heard()
                for task_id, attempt in ack.cancel:
                    self._on_cancel(task_id, attempt)
                self._acked.set()
        finally:
            self._wake.set()

    async def flush(self) -> None:
        """Until everything reported so far has been acknowledged by the register."""
        self._flushing += 1
        try:
            while self._started or self._results or any(self._unacked):
                self._acked.clear()
                self._wake.set()
                await self._acked.wait()
        finally:
            self._flushing -= 1

    def _defers(self, started: list[tuple[int, int]], results: list[JobResult]) -> bool:
        """Whether the next message may go without a reply of its own: it reports work (a
        periodic beat always asks), the register has answered on this stream, and within the
        last interval, nobody waits on a flush, and fewer than ACK_EVERY messages (this one
        included) are unacknowledged."""
        return (
            bool(started or results)
            and self._answered
            and not self._flushing
            and len(self._unacked) < ACK_EVERY
            and time.monotonic() - self.acked_at < self.member.interval_s
        )

    def _next_reports(self) -> tuple[list[tuple[int, int]], list[JobResult]]:
        """What the next message carries; its results count as unacknowledged from now."""
        self._wake.clear()
        self._cancel_flush_timer()
        started, self._started = self._started[:BEAT_RESULTS], self._started[BEAT_RESULTS:]
        results, self._results = _packed(self._results)
        if self._results or self._started:
            self._wake.set()  # the rest goes in the next message, at once
        self._unacked.append(results)
        self.sent_results += len(results)
        return started, results


def _packed(results: list[JobResult]) -> tuple[list[JobResult], list[JobResult]]:
    """(what fits one heartbeat, the rest): at most BEAT_RESULTS results and BEAT_RESULT_BYTES
    of outcomes, and at least one result."""
    size = 0
    for count, result in enumerate(results[:BEAT_RESULTS]):
        size += len(result.outcome)
        if size > BEAT_RESULT_BYTES and count > 0:
            return results[:count], results[count:]
    return results[:BEAT_RESULTS], results[BEAT_RESULTS:]
