"""The worker daemon: joins a register, runs assigned tasks in its pool, reports on one stream.

Lifecycle: RegisterWorker → hold the heartbeat stream (the entry point serves WorkerService,
which hands assignments to this daemon). A stream that breaks is reopened with backoff under
the same membership (a restarted register keeps it); a register that answers "unknown worker /
stale epoch" means this worker was declared dead, so everything it still runs is cancelled and
it registers again under a new epoch. A register unreachable for `register_timeout_s` makes the
worker stop: children killed, exit code 3.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from heapd.runtime import ready
from heapd.worker.heartbeats import HeartbeatLink
from heapd.worker.jobs import Job, JobResult
from heapd.worker.membership import Membership, Register
from heapd.worker.pool import Pool

log = logging.getLogger(__name__)

# The register no longer knows this membership (declared dead, or a new cell whose key does not
# prove our registration's secret: PERMISSION_DENIED): register again.
FENCED = (
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
)
# The register will not have us whatever we retry: no or a wrong token, a refused address or
# slot count. One line and exit EXIT_REFUSED instead of a traceback.
REFUSED = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4
BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0)
REGISTER_CALL_TIMEOUT_S = 5.0

T = TypeVar("T")


class RegisterUnreachable(Exception):
    """The register did not answer within the worker's register timeout."""


class Worker:
    """One worker: a pool of child processes plus its membership in a cell."""

    def __init__(
        self, pool: Pool, register: Register, slots: int, register_timeout_s: float
    ) -> None:
        self._pool = pool
        self._register = register
        self._slots = slots
        self._register_timeout_s = register_timeout_s
        self._address = ""
        self._link: HeartbeatLink | None = None
        self._draining = False
        self._stop = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self._assign_streams: set[asyncio.Task[object]] = set()
        # Set while this worker holds a membership whose heartbeat the register has answered.
        self._joined = asyncio.Event()
        # Read by heapd.worker.metrics at scrape time; updated once per message or batch.
        self.assigned = 0
        self.revoked = 0
        self.succeeded = 0
        self.failed = 0
        self.registrations = 0
        self.metrics_address = ""  # the HTTP endpoint's host:port, announced when ready
        self.assign_messages = 0

    @property
    def member(self) -> Membership | None:
        """The current membership, None while not registered."""
        return self._link.member if self._link is not None else None

    # --- called by the servicer

    async def refusal(self, worker_id: int, epoch: int) -> str | None:
        """Why an assignment for (worker_id, epoch) is refused, None if it is accepted.

        The register rings the scheduler when it has registered this worker, so an assignment
        can arrive before this worker has read its own registration's answer: until the register
        has answered this membership's first heartbeat, it waits (briefly) before judging. No
        task starts before the register holds this worker's stream, so that a task killing its
        worker at once breaks that stream and counts a loss (see `Register.stream_broken`)."""
        if not self._joined.is_set() and not self._draining:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._joined.wait(), REGISTER_CALL_TIMEOUT_S)
        member = self.member
        if self._draining:
            return "worker is draining"
        if not self._joined.is_set():
            return "worker has no heartbeat stream to its register yet"
        if member is None or (member.worker_id, member.epoch) != (worker_id, epoch):
            return f"worker {worker_id} epoch {epoch} is not this worker's current membership"
        return None

    def assign_stream_opened(self) -> None:
        """The calling handler serves an AssignStream; it is ended cleanly when the worker
        stops (otherwise grpc would cancel it at server stop and log the cancellation)."""
        task = asyncio.current_task()
        assert task is not None
        self._assign_streams.add(task)

    def assign_stream_closed(self) -> None:
        """The calling AssignStream handler returned."""
        self._assign_streams.discard(asyncio.current_task())

    def assign(self, jobs: list[Job]) -> int:
        """Queue jobs in the pool; returns how many."""
        self._pool.submit(jobs)
        self.assigned += len(jobs)
        self.assign_messages += 1
        return len(jobs)

    def revoke(self, refs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Give back these (task_id, attempt) if not started; returns those given back."""
        given = self._pool.revoke(refs)
        self.revoked += len(given)
        return given

    @property
    def pool(self) -> Pool:
        """The pool of task processes (its slots, running and queued jobs)."""
        return self._pool

    @property
    def link(self) -> HeartbeatLink | None:
        """The heartbeat link of the current membership, if any."""
        return self._link

    def cancel(self, task_id: int, attempt: int) -> bool:
        """Kill a running attempt (or drop a queued one); the pool reports it FAILED
        CANCELLED_BY_USER on the next heartbeat. `attempt` is one attempt (>= 1), never "any".
        """
        return self._pool.cancel(task_id, attempt)

    def drain(self) -> int:
        """Take no new tasks, finish running ones, then leave the cell."""
        if not self._draining:
            self._draining = True
            if self._link is not None:
                self._link.drain()
            self._drainer = asyncio.get_running_loop().create_task(self._drain_then_stop())
        return self._pool.running + self._pool.queued

    def shutdown(self) -> None:
        """SIGTERM: drain (a second signal exits at once, see runtime.signals)."""
        self.drain()

    # --- lifecycle

    async def run(self, address: str) -> int:
        """Stay in the cell until drained or fenced out for good; returns an exit code.

        `address` is where schedulers reach this worker's WorkerService (served by the caller).
        """
        self._address = address
        self._pool.bind(asyncio.get_running_loop(), self._on_started, self._on_results)
        try:
            code = await self._stay_in_cell()
        finally:
            await self._end_assign_streams()
            if self._drainer is not None:  # cut off from the register while draining
                self._drainer.cancel()
                await asyncio.gather(self._drainer, return_exceptions=True)
        return code

    async def _end_assign_streams(self) -> None:
        """Close the schedulers' streams with an OK status (the handlers return on cancel)."""
        streams = list(self._assign_streams)
        for task in streams:
            task.cancel()
        if streams:
            await asyncio.wait(streams, timeout=1.0)

    async def _stay_in_cell(self) -> int:
        announced = False
        try:
            while not self._stop.is_set():
                if self._link is None:
                    self._link = HeartbeatLink(
                        await self._join(),
                        running=lambda: self._pool.running,
                        busy=self._pool_busy,
                        draining=lambda: self._draining,
                        on_cancel=self.cancel,
                        on_heard=self._joined.set,
                    )
                    if not announced:
                        ready.announce("worker", self._address, self.metrics_address)
                        announced = True
                await self._hold_stream(self._link)
        except RegisterUnreachable as exc:
            log.error("register unreachable; stopping", extra={"fields": {"error": str(exc)}})
            self._pool.cancel_all()
            return EXIT_UNREACHABLE
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in REFUSED:
                raise
            log.error(
                "the register refused this worker; stopping",
                extra={"fields": {"code": exc.code().name, "error": exc.details()}},
            )
            self._pool.cancel_all()
            return EXIT_REFUSED
        return 0

    async def _join(self) -> Membership:
        pid, hostname = os.getpid(), socket.gethostname()
        member = await self._with_retries(
            lambda: self._register.join(
                self._address, self._slots, pid, hostname, REGISTER_CALL_TIMEOUT_S
            )
        )
        self.registrations += 1
        log.info(
            "registered",
            extra={
                "fields": {
                    "worker_id": member.worker_id,
                    "epoch": member.epoch,
                    "address": self._address,
                }
            },
        )
        return member

    async def _hold_stream(self, link: HeartbeatLink) -> None:
        """Keep the heartbeat stream up; on fencing drop the membership, on loss retry."""
        broken_since: float | None = None  # the register timeout counts from the first failure
        attempt = 0
        while not self._stop.is_set():
            stream = asyncio.create_task(link.run(self._register))
            stopper = asyncio.create_task(self._stop.wait())
            try:
                await asyncio.wait({stream, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopper.cancel()
                stopping = not stream.done()
                if stopping:
                    stream.cancel()
                await asyncio.gather(stream, stopper, return_exceptions=True)
            if stopping:
                return
            error = stream.exception()
            if isinstance(error, grpc.aio.AioRpcError) and error.code() in FENCED:
                log.warning("fenced out by the register; cancelling and re-registering")
                self._pool.cancel_all()
                self._link = None
                self._joined.clear()
                return
            now = time.monotonic()
            if broken_since is None or link.acked_at > broken_since:
                broken_since, attempt = now, 0  # the stream worked since: a new outage
            if now - broken_since > self._register_timeout_s:
                raise RegisterUnreachable(f"no heartbeat stream to {self._register.address}")
            await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1

    async def _with_retries(self, call: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self._register_timeout_s
        attempt = 0
        while True:
            try:
                return await call()
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    raise
                if time.monotonic() > deadline:
                    raise RegisterUnreachable(f"{self._register.address}: {exc.details()}") from exc
            await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1

    async def _drain_then_stop(self) -> None:
        await self._pool.wait_idle()
        link, self._link = self._link, None
        self._joined.clear()
        if link is not None:
            try:
                await asyncio.wait_for(link.flush(), REGISTER_CALL_TIMEOUT_S)
            except TimeoutError:
                log.warning("last results not acknowledged before deregistering")
            try:
                await self._register.leave(link.member, REGISTER_CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                log.warning("deregister failed", extra={"fields": {"code": exc.code().name}})
        self._stop.set()

    def _pool_busy(self) -> bool:
        """More work than children: results may wait a moment to share a heartbeat."""
        return self._pool.running + self._pool.queued > self._slots

    def _on_started(self, refs: list[tuple[int, int]]) -> None:
        if self._link is not None:
            self._link.started(refs)

    def _on_results(self, results: list[JobResult]) -> None:
        ok = sum(1 for r in results if r.succeeded)
        self.succeeded += ok
        self.failed += len(results) - ok
        if self._link is not None:
            self._link.finished(results)
