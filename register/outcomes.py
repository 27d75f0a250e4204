"""The outcomes the register writes itself, as a Protocol: the daemon decides, the boundary
(`convert.TaskOutcomes`) encodes, so the register's domain code never touches protobuf.

An outcome is a serialized `heapd.v1.TaskOutcome`, stored opaque in the cell.
"""

from __future__ import annotations

from typing import Protocol


class OutcomeCodec(Protocol):
    """Builds the failures the register decides on, and attaches earlier attempts' failures."""

    def lease_expired(self, timeout_s: float) -> bytes:
        """A worker never reported an attempt that ran past its timeout."""
        ...

    def worker_lost(self, reason: str, losses: int) -> bytes:
        """A task lost its worker `losses` times (last for `reason`) and is not retried."""
        ...

    def with_earlier_failures(self, outcome: bytes, earlier: list[bytes]) -> tuple[bytes, bytes]:
        """(The failed outcome with earlier failures attached, its own failure); an outcome that
        does not parse is returned as is, with b"" for its failure."""
        ...

    def failure_kind(self, outcome: bytes) -> str:
        """The failure kind of a failed attempt's outcome, lower case ("exception",
        "timeout", ...), for metrics; "unknown" if it does not parse."""
        ...
