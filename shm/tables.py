"""The task and worker tables: numpy record arrays for bulk work, per-field memoryviews
for single-record reads and writes (a memoryview element costs a fraction of a numpy
scalar). Field meanings are in `shm.layout`.
"""

from __future__ import annotations

from typing import Protocol, cast

import numpy as np
import numpy.typing as npt

from heapd.shm.errors import TaskNotFound, WorkerNotFound
from heapd.shm.layout import F_RESULT, SLOT_MASK, TASK_DTYPE, WORKER_DTYPE, WORKER_SLOT_MASK
from heapd.shm.types import TaskInfo, TaskState, WorkerInfo, WorkerState


class FloatField(Protocol):
    """A float64 field of a record array, element by element (a memoryview of it)."""

    def __getitem__(self, slot: int, /) -> float: ...
    def __setitem__(self, slot: int, value: float, /) -> None: ...
    def release(self) -> None: ...


def _field(rec: npt.NDArray[np.void], name: str) -> memoryview:
    return rec[name].data


def _float_field(rec: npt.NDArray[np.void], name: str) -> FloatField:
    return cast(FloatField, rec[name].data)


class TaskTable:
    """Task records (the truth about every task)."""

    __slots__ = (
        "_views",
        "attempt",
        "capacity",
        "deps_chunk",
        "deps_len",
        "dispatched_at",
        "finished_at",
        "flags",
        "id",
        "losses",
        "max_retries",
        "needs",
        "nlabels",
        "payload_chunk",
        "payload_len",
        "priority",
        "rec",
        "result_chunk",
        "result_len",
        "state",
        "submitted_at",
        "timeout_ms",
        "worker_epoch",
        "worker_id",
    )

    def __init__(self, root: memoryview, at: int, capacity: int) -> None:
        self.capacity = capacity
        self.rec = np.frombuffer(root[at : at + capacity * TASK_DTYPE.itemsize], dtype=TASK_DTYPE)
        rec = self.rec
        self.id = _field(rec, "id")
        self.worker_id = _field(rec, "worker_id")
        self.submitted_at = _float_field(rec, "submitted_at")
        self.dispatched_at = _float_field(rec, "dispatched_at")
        self.finished_at = _float_field(rec, "finished_at")
        self.payload_chunk = _field(rec, "payload_chunk")
        self.payload_len = _field(rec, "payload_len")
        self.result_chunk = _field(rec, "result_chunk")
        self.result_len = _field(rec, "result_len")
        self.attempt = _field(rec, "attempt")
        self.max_retries = _field(rec, "max_retries")
        self.timeout_ms = _field(rec, "timeout_ms")
        self.worker_epoch = _field(rec, "worker_epoch")
        self.priority = _field(rec, "priority")
        self.needs = _field(rec, "needs")
        self.nlabels = _field(rec, "nlabels")
        self.state = _field(rec, "state")
        self.flags = _field(rec, "flags")
        self.losses = _field(rec, "losses")
        self.deps_chunk = _field(rec, "deps_chunk")
        self.deps_len = _field(rec, "deps_len")
        # The needs and labels themselves are arrays per record: read through `rec`.
        self._views: list[FloatField | memoryview] = [
            getattr(self, name) for name in TASK_DTYPE.names or () if name in self.__slots__
        ]

    def release(self) -> None:
        """Drop the views so the segment can be unmapped."""
        for view in self._views:
            view.release()
        self._views = []
        del self.rec

    def slot_of(self, task_id: int) -> int:
        """The slot holding live task `task_id`, else TaskNotFound."""
        if not isinstance(task_id, int) or task_id <= 0:
            raise TaskNotFound(task_id)
        slot = task_id & SLOT_MASK
        if slot >= self.capacity or self.id[slot] != task_id or self.state[slot] == 0:
            raise TaskNotFound(task_id)
        return slot

    def info(self, slot: int) -> TaskInfo:
        """A plain copy of one record."""
        return TaskInfo(
            task_id=self.id[slot],
            state=TaskState(self.state[slot]),
            priority=self.priority[slot],
            attempt=self.attempt[slot],
            max_retries=self.max_retries[slot],
            timeout_ms=self.timeout_ms[slot],
            worker_id=self.worker_id[slot],
            worker_epoch=self.worker_epoch[slot],
            submitted_at=self.submitted_at[slot],
            dispatched_at=self.dispatched_at[slot],
            finished_at=self.finished_at[slot],
            has_result=bool(self.flags[slot] & F_RESULT),
        )


class WorkerTable:
    """Worker records (the truth about every worker)."""

    __slots__ = (
        "_views",
        "capacity",
        "deadline",
        "epoch",
        "id",
        "in_flight",
        "last_heartbeat",
        "last_pick",
        "nlabels",
        "pid",
        "rec",
        "registered_at",
        "slots",
        "state",
        "tasks_done",
    )

    def __init__(self, root: memoryview, at: int, capacity: int) -> None:
        self.capacity = capacity
        size = capacity * WORKER_DTYPE.itemsize
        self.rec = np.frombuffer(root[at : at + size], dtype=WORKER_DTYPE)
        rec = self.rec
        self.id = _field(rec, "id")
        self.registered_at = _float_field(rec, "registered_at")
        self.last_heartbeat = _float_field(rec, "last_heartbeat")
        self.deadline = _float_field(rec, "deadline")
        self.tasks_done = _field(rec, "tasks_done")
        self.last_pick = _field(rec, "last_pick")
        self.epoch = _field(rec, "epoch")
        self.pid = _field(rec, "pid")
        self.slots = _field(rec, "slots")
        self.in_flight = _field(rec, "in_flight")
        self.state = _field(rec, "state")
        self.nlabels = _field(rec, "nlabels")
        self._views: list[FloatField | memoryview] = [
            self.nlabels,
            self.id,
            self.registered_at,
            self.last_heartbeat,
            self.deadline,
            self.tasks_done,
            self.last_pick,
            self.epoch,
            self.pid,
            self.slots,
            self.in_flight,
            self.state,
        ]

    def release(self) -> None:
        """Drop the views so the segment can be unmapped."""
        for view in self._views:
            view.release()
        self._views = []
        del self.rec

    def slot_of(self, worker_id: int) -> int:
        """The slot of a registered (non-FREE) worker, else WorkerNotFound."""
        if not isinstance(worker_id, int) or worker_id <= 0:
            raise WorkerNotFound(worker_id)
        slot = worker_id & WORKER_SLOT_MASK
        if slot >= self.capacity or self.id[slot] != worker_id or self.state[slot] == 0:
            raise WorkerNotFound(worker_id)
        return slot

    def address(self, slot: int) -> str:
        return bytes(self.rec["address"][slot]).decode()

    def info(self, slot: int) -> WorkerInfo:
        """A plain copy of one record."""
        return WorkerInfo(
            worker_id=self.id[slot],
            epoch=self.epoch[slot],
            state=WorkerState(self.state[slot]),
            address=self.address(slot),
            hostname=bytes(self.rec["hostname"][slot]).decode(),
            pid=self.pid[slot],
            slots=self.slots[slot],
            in_flight=self.in_flight[slot],
            registered_at=self.registered_at[slot],
            last_heartbeat=self.last_heartbeat[slot],
            deadline=self.deadline[slot],
            tasks_done=self.tasks_done[slot],
        )
