"""The PLM's gRPC boundary: the only module of `plm` that imports `protos`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from heapd import shm
from heapd.v1 import task_pb2, task_service_pb2, worker_service_pb2

BUILTINS = frozenset({"sleep", "cpu"})
MAX_RETRIES = 1000
MIN_PRIORITY, MAX_PRIORITY = -32768, 32767
MAX_TIMEOUT_S = 7 * 24 * 3600.0


def new_task_from_proto(spec: task_pb2.TaskSpec, options: task_pb2.TaskOptions) -> shm.NewTask:
    """Validate one submission and turn it into a table insert; ValueError says what is wrong."""
    _check_spec(spec)
    _check_options(options)
    return shm.NewTask(
        payload=spec.SerializeToString(),
        priority=options.priority,
        max_retries=options.retries,
        timeout_ms=round(options.timeout_s * 1000),
        cpus=max(1, options.cpus),
    )


def _check_spec(spec: task_pb2.TaskSpec) -> None:
    kind = spec.WhichOneof("kind")
    if kind is None:
        raise ValueError("task spec has no kind: set one of python, command, builtin")
    if kind == "python":
        _check_python(spec.python)
    elif kind == "command":
        if not spec.command.argv or not spec.command.argv[0]:
            raise ValueError("command task needs a non-empty argv")
    elif spec.builtin.name not in BUILTINS:
        raise ValueError(
            f"unknown builtin {spec.builtin.name!r}: expected one of {sorted(BUILTINS)}"
        )


def _check_python(call: task_pb2.PythonCall) -> None:
    target = call.WhichOneof("target")
    if target is None:
        raise ValueError("python task needs a function reference or a pickled callable")
    if target == "ref":
        module, sep, name = call.ref.partition(":")
        if not (module and sep and name):
            raise ValueError(f"function reference {call.ref!r} is not 'package.module:function'")


def _check_options(options: task_pb2.TaskOptions) -> None:
    if not MIN_PRIORITY <= options.priority <= MAX_PRIORITY:
        raise ValueError(f"priority {options.priority} is outside {MIN_PRIORITY}..{MAX_PRIORITY}")
    if options.retries > MAX_RETRIES:
        raise ValueError(f"retries {options.retries} is over the maximum of {MAX_RETRIES}")
    timeout = options.timeout_s
    if not math.isfinite(timeout) or timeout < 0 or timeout > MAX_TIMEOUT_S:
        raise ValueError(f"timeout_s {timeout} must be between 0 (none) and {MAX_TIMEOUT_S:.0f}")


def new_tasks_from_proto(
    request: task_service_pb2.SubmitTasksRequest,
) -> list[shm.NewTask]:
    """Validate a batch; the error names the index of the first bad submission."""
    tasks = []
    for index, item in enumerate(request.tasks):
        try:
            tasks.append(new_task_from_proto(item.spec, item.options))
        except ValueError as exc:
            raise ValueError(f"tasks[{index}]: {exc}") from None
    if not tasks:
        raise ValueError("SubmitTasks needs at least one task")
    return tasks


def status_to_proto(info: shm.TaskInfo, outcome: bytes | None) -> task_service_pb2.TaskStatus:
    """A task's public status, with its outcome when held."""
    return task_service_pb2.TaskStatus(
        task_id=info.task_id,
        state=task_pb2.TaskState.ValueType(info.state),
        priority=info.priority,
        attempt=info.attempt,
        worker_id=info.worker_id,
        submitted_at=info.submitted_at,
        dispatched_at=info.dispatched_at,
        finished_at=info.finished_at,
        outcome=outcome or b"",
    )


def result_to_proto(
    task_id: int, state: shm.TaskState | None, attempt: int, outcome: bytes | None
) -> task_service_pb2.TaskResult:
    """One settled task for a WatchTasks batch; state None = the task is unknown."""
    return task_service_pb2.TaskResult(
        task_id=task_id,
        state=task_pb2.TaskState.ValueType(0 if state is None else state),
        attempt=attempt,
        outcome=outcome or b"",
    )


def watch_response(
    results: Sequence[task_service_pb2.TaskResult],
) -> task_service_pb2.WatchTasksResponse:
    """One batch on a WatchTasks stream."""
    return task_service_pb2.WatchTasksResponse(results=results)


def states_from_proto(states: Iterable[int]) -> list[shm.TaskState] | None:
    """ListTasks filter; None = every state."""
    try:
        chosen = [shm.TaskState(int(s)) for s in states]
    except ValueError as exc:
        raise ValueError(f"unknown task state in filter: {exc}") from None
    return chosen or None


def cluster_to_proto(stats: shm.CellStats, held: int) -> task_service_pb2.ClusterStatus:
    """The cell's workers, queue and totals."""
    counts = stats.counts
    return task_service_pb2.ClusterStatus(
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
    )


def _worker_to_proto(w: shm.WorkerInfo) -> task_service_pb2.WorkerStatus:
    return task_service_pb2.WorkerStatus(
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
    )


def worker_cancel_request(task_id: int, attempt: int) -> worker_service_pb2.WorkerCancelRequest:
    """Ask a worker to kill one attempt."""
    return worker_service_pb2.WorkerCancelRequest(task_id=task_id, attempt=attempt)


def cancel_reply(state: shm.TaskState) -> task_service_pb2.CancelTaskResponse:
    """The task's state after a CancelTask."""
    return task_service_pb2.CancelTaskResponse(state=task_pb2.TaskState.ValueType(state))
