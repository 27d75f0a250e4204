"""What a worker tells the register, as plain values: its registration and its heartbeats."""

from __future__ import annotations

from dataclasses import dataclass, field

from heapd import shm


@dataclass(frozen=True, slots=True)
class Registration:
    """A worker asking to join."""

    address: str
    slots: int
    pid: int
    hostname: str
    resources: dict[str, float] = field(default_factory=dict)  # offered; cpus = slots if absent
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Beat:
    """One heartbeat message: liveness plus started and finished attempts."""

    worker_id: int
    epoch: int
    started: list[tuple[int, int]]
    completions: list[shm.Completion]
    draining: bool = False
    # Traced attempts (shm.trace): (task id, the worker's stamps in shm.WORKER_HOPS order), and
    # when this message arrived (unix ns; 0 when nothing is traced).
    traces: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)
    received_ns: int = 0
    defer_ack: bool = False  # acknowledged with the next reply (`heapd.register.service`)
