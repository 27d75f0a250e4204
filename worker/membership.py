"""A worker's membership in a cell, and the calls it makes to the cell's register.

The register grants a `Membership` (identity and liveness contract) and answers each heartbeat
with a `HeartbeatAck`. `Register` and `HeartbeatCall` are what the daemon needs of the
register's RPCs; `heapd.worker.convert.RegisterCalls` implements them over gRPC, so that the
daemon and its heartbeat stream work on these plain types only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from heapd.worker.jobs import JobResult


@dataclass(frozen=True, slots=True)
class Membership:
    """What the register granted: identity, liveness contract, and the registration's secret
    (sent on every heartbeat and on Deregister: the id and epoch are public, the secret proves
    this worker made the registration)."""

    worker_id: int
    epoch: int
    interval_s: float
    deadline_s: float
    secret: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    """The register's answer to heartbeats, in order: how many it acknowledges (the latest and
    the deferred ones before it), results it dropped as stale, and attempts this worker should
    kill (cancelled, or settled elsewhere)."""

    stale: int
    cancel: tuple[tuple[int, int], ...]  # (task_id, attempt)
    acks: int = 1


class HeartbeatCall(Protocol):
    """One open Heartbeat stream to the register."""

    async def send(
        self,
        member: Membership,
        started: Sequence[tuple[int, int]],
        results: Sequence[JobResult],
        running: int,
        draining: bool,
        defer_ack: bool = False,
    ) -> None:
        """Write one heartbeat carrying started attempts and finished results; `defer_ack`:
        the register need not answer it now (its next answer acknowledges it)."""

    def acks(self) -> AsyncIterator[HeartbeatAck]:
        """The register's answers, each acknowledging one heartbeat or more in order; raises
        when the stream breaks."""

    def cancel(self) -> None:
        """End the stream."""


class Register(Protocol):
    """The register's calls, as the worker makes them."""

    @property
    def address(self) -> str:
        """Where the register listens (for messages)."""

    async def join(
        self, address: str, slots: int, pid: int, hostname: str, timeout_s: float
    ) -> Membership:
        """RegisterWorker: ask for an id and an epoch."""

    async def leave(self, member: Membership, timeout_s: float) -> None:
        """Deregister: leave the cell cleanly."""

    def heartbeat(self) -> HeartbeatCall:
        """Open a Heartbeat stream."""
