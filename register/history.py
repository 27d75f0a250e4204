"""Why earlier attempts failed, so that a task failing for good reports every attempt's reason.

The register sees each failed attempt go by. It remembers the failures of retryable attempts
per task (bounded, least recently used first out) and, when a later attempt of the same task
fails too, attaches them to that outcome; a success forgets them. Held in memory: a register
restart forgets the history, never a result.

Fence first, then remember: `annotate` only reads the history (the outcomes it builds go to
`Cell.complete`), and `commit` applies the changes of the completions the cell accepted. A
stale or forged completion, fenced off by the cell, leaves the history as it was.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace

from heapd import shm
from heapd.register.outcomes import OutcomeCodec

MAX_TASKS = 100_000
MAX_PER_TASK = 20

# (index of the completion in its batch, task id, failures to remember; None = forget the task)
Change = tuple[int, int, list[bytes] | None]


class AttemptHistory:
    """Failures of earlier attempts by task id."""

    def __init__(self, outcomes: OutcomeCodec, max_tasks: int = MAX_TASKS) -> None:
        self._outcomes = outcomes
        self._max = max_tasks
        self._failures: OrderedDict[int, list[bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def annotate(
        self, completions: Sequence[shm.Completion]
    ) -> tuple[Sequence[shm.Completion], list[Change]]:
        """(The completions with earlier failures attached to failed ones, the history changes
        they make once accepted: see `commit`). Reads the history only.

        On the per-task path: successes cost nothing unless some task has a history.
        """
        changed: list[shm.Completion] | None = None
        changes: list[Change] = []
        for index, done in enumerate(completions):
            if done.state != shm.TaskState.FAILED:
                if self._failures and done.task_id in self._failures:
                    changes.append((index, done.task_id, None))
                continue
            earlier = self._failures.get(done.task_id, [])
            result, own = self._outcomes.with_earlier_failures(done.result, earlier)
            if result is not done.result:
                changed = list(completions) if changed is None else changed
                changed[index] = replace(done, result=result)
            remember = [*earlier, own] if done.retryable and own else None
            if remember is not None or earlier:
                changes.append((index, done.task_id, remember))
        return (completions if changed is None else changed), changes

    def commit(self, changes: list[Change], fenced: Sequence[int]) -> None:
        """Apply `annotate`'s changes, except those of the completions at indexes `fenced`
        (the ones `Cell.complete` refused as stale)."""
        skip = set(fenced)
        for index, task_id, failures in changes:
            if index in skip:
                continue
            if failures is None:
                self._failures.pop(task_id, None)
            else:
                self._remember(task_id, failures)

    def _remember(self, task_id: int, failures: list[bytes]) -> None:
        self._failures.pop(task_id, None)  # most recently used last
        self._failures[task_id] = failures[-MAX_PER_TASK:]
        while len(self._failures) > self._max:
            self._failures.popitem(last=False)
