"""The register's gRPC boundary: the only module of `register` that builds or reads protobuf
messages (requests, replies, and the task outcomes the register writes itself)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from google.protobuf.message import DecodeError

from heapd import shm
from heapd.errors import InvalidArgument
from heapd.options import label_pairs, resource_amounts
from heapd.register.address import check_worker_address
from heapd.register.beats import Beat, Registration
from heapd.runtime.config import RegisterConfig
from heapd.shm.layout import HOSTNAME_BYTES
from heapd.v1 import register_service_pb2 as pb
from heapd.v1 import task_pb2

SETTLED = {task_pb2.SUCCEEDED: shm.TaskState.SUCCEEDED, task_pb2.FAILED: shm.TaskState.FAILED}


def registration_from_proto(
    request: pb.RegisterWorkerRequest, max_slots: int = RegisterConfig.max_slots, peer: str = ""
) -> Registration:
    """Validate a RegisterWorker request: an address the scheduler may dial (see
    `heapd.register.address`; a unix: one only from a Unix-socket `peer`, the call's
    `context.peer()`), at most `max_slots` slots, within what the worker table holds."""
    check_worker_address(request.address, peer)
    if len(request.hostname.encode()) > HOSTNAME_BYTES:
        raise InvalidArgument(f"hostname is over {HOSTNAME_BYTES} bytes of utf-8")
    if not 1 <= request.slots <= max_slots:
        raise InvalidArgument(
            f"slots {request.slots} must be between 1 and {max_slots} (max_slots)"
        )
    if request.pid < 0:
        raise InvalidArgument(f"pid {request.pid} is negative")
    return Registration(
        request.address,
        request.slots,
        request.pid,
        request.hostname,
        resource_amounts(dict(request.resources)),
        label_pairs(dict(request.labels)),
    )


def registered_to_proto(
    info: shm.WorkerInfo, secret: bytes, interval_s: float, deadline_s: float
) -> pb.RegisterWorkerResponse:
    """The worker's identity, the secret that proves it, and its liveness contract."""
    return pb.RegisterWorkerResponse(
        worker_id=info.worker_id,
        epoch=info.epoch,
        heartbeat_interval_s=interval_s,
        deadline_s=deadline_s,
        secret=secret,
    )


def beat_from_proto(request: pb.HeartbeatRequest) -> Beat:
    """Validate one heartbeat; a completion must say SUCCEEDED or FAILED."""
    completions = []
    traces: list[tuple[int, tuple[int, ...]]] = []
    for c in request.completions:
        state = SETTLED.get(c.state)
        if state is None:
            raise InvalidArgument(
                f"completion of task {c.task_id} has state {c.state}, not SUCCEEDED/FAILED"
            )
        completions.append(shm.Completion(c.task_id, c.attempt, state, c.outcome, c.retryable))
        if c.trace_ns:
            traces.append((c.task_id, _worker_stamps(c.task_id, c.trace_ns)))
    return Beat(
        request.worker_id,
        request.epoch,
        [(s.task_id, s.attempt) for s in request.started],
        completions,
        request.draining,
        traces,
        time.time_ns() if traces else 0,
        request.defer_ack,
    )


def _worker_stamps(task_id: int, stamps: Sequence[int]) -> tuple[int, ...]:
    """A traced completion's worker stamps: one per worker hop, each a unix time in ns (0: the
    worker did not see that hop)."""
    if len(stamps) != len(shm.WORKER_HOPS) or min(stamps) < 0:
        raise InvalidArgument(
            f"completion of task {task_id}: trace_ns has {len(stamps)} stamps, expected"
            f" {len(shm.WORKER_HOPS)} non-negative ones"
        )
    return tuple(stamps)


def beat_reply(acks: tuple[int, int, int], cancels: list[tuple[int, int]]) -> pb.HeartbeatResponse:
    """Acknowledge heartbeats (`Acks.take`: how many, their results accepted and stale) and
    name attempts to stop."""
    messages, accepted, stale = acks
    return pb.HeartbeatResponse(
        accepted=accepted,
        stale=stale,
        cancel=[pb.TaskRef(task_id=t, attempt=a) for t, a in cancels],
        acks=messages,
    )


def deregister_from_proto(request: pb.DeregisterRequest) -> tuple[int, int, bytes]:
    """The (worker id, epoch) leaving, and the secret that proves it."""
    return request.worker_id, request.epoch, request.secret


def deregistered_to_proto(requeued: int) -> pb.DeregisterResponse:
    """How many tasks went back to the queue."""
    return pb.DeregisterResponse(requeued=requeued)


# FailureKind number -> metric label ("exception", "timeout", "worker_lost", ...).
FAILURE_KIND_NAMES = {
    number: name.lower()
    for name, number in task_pb2.FailureKind.items()
    if number != task_pb2.FAILURE_KIND_UNSPECIFIED
}


class TaskOutcomes:
    """The register's `outcomes.OutcomeCodec` over serialized heapd.v1.TaskOutcome."""

    def lease_expired(self, timeout_s: float) -> bytes:
        """The outcome recorded when a worker never reported a timed-out attempt."""
        return _failure_outcome(
            task_pb2.TIMEOUT,
            "heapd.TaskTimeout",
            f"no result within the task's timeout of {timeout_s:g} s plus a grace period; "
            "the register settled the attempt and told the worker to kill it",
        )

    def worker_lost(self, reason: str, losses: int) -> bytes:
        """The outcome of a task failed for losing its worker too many times (a poison task)."""
        return _failure_outcome(
            task_pb2.WORKER_LOST,
            "heapd.WorkerLost",
            f"the worker running this task was lost {losses} times (last: {reason}); "
            "heapd stopped retrying it in case the task itself kills its workers",
        )

    def failure_kind(self, outcome: bytes) -> str:
        """The failure's kind name, lower case; "unknown" if the outcome does not parse."""
        try:
            parsed = task_pb2.TaskOutcome.FromString(outcome)
        except DecodeError:
            return "unknown"
        if not parsed.HasField("failure"):
            return "unknown"
        return str(FAILURE_KIND_NAMES.get(parsed.failure.kind, "unknown"))

    def with_earlier_failures(self, outcome: bytes, earlier: list[bytes]) -> tuple[bytes, bytes]:
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


def _failure_outcome(kind: task_pb2.FailureKind, type_name: str, message: str) -> bytes:
    """A serialized TaskOutcome for a failure the register decides on its own."""
    failure = task_pb2.Failure(kind=kind, type=type_name, message=message)
    data: bytes = task_pb2.TaskOutcome(failure=failure).SerializeToString()
    return data
