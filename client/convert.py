"""The client's edge with the wire: the only client module that imports `protos`.

Builds task specs, options, submissions and requests from plain arguments, and reads replies
back into plain types: settled outcomes as `client.results` types, task and cell status as the
`TaskStatus` / `ClusterStatus` dataclasses below. Bad arguments raise `InvalidArgument` here,
before anything is sent, with the same meaning as the server's INVALID_ARGUMENT.

How a callable travels: one importable by name (a module-level function or class, or a static
method, of a module other than `__main__`) goes as a "module:qualname" reference — small, and the
worker imports it once; anything else (lambdas, closures, functions of `__main__`, bound methods)
goes cloudpickled, by value.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cloudpickle
from google.protobuf.message import DecodeError

from heapd.errors import FailureInfo, HeapdError, InvalidArgument, TaskLost
from heapd.results import CommandResult, Outcome, TaskState, decode_outcome
from heapd.v1 import task_pb2, task_service_pb2

PRIORITY_MIN, PRIORITY_MAX = -32768, 32767
_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_MISSING = object()


def python_spec(
    fn: Callable[..., Any] | str,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    retry_on: Sequence[str | type[BaseException]] = (),
) -> task_pb2.TaskSpec:
    """A Python call: by reference when `fn` is importable by name (or a "module:function"
    string), cloudpickled otherwise; args and kwargs are cloudpickled together."""
    if isinstance(fn, str):
        call = task_pb2.PythonCall(ref=_checked_ref(fn))
    elif not callable(fn):
        raise InvalidArgument(f"a task must be a callable or 'module:function', not {fn!r}")
    elif (ref := callable_ref(fn)) is not None:
        call = task_pb2.PythonCall(ref=ref)
    else:
        call = task_pb2.PythonCall(pickled_callable=_pickle(fn, "the callable"))
    call.pickled_args = _pickle_args(args, dict(kwargs or {}))
    return task_pb2.TaskSpec(python=call, retry_on=retry_names(retry_on))


def command_spec(
    argv: Sequence[str | os.PathLike[str]],
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdin: bytes | str | None = None,
) -> task_pb2.TaskSpec:
    """A command run without a shell; `env` is added to the worker's environment."""
    if isinstance(argv, str | bytes) or not argv:
        raise InvalidArgument("a command needs a non-empty argv list, e.g. ['echo', 'hi']")
    env = dict(env or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise InvalidArgument("command env keys and values must be str")
    data = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
    command = task_pb2.CommandCall(
        argv=[os.fspath(arg) for arg in argv],
        env=env,
        cwd=os.fspath(cwd) if cwd else "",
        stdin=data,
    )
    return task_pb2.TaskSpec(command=command)


def builtin_spec(name: str, params: Mapping[str, float] | None = None) -> task_pb2.TaskSpec:
    """A builtin experiment task ("sleep" with seconds, "cpu" with steps and size)."""
    if not name:
        raise InvalidArgument("a builtin task needs a name, e.g. 'sleep'")
    try:
        values = {key: float(value) for key, value in (params or {}).items()}
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"builtin params must be numbers: {exc}") from None
    return task_pb2.TaskSpec(builtin=task_pb2.BuiltinCall(name=name, params=values))


def options(
    priority: int = 0, retries: int = 0, timeout_s: float = 0.0, cpus: int = 1
) -> task_pb2.TaskOptions:
    """Per-task settings; timeout_s = 0 means none."""
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidArgument(f"priority must be in {PRIORITY_MIN}..{PRIORITY_MAX}, not {priority}")
    if retries < 0:
        raise InvalidArgument(f"retries must be >= 0, not {retries}")
    if not timeout_s >= 0:  # also refuses NaN
        raise InvalidArgument(f"timeout must be >= 0 seconds (0 = none), not {timeout_s}")
    if cpus < 1:
        raise InvalidArgument(f"cpus must be >= 1, not {cpus}")
    return task_pb2.TaskOptions(priority=priority, retries=retries, timeout_s=timeout_s, cpus=cpus)


def submission(
    spec: task_pb2.TaskSpec, task_options: task_pb2.TaskOptions
) -> task_service_pb2.TaskSubmission:
    """One task of a SubmitTasks batch."""
    return task_service_pb2.TaskSubmission(spec=spec, options=task_options)


def outcome_from_bytes(data: bytes) -> Outcome | None:
    """Parse a serialized TaskOutcome; None when there is none (e.g. cancelled while queued)."""
    if not data:
        return None
    msg = task_pb2.TaskOutcome()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise HeapdError(f"the cell sent a malformed task outcome: {exc}") from exc
    kind = msg.WhichOneof("result")
    result: bytes | CommandResult | FailureInfo
    if kind == "pickled_value":
        result = msg.pickled_value
    elif kind == "command":
        result = CommandResult(msg.command.returncode, msg.command.stdout, msg.command.stderr)
    elif kind == "failure":
        earlier = tuple(_failure_from_proto(f) for f in msg.earlier_failures)
        result = _failure_from_proto(msg.failure, earlier)
    else:
        return None
    return Outcome(result, started_at=msg.started_at, finished_at=msg.finished_at)


def result_value(result: Any) -> Any:
    """The value of a settled TaskResult or TaskStatus, or raise what the task failed with;
    TaskLost when the PLM no longer knows the task (state unspecified)."""
    if result.state == task_pb2.TASK_STATE_UNSPECIFIED:
        raise TaskLost(f"task {result.task_id} is unknown to the PLM (released or never existed)")
    return decode_outcome(int(result.state), outcome_from_bytes(result.outcome))


# -- requests and status ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A task as the PLM sees it; `outcome` is the serialized TaskOutcome while held."""

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


def submit_request(
    session: str, submissions: Sequence[task_service_pb2.TaskSubmission]
) -> task_service_pb2.SubmitTasksRequest:
    """A batch submission whose results go to `session`'s WatchTasks stream."""
    return task_service_pb2.SubmitTasksRequest(tasks=list(submissions), session=session)


def watch_request(session: str, task_ids: Iterable[int] = ()) -> task_service_pb2.WatchTasksRequest:
    """Open the session's result stream, asking again for `task_ids` (after a reconnect)."""
    return task_service_pb2.WatchTasksRequest(session=session, task_ids=list(task_ids))


def get_request(task_id: int) -> task_service_pb2.GetTaskRequest:
    return task_service_pb2.GetTaskRequest(task_id=task_id)


def cancel_request(task_id: int) -> task_service_pb2.CancelTaskRequest:
    return task_service_pb2.CancelTaskRequest(task_id=task_id)


def list_request(states: Sequence[str] = (), limit: int = 100) -> task_service_pb2.ListTasksRequest:
    """ListTasks by state names (QUEUED, RUNNING, ...; any case); empty = all."""
    values = []
    for name in states:
        try:
            values.append(task_pb2.TaskState.Value(TaskState[name.upper()].name))
        except KeyError:
            known = ", ".join(state.name for state in TaskState)
            raise InvalidArgument(f"unknown task state {name!r} (known: {known})") from None
    if limit < 0:
        raise InvalidArgument(f"limit must be >= 0, not {limit}")
    return task_service_pb2.ListTasksRequest(states=values, limit=limit)


def cluster_request() -> task_service_pb2.GetClusterStatusRequest:
    return task_service_pb2.GetClusterStatusRequest()


def is_cancelled(state: int) -> bool:
    """Whether a CancelTask reply's state means the task ended CANCELLED."""
    return int(state) == TaskState.CANCELLED


def status_from_proto(msg: task_service_pb2.TaskStatus) -> TaskStatus:
    return TaskStatus(
        task_id=msg.task_id,
        state=_state_name(msg.state),
        priority=msg.priority,
        attempt=msg.attempt,
        worker_id=msg.worker_id,
        submitted_at=msg.submitted_at,
        dispatched_at=msg.dispatched_at,
        finished_at=msg.finished_at,
        outcome=msg.outcome,
    )


def cluster_from_proto(msg: task_service_pb2.ClusterStatus) -> ClusterStatus:
    return ClusterStatus(
        cell=msg.cell,
        workers=[_worker_from_proto(worker) for worker in msg.workers],
        queued=msg.queued,
        running=msg.running,
        pending=msg.pending,
        submitted_total=msg.submitted_total,
        succeeded_total=msg.succeeded_total,
        failed_total=msg.failed_total,
        cancelled_total=msg.cancelled_total,
        held_results=msg.held_results,
        task_capacity=msg.task_capacity,
    )


# -- helpers ------------------------------------------------------------------------------------


def callable_ref(fn: object) -> str | None:
    """ "module:qualname" when importing that name on a worker yields `fn` itself, else None."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    if module == "__main__" or "<" in qualname:  # <locals>, <lambda>: not importable
        return None
    found: object = sys.modules.get(module, _MISSING)
    for part in qualname.split("."):
        found = getattr(found, part, _MISSING)
    return f"{module}:{qualname}" if found is fn else None


def retry_names(retry_on: Sequence[str | type[BaseException]]) -> list[str]:
    """Exception classes as "module.Qualname"; strings are taken as given."""
    names = []
    for item in retry_on:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, type) and issubclass(item, BaseException):
            names.append(f"{item.__module__}.{item.__qualname__}")
        else:
            raise InvalidArgument(f"retry_on takes exception classes or names, not {item!r}")
    return names


def _checked_ref(ref: str) -> str:
    if not _REF.match(ref):
        raise InvalidArgument(
            f"function reference {ref!r} must look like 'package.module:function'"
        )
    return ref


def _pickle_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Plain pickle (C, fast) when it can encode the arguments without naming `__main__`
    (which a worker cannot import); cloudpickle (by value) otherwise."""
    if not args and not kwargs:
        return b""  # the worker reads empty as ((), {})
    value = (tuple(args), kwargs)
    try:
        data = pickle.dumps(value, protocol=5)
    except Exception:
        return _pickle(value, "the arguments")
    return data if b"__main__" not in data else _pickle(value, "the arguments")


def _pickle(obj: object, what: str) -> bytes:
    try:
        data: bytes = cloudpickle.dumps(obj, protocol=5)
    except Exception as exc:
        raise InvalidArgument(f"{what} could not be pickled: {exc}") from exc
    return data


def _worker_from_proto(msg: task_service_pb2.WorkerStatus) -> WorkerStatus:
    return WorkerStatus(
        worker_id=msg.worker_id,
        epoch=msg.epoch,
        address=msg.address,
        hostname=msg.hostname,
        pid=msg.pid,
        slots=msg.slots,
        in_flight=msg.in_flight,
        state=msg.state,
        last_heartbeat=msg.last_heartbeat,
        tasks_done=msg.tasks_done,
    )


def _state_name(state: int) -> str:
    try:
        return TaskState(state).name
    except ValueError:
        return "UNSPECIFIED"


def _failure_from_proto(
    msg: task_pb2.Failure, earlier: tuple[FailureInfo, ...] = ()
) -> FailureInfo:
    return FailureInfo(
        kind=int(msg.kind),
        type_name=msg.type,
        message=msg.message,
        traceback=msg.traceback,
        pickled_exception=msg.pickled_exception,
        earlier=earlier,
    )
