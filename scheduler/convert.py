"""The scheduler's gRPC boundary: the only module of `scheduler` that imports `protos`."""

from __future__ import annotations

from collections.abc import Sequence

from heapd import shm
from heapd.v1 import worker_service_pb2


def assign_request(dispatches: Sequence[shm.Dispatch]) -> worker_service_pb2.AssignTasksRequest:
    """One AssignTasks call for tasks that all go to the same worker (same id and epoch)."""
    first = dispatches[0]
    return worker_service_pb2.AssignTasksRequest(
        worker_id=first.worker_id,
        epoch=first.worker_epoch,
        tasks=[
            worker_service_pb2.Assignment(
                task_id=d.task_id,
                attempt=d.attempt,
                spec=d.payload,
                timeout_s=d.timeout_ms / 1000.0,
            )
            for d in dispatches
        ],
    )
