"""Lifelines: the background work a role cannot live without, and how its death ends the role.

A role's main loops (the scheduler's dispatch loop, the PLM's finished-task drain) run as asyncio
tasks beside the gRPC server. If one of them raised, the task would end quietly while the
process stayed up and healthy-looking: dispatch stopped, nothing restarted it. A task `watch`ed
here that ends with an exception — or returns, when it should run forever — is logged with its
traceback, recorded, and `on_failure` (the role's `shutdown`) is called; the role then stops as
usual and its `async with` exit raises `RoleFailed`, which the entry point turns into exit code
`EXIT_FAILED`, so the supervisor restarts it.

A task that is cancelled ended on purpose (its owner closing): never a failure. Loop callbacks
(timers, readers) are lifelines too when `guard`ed: an exception they raise would otherwise only
be logged by the loop while the timer it should have re-armed never fires again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, ParamSpec

log = logging.getLogger(__name__)

EXIT_FAILED = 1  # a lifeline died: the role exits with this code, and is restarted

P = ParamSpec("P")


class RoleFailed(Exception):
    """A lifeline of the role died; the role stopped and must exit non-zero."""


class Lifelines:
    """The lifelines of one role; the first to die calls `on_failure` (each death is logged)."""

    def __init__(self, role: str, on_failure: Callable[[], object]) -> None:
        self._role = role
        self._on_failure = on_failure
        self._failure: RoleFailed | None = None

    @property
    def failure(self) -> RoleFailed | None:
        """Why the role must exit non-zero (the first lifeline that died), None while all live."""
        return self._failure

    def watch(self, task: asyncio.Task[Any], *, may_return: bool = False) -> asyncio.Task[Any]:
        """Make `task` a lifeline: it dies if it raises, or if it returns unless `may_return`
        (a one-shot task that must not fail). Returns `task`."""
        task.add_done_callback(functools.partial(self._ended, may_return=may_return))
        return task

    def guard(self, callback: Callable[P, None], name: str) -> Callable[P, None]:
        """`callback` for the loop (`call_later`, `add_reader`): an exception it raises is a
        death of the lifeline `name` instead of a line in the loop's log."""

        @functools.wraps(callback)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
            try:
                callback(*args, **kwargs)
            except Exception as exc:
                self.died(name, exc)

        return guarded

    def died(self, name: str, exc: BaseException | None) -> None:
        """Record that lifeline `name` died (of `exc`, or by returning) and stop the role."""
        why = "returned" if exc is None else f"failed: {type(exc).__name__}: {exc}"
        log.error(
            "%s %s; the %s stops so that it is restarted",
            name,
            why,
            self._role,
            exc_info=exc,
            extra={"fields": {"lifeline": name, "role": self._role}},
        )
        if self._failure is None:
            self._failure = RoleFailed(f"{self._role}: {name} {why}")
            self._failure.__cause__ = exc
            self._on_failure()

    def raise_if_failed(self) -> None:
        """Raise `RoleFailed` if a lifeline died."""
        if self._failure is not None:
            raise self._failure

    def _ended(self, task: asyncio.Task[Any], *, may_return: bool) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None or not may_return:
            self.died(task.get_name(), exc)
