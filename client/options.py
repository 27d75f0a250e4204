"""A task's options and their bounds, stated once.

The client validates options here before anything is sent, and the PLM validates what arrives
with the same function, so a bound has one value and one message everywhere. Every violation is
an `InvalidArgument` (INVALID_ARGUMENT on the wire).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from heapd.errors import InvalidArgument

PRIORITY_MIN, PRIORITY_MAX = -32768, 32767
PRIORITY_NAMES = {"high": 100, "medium": 0, "low": -100}
RETRIES_MAX = 1000
TIMEOUT_MAX_S = 7 * 24 * 3600.0
CPUS_MIN, CPUS_MAX = 1, 4096
# Resources and labels (the cell checks the same bounds again: shm.catalog, shm.layout).
RESOURCES_PER_TASK = 8  # resource needs of one task
LABELS_PER_TASK = 8
RESOURCES_PER_WORKER = 16  # resources one worker offers (also: distinct names per cell)
LABELS_PER_WORKER = 16
RESOURCE_NAME_MAX = 31  # characters of [A-Za-z0-9_.-]
RESOURCE_AMOUNT_MAX = 1_000_000.0  # per need or offer; kept to thousandths (gpu=0.5)
LABEL_PART_MAX = 63  # utf-8 bytes of a label key, and of its value
CPUS = "cpus"  # the `cpus=` option is this resource
_RESOURCE_NAME = re.compile(rf"[A-Za-z0-9_.-]{{1,{RESOURCE_NAME_MAX}}}")
RETRY_ON_MAX = 64
KEY_MAX_CHARS = 256  # an idempotency key
DEPENDENCIES_MAX = 1000  # tasks one task waits on: after= and the futures among its arguments
# Task ids are uint64 on the wire, but no task has one past 2**63 - 1 (the journal keys them as
# SQLite's signed 64-bit integers); 0 is no task.
TASK_ID_MAX = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Per-task settings; build them with `task_options`, which checks every bound."""

    priority: int = 0
    retries: int = 0
    timeout_s: float = 0.0  # 0 = no timeout
    resources: dict[str, float] = field(default_factory=dict)  # needs held while it runs
    labels: dict[str, str] = field(default_factory=dict)  # the worker must carry them all


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
    cpus: int | None = None,
    resources: Mapping[str, float] | None = None,
    labels: Mapping[str, str] | None = None,
) -> TaskOptions:
    """Checked options; `timeout_s` None or 0 means no timeout; `cpus=N` is the need
    {"cpus": N} (None or 0: no need, the task is bounded by worker slots only). Raises
    InvalidArgument."""
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
    if not resources and not labels and not cpus:  # the common case, on the per-task path
        return TaskOptions(priority=level, retries=retries, timeout_s=float(timeout))
    needs = resource_amounts(resources, RESOURCES_PER_TASK, "a task")
    if cpus is not None and cpus != 0:
        if not _is_int(cpus) or not CPUS_MIN <= cpus <= CPUS_MAX:
            raise InvalidArgument(
                f"cpus must be an integer in {CPUS_MIN}..{CPUS_MAX} (or None), not {cpus!r}"
            )
        if CPUS in needs and needs[CPUS] != cpus:
            raise InvalidArgument(f"cpus={cpus} and resources cpus={needs[CPUS]:g} disagree")
        needs = {CPUS: float(cpus), **needs}
        if len(needs) > RESOURCES_PER_TASK:
            raise InvalidArgument(f"a task asks at most {RESOURCES_PER_TASK} resources, cpus too")
    return TaskOptions(
        priority=level,
        retries=retries,
        timeout_s=float(timeout),
        resources={name: amount for name, amount in needs.items() if amount},
        labels=label_pairs(labels, LABELS_PER_TASK, "a task"),
    )


def resource_amounts(
    resources: Mapping[str, float] | None, limit: int = RESOURCES_PER_WORKER, who: str = "a worker"
) -> dict[str, float]:
    """Checked {name: amount}: names of 1..31 characters of A-Z a-z 0-9 _ . -, amounts finite
    in 0..RESOURCE_AMOUNT_MAX, at most `limit` of them. Raises InvalidArgument."""
    if resources is None:
        return {}
    if not isinstance(resources, Mapping):
        raise InvalidArgument(f"resources must be a dict of name to amount, not {resources!r}")
    if len(resources) > limit:
        raise InvalidArgument(f"{who} asks at most {limit} resources, not {len(resources)}")
    out = {}
    for name, amount in resources.items():
        if not isinstance(name, str) or not _RESOURCE_NAME.fullmatch(name):
            raise InvalidArgument(
                f"resource name {name!r} must be 1..{RESOURCE_NAME_MAX} characters of "
                f"A-Z a-z 0-9 _ . -"
            )
        if not isinstance(amount, int | float) or isinstance(amount, bool):
            raise InvalidArgument(f"resource {name}: amount must be a number, not {amount!r}")
        if not math.isfinite(amount) or not 0 <= amount <= RESOURCE_AMOUNT_MAX:
            raise InvalidArgument(
                f"resource {name}: amount must be finite and in "
                f"0..{RESOURCE_AMOUNT_MAX:.0f}, not {amount!r}"
            )
        out[name] = float(amount)
    return out


def label_pairs(
    labels: Mapping[str, str] | None, limit: int = LABELS_PER_WORKER, who: str = "a worker"
) -> dict[str, str]:
    """Checked {key: value}: each a non-empty str of at most LABEL_PART_MAX utf-8 bytes, no "="
    in a key, at most `limit` of them. Raises InvalidArgument."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise InvalidArgument(f"labels must be a dict of key to value, not {labels!r}")
    if len(labels) > limit:
        raise InvalidArgument(f"{who} carries at most {limit} labels, not {len(labels)}")
    for key, value in labels.items():
        for part, what in ((key, "key"), (value, "value")):
            if not isinstance(part, str) or not 1 <= len(part.encode()) <= LABEL_PART_MAX:
                raise InvalidArgument(
                    f"label {what} {part!r} must be a non-empty str of at most "
                    f"{LABEL_PART_MAX} bytes of utf-8"
                )
        if "=" in key:
            raise InvalidArgument(f"label key {key!r} must not contain '='")
    return dict(labels)


def pairs_from_text(text: str, what: str) -> dict[str, str]:
    """ "a=1,b=2" (as given on a command line) as {"a": "1", "b": "2"}; "" = {}."""
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(f"{what}: {item!r} is not name=value (e.g. gpu=1,zone=a)")
        out[key.strip()] = value.strip()
    return out


def resources_from_text(text: str) -> dict[str, float]:
    """ "cpus=4,gpu=0.5" as {"cpus": 4.0, "gpu": 0.5} (names and amounts checked later)."""
    out = {}
    for name, amount in pairs_from_text(text, "resources").items():
        try:
            out[name] = float(amount)
        except ValueError:
            raise InvalidArgument(f"resources: {name}={amount!r} is not a number") from None
    return out


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


def dependency_ids(after: Iterable[int]) -> list[int]:
    """Checked ids of the tasks a task waits on, in order, duplicates dropped: integers in
    1..TASK_ID_MAX, at most DEPENDENCIES_MAX of them. That they exist (and were submitted
    before) is the cell's to check. Raises InvalidArgument."""
    ids: dict[int, None] = {}
    for task_id in after:
        if not _is_int(task_id) or not 1 <= task_id <= TASK_ID_MAX:
            raise InvalidArgument(f"a dependency is a task id (an integer >= 1), not {task_id!r}")
        ids[task_id] = None
    if len(ids) > DEPENDENCIES_MAX:
        raise InvalidArgument(
            f"a task waits on at most {DEPENDENCIES_MAX} dependencies (after= and the futures"
            f" among its arguments), not {len(ids)}"
        )
    return list(ids)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
