"""The PLM's gRPC boundary: the only module of `plm` that builds or reads protobuf messages.

Requests become plain values (validated: a bad request raises `heapd.errors.InvalidArgument`
naming the limit it passes, `heapd.runtime.limits`; the size of a repeated field is checked
before it is walked), plain values become replies. The one call the PLM makes to a worker
(CancelTask) is here too, since all it does is build a request and read a reply.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc
from google.protobuf.message import DecodeError

from heapd import shm
from heapd.errors import InvalidArgument
from heapd.options import (
    DEPENDENCIES_MAX,
    LABELS_PER_TASK,
    RESOURCES_PER_TASK,
    RETRY_ON_MAX,
    TASK_ID_MAX,
    dependency_ids,
    idempotency_key,
    task_options,
)
from heapd.plm.dependents import DependencyMessages
from heapd.plm.intake import Intake
from heapd.runtime.limits import Limits
from heapd.v1 import task_pb2, worker_service_pb2, worker_service_pb2_grpc
from heapd.v1 import task_service_pb2 as pb

BUILTINS = frozenset({"sleep", "cpu"})
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 100_000
DEFAULT_LIMITS = Limits()

# (task id, the task or None if unknown, its outcome): one settled task as the PLM reads it.
Settled = tuple[int, shm.TaskInfo | None, bytes | None]

# --- submissions


def new_task_from_proto(
    spec: task_pb2.TaskSpec, options: task_pb2.TaskOptions, limits: Limits = DEFAULT_LIMITS
) -> shm.NewTask:
    """Validate one submission and turn it into a table insert; InvalidArgument says what is
    wrong. Options are checked by `heapd.options`, as the client checks them."""
    _check_spec(spec, limits)
    if options.resources or options.labels or options.after:
        _check_counts(options)
    checked = task_options(
        priority=options.priority,
        retries=options.retries,
        timeout_s=options.timeout_s,
        cpus=options.cpus or None,  # 0 (unset) = no need; else the "cpus" entry
        # Empty maps skip the dict copies: a proto map copies through Python-level Mapping code.
        resources=dict(options.resources) if options.resources else None,
        labels=dict(options.labels) if options.labels else None,
    )
    return shm.NewTask(
        payload=spec.SerializeToString(),
        priority=checked.priority,
        max_retries=checked.retries,
        timeout_ms=round(checked.timeout_s * 1000),
        resources=checked.resources,
        labels=checked.labels,
        after=tuple(dependency_ids(options.after)) if options.after else (),
        traced=options.trace,
    )


def _check_counts(options: task_pb2.TaskOptions) -> None:
    """The maps and lists of the options hold no more than `heapd.options` allows, checked
    before they are copied."""
    for what, count, limit in (
        ("resources", len(options.resources), RESOURCES_PER_TASK),
        ("labels", len(options.labels), LABELS_PER_TASK),
        ("after", len(options.after), DEPENDENCIES_MAX),
    ):
        if count > limit:
            raise InvalidArgument(f"{what}: {count} entries, over the limit of {limit} per task")


def _check_spec(spec: task_pb2.TaskSpec, limits: Limits) -> None:
    kind = spec.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument("task spec has no kind: set one of python, command, builtin")
    if spec.inputs:
        raise InvalidArgument("task spec inputs are the cell's to fill (dependencies' results)")
    if spec.retry_on:
        _check_retry_on(spec.retry_on, limits)
    if kind == "python":
        _check_python(spec.python, limits)
    elif kind == "command":
        command = spec.command
        if not command.argv or not command.argv[0]:
            raise InvalidArgument("command task needs a non-empty argv")
        limits.command(command.argv, command.env, command.cwd, command.stdin)
    elif spec.builtin.name not in BUILTINS:
        raise InvalidArgument(
            f"unknown builtin {spec.builtin.name!r}: expected one of {sorted(BUILTINS)}"
        )


def _check_retry_on(names: Sequence[str], limits: Limits) -> None:
    if len(names) > RETRY_ON_MAX:
        raise InvalidArgument(
            f"retry_on: {len(names)} entries, over the limit of {RETRY_ON_MAX} per task"
        )
    for index, name in enumerate(names):
        limits.ref(f"retry_on[{index}]", name)


def _check_python(call: task_pb2.PythonCall, limits: Limits) -> None:
    target = call.WhichOneof("target")
    if target is None:
        raise InvalidArgument("python task needs a function reference or a pickled callable")
    if target == "ref":
        limits.ref("function reference", call.ref)
        module, sep, name = call.ref.partition(":")
        if not (module and sep and name):
            raise InvalidArgument(
                f"function reference {call.ref!r} is not 'package.module:function'"
            )


def submission_from_proto(request: pb.SubmitTaskRequest, limits: Limits = DEFAULT_LIMITS) -> Intake:
    """A SubmitTask request: one task, with its key."""
    session = limits.session(request.session)
    task = new_task_from_proto(request.spec, request.options, limits)
    return Intake(session, [task], [idempotency_key(request.options.key)])


def submissions_from_proto(
    request: pb.SubmitTasksRequest, limits: Limits = DEFAULT_LIMITS
) -> Intake:
    """A batch (tasks, acknowledgements, adopted ids); the error names the index of the first
    bad submission. A request may carry no task if it acknowledges or adopts some."""
    limits.tasks(len(request.tasks))
    limits.ids("acks", len(request.acks))
    limits.ids("adopt", len(request.adopt))
    check_task_ids("acks", request.acks)
    check_task_ids("adopt", request.adopt)
    limits.session(request.session)
    tasks, keys = [], []
    for index, item in enumerate(request.tasks):
        try:
            tasks.append(new_task_from_proto(item.spec, item.options, limits))
            keys.append(idempotency_key(item.options.key))
        except InvalidArgument as exc:
            raise InvalidArgument(f"tasks[{index}]: {exc}") from None
    if not tasks and not request.acks and not request.adopt:
        raise InvalidArgument("SubmitTasks needs at least one task (or acks or adopt)")
    if (request.acks or request.adopt) and not request.session:
        raise InvalidArgument("acks and adopt need the session they are for")
    keys = keys if any(keys) else []  # Intake: empty = no task has a key (the fast path)
    return Intake(request.session, tasks, keys, list(request.acks), list(request.adopt))


def submitted_to_proto(task_id: int) -> pb.SubmitTaskResponse:
    """The id of a task submitted alone."""
    return pb.SubmitTaskResponse(task_id=task_id)


def batch_submitted_to_proto(task_ids: Sequence[int]) -> pb.SubmitTasksResponse:
    """The ids of a batch, in submission order."""
    return pb.SubmitTasksResponse(task_ids=task_ids)


def stream_submitted_to_proto(task_ids: Sequence[int]) -> pb.SubmitStreamResponse:
    """The answer to one request of a SubmitStream."""
    return pb.SubmitStreamResponse(task_ids=task_ids)


def stream_refused_to_proto(code: grpc.StatusCode, message: str) -> pb.SubmitStreamResponse:
    """A request of a SubmitStream that failed: its status, in the message."""
    return pb.SubmitStreamResponse(error_code=code.value[0], error_message=message)


# --- tasks and results


def check_task_ids(field: str, task_ids: Sequence[int]) -> None:
    """Refuse ids no task can have (the wire allows any uint64; ids, and the journal's
    signed 64-bit keys, stay below 2**63), before any of them reaches the cell or journal."""
    if task_ids and max(task_ids) > TASK_ID_MAX:
        raise InvalidArgument(f"{field}: task id {max(task_ids)} is out of range")


def task_id_from_proto(request: pb.GetTaskRequest | pb.CancelTaskRequest) -> int:
    """The task a GetTask or CancelTask names."""
    task_id: int = request.task_id
    check_task_ids("task_id", [task_id])
    return task_id


def status_to_proto(
    info: shm.TaskInfo, outcome: bytes | None, unschedulable: str = ""
) -> pb.TaskStatus:
    """A task's public status, with its outcome when held, its needs and labels (when read
    with them) and why no live worker could run it (QUEUED only; "" = one could)."""
    return pb.TaskStatus(
        task_id=info.task_id,
        state=task_pb2.TaskState.ValueType(info.state),
        priority=info.priority,
        attempt=info.attempt,
        worker_id=info.worker_id,
        submitted_at=info.submitted_at,
        dispatched_at=info.dispatched_at,
        finished_at=info.finished_at,
        outcome=outcome or b"",
        unschedulable=unschedulable,
        resources=info.resources,
        labels=info.labels,
        after=info.after,
    )


def watch_from_proto(
    request: pb.WatchTasksRequest, limits: Limits = DEFAULT_LIMITS
) -> tuple[str, list[int]]:
    """A WatchTasks request: (session, ids of tasks it still awaits)."""
    if not request.session:
        raise InvalidArgument("WatchTasks needs a session name")
    limits.ids("task_ids", len(request.task_ids))
    check_task_ids("task_ids", request.task_ids)
    return limits.session(request.session), list(request.task_ids)


def watch_response(batch: Sequence[Settled]) -> pb.WatchTasksResponse:
    """One batch on a WatchTasks stream; a task the cell no longer knows has state 0."""
    return pb.WatchTasksResponse(results=[_result_to_proto(*item) for item in batch])


def _result_to_proto(
    task_id: int, info: shm.TaskInfo | None, outcome: bytes | None
) -> pb.TaskResult:
    return pb.TaskResult(
        task_id=task_id,
        state=task_pb2.TaskState.ValueType(0 if info is None else info.state),
        attempt=0 if info is None else info.attempt,
        outcome=outcome or b"",
    )


def cancel_reply(state: shm.TaskState) -> pb.CancelTaskResponse:
    """The task's state after a CancelTask."""
    return pb.CancelTaskResponse(state=task_pb2.TaskState.ValueType(state))


def list_from_proto(request: pb.ListTasksRequest) -> tuple[list[shm.TaskState] | None, int]:
    """A ListTasks request: (states, None = every state; how many at most)."""
    limit: int = request.limit or DEFAULT_LIST_LIMIT
    if limit > MAX_LIST_LIMIT:
        raise InvalidArgument(f"limit {limit} is over the maximum of {MAX_LIST_LIMIT}")
    if len(request.states) > len(shm.TaskState):
        raise InvalidArgument(
            f"states: {len(request.states)} entries, more than the {len(shm.TaskState)} states"
        )
    return _states_from_proto(request.states), limit


def _states_from_proto(states: Iterable[int]) -> list[shm.TaskState] | None:
    try:
        chosen = [shm.TaskState(int(s)) for s in states]
    except ValueError as exc:
        raise InvalidArgument(f"unknown task state in filter: {exc}") from None
    return chosen or None


def tasks_to_proto(infos: Iterable[tuple[shm.TaskInfo, str]]) -> pb.ListTasksResponse:
    """A ListTasks answer (statuses without outcomes, with why a QUEUED one is
    unschedulable)."""
    return pb.ListTasksResponse(tasks=[status_to_proto(i, None, why) for i, why in infos])


def cluster_to_proto(stats: shm.CellStats, held: int) -> pb.ClusterStatus:
    """The cell's workers, queue and totals."""
    counts = stats.counts
    return pb.ClusterStatus(
        cell=stats.cell,
        workers=[_worker_to_proto(w) for w in stats.workers],
        queued=stats.queued,
        running=counts.get(shm.TaskState.DISPATCHED, 0) + counts.get(shm.TaskState.RUNNING, 0),
        pending=counts.get(shm.TaskState.PENDING, 0),
        submitted_total=stats.submitted_total,
        succeeded_total=stats.succeeded_total,
        failed_total=stats.failed_total,
        cancelled_total=stats.cancelled_total,
        held_results=held,
        task_capacity=stats.capacities.tasks,
        unschedulable=stats.unschedulable,
        policy=stats.policy.label,
        aging_s=stats.aging_s,
    )


def _worker_to_proto(w: shm.WorkerInfo) -> pb.WorkerStatus:
    return pb.WorkerStatus(
        worker_id=w.worker_id,
        epoch=w.epoch,
        address=w.address,
        hostname=w.hostname,
        pid=w.pid,
        slots=w.slots,
        in_flight=w.in_flight,
        state=w.state.name,
        last_heartbeat=w.last_heartbeat,
        tasks_done=w.tasks_done,
        resources=w.resources,
        resources_free=w.resources_free,
        labels=w.labels,
    )


# --- calls to workers


async def cancel_on_worker(
    channel: grpc.aio.Channel, task_id: int, attempt: int, timeout_s: float
) -> bool:
    """WorkerService.CancelTask: True if the worker held the attempt (grpc.aio.AioRpcError if
    the call fails)."""
    stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
    request = worker_service_pb2.WorkerCancelRequest(task_id=task_id, attempt=attempt)
    reply = await stub.CancelTask(request, timeout=timeout_s)
    return bool(reply.found)


# --- dependencies


def inputs_suffix(results: Sequence[tuple[int, bytes]]) -> bytes:
    """What the PLM appends to a dependent's stored TaskSpec once its dependencies succeeded:
    a serialized TaskSpec holding only their outcomes as `inputs`. Concatenated messages merge
    (repeated fields append), so the spec is extended without being parsed or copied twice."""
    spec = task_pb2.TaskSpec(
        inputs=[task_pb2.DependencyResult(task_id=tid, outcome=out) for tid, out in results]
    )
    data: bytes = spec.SerializeToString()
    return data


def dependency_failed_outcome(dep: shm.DependencyState, finished_at: float) -> bytes:
    """The outcome of a task whose dependency `dep` did not succeed (failed, cancelled, or no
    longer known to the cell), naming it and, for a failure, why."""
    if dep.state is None:
        why = f"dependency {dep.task_id} is lost: the cell no longer knows it"
    elif dep.state == shm.TaskState.CANCELLED:
        why = f"dependency {dep.task_id} was cancelled"
    else:
        why = f"dependency {dep.task_id} failed" + _failure_text(dep.result)
    return _failed_outcome(
        task_pb2.Failure(
            kind=task_pb2.DEPENDENCY_FAILED,
            type="heapd.errors.DependencyFailed",
            message=why,
            dependency_id=dep.task_id,
        ),
        finished_at,
    )


def too_big_outcome(task_id: int, finished_at: float) -> bytes:
    """The outcome of a dependent whose dependencies' results do not fit in its payload."""
    return _failed_outcome(
        task_pb2.Failure(
            kind=task_pb2.BAD_TASK,
            type="heapd.errors.BadTask",
            message=(
                f"task {task_id}: its dependencies' results together exceed the cell's largest "
                "blob (--max-blob-kb): return a reference (a path, a key) instead of the data"
            ),
        ),
        finished_at,
    )


def _failed_outcome(failure: task_pb2.Failure, finished_at: float) -> bytes:
    outcome = task_pb2.TaskOutcome(failure=failure, started_at=0.0, finished_at=finished_at)
    data: bytes = outcome.SerializeToString()
    return data


def _failure_text(result: bytes | None) -> str:
    """ ": TYPE: MESSAGE" of a failed outcome, "" when there is none to read."""
    if not result:
        return ""
    outcome = task_pb2.TaskOutcome()
    try:
        outcome.ParseFromString(result)
    except DecodeError:
        return ""
    if outcome.WhichOneof("result") != "failure":
        return ""
    kind = outcome.failure.type.removeprefix("builtins.")  # as the client names it
    return f": {kind}: {outcome.failure.message}"


DEPENDENCY_MESSAGES = DependencyMessages(
    inputs=inputs_suffix, failed=dependency_failed_outcome, too_big=too_big_outcome
)
