"""Plain value types of the shared-memory API (no numpy leaks past `shm`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from heapd.shm.errors import InvalidCapacity

MAX_TASKS = 1 << 24  # the slot is the low 24 bits of a task id
MAX_WORKERS = 1 << 16  # the slot is the low 16 bits of a worker id
CHUNK_BYTES = 64  # arena allocation unit
MAX_ARENA_BYTES = CHUNK_BYTES << 32  # chunk numbers are u32
MAX_BLOB_LIMIT = (1 << 32) - 1  # blob lengths are u32


class TaskState(enum.IntEnum):
    """Where a task slot is in its life; FREE = slot unused."""

    FREE = 0
    PENDING = 1
    QUEUED = 2
    DISPATCHED = 3
    RUNNING = 4
    SUCCEEDED = 5
    FAILED = 6
    CANCELLED = 7


TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})
ACTIVE = frozenset({TaskState.DISPATCHED, TaskState.RUNNING})
TERMINAL_STATES = TERMINAL  # the same sets under the names the daemons use
ACTIVE_STATES = ACTIVE


class WorkerState(enum.IntEnum):
    """Where a worker slot is in its life; FREE = slot unused."""

    FREE = 0
    ALIVE = 1
    DRAINING = 2
    DEAD = 3


LIVE_WORKER_STATES = frozenset({WorkerState.ALIVE, WorkerState.DRAINING})  # may hold tasks


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidCapacity(f"capacity {name} must be an int, got {value!r}")
    if not low <= value <= high:
        raise InvalidCapacity(f"capacity {name}={value} out of range {low}..{high}")


@dataclass(frozen=True, slots=True)
class Capacities:
    """Sizes fixed when a cell is created."""

    tasks: int = 1 << 20
    workers: int = 1024
    arena_bytes: int = 256 << 20
    max_blob_bytes: int = 1 << 20

    def validate(self) -> None:
        """Raise InvalidCapacity naming the first field out of range."""
        _check_int("tasks", self.tasks, 1, MAX_TASKS)
        _check_int("workers", self.workers, 1, MAX_WORKERS)
        _check_int("arena_bytes", self.arena_bytes, CHUNK_BYTES, MAX_ARENA_BYTES)
        _check_int("max_blob_bytes", self.max_blob_bytes, 1, MAX_BLOB_LIMIT)
        if self.max_blob_bytes > self.arena_bytes:
            raise InvalidCapacity(
                f"max_blob_bytes={self.max_blob_bytes} is larger than "
                f"arena_bytes={self.arena_bytes}"
            )


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task as submitted: payload and settings. `resources` are needs held on the worker
    while it runs ({"gpu": 1, "cpus": 2}); `labels` must all be carried by the worker."""

    payload: bytes
    priority: int = 0
    max_retries: int = 0
    timeout_ms: int = 0
    resources: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    after: tuple[int, ...] = ()  # run once these tasks (already in the cell) have succeeded
    traced: bool = False  # roles record its hops (shm.trace)


@dataclass(frozen=True, slots=True)
class RestoredTask:
    """A task read back from the journal into an empty cell (see `shm.restore`).

    `state` is QUEUED for a task that had not settled (it runs again, as a new attempt) or the
    terminal state it settled to, with `outcome` as its result blob (None: no result). An
    unsettled task with `after` comes back waiting on those dependencies (PENDING).
    """

    task_id: int
    payload: bytes
    priority: int
    max_retries: int
    timeout_ms: int
    submitted_at: float
    state: TaskState = TaskState.QUEUED
    outcome: bytes | None = None
    finished_at: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    after: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A copy of one task record."""

    task_id: int
    state: TaskState
    priority: int
    attempt: int
    max_retries: int
    timeout_ms: int
    worker_id: int
    worker_epoch: int
    submitted_at: float
    dispatched_at: float
    finished_at: float
    has_result: bool
    resources: dict[str, float] = field(default_factory=dict)  # filled by `get`, `describe`
    labels: dict[str, str] = field(default_factory=dict)
    after: tuple[int, ...] = ()  # while PENDING on dependencies: them (`get`, `describe`, list)


@dataclass(frozen=True, slots=True)
class DependencyState:
    """One dependency of a waiting task, read under the lock: its state (None: the cell no
    longer knows it) and, once SUCCEEDED or FAILED, its result blob."""

    task_id: int
    state: TaskState | None
    result: bytes | None


class Policy(enum.IntEnum):
    """How the scheduler picks a worker for a task (every one respects slots and needs)."""

    LEAST_LOADED = 0  # the worker heap's top: O(log W) per placement
    ROUND_ROBIN = 1  # the next worker with room after the last one picked: O(1) amortised
    RANDOM = 2  # a uniformly random worker with room: O(1) expected
    POWER_OF_TWO = 3  # the less loaded of two random workers with room: O(1) expected

    @property
    def label(self) -> str:
        """The name used on the command line and in status: least-loaded, round-robin, ..."""
        return self.name.lower().replace("_", "-")

    @classmethod
    def parse(cls, text: str) -> Policy:
        """The policy named `text` (ValueError listing the choices)."""
        for policy in cls:
            if policy.label == text:
                return policy
        choices = ", ".join(p.label for p in cls)
        raise ValueError(f"unknown policy {text!r}: choose one of {choices}")


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One task handed to one worker by Cell.dispatch."""

    task_id: int
    attempt: int
    worker_id: int
    worker_epoch: int
    address: str
    payload: bytes
    timeout_ms: int
    priority: int = 0
    key: int = 0  # its task heap key: lower runs first (the scheduler's revocation test)
    traced: bool = False  # submitted with `trace`: its hops are recorded (shm.trace)


@dataclass(frozen=True, slots=True)
class DispatchRound:
    """What one `Cell.dispatch` call did."""

    dispatches: list[Dispatch]
    top_key: int  # the best key still queued, -1 if the queue is empty
    parked: list[tuple[int, str]]  # (task id, why) of tasks found unschedulable and parked


@dataclass(frozen=True, slots=True)
class Completion:
    """One finished attempt reported by a worker."""

    task_id: int
    attempt: int
    state: TaskState
    result: bytes
    retryable: bool = False


RETRY_BASE_S = 0.1  # backoff before retry n is RETRY_BASE_S * 2 ** (n - 1) ...
RETRY_MAX_S = 30.0  # ... capped here
# A task whose worker dies under it is run again, up to this many times (as Ray's default for
# system failures); one more loss fails it WORKER_LOST: a task that kills its worker every time
# must not take the cell's workers down forever.
MAX_WORKER_LOSSES = 3


@dataclass(frozen=True, slots=True)
class LostTasks:
    """What losing a worker did to the tasks it held."""

    requeued: list[int]
    failed: list[int]  # past MAX_WORKER_LOSSES: FAILED with the caller's failure outcome


@dataclass(frozen=True, slots=True)
class CompleteOutcome:
    """What Cell.complete did with a batch of completions."""

    accepted: int
    stale: int
    requeued: int
    retry_at: float = 0.0  # earliest time a failed attempt waiting out its backoff is due; 0 = none
    failed_at: tuple[int, ...] = ()  # indexes of the accepted completions that said FAILED
    stale_at: tuple[int, ...] = ()  # indexes of the completions fenced off (not applied)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A copy of one worker record."""

    worker_id: int
    epoch: int
    state: WorkerState
    address: str
    hostname: str
    pid: int
    slots: int
    in_flight: int
    registered_at: float
    last_heartbeat: float
    deadline: float
    tasks_done: int
    resources: dict[str, float] = field(default_factory=dict)  # offered
    resources_free: dict[str, float] = field(default_factory=dict)  # offered minus in use
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CancelResult:
    """The task before cancel, its worker's address ("" if none), and whether it changed."""

    before: TaskInfo
    address: str
    cancelled: bool


@dataclass(frozen=True, slots=True)
class CellStats:
    """A snapshot of a cell's counters and tables."""

    cell: str
    capacities: Capacities
    counts: dict[TaskState, int]
    queued: int
    workers: list[WorkerInfo]
    submitted_total: int
    succeeded_total: int
    failed_total: int
    cancelled_total: int
    requeued_total: int
    stale_total: int
    arena_used_bytes: int
    revoked_total: int = 0  # prefetched tasks taken back so a higher one could overtake
    parked: int = 0  # queued tasks parked as unschedulable
    policy: Policy = Policy.LEAST_LOADED  # as the scheduler last recorded it
    aging_s: float = 0.0  # 0 = off
    unschedulable: int = 0  # QUEUED tasks no live worker could run
    unschedulable_examples: list[tuple[int, str]] = field(default_factory=list)  # (id, why)
