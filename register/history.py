"""Why earlier attempts failed, so that a task failing for good reports every attempt's reason.

The register sees each failed attempt go by. It remembers the failures of retryable attempts
per task (bounded, least recently used first out) and, when a later attempt of the same task
fails too, attaches them to that outcome; a success forgets them. Held in memory: a register
restart forgets the history, never a result.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace

from heapd import shm
from heapd.register.outcomes import OutcomeCodec

MAX_TASKS = 100_000
MAX_PER_TASK = 20


class AttemptHistory:
    """Failures of earlier attempts by task id."""

    def __init__(self, outcomes: OutcomeCodec, max_tasks: int = MAX_TASKS) -> None:
        self._outcomes = outcomes
        self._max = max_tasks
        self._failures: OrderedDict[int, list[bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def annotate(self, completions: Sequence[shm.Completion]) -> Sequence[shm.Completion]:
        """Attach earlier failures to failed completions; remember retryable failures.

        On the per-task path: successes cost nothing unless some task has a history.
        """
        changed: list[shm.Completion] | None = None
        for index, done in enumerate(completions):
            if done.state != shm.TaskState.FAILED:
                if self._failures:
                    self._failures.pop(done.task_id, None)
                continue
            earlier = self._failures.pop(done.task_id, [])
            result, own = self._outcomes.with_earlier_failures(done.result, earlier)
            if result is not done.result:
                changed = list(completions) if changed is None else changed
                changed[index] = replace(done, result=result)
            if done.retryable and own:
                self._remember(done.task_id, [*earlier, own])
        return completions if changed is None else changed

    def _remember(self, task_id: int, failures: list[bytes]) -> None:
        self._failures[task_id] = failures[-MAX_PER_TASK:]
        while len(self._failures) > self._max:
            self._failures.popitem(last=False)
