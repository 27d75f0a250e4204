"""The client's edge with the wire: the only client module that builds or reads protobuf messages.

Builds task specs, options, submissions and requests from plain arguments, and reads replies
back into plain types: results as `heapd.results.Settled`, outcomes as `heapd.results` types,
task and cell status as `heapd.status` types. Bad arguments raise `InvalidArgument` here, before
anything is sent, with the same meaning as the server's INVALID_ARGUMENT; option bounds are
those of `heapd.options`.

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
from typing import Any, TypeAlias

from google.protobuf.message import DecodeError

from heapd import options as task_opts
from heapd.errors import FailureInfo, HeapdError, InvalidArgument, TaskLost, from_status
from heapd.results import CommandResult, Outcome, Settled, TaskState, decode_outcome
from heapd.runtime.limits import Limits
from heapd.status import ClusterStatus, TaskStatus, WorkerStatus
from heapd.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc

# What the clients hold without looking inside: built and read here only.
SubmitRequest: TypeAlias = task_service_pb2.SubmitTasksRequest
SubmitReply: TypeAlias = task_service_pb2.SubmitStreamResponse
WatchRequest: TypeAlias = task_service_pb2.WatchTasksRequest
WatchReply: TypeAlias = task_service_pb2.WatchTasksResponse

_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_MISSING = object()
_UINT64_MAX = (1 << 64) - 1
_UINT32_MAX = (1 << 32) - 1
CLIENT_LIMITS = Limits()  # the PLM's defaults: a request they refuse fails before it is sent


TaskStub: TypeAlias = task_service_pb2_grpc.TaskServiceStub


def task_stub(channel: Any) -> TaskStub:
    """The TaskService stub over a channel (sync or aio): what both clients call."""
    return task_service_pb2_grpc.TaskServiceStub(channel)


def python_spec(
    fn: Callable[..., Any] | str,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    retry_on: Iterable[str | type[BaseException]] = (),
) -> task_pb2.TaskSpec:
    """A Python call: by reference when `fn` is importable by name (or a "module:function"
    string), cloudpickled otherwise; args and kwargs are pickled together."""
    call = _python_call(fn)
    call.pickled_args = _pickle_args(tuple(args), dict(kwargs or {}))
    return task_pb2.TaskSpec(python=call, retry_on=task_opts.retry_on_names(retry_on))


def python_specs(
    fn: Callable[..., Any] | str,
    arg_tuples: Iterable[tuple[Any, ...]],
    retry_on: Iterable[str | type[BaseException]] = (),
) -> list[task_pb2.TaskSpec]:
    """`python_spec(fn, args)` for each args tuple, resolving or pickling `fn` once."""
    target = _python_call(fn)
    names = task_opts.retry_on_names(retry_on)
    specs = []
    for args in arg_tuples:
        call = task_pb2.PythonCall()
        call.CopyFrom(target)
        call.pickled_args = _pickle_args(args, {})
        specs.append(task_pb2.TaskSpec(python=call, retry_on=names))
    return specs


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
    args, directory = [os.fspath(arg) for arg in argv], os.fspath(cwd) if cwd else ""
    CLIENT_LIMITS.command(args, env, directory, data)  # as the PLM checks it (its defaults)
    command = task_pb2.CommandCall(argv=args, env=env, cwd=directory, stdin=data)
    return task_pb2.TaskSpec(command=command)


def builtin_spec(name: str, params: Mapping[str, float] | None = None) -> task_pb2.TaskSpec:
    """A builtin experiment task ("sleep" with seconds, "cpu" with steps and size)."""
    if not name or not isinstance(name, str):
        raise InvalidArgument(f"a builtin task needs a name, e.g. 'sleep', not {name!r}")
    try:
        values = {key: float(value) for key, value in (params or {}).items()}
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"builtin params must be numbers: {exc}") from None
    return task_pb2.TaskSpec(builtin=task_pb2.BuiltinCall(name=name, params=values))


def options(
    priority: int | str = 0,
    retries: int = 0,
    timeout_s: float | None = 0.0,
    cpus: int | None = None,
    resources: Mapping[str, float] | None = None,
    labels: Mapping[str, str] | None = None,
) -> task_pb2.TaskOptions:
    """Per-task settings, checked by `heapd.options.task_options`; timeout_s 0 or None = none."""
    checked = task_opts.task_options(priority, retries, timeout_s, cpus, resources, labels)
    return options_to_proto(checked)


def options_to_proto(
    checked: task_opts.TaskOptions, key: str = "", after: Sequence[int] = ()
) -> task_pb2.TaskOptions:
    """The wire form of options already checked by `heapd.options.task_options`, with the
    task's idempotency key (checked by `heapd.options.idempotency_key`; "" = none) and the ids
    of the tasks it waits on (checked by `heapd.options.dependency_ids`)."""
    msg = task_pb2.TaskOptions(
        priority=checked.priority, retries=checked.retries, timeout_s=checked.timeout_s, key=key
    )
    # Set only when given: even an empty map or list costs a conversion per task.
    if checked.resources:
        msg.resources.update(checked.resources)  # `cpus=` is the "cpus" entry; the field stays 0
    if checked.labels:
        msg.labels.update(checked.labels)
    if after:
        msg.after.extend(after)
    return msg


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


def result_value(settled: Settled) -> Any:
    """The value of a settled task, or raise what it failed with; TaskLost when the PLM no
    longer knows the task (state 0)."""
    if settled.state == task_pb2.TASK_STATE_UNSPECIFIED:
        raise TaskLost(f"task {settled.task_id} is unknown to the PLM (released or never existed)")
    return decode_outcome(settled.state, outcome_from_bytes(settled.outcome))


# -- requests and replies -----------------------------------------------------------------------


def submit_request(
    session: str,
    submissions: Sequence[task_service_pb2.TaskSubmission],
    acks: Sequence[int] = (),
    adopt: Sequence[int] = (),
) -> SubmitRequest:
    """A batch submission whose results go to `session`'s WatchTasks stream; it also carries
    the results the session acknowledges and the earlier tasks it adopts (by id)."""
    return task_service_pb2.SubmitTasksRequest(
        tasks=list(submissions), session=session, acks=list(acks), adopt=list(adopt)
    )


def submitted_ids(reply: SubmitReply) -> list[int]:
    """The task ids of one SubmitStream answer, or raise the error the request met
    (InvalidArgument, ResourceExhausted, ...)."""
    if reply.error_code:
        raise from_status(reply.error_code, reply.error_message)
    return list(reply.task_ids)


def watch_request(session: str, task_ids: Iterable[int] = ()) -> WatchRequest:
    """Open the session's result stream, asking again for `task_ids` (after a reconnect)."""
    return task_service_pb2.WatchTasksRequest(session=session, task_ids=list(task_ids))


def settled_from_watch(reply: WatchReply) -> list[Settled]:
    """The results of one WatchTasks message."""
    return [Settled(r.task_id, int(r.state), r.outcome) for r in reply.results]


def get_request(task_id: int) -> task_service_pb2.GetTaskRequest:
    return task_service_pb2.GetTaskRequest(task_id=_task_id(task_id))


def cancel_request(task_id: int) -> task_service_pb2.CancelTaskRequest:
    return task_service_pb2.CancelTaskRequest(task_id=_task_id(task_id))


def cancelled_from_reply(reply: task_service_pb2.CancelTaskResponse) -> bool:
    """Whether a CancelTask reply says the task ended CANCELLED."""
    return int(reply.state) == TaskState.CANCELLED


def list_request(states: Sequence[str] = (), limit: int = 100) -> task_service_pb2.ListTasksRequest:
    """ListTasks by state names (QUEUED, RUNNING, ...; any case); empty = all."""
    if isinstance(states, str):
        states = [states]
    values = []
    for name in states:
        try:
            values.append(task_pb2.TaskState.Value(TaskState[str(name).upper()].name))
        except KeyError:
            known = ", ".join(state.name for state in TaskState)
            raise InvalidArgument(f"unknown task state {name!r} (known: {known})") from None
    if not _is_int(limit) or not 0 <= limit <= _UINT32_MAX:
        raise InvalidArgument(f"limit must be an integer >= 0 (0 = 100), not {limit!r}")
    return task_service_pb2.ListTasksRequest(states=values, limit=limit)


def statuses_from_list(reply: task_service_pb2.ListTasksResponse) -> list[TaskStatus]:
    """The tasks of a ListTasks reply, oldest first."""
    return [status_from_proto(task) for task in reply.tasks]


def cluster_request() -> task_service_pb2.GetClusterStatusRequest:
    return task_service_pb2.GetClusterStatusRequest()


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
        unschedulable=msg.unschedulable,
        resources=dict(msg.resources),
        labels=dict(msg.labels),
        after=list(msg.after),
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
        unschedulable=msg.unschedulable,
        policy=msg.policy,
        aging_s=msg.aging_s,
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


def _python_call(fn: Callable[..., Any] | str) -> task_pb2.PythonCall:
    """The call's target, without arguments: a reference, or the callable pickled by value."""
    if isinstance(fn, str):
        return task_pb2.PythonCall(ref=_checked_ref(fn))
    if not callable(fn):
        raise InvalidArgument(f"a task must be a callable or 'module:function', not {fn!r}")
    ref = callable_ref(fn)
    if ref is not None:
        return task_pb2.PythonCall(ref=ref)
    return task_pb2.PythonCall(pickled_callable=_pickle(fn, "the callable"))


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
    import cloudpickle  # only for what plain pickle cannot encode: keeps `import heapd` light

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
        resources=dict(msg.resources),
        resources_free=dict(msg.resources_free),
        labels=dict(msg.labels),
    )


def _task_id(value: int) -> int:
    if not _is_int(value) or not 0 <= value <= _UINT64_MAX:
        raise InvalidArgument(f"a task id is an integer >= 0, not {value!r}")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
        dependency_id=msg.dependency_id,
    )
