"""Run one task spec in the current process and say what it settled to.

This is what a pool child does for each job (`heapd.worker.child` decodes the spec and encodes
the result); it never raises. The verdict is (succeeded, retryable, result):

- Python call: the pickled return value. The task raising → FAILED EXCEPTION, retryable when the
  spec's retry_on is empty or names a class in the exception's MRO. A result that can't be
  pickled → FAILED BAD_RESULT (never a lost task; not retryable: it would fail again).
- Command: SUCCEEDED with its CommandResult even when the exit code is non-zero — the command
  ran, and its exit code is the user's to read (as with subprocess.run(check=False)). Only a
  command that could not be started (no such program, bad cwd) fails, as EXCEPTION.
- Builtin: its return value, like a Python call.
- A spec that cannot be loaded (undecodable, unknown ref, unpicklable input, unknown builtin)
  → FAILED BAD_TASK, not retryable: another attempt would load the same bytes.
"""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
from collections.abc import Callable
from functools import lru_cache
from typing import Any, NamedTuple

import cloudpickle

from heapd import deps, results
from heapd.worker import builtins
from heapd.worker.failure import FailureInfo, FailureKind, to_failure, type_name
from heapd.worker.outcomes import CommandResult
from heapd.worker.specs import (
    BadSpec,
    BuiltinSpec,
    CommandSpec,
    DependencyInput,
    PythonCallSpec,
    TaskSpec,
)

_Call = Callable[..., Any]


class Verdict(NamedTuple):
    """How one attempt settled: flags for the control plane, the result for the user."""

    succeeded: bool
    retryable: bool
    result: bytes | CommandResult | FailureInfo


class _BadTask(Exception):
    """The task could not be loaded; carries the user-facing reason."""


def run_task(spec: TaskSpec) -> Verdict:
    """Run one task; never raises."""
    try:
        return _run(spec)
    except _BadTask as exc:
        return _failed(_bad_task(exc), retryable=False)


def bad_spec(exc: BadSpec) -> Verdict:
    """The verdict on a spec that does not decode: BAD_TASK, and not retryable (another attempt
    would read the same bytes)."""
    return _failed(to_failure(exc, FailureKind.BAD_TASK, message=str(exc)), retryable=False)


def _run(spec: TaskSpec) -> Verdict:
    if isinstance(spec, PythonCallSpec):
        return _run_python(spec)
    if isinstance(spec, CommandSpec):
        return _run_command(spec)
    return _run_builtin(spec)


def _run_python(spec: PythonCallSpec) -> Verdict:
    fn = _resolve_ref(spec.ref) if spec.ref else _load_callable(spec.pickled_callable)
    if spec.inputs:
        with deps.resolving({i.task_id: _input_value(i) for i in spec.inputs}):
            args, kwargs = _load_args(spec.pickled_args)
    else:
        args, kwargs = _load_args(spec.pickled_args)
    try:
        value = fn(*args, **kwargs)
    except (Exception, SystemExit) as exc:  # SystemExit: a task calling sys.exit() just failed
        return _failed(to_failure(exc), retryable=_matches(exc, spec.retry_on))
    return _value(value)


def _run_command(spec: CommandSpec) -> Verdict:
    try:
        done = subprocess.run(
            spec.argv,
            input=spec.stdin,  # always a pipe: never the worker's own stdin
            capture_output=True,
            env={**os.environ, **spec.env},
            cwd=spec.cwd or None,
            check=False,
        )
    except OSError as exc:  # no such program, not executable, bad cwd: maybe not on every host
        return _failed(to_failure(exc), retryable=True)
    return Verdict(True, False, CommandResult(done.returncode, done.stdout, done.stderr))


def _run_builtin(spec: BuiltinSpec) -> Verdict:
    try:
        call = builtins.bind(spec.name, spec.params)
    except builtins.BuiltinError as exc:
        raise _BadTask(str(exc)) from exc
    try:
        value = call()
    except Exception as exc:
        return _failed(to_failure(exc), retryable=True)
    return _value(value)


@lru_cache(maxsize=1024)
def _resolve_ref(ref: str) -> _Call:
    """Import "pkg.mod:qualname" once per child; later calls hit the cache."""
    module_name, sep, qualname = ref.partition(":")
    if not (sep and module_name and qualname):
        raise _BadTask(f"bad function reference {ref!r}: expected 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # import errors of the user's module included
        raise _BadTask(f"cannot import {ref!r}: {type(exc).__name__}: {exc}") from exc
    if not callable(obj):
        raise _BadTask(f"{ref!r} is not callable")
    return obj  # type: ignore[no-any-return]


@lru_cache(maxsize=64)
def _load_callable(payload: bytes) -> _Call:
    """Unpickle a callable once per child: map() sends the same payload with every task.

    Bounded, since payloads can be large. State captured by the callable persists between calls
    in the same child, as module globals do.
    """
    try:
        fn = cloudpickle.loads(payload)
    except Exception as exc:
        raise _BadTask(f"cannot unpickle the callable: {type(exc).__name__}: {exc}") from exc
    if not callable(fn):
        raise _BadTask(f"the pickled object is not callable: {type(fn).__name__}")
    return fn  # type: ignore[no-any-return]


def _load_args(payload: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if not payload:
        return (), {}
    try:
        args, kwargs = cloudpickle.loads(payload)
    except Exception as exc:
        raise _BadTask(f"cannot unpickle the arguments: {type(exc).__name__}: {exc}") from exc
    if not isinstance(args, tuple) or not isinstance(kwargs, dict):
        raise _BadTask("pickled arguments must be a (tuple, dict) pair")
    return args, kwargs


def _input_value(item: DependencyInput) -> object:
    """A dependency's value as the task's code sees it (what `future.result()` returns)."""
    if item.command is not None:
        c = item.command
        return results.CommandResult(c.returncode, c.stdout, c.stderr)
    try:
        return cloudpickle.loads(item.pickled_value)
    except Exception as exc:
        raise _BadTask(
            f"cannot unpickle the result of dependency {item.task_id}: {type(exc).__name__}: {exc}"
        ) from exc


def _value(value: object) -> Verdict:
    """Pickle a return value; an unpicklable one becomes a BAD_RESULT failure, never a loss."""
    try:
        return Verdict(True, False, pickle.dumps(value, protocol=5))
    except Exception:  # classes defined in __main__ or in functions: cloudpickle sends by value
        pass
    try:
        return Verdict(True, False, cloudpickle.dumps(value, protocol=5))
    except Exception as exc:
        message = f"the result of type {type_name(type(value))} could not be pickled: {exc}"
        return _failed(to_failure(exc, FailureKind.BAD_RESULT, message=message), retryable=False)


def _matches(exc: BaseException, retry_on: tuple[str, ...]) -> bool:
    """Whether retry_on (empty = anything) names a class of `exc` by qualname or module.qualname."""
    if not retry_on:
        return True
    wanted = set(retry_on)
    return any(cls.__qualname__ in wanted or type_name(cls) in wanted for cls in type(exc).__mro__)


def _bad_task(exc: _BadTask) -> FailureInfo:
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    return to_failure(cause, FailureKind.BAD_TASK, message=str(exc))


def _failed(failure: FailureInfo, *, retryable: bool) -> Verdict:
    return Verdict(False, retryable, failure)
