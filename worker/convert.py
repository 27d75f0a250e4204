"""The worker's edge with the wire: the only worker module that imports `protos`.

Task specs arrive as serialized `heapd.v1.TaskSpec` bytes (stored opaque in the arena) and become
plain spec types here; an attempt's plain `Outcome` leaves as serialized `heapd.v1.TaskOutcome`
bytes, which the control plane carries without looking inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from heapd.v1 import register_service_pb2, task_pb2, worker_service_pb2
from heapd.worker.failure import FailureInfo
from heapd.worker.jobs import Job, JobResult


class BadSpec(ValueError):
    """The spec bytes are not a runnable TaskSpec (undecodable, no kind, empty argv)."""


@dataclass(frozen=True, slots=True)
class PythonCallSpec:
    """Call `ref` ("pkg.mod:qualname") or the cloudpickled callable, with pickled (args, kwargs)."""

    ref: str = ""
    pickled_callable: bytes = b""
    pickled_args: bytes = b""
    retry_on: tuple[str, ...] = ()  # exception type names worth a retry; empty = any


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """Run argv without a shell; env is added to the worker's environment."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""  # empty = the worker's working directory
    stdin: bytes = b""


@dataclass(frozen=True, slots=True)
class BuiltinSpec:
    """A builtin experiment task by name (see worker.builtins)."""

    name: str
    params: dict[str, float] = field(default_factory=dict)


TaskSpec = PythonCallSpec | CommandSpec | BuiltinSpec


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A finished command: its exit code and captured output."""

    returncode: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt settled to: a pickled value, a command result, or a failure."""

    result: bytes | CommandResult | FailureInfo
    started_at: float = 0.0
    finished_at: float = 0.0


def spec_from_bytes(data: bytes) -> TaskSpec:
    """Decode a serialized TaskSpec; raise BadSpec when it can't be run."""
    msg = task_pb2.TaskSpec()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise BadSpec(f"task spec does not decode: {exc}") from exc
    kind = msg.WhichOneof("kind")
    if kind == "python":
        return _python_from_proto(msg.python, tuple(msg.retry_on))
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


def _python_from_proto(msg: task_pb2.PythonCall, retry_on: tuple[str, ...]) -> PythonCallSpec:
    target = msg.WhichOneof("target")
    if target is None:
        raise BadSpec("python call has neither a ref nor a pickled callable")
    return PythonCallSpec(
        ref=msg.ref,
        pickled_callable=msg.pickled_callable,
        pickled_args=msg.pickled_args,
        retry_on=retry_on,
    )


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


# --- the daemon's messages (AssignTasks, RegisterWorker, Heartbeat)


def jobs_from_proto(request: worker_service_pb2.AssignTasksRequest) -> list[Job]:
    """The tasks of one AssignTasks call, as pool jobs (spec bytes untouched)."""
    return [Job(a.task_id, a.attempt, a.spec, a.timeout_s) for a in request.tasks]


def assigned_reply(accepted: int) -> worker_service_pb2.AssignTasksResponse:
    """How many tasks the worker took."""
    return worker_service_pb2.AssignTasksResponse(accepted=accepted)


def refused_reply(reason: str) -> worker_service_pb2.AssignTasksResponse:
    """Nothing taken, and why (draining, or not this worker's membership)."""
    return worker_service_pb2.AssignTasksResponse(accepted=0, refused=reason)


def cancel_reply(found: bool) -> worker_service_pb2.WorkerCancelResponse:
    """Whether the attempt was found here."""
    return worker_service_pb2.WorkerCancelResponse(found=found)


def drain_reply(running: int) -> worker_service_pb2.DrainResponse:
    """Tasks still running when the drain was accepted."""
    return worker_service_pb2.DrainResponse(running=running)


def register_request(
    address: str, slots: int, pid: int, hostname: str
) -> register_service_pb2.RegisterWorkerRequest:
    """Ask the register for an id and epoch."""
    return register_service_pb2.RegisterWorkerRequest(
        address=address, slots=slots, pid=pid, hostname=hostname
    )


@dataclass(frozen=True, slots=True)
class Membership:
    """What the register granted: identity and liveness contract."""

    worker_id: int
    epoch: int
    interval_s: float
    deadline_s: float


def membership_from_proto(reply: register_service_pb2.RegisterWorkerResponse) -> Membership:
    """The register's answer as a plain value."""
    return Membership(reply.worker_id, reply.epoch, reply.heartbeat_interval_s, reply.deadline_s)


def heartbeat_request(
    member: Membership,
    started: Sequence[tuple[int, int]],
    results: Sequence[JobResult],
    running: int,
    draining: bool = False,
) -> register_service_pb2.HeartbeatRequest:
    """One heartbeat carrying started attempts and finished results."""
    return register_service_pb2.HeartbeatRequest(
        worker_id=member.worker_id,
        epoch=member.epoch,
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
    )


def deregister_request(member: Membership) -> register_service_pb2.DeregisterRequest:
    """Leave the cell cleanly."""
    return register_service_pb2.DeregisterRequest(worker_id=member.worker_id, epoch=member.epoch)
