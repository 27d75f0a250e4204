"""What one submit request asks of the PLM, as plain values (built by `heapd.plm.convert`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from heapd import shm


@dataclass(frozen=True, slots=True)
class Intake:
    """New tasks (with their idempotency keys, "" = none), results the session acknowledges,
    and earlier tasks whose results the session wants delivered (adopted by id)."""

    session: str
    tasks: list[shm.NewTask] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # one per task; empty: no task has a key
    acks: list[int] = field(default_factory=list)
    adopt: list[int] = field(default_factory=list)

    def traced(self, ids: list[int]) -> list[int]:
        """Of `ids` (one per task), those of tasks submitted with `trace`."""
        return [task_id for task, task_id in zip(self.tasks, ids, strict=True) if task.traced]

    def key_of(self, index: int) -> str:
        """The idempotency key of task `index` ("" = none)."""
        return self.keys[index] if self.keys else ""
