"""Task dependencies on the client and in the task's process: futures as arguments, `after=`.

A heapd future passed as an argument (top level, or inside lists, tuples and dict values) is
sent as a `DependencyRef` placeholder, and its task id joins the task's dependencies (`after`):
the cell runs the task only once they all succeeded, and the worker unpickles the arguments
inside `resolving({id: value, ...})`, so each placeholder becomes its dependency's value (as
Dask and Ray do). Outside `resolving` a placeholder unpickles as itself.

A future that is already done when the task is submitted is not waited on: a value is put in
place directly, and a failure or cancellation raises `DependencyFailed` at once, naming it. (A
future failed locally with `ClientClosed` says nothing of its task, which may still run: it is
waited on by id like a pending one.)

This module is imported where arguments are unpickled (the worker's task processes): it
imports nothing heavy (no gRPC) at module level.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from heapd.futures import AsyncTaskFuture, TaskFuture

if TYPE_CHECKING:
    from heapd.errors import DependencyFailed

# The values placeholders resolve to while a task's arguments are unpickled (None: none).
_VALUES: contextvars.ContextVar[Mapping[int, object] | None] = contextvars.ContextVar(
    "heapd_dependency_values", default=None
)


@dataclass(frozen=True, slots=True)
class DependencyRef:
    """Stands for the value of task `task_id` in a task's pickled arguments."""

    task_id: int

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        """Unpickles through `_resolve`: the dependency's value inside `resolving`."""
        return (_resolve, (self.task_id,))


def _resolve(task_id: int) -> object:
    """The value registered for `task_id` by `resolving`; the placeholder itself when none is
    (arguments unpickled anywhere but in a task's process)."""
    values = _VALUES.get()
    if values is not None and task_id in values:
        return values[task_id]
    return DependencyRef(task_id)


@contextlib.contextmanager
def resolving(values: Mapping[int, object]) -> Iterator[None]:
    """Within this block, unpickled `DependencyRef`s become `values[task_id]`."""
    token = _VALUES.set(values)
    try:
        yield
    finally:
        _VALUES.reset(token)


# -- on the client: futures in arguments, after= ------------------------------------------------

AnyFuture = TaskFuture | AsyncTaskFuture  # what `extract` and `after_ids` look for


def extract(
    args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], list[int]]:
    """(args, kwargs, dependency ids): every heapd future in the arguments (top level, and inside
    lists, tuples, namedtuples and dict values, however nested) replaced by a `DependencyRef`,
    and the ids of those futures' tasks in first-seen order, without duplicates.

    A future already done is no dependency: if it succeeded its value is put in place; if it
    failed or was cancelled, `DependencyFailed` is raised (the task would fail anyway).
    Containers without futures are kept as they are (same objects); namedtuples keep their
    type. Other containers (sets, dict keys, subclasses of list/dict, objects' attributes) are
    not searched."""
    if not kwargs and len(args) == 1 and type(args[0]) in _PLAIN:  # map over plain values
        return args, {}, []
    walk = _Walk()
    new_args = walk.items(args)
    new_kwargs = {name: walk.value(value) for name, value in kwargs.items()}
    return new_args, new_kwargs, list(walk.ids)


def after_ids(after: Iterable[AnyFuture | int] | None) -> list[int]:
    """The task ids of `after=` (futures and ids, mixed), in order, without duplicates; a future
    already done is dropped if it succeeded, and raises `DependencyFailed` if not. Ids are
    passed as given: `heapd.options.dependency_ids` checks them, the cell that they exist."""
    if after is None:
        return []
    if isinstance(after, str | bytes | Mapping) or not isinstance(after, Iterable):
        raise _invalid(f"after= takes a list of futures or task ids, not {after!r}")
    ids: dict[int, None] = {}
    for item in after:
        if isinstance(item, AnyFuture):
            if _depends_on(item):
                ids[item.task_id] = None
        elif isinstance(item, int) and not isinstance(item, bool):
            ids[item] = None
        else:
            raise _invalid(f"after= takes futures or task ids, not {item!r}")
    return list(ids)


class _Walk:
    """One walk over a task's arguments, collecting the ids of the futures it replaced."""

    def __init__(self) -> None:
        self.ids: dict[int, None] = {}  # an ordered set
        self.replaced = 0  # futures replaced so far: a container whose count moved is rebuilt
        self._open: set[int] = set()  # lists and dicts being walked (a cycle stops here)

    def value(self, obj: Any) -> Any:
        kind = type(obj)
        if kind in _PLAIN:  # the common case first: a walk costs per item, unlike pickle
            return obj
        if kind is tuple:
            return self.items(obj)
        if kind is list or kind is dict:
            return self._mutable(obj)
        if isinstance(obj, AnyFuture):
            self.replaced += 1
            if not _depends_on(obj):
                return obj.result()
            self.ids[obj.task_id] = None
            return DependencyRef(obj.task_id)
        if _is_namedtuple(kind):
            before = self.replaced
            new = [self.value(item) for item in obj]
            return obj if self.replaced == before else kind._make(new)
        return obj

    def items(self, seq: tuple[Any, ...]) -> tuple[Any, ...]:
        """A plain tuple walked: the same tuple when it holds no future."""
        before = self.replaced
        new = tuple([self.value(item) for item in seq])
        return seq if self.replaced == before else new

    def _mutable(self, obj: list[Any] | dict[Any, Any]) -> Any:
        """A list, or a dict's values, walked: the same object when it holds no future."""
        if id(obj) in self._open:  # it holds itself: pickle keeps the cycle as it is
            return obj
        self._open.add(id(obj))
        before = self.replaced
        try:
            if type(obj) is dict:
                new_values = [self.value(v) for v in obj.values()]
                if self.replaced == before:
                    return obj
                return dict(zip(obj.keys(), new_values, strict=True))
            new = [self.value(item) for item in obj]
            return obj if self.replaced == before else new
        finally:
            self._open.discard(id(obj))


def _depends_on(future: AnyFuture) -> bool:
    """Whether a task must wait for this future's task: True while it is pending (or only its
    client closed); False when it succeeded; DependencyFailed when it failed or was cancelled."""
    from heapd.errors import ClientClosed  # heapd.errors imports grpc: only on the client

    if not future.done():
        return True
    if future.cancelled():
        raise _failed(future.task_id, f"dependency {future.task_id} was cancelled", None)
    error = future.exception()
    if error is None:
        return False
    if isinstance(error, ClientClosed):  # only the future gave up: the task may still run
        return True
    text = f"dependency {future.task_id} failed: {type(error).__name__}: {error}"
    raise _failed(future.task_id, text, error)


def _failed(task_id: int, text: str, cause: BaseException | None) -> DependencyFailed:
    from heapd.errors import DependencyFailed

    error = DependencyFailed(text, dependency_id=task_id)
    error.__cause__ = cause
    return error


def _invalid(text: str) -> Exception:
    from heapd.errors import InvalidArgument

    return InvalidArgument(text)


_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})


def _is_namedtuple(kind: type) -> bool:
    return issubclass(kind, tuple) and hasattr(kind, "_make") and hasattr(kind, "_fields")
