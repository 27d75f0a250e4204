"""The futures a submission returns: one per task, knowing its task id.

`TaskFuture` (from `Client`) is a `concurrent.futures.Future`: it works with
`concurrent.futures.wait` / `as_completed`, and `cancel()` also cancels the task in the cell (a
running task's process is killed). `AsyncTaskFuture` (from `AsyncClient`) is its asyncio twin:
`cancel()` cancels it at once and asks the cell to cancel the task in the background.
"""

from __future__ import annotations

import asyncio
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


class AsyncTaskFuture(asyncio.Future[Any]):
    """An asyncio future for one task; cancelling it also cancels the task in the cell."""

    def __init__(self, task_id: int, canceller: Callable[[int], None]) -> None:
        super().__init__()
        self.task_id = task_id
        self._canceller = canceller

    def cancel(self, msg: Any = None) -> bool:
        """Cancel locally at once, and ask the cell to cancel the task (in the background)."""
        if self.done():
            return False
        self._canceller(self.task_id)
        return super().cancel(msg)

    def settle_cancelled(self) -> bool:
        """Mark cancelled locally (the cell already says CANCELLED)."""
        return super().cancel()

    def set_exception(self, exception: type | BaseException, /) -> None:
        """As asyncio.Future's, except that a task's StopIteration arrives as a RuntimeError
        (asyncio refuses to store one), as it does for a coroutine's."""
        if isinstance(exception, StopIteration):
            error = RuntimeError(f"the task raised StopIteration: {exception}")
            error.__cause__ = exception
            exception = error
        super().set_exception(exception)

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled() else "finished" if self.done() else "pending"
        return f"<AsyncTaskFuture task_id={self.task_id} {state}>"
