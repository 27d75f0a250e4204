"""What the cell reports about its tasks and workers, as plain types.

`Client.get_task` / `list_tasks` return `TaskStatus`, `Client.cluster_status` a `ClusterStatus`;
`heapd.convert` builds them from the wire, and nothing else here knows the wire.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A task as the PLM sees it; `state` is a name (QUEUED, RUNNING, SUCCEEDED, ...) and
    `outcome` the serialized TaskOutcome while the PLM holds it. `unschedulable` says why no
    live worker could run a QUEUED task ("" if one could); `resources` and `labels` are what
    it asked for; `after` lists the tasks a PENDING task waits on (its dependencies)."""

    task_id: int
    state: str
    priority: int
    attempt: int
    worker_id: int
    submitted_at: float
    dispatched_at: float
    finished_at: float
    outcome: bytes
    unschedulable: str = ""
    resources: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    after: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker of the cell, as the register last heard from it: what it offers
    (`resources`), what of that its running tasks leave free, and its labels."""

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
    resources: dict[str, float] = field(default_factory=dict)
    resources_free: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """The cell at a glance: workers, queue depths and totals; `unschedulable` counts the
    queued tasks no live worker could run (`list_tasks(["QUEUED"])` says why, per task)."""

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
    unschedulable: int = 0
    policy: str = ""  # the scheduler's placement policy
    aging_s: float = 0.0  # its aging period; 0 = off


def status_document(
    cluster: ClusterStatus, unschedulable: Sequence[tuple[int, str]]
) -> dict[str, Any]:
    """What `heapd status --json` prints and the PLM's `GET /status` serves: the cluster status
    and some unschedulable tasks as (task id, reason)."""
    shown = [{"task_id": task_id, "reason": reason} for task_id, reason in unschedulable]
    return {**dataclasses.asdict(cluster), "unschedulable_examples": shown}
