"""Request building shared by `Client` and `AsyncClient` (no IO here).

Both clients turn the same arguments into the same protos through these functions, so the sync
client only adds blocking calls and the async one awaits.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from heapd import convert


@dataclass(frozen=True, slots=True)
class Options:
    """Per-task settings, validated on the client before anything is sent."""

    priority: int = 0
    retries: int = 0
    timeout: float | None = None
    retry_on: tuple[type[BaseException] | str, ...] = ()
    cpus: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.priority, str):
            object.__setattr__(self, "priority", priority_from_name(self.priority))
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"timeout must be positive seconds or None, not {self.timeout}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, not {self.retries}")


PRIORITY_NAMES = {"high": 100, "medium": 0, "low": -100}


def priority_from_name(value: str | int) -> int:
    """An integer priority from an int or one of high/medium/low."""
    if isinstance(value, int):
        return value
    try:
        return PRIORITY_NAMES[value.lower()]
    except KeyError:
        if value.lstrip("-").isdigit():
            return int(value)
        raise ValueError(
            f"priority {value!r} is not an integer or one of {sorted(PRIORITY_NAMES)}"
        ) from None


def new_session() -> str:
    """A unique session name: results of this client's tasks are streamed to it."""
    return uuid.uuid4().hex


def python_submission(
    fn: Callable[..., Any] | str, args: Sequence[Any], kwargs: Mapping[str, Any], options: Options
) -> Any:
    """One Python call task as a TaskSubmission proto."""
    spec = convert.python_spec(fn, tuple(args), dict(kwargs), _retry_names(options.retry_on))
    return convert.submission(spec, _proto_options(options))


def command_submission(
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    cwd: str | None,
    stdin: bytes | str | None,
    options: Options,
) -> Any:
    """One command task as a TaskSubmission proto."""
    if isinstance(stdin, str):
        stdin = stdin.encode()
    spec = convert.command_spec(list(argv), dict(env or {}), cwd or "", stdin or b"")
    return convert.submission(spec, _proto_options(options))


def builtin_submission(name: str, params: Mapping[str, float], options: Options) -> Any:
    """One builtin task (sleep, cpu) as a TaskSubmission proto."""
    return convert.submission(convert.builtin_spec(name, dict(params)), _proto_options(options))


def map_submissions(
    fn: Callable[..., Any] | str, items: Iterable[Any], options: Options
) -> list[Any]:
    """One submission per item: fn(item) (the function is resolved to a reference once)."""
    if not isinstance(fn, str):
        fn = convert.callable_ref(fn) or fn
    return [python_submission(fn, (item,), {}, options) for item in items]


def batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Consecutive slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _proto_options(options: Options) -> Any:
    return convert.options(options.priority, options.retries, options.timeout or 0.0, options.cpus)


def _retry_names(retry_on: Iterable[type[BaseException] | str]) -> list[str]:
    names = []
    for item in retry_on:
        names.append(item if isinstance(item, str) else f"{item.__module__}.{item.__qualname__}")
    return names
