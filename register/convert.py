"""The register's gRPC boundary: the only module of `register` that imports `protos`."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from heapd import shm
from heapd.v1 import register_service_pb2 as pb
from heapd.v1 import task_pb2

MAX_SLOTS = 65535
SETTLED = {task_pb2.SUCCEEDED: shm.TaskState.SUCCEEDED, task_pb2.FAILED: shm.TaskState.FAILED}


@dataclass(frozen=True, slots=True)
class Registration:
    """A worker asking to join."""

    address: str
    slots: int
    pid: int
    hostname: str


@dataclass(frozen=True, slots=True)
class Beat:
    """One heartbeat message: liveness plus started and finished attempts."""

    worker_id: int
    epoch: int
    started: list[tuple[int, int]]
    completions: list[shm.Completion]
    draining: bool = False


def registration_from_proto(request: pb.RegisterWorkerRequest) -> Registration:
    """Validate a RegisterWorker request."""
    host, sep, port = request.address.rpartition(":")
    if not (host and sep and port.isdigit()):
        raise ValueError(f"worker address {request.address!r} is not HOST:PORT")
    if not 1 <= request.slots <= MAX_SLOTS:
        raise ValueError(f"slots {request.slots} must be between 1 and {MAX_SLOTS}")
    return Registration(request.address, request.slots, request.pid, request.hostname)


def registered_to_proto(
    info: shm.WorkerInfo, interval_s: float, deadline_s: float
) -> pb.RegisterWorkerResponse:
    """The worker's identity and liveness contract."""
    return pb.RegisterWorkerResponse(
        worker_id=info.worker_id,
        epoch=info.epoch,
        heartbeat_interval_s=interval_s,
        deadline_s=deadline_s,
    )


def beat_from_proto(request: pb.HeartbeatRequest) -> Beat:
    """Validate one heartbeat; a completion must say SUCCEEDED or FAILED."""
    completions = []
    for c in request.completions:
        state = SETTLED.get(c.state)
        if state is None:
            raise ValueError(
                f"completion of task {c.task_id} has state {c.state}, not SUCCEEDED/FAILED"
            )
        completions.append(shm.Completion(c.task_id, c.attempt, state, c.outcome, c.retryable))
    return Beat(
        request.worker_id,
        request.epoch,
        [(s.task_id, s.attempt) for s in request.started],
        completions,
        request.draining,
    )


def beat_reply(
    outcome: shm.CompleteOutcome, cancels: list[tuple[int, int]]
) -> pb.HeartbeatResponse:
    """Acknowledge a heartbeat (results accepted and stale) and name attempts to stop."""
    return pb.HeartbeatResponse(
        accepted=outcome.accepted,
        stale=outcome.stale,
        cancel=[pb.TaskRef(task_id=t, attempt=a) for t, a in cancels],
    )


def deregistered_to_proto(requeued: int) -> pb.DeregisterResponse:
    """How many tasks went back to the queue."""
    return pb.DeregisterResponse(requeued=requeued)


def lease_expired_outcome(timeout_s: float) -> bytes:
    """The outcome the register records when a worker never reported a timed-out attempt."""
    return _failure_outcome(
        task_pb2.TIMEOUT,
        "heapd.TaskTimeout",
        f"no result within the task's timeout of {timeout_s:g} s plus a grace period; "
        "the register settled the attempt and told the worker to kill it",
    )


def worker_lost_outcome(reason: str, losses: int) -> bytes:
    """The outcome of a task failed for losing its worker too many times (a poison task)."""
    return _failure_outcome(
        task_pb2.WORKER_LOST,
        "heapd.WorkerLost",
        f"the worker running this task was lost {losses} times (last: {reason}); "
        "heapd stopped retrying it in case the task itself kills its workers",
    )


def _failure_outcome(kind: task_pb2.FailureKind, type_name: str, message: str) -> bytes:
    """A serialized TaskOutcome for a failure the register decides on its own."""
    failure = task_pb2.Failure(kind=kind, type=type_name, message=message)
    data: bytes = task_pb2.TaskOutcome(failure=failure).SerializeToString()
    return data


def with_earlier_failures(outcome: bytes, earlier: list[bytes]) -> tuple[bytes, bytes]:
    """One parse of a failed attempt's outcome: (the outcome with the earlier attempts'
    failures attached, this attempt's own serialized Failure). Unparsable: (outcome, b"")."""
    try:
        parsed = task_pb2.TaskOutcome.FromString(outcome)
    except DecodeError:
        return outcome, b""
    own: bytes = parsed.failure.SerializeToString() if parsed.HasField("failure") else b""
    if not earlier:
        return outcome, own
    combined = [*(task_pb2.Failure.FromString(f) for f in earlier), *parsed.earlier_failures]
    del parsed.earlier_failures[:]
    parsed.earlier_failures.extend(combined)
    merged: bytes = parsed.SerializeToString()
    return merged, own
