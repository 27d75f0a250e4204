"""The future a submission returns: a `concurrent.futures.Future` that knows its task id.

It works with `concurrent.futures.wait` / `as_completed`; `cancel()` also cancels the task in
the cell (a running task's process is killed).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any


class TaskFuture(concurrent.futures.Future[Any]):
    """The eventual result of one heapd task."""

    def __init__(self, task_id: int, canceller: Callable[[int], bool]) -> None:
        super().__init__()
        self.task_id = task_id
        self._canceller = canceller

    def cancel(self) -> bool:
        """Cancel the task in the cell; True if it was cancelled before it settled."""
        if self.done():
            return self.cancelled()
        if not self._canceller(self.task_id):
            return False
        return self.settle_cancelled()

    def settle_cancelled(self) -> bool:
        """Mark cancelled locally (the cell already says CANCELLED)."""
        return super().cancel()

    def __repr__(self) -> str:
        return f"<TaskFuture task_id={self.task_id} {self._state.lower()}>"
