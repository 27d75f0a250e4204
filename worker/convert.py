"""The worker's edge with the wire: the only worker module that builds or reads protobuf messages.

Task specs arrive as serialized `heapd.v1.TaskSpec` bytes (stored opaque in the arena) and become
plain spec types here; an attempt's plain `Outcome` leaves as serialized `heapd.v1.TaskOutcome`
bytes, which the control plane carries without looking inside. Both run in the pool's children
(see `heapd.worker.child`), off the daemon's event loop.

The WorkerService messages are read and built here for the servicer, and `RegisterCalls` makes
the worker's calls to the register (the `heapd.worker.membership.Register` protocol) with
messages built here, handing the daemon plain values only.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from heapd.v1 import register_service_pb2, register_service_pb2_grpc, task_pb2, worker_service_pb2
from heapd.worker.failure import FailureInfo
from heapd.worker.jobs import Assignment, Job, JobResult
from heapd.worker.membership import HeartbeatAck, Membership
from heapd.worker.outcomes import CommandResult, Outcome
from heapd.worker.specs import (
    BadSpec,
    BuiltinSpec,
    CommandSpec,
    DependencyInput,
    PythonCallSpec,
    TaskSpec,
)


def spec_from_bytes(data: bytes) -> TaskSpec:
    """Decode a serialized TaskSpec; raise BadSpec when it can't be run."""
    msg = task_pb2.TaskSpec()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise BadSpec(f"task spec does not decode: {exc}") from exc
    kind = msg.WhichOneof("kind")
    if kind == "python":
        inputs = _inputs_from_proto(msg.inputs) if msg.inputs else ()
        return _python_from_proto(msg.python, tuple(msg.retry_on), inputs)
    if kind == "command":
        return _command_from_proto(msg.command)
    if kind == "builtin":
        return BuiltinSpec(name=msg.builtin.name, params=dict(msg.builtin.params))
    raise BadSpec("task spec has no kind (python, command or builtin)")


def outcome_to_bytes(outcome: Outcome) -> bytes:
    """Serialize an Outcome as a heapd.v1.TaskOutcome."""
    msg = task_pb2.TaskOutcome(started_at=outcome.started_at, finished_at=outcome.finished_at)
    result = outcome.result
    if isinstance(result, bytes):
        msg.pickled_value = result
    elif isinstance(result, CommandResult):
        msg.command.CopyFrom(_command_result_to_proto(result))
    else:
        msg.failure.CopyFrom(_failure_to_proto(result))
    data: bytes = msg.SerializeToString()
    return data


def _python_from_proto(
    msg: task_pb2.PythonCall, retry_on: tuple[str, ...], inputs: tuple[DependencyInput, ...]
) -> PythonCallSpec:
    target = msg.WhichOneof("target")
    if target is None:
        raise BadSpec("python call has neither a ref nor a pickled callable")
    return PythonCallSpec(
        ref=msg.ref,
        pickled_callable=msg.pickled_callable,
        pickled_args=msg.pickled_args,
        retry_on=retry_on,
        inputs=inputs,
    )


def _inputs_from_proto(
    inputs: Iterable[task_pb2.DependencyResult],
) -> tuple[DependencyInput, ...]:
    """The dependencies' results the PLM appended (each one's TaskOutcome)."""
    out = []
    for item in inputs:
        outcome = task_pb2.TaskOutcome()
        try:
            outcome.ParseFromString(item.outcome)
        except DecodeError as exc:
            raise BadSpec(f"the result of dependency {item.task_id} does not decode") from exc
        kind = outcome.WhichOneof("result")
        if kind == "command":
            c = outcome.command
            result = CommandResult(c.returncode, c.stdout, c.stderr)
            out.append(DependencyInput(item.task_id, command=result))
        elif kind == "pickled_value":
            out.append(DependencyInput(item.task_id, pickled_value=outcome.pickled_value))
        else:
            raise BadSpec(f"dependency {item.task_id} has no value to pass")
    return tuple(out)


def _command_from_proto(msg: task_pb2.CommandCall) -> CommandSpec:
    if not msg.argv:
        raise BadSpec("command has an empty argv")
    return CommandSpec(argv=tuple(msg.argv), env=dict(msg.env), cwd=msg.cwd, stdin=msg.stdin)


def _command_result_to_proto(result: CommandResult) -> task_pb2.CommandResult:
    return task_pb2.CommandResult(
        returncode=result.returncode, stdout=result.stdout, stderr=result.stderr
    )


def _failure_to_proto(failure: FailureInfo) -> task_pb2.Failure:
    return task_pb2.Failure(
        kind=task_pb2.FailureKind.Value(failure.kind.name),  # same names on both sides
        type=failure.type_name,
        message=failure.message,
        traceback=failure.traceback,
        pickled_exception=failure.pickled_exception,
    )


# --- WorkerService (AssignTasks, AssignStream, CancelTask, Drain), for the servicer


def assignment_from_proto(request: worker_service_pb2.AssignTasksRequest) -> Assignment:
    """The tasks of one AssignTasks request, as pool jobs (spec bytes untouched), and the
    attempts it asks back (revoke)."""
    now_ns = time.time_ns()
    jobs = [
        Job(a.task_id, a.attempt, a.spec, a.timeout_s, a.priority, now_ns if a.trace else 0)
        for a in request.tasks
    ]
    revoke = [(ref.task_id, ref.attempt) for ref in request.revoke] if request.revoke else []
    return Assignment(request.worker_id, request.epoch, jobs, revoke, request.defer_answer)


def assigned_reply(
    accepted: int, revoked: list[tuple[int, int]] | None = None, answers: int = 1
) -> worker_service_pb2.AssignTasksResponse:
    """How many tasks the worker took over the `answers` requests this answers, and which of
    the revoked ones it gave back."""
    return worker_service_pb2.AssignTasksResponse(
        accepted=accepted,
        answers=answers,
        revoked=[
            worker_service_pb2.AssignmentRef(task_id=task_id, attempt=attempt)
            for task_id, attempt in revoked or ()
        ],
    )


def refused_reply(reason: str, answers: int = 1) -> worker_service_pb2.AssignTasksResponse:
    """Nothing of the latest request taken, and why (draining, or not this worker's
    membership); the deferred requests before it (`answers` - 1) were taken."""
    return worker_service_pb2.AssignTasksResponse(accepted=0, refused=reason, answers=answers)


def cancel_from_proto(request: worker_service_pb2.WorkerCancelRequest) -> tuple[int, int]:
    """The (task_id, attempt) to kill; the servicer refuses 0 for either."""
    return request.task_id, request.attempt


def cancel_reply(found: bool) -> worker_service_pb2.WorkerCancelResponse:
    """Whether the attempt was found here."""
    return worker_service_pb2.WorkerCancelResponse(found=found)


def drain_reply(running: int) -> worker_service_pb2.DrainResponse:
    """Tasks still running when the drain was accepted."""
    return worker_service_pb2.DrainResponse(running=running)


# --- RegisterService (RegisterWorker, Heartbeat, Deregister), called by the worker


def register_request(
    address: str,
    slots: int,
    pid: int,
    hostname: str,
    resources: Mapping[str, float] | None = None,
    labels: Mapping[str, str] | None = None,
) -> register_service_pb2.RegisterWorkerRequest:
    """Ask the register for an id and epoch, offering `resources` and carrying `labels`."""
    return register_service_pb2.RegisterWorkerRequest(
        address=address,
        slots=slots,
        pid=pid,
        hostname=hostname,
        resources=resources or {},
        labels=labels or {},
    )


def membership_from_proto(reply: register_service_pb2.RegisterWorkerResponse) -> Membership:
    """The register's answer as a plain value."""
    return Membership(
        reply.worker_id, reply.epoch, reply.heartbeat_interval_s, reply.deadline_s, reply.secret
    )


def heartbeat_request(
    member: Membership,
    started: Sequence[tuple[int, int]],
    results: Sequence[JobResult],
    running: int,
    draining: bool = False,
    defer_ack: bool = False,
) -> register_service_pb2.HeartbeatRequest:
    """One heartbeat carrying started attempts and finished results; `defer_ack`: no reply
    needed now."""
    request = register_service_pb2.HeartbeatRequest(
        worker_id=member.worker_id,
        epoch=member.epoch,
        secret=member.secret,
        started=[register_service_pb2.TaskRef(task_id=t, attempt=a) for t, a in started],
        completions=[
            register_service_pb2.TaskCompletion(
                task_id=r.task_id,
                attempt=r.attempt,
                state=task_pb2.SUCCEEDED if r.succeeded else task_pb2.FAILED,
                retryable=r.retryable,
                outcome=r.outcome,
            )
            for r in results
        ],
        running=running,
        draining=draining,
        defer_ack=defer_ack,
    )
    if any(r.trace_ns for r in results):  # traced (shm.trace): the worker's stamps, and now
        for completion, r in zip(request.completions, results, strict=True):
            if r.trace_ns:
                completion.trace_ns.extend((*r.trace_ns, time.time_ns()))
    return request


def heartbeat_ack_from_proto(reply: register_service_pb2.HeartbeatResponse) -> HeartbeatAck:
    """The register's answer to one heartbeat as a plain value."""
    cancel = tuple((r.task_id, r.attempt) for r in reply.cancel) if reply.cancel else ()
    return HeartbeatAck(reply.stale, cancel, max(1, reply.acks))


def deregister_request(member: Membership) -> register_service_pb2.DeregisterRequest:
    """Leave the cell cleanly."""
    return register_service_pb2.DeregisterRequest(
        worker_id=member.worker_id, epoch=member.epoch, secret=member.secret
    )


class HeartbeatStream:
    """One open Heartbeat call: plain reports out, plain acknowledgements in."""

    def __init__(self, call: Any) -> None:
        self._call = call

    async def send(
        self,
        member: Membership,
        started: Sequence[tuple[int, int]],
        results: Sequence[JobResult],
        running: int,
        draining: bool,
        defer_ack: bool = False,
    ) -> None:
        """Write one heartbeat."""
        await self._call.write(
            heartbeat_request(member, started, results, running, draining, defer_ack)
        )

    async def acks(self) -> AsyncIterator[HeartbeatAck]:
        """The register's answers in order; raises grpc.aio.AioRpcError when the stream breaks."""
        async for reply in self._call:
            yield heartbeat_ack_from_proto(reply)

    def cancel(self) -> None:
        """End the call."""
        self._call.cancel()


class RegisterCalls:
    """The worker's calls to the register (`heapd.worker.membership.Register`) over `channel`;
    every registration offers `resources` and carries `labels` (checked by the caller)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        address: str,
        resources: Mapping[str, float] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self._stub = register_service_pb2_grpc.RegisterServiceStub(channel)
        self._address = address
        self._resources = dict(resources or {})
        self._labels = dict(labels or {})

    @property
    def address(self) -> str:
        """Where the register listens."""
        return self._address

    async def join(
        self, address: str, slots: int, pid: int, hostname: str, timeout_s: float
    ) -> Membership:
        """RegisterWorker; raises grpc.aio.AioRpcError."""
        request = register_request(address, slots, pid, hostname, self._resources, self._labels)
        reply = await self._stub.RegisterWorker(request, timeout=timeout_s)
        return membership_from_proto(reply)

    async def leave(self, member: Membership, timeout_s: float) -> None:
        """Deregister; raises grpc.aio.AioRpcError."""
        await self._stub.Deregister(deregister_request(member), timeout=timeout_s)

    def heartbeat(self) -> HeartbeatStream:
        """Open a Heartbeat stream."""
        return HeartbeatStream(self._stub.Heartbeat())
