"""Bad input gets a clear status and message; nothing crashes; the cell stays consistent
(the start_cell fixture runs the consistency check before tearing the cell down)."""

from __future__ import annotations

import grpc
import pytest

from heapd import Client, InvalidArgument, NotFound, ResourceExhausted
from heapd.errors import BadResult, BadTask
from heapd.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc
from tests import tasks_for_tests as t
from tests.conftest import StartCell


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
    with grpc.insecure_channel(cell.address) as channel:
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
