"""A task's options and their bounds, stated once.

The client validates options here before anything is sent, and the PLM validates what arrives
with the same function, so a bound has one value and one message everywhere. Every violation is
an `InvalidArgument` (INVALID_ARGUMENT on the wire).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from heapd.errors import InvalidArgument

PRIORITY_MIN, PRIORITY_MAX = -32768, 32767
PRIORITY_NAMES = {"high": 100, "medium": 0, "low": -100}
RETRIES_MAX = 1000
TIMEOUT_MAX_S = 7 * 24 * 3600.0
CPUS_MIN, CPUS_MAX = 1, 4096
RETRY_ON_MAX = 64
KEY_MAX_CHARS = 256  # an idempotency key


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Per-task settings; build them with `task_options`, which checks every bound."""

    priority: int = 0
    retries: int = 0
    timeout_s: float = 0.0  # 0 = no timeout
    cpus: int = 1


def priority_from_name(value: str | int) -> int:
    """An integer priority from an int, a decimal string or one of high/medium/low."""
    if isinstance(value, bool):
        raise InvalidArgument(f"priority must be an integer or a name, not {value!r}")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise InvalidArgument(f"priority must be an integer or a name, not {value!r}")
    named = PRIORITY_NAMES.get(value.strip().lower())
    if named is not None:
        return named
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(
            f"priority {value!r} is not an integer or one of {sorted(PRIORITY_NAMES)}"
        ) from None


def task_options(
    priority: int | str = 0,
    retries: int = 0,
    timeout_s: float | None = None,
    cpus: int = 1,
) -> TaskOptions:
    """Checked options; `timeout_s` None or 0 means no timeout. Raises InvalidArgument."""
    level = priority_from_name(priority)
    if not PRIORITY_MIN <= level <= PRIORITY_MAX:
        raise InvalidArgument(f"priority must be in {PRIORITY_MIN}..{PRIORITY_MAX}, not {level}")
    if not _is_int(retries) or not 0 <= retries <= RETRIES_MAX:
        raise InvalidArgument(f"retries must be an integer in 0..{RETRIES_MAX}, not {retries!r}")
    timeout = 0.0 if timeout_s is None else timeout_s
    if not isinstance(timeout, int | float) or isinstance(timeout, bool):
        raise InvalidArgument(f"timeout must be a number of seconds, not {timeout_s!r}")
    if not math.isfinite(timeout) or not 0 <= timeout <= TIMEOUT_MAX_S:
        raise InvalidArgument(
            f"timeout must be finite and in 0..{TIMEOUT_MAX_S:.0f} seconds (0 = none),"
            f" not {timeout_s!r}"
        )
    if not _is_int(cpus) or not CPUS_MIN <= cpus <= CPUS_MAX:
        raise InvalidArgument(f"cpus must be an integer in {CPUS_MIN}..{CPUS_MAX}, not {cpus!r}")
    return TaskOptions(priority=level, retries=retries, timeout_s=float(timeout), cpus=cpus)


def retry_on_names(retry_on: Iterable[type[BaseException] | str]) -> list[str]:
    """`retry_on` as exception names: classes become "module.Qualname", strings stay as given.
    Raises InvalidArgument for anything else, or more than RETRY_ON_MAX entries."""
    if isinstance(retry_on, str | bytes) or not isinstance(retry_on, Iterable):
        raise InvalidArgument(
            f"retry_on takes a list of exception classes or names, not {retry_on!r}"
        )
    names = []
    for item in retry_on:
        if isinstance(item, str) and item:
            names.append(item)
        elif isinstance(item, type) and issubclass(item, BaseException):
            names.append(f"{item.__module__}.{item.__qualname__}")
        else:
            raise InvalidArgument(f"retry_on takes exception classes or names, not {item!r}")
    if len(names) > RETRY_ON_MAX:
        raise InvalidArgument(f"retry_on lists at most {RETRY_ON_MAX} exceptions, not {len(names)}")
    return names


def idempotency_key(key: str | None) -> str:
    """A checked idempotency key ("" = none): a str of at most KEY_MAX_CHARS characters."""
    if key is None:
        return ""
    if not isinstance(key, str):
        raise InvalidArgument(f"an idempotency key must be a str, not {key!r}")
    if len(key) > KEY_MAX_CHARS:
        raise InvalidArgument(
            f"an idempotency key has at most {KEY_MAX_CHARS} characters, not {len(key)}"
        )
    return key


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
