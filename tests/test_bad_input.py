"""Bad input gets a clear status and message; nothing crashes; the cell stays consistent
(the start_cell fixture runs the consistency check before tearing the cell down)."""

from __future__ import annotations

import grpc
import pytest

from heapd import Client, InvalidArgument, NotFound, ResourceExhausted
from heapd.errors import BadResult, BadTask
from heapd.v1 import (
    register_service_pb2,
    register_service_pb2_grpc,
    task_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)
from tests import tasks_for_tests as t
from tests.conftest import StartCell
from tests.helpers import authed_channel


def test_unknown_task_id_is_not_found(start_cell: StartCell) -> None:
    cell = start_cell(workers=0)
    with Client(cell.address) as client:
        with pytest.raises(NotFound):
            client.get_task(123456789)
        with pytest.raises(NotFound):
            client.cancel(987654321)


def test_payload_over_the_limit_is_invalid_argument(start_cell: StartCell) -> None:
    cell = start_cell(workers=1, slots=1, extra_args=("--max-blob-kb", "4"))
    with Client(cell.address) as client:
        with pytest.raises(InvalidArgument, match="4096"):
            client.submit(t.square, b"x" * 10_000)
        assert client.submit(t.square, 5).result(timeout=30) == 25


def test_full_queue_is_resource_exhausted(start_cell: StartCell) -> None:
    cell = start_cell(workers=0, extra_args=("--tasks", "16"))
    with Client(cell.address) as client:
        client.map(t.square, range(16))
        with pytest.raises(ResourceExhausted):
            client.submit(t.square, 1)
        assert client.cluster_status().queued == 16


def test_unknown_function_and_unpicklable_result_fail_the_task_only(start_cell: StartCell) -> None:
    cell = start_cell(workers=1, slots=1)
    with Client(cell.address) as client:
        with pytest.raises(BadTask, match="no_such_function"):
            client.submit("tests.tasks_for_tests:no_such_function").result(timeout=30)
        with pytest.raises(BadTask):
            client.submit("no_such_module_xyz:f").result(timeout=30)
        with pytest.raises(BadResult):
            client.submit(t.unpicklable_result).result(timeout=30)
        assert client.submit(t.square, 4).result(timeout=30) == 16, "the worker stays up"


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        (task_pb2.TaskSpec(), task_pb2.TaskOptions(), "no kind"),
        (
            task_pb2.TaskSpec(builtin=task_pb2.BuiltinCall(name="sleep")),
            task_pb2.TaskOptions(timeout_s=-1),
            "timeout",
        ),
        (task_pb2.TaskSpec(command=task_pb2.CommandCall()), task_pb2.TaskOptions(), "argv"),
        (
            task_pb2.TaskSpec(python=task_pb2.PythonCall(ref="nocolon")),
            task_pb2.TaskOptions(),
            "module:function",
        ),
        (
            task_pb2.TaskSpec(builtin=task_pb2.BuiltinCall(name="nope")),
            task_pb2.TaskOptions(),
            "builtin",
        ),
        (
            task_pb2.TaskSpec(builtin=task_pb2.BuiltinCall(name="sleep")),
            task_pb2.TaskOptions(priority=100_000),
            "priority",
        ),
    ],
)
def test_malformed_requests_are_invalid_argument(
    start_cell: StartCell, spec: task_pb2.TaskSpec, options: task_pb2.TaskOptions, message: str
) -> None:
    cell = start_cell(workers=0)
    with authed_channel(cell.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitTask(
                task_service_pb2.SubmitTaskRequest(spec=spec, options=options), timeout=10
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in info.value.details()
        with pytest.raises(grpc.RpcError) as batch:
            stub.SubmitTasks(task_service_pb2.SubmitTasksRequest(), timeout=10)
        assert batch.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = stub.GetClusterStatus(task_service_pb2.GetClusterStatusRequest(), timeout=10)
        assert status.submitted_total == 0


OUT_OF_BOUNDS = [
    (task_pb2.TaskOptions(retries=1001), "retries"),
    (task_pb2.TaskOptions(timeout_s=float("nan")), "timeout"),
    (task_pb2.TaskOptions(timeout_s=8 * 24 * 3600.0), "timeout"),
    (task_pb2.TaskOptions(cpus=70_000), "cpus"),
    (task_pb2.TaskOptions(resources={"gpu": -1}), "gpu"),
    (task_pb2.TaskOptions(resources={"bad name": 1}), "resource name"),
    (task_pb2.TaskOptions(labels={"zone": "x" * 64}), "63 bytes"),
    (task_pb2.TaskOptions(priority=-40_000), "priority"),
]


def test_options_out_of_bounds_are_invalid_argument_on_every_submit_path(
    start_cell: StartCell,
) -> None:
    """The PLM checks options with the client's own bounds (heapd.options), on SubmitTask,
    SubmitTasks (naming the bad index) and SubmitStream (an error in the answer)."""
    cell = start_cell(workers=0)
    spec = task_pb2.TaskSpec(builtin=task_pb2.BuiltinCall(name="sleep"))
    good = task_service_pb2.TaskSubmission(spec=spec)
    with authed_channel(cell.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        for options, message in OUT_OF_BOUNDS:
            with pytest.raises(grpc.RpcError) as one:
                stub.SubmitTask(
                    task_service_pb2.SubmitTaskRequest(spec=spec, options=options), timeout=10
                )
            assert one.value.code() == grpc.StatusCode.INVALID_ARGUMENT, options
            assert message in one.value.details()
            bad = task_service_pb2.TaskSubmission(spec=spec, options=options)
            batch_request = task_service_pb2.SubmitTasksRequest(tasks=[good, bad])
            with pytest.raises(grpc.RpcError) as batch:
                stub.SubmitTasks(batch_request, timeout=10)
            assert batch.value.code() == grpc.StatusCode.INVALID_ARGUMENT, options
            assert "tasks[1]" in batch.value.details()
            assert message in batch.value.details()
            (answer,) = stub.SubmitStream(iter([batch_request]), timeout=10)
            assert answer.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0], options
            assert message in answer.error_message
        status = stub.GetClusterStatus(task_service_pb2.GetClusterStatusRequest(), timeout=10)
        assert status.submitted_total == 0


def test_malformed_queries_and_worker_requests_are_invalid_argument(
    start_cell: StartCell,
) -> None:
    """ListTasks (unknown state, limit too high), WatchTasks without a session, and a worker's
    malformed RegisterWorker or Heartbeat are refused as INVALID_ARGUMENT, not as INTERNAL."""
    cell = start_cell(workers=0)
    with authed_channel(cell.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        for request, message in [
            (task_service_pb2.ListTasksRequest(states=[99]), "unknown task state"),
            (task_service_pb2.ListTasksRequest(limit=100_001), "limit"),
        ]:
            with pytest.raises(grpc.RpcError) as listed:
                stub.ListTasks(request, timeout=10)
            assert listed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in listed.value.details()
        with pytest.raises(grpc.RpcError) as watched:
            list(stub.WatchTasks(task_service_pb2.WatchTasksRequest(), timeout=10))
        assert watched.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "session" in watched.value.details()
    with authed_channel(cell.register) as channel:
        register = register_service_pb2_grpc.RegisterServiceStub(channel)
        for join, message in [
            (register_service_pb2.RegisterWorkerRequest(address="nowhere", slots=1), "HOST:PORT"),
            (register_service_pb2.RegisterWorkerRequest(address="127.0.0.1:1", slots=0), "slots"),
            (
                register_service_pb2.RegisterWorkerRequest(address="h" * 200 + ":1", slots=1),
                "bytes",
            ),
            (
                register_service_pb2.RegisterWorkerRequest(
                    address="127.0.0.1:1", slots=1, hostname="h" * 100
                ),
                "hostname",
            ),
            (
                register_service_pb2.RegisterWorkerRequest(address="127.0.0.1:1", slots=1, pid=-1),
                "pid",
            ),
        ]:
            with pytest.raises(grpc.RpcError) as joined:
                register.RegisterWorker(join, timeout=10)
            assert joined.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in joined.value.details()
        completion = register_service_pb2.TaskCompletion(
            task_id=1, attempt=1, state=task_pb2.QUEUED
        )
        beat = register_service_pb2.HeartbeatRequest(worker_id=1, epoch=1, completions=[completion])
        with pytest.raises(grpc.RpcError) as beaten:  # a stranger is refused before parsing
            list(register.Heartbeat(iter([beat]), timeout=10))
        assert beaten.value.code() == grpc.StatusCode.PERMISSION_DENIED
        joined_ok = register.RegisterWorker(
            register_service_pb2.RegisterWorkerRequest(address="127.0.0.1:1", slots=1), timeout=10
        )
        beat = register_service_pb2.HeartbeatRequest(
            worker_id=joined_ok.worker_id,
            epoch=joined_ok.epoch,
            secret=joined_ok.secret,
            completions=[completion],
        )
        with pytest.raises(grpc.RpcError) as beaten:  # the worker itself, malformed: refused
            list(register.Heartbeat(iter([beat]), timeout=10))
        assert beaten.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "SUCCEEDED/FAILED" in beaten.value.details()
        leave = register_service_pb2.DeregisterRequest(
            worker_id=joined_ok.worker_id, epoch=joined_ok.epoch, secret=joined_ok.secret
        )
        register.Deregister(leave, timeout=10)
