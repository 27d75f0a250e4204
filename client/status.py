"""What the cell reports about its tasks and workers, as plain types.

`Client.get_task` / `list_tasks` return `TaskStatus`, `Client.cluster_status` a `ClusterStatus`;
`heapd.convert` builds them from the wire, and nothing else here knows the wire.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A task as the PLM sees it; `state` is a name (QUEUED, RUNNING, SUCCEEDED, ...) and
    `outcome` the serialized TaskOutcome while the PLM holds it."""

    task_id: int
    state: str
    priority: int
    attempt: int
    worker_id: int
    submitted_at: float
    dispatched_at: float
    finished_at: float
    outcome: bytes


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker of the cell, as the register last heard from it."""

    worker_id: int
    epoch: int
    address: str
    hostname: str
    pid: int
    slots: int
    in_flight: int
    state: str
    last_heartbeat: float
    tasks_done: int


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """The cell at a glance: workers, queue depths and totals."""

    cell: str
    workers: list[WorkerStatus]
    queued: int
    running: int
    pending: int
    submitted_total: int
    succeeded_total: int
    failed_total: int
    cancelled_total: int
    held_results: int
    task_capacity: int
