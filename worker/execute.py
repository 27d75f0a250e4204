"""Run one task spec in the current process and say what it settled to.

This is what a pool child does for each job (`heapd.worker.child` decodes the spec and encodes
the result); it never raises. The verdict is (succeeded, retryable, result):

- Python call: the pickled return value. The task raising → FAILED EXCEPTION, retryable when the
  spec's retry_on is empty or names a class in the exception's MRO. A result that can't be
  pickled → FAILED BAD_RESULT (never a lost task; not retryable: it would fail again).
- Command: SUCCEEDED with its CommandResult even when the exit code is non-zero — the command
  ran, and its exit code is the user's to read (as with subprocess.run(check=False)). A command
  that could not be started (no such program, bad cwd) fails as EXCEPTION, retryable (another
  host may have it); one that no host could start (a NUL byte in argv, env or cwd; an env name
  that is empty or holds "=") fails as BAD_TASK.
- Builtin: its return value, like a Python call.
- A spec that cannot be loaded (undecodable, unknown ref, unpicklable input, unknown builtin)
  → FAILED BAD_TASK, not retryable: another attempt would load the same bytes.

User code raising SystemExit or KeyboardInterrupt — when called, or while its pickled callable,
arguments or inputs load — fails the task like any exception: it never ends the pool child.

`capped` then fits the result into the worker's `max_result_bytes` (what one encoded outcome
may weigh; the cell stores nothing larger than its max_blob_bytes, and every result rides a
heartbeat): a larger Python value fails as BAD_RESULT naming the limit, a command's output is
truncated with a marker, a failure's traceback and message are shortened.
"""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
from collections.abc import Callable
from dataclasses import replace
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

DEFAULT_MAX_RESULT_BYTES = 1 << 20  # the cell's default max_blob_bytes
MIN_RESULT_BYTES = 1024  # room for a failure that says why a result was refused
# What an encoded TaskOutcome adds around its result: field tags and lengths, the return code,
# two timestamps. Generous: the limit must hold for the encoded bytes, not the plain values.
ENVELOPE_BYTES = 64


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
    except BaseException as exc:  # sys.exit() or KeyboardInterrupt in a task: it just failed
        return _failed(to_failure(exc), retryable=_matches(exc, spec.retry_on))
    return _value(value)


def _run_command(spec: CommandSpec) -> Verdict:
    _check_command(spec)
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
    except ValueError as exc:  # what subprocess refuses beyond _check_command's checks
        raise _BadTask(f"the command cannot be started: {exc}") from exc
    return Verdict(True, False, CommandResult(done.returncode, done.stdout, done.stderr))


def _check_command(spec: CommandSpec) -> None:
    """Refuse what no host could start (subprocess would raise ValueError), naming the field."""
    for i, arg in enumerate(spec.argv):
        if "\0" in arg:
            raise _BadTask(f"the command's argv[{i}] contains a NUL byte")
    for name, value in spec.env.items():
        if not name or "=" in name or "\0" in name:
            raise _BadTask(
                f"the command's env name {name[:64]!r} is not valid: it must be non-empty and "
                "hold no '=' or NUL byte"
            )
        if "\0" in value:
            raise _BadTask(f"the command's env value of {name[:64]!r} contains a NUL byte")
    if "\0" in spec.cwd:
        raise _BadTask("the command's cwd contains a NUL byte")


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
    except BaseException as exc:  # the user's module failing (or exiting) at import included
        raise _BadTask(f"cannot import {ref!r}: {_describe(exc)}") from exc
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
    except BaseException as exc:  # SystemExit from a __reduce__ included: a bad task, no exit
        raise _BadTask(f"cannot unpickle the callable: {_describe(exc)}") from exc
    if not callable(fn):
        raise _BadTask(f"the pickled object is not callable: {type(fn).__name__}")
    return fn  # type: ignore[no-any-return]


def _load_args(payload: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if not payload:
        return (), {}
    try:
        args, kwargs = cloudpickle.loads(payload)
    except BaseException as exc:
        raise _BadTask(f"cannot unpickle the arguments: {_describe(exc)}") from exc
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
    except BaseException as exc:
        raise _BadTask(
            f"cannot unpickle the result of dependency {item.task_id}: {_describe(exc)}"
        ) from exc


def _value(value: object) -> Verdict:
    """Pickle a return value; an unpicklable one becomes a BAD_RESULT failure, never a loss."""
    try:
        return Verdict(True, False, pickle.dumps(value, protocol=5))
    except BaseException:  # classes defined in __main__ or in functions: cloudpickle sends by value
        pass
    try:
        return Verdict(True, False, cloudpickle.dumps(value, protocol=5))
    except BaseException as exc:
        message = f"the result of type {type_name(type(value))} could not be pickled: {exc}"
        return _failed(to_failure(exc, FailureKind.BAD_RESULT, message=message), retryable=False)


def capped(verdict: Verdict, max_result_bytes: int) -> Verdict:
    """`verdict` with a result that fits `max_result_bytes` once encoded as an outcome: a
    larger pickled value becomes a BAD_RESULT failure naming the limit (not retryable: the
    same code returns the same value), a command's stdout and stderr are truncated with a
    marker, a failure loses its pickled exception, then text from its traceback and message."""
    budget = max_result_bytes - ENVELOPE_BYTES
    result = verdict.result
    if isinstance(result, bytes):
        if len(result) <= budget:
            return verdict
        return _failed(too_large(len(result), max_result_bytes), retryable=False)
    if isinstance(result, CommandResult):
        if len(result.stdout) + len(result.stderr) <= budget:
            return verdict
        return verdict._replace(result=_truncated_output(result, budget))
    return verdict._replace(result=trimmed_failure(result, budget))


def too_large(size: int, max_result_bytes: int) -> FailureInfo:
    """The failure of an attempt whose pickled value does not fit the worker's limit."""
    return FailureInfo(
        FailureKind.BAD_RESULT,
        message=(
            f"the task's result is {size} bytes pickled, more than the limit of "
            f"{max_result_bytes} bytes for one result (the worker's max_result_bytes); return "
            "less, or put large data where the caller can read it and return its location"
        ),
    )


def trimmed_failure(failure: FailureInfo, budget: int) -> FailureInfo:
    """`failure` within `budget` bytes: first without its pickled exception (the client then
    shows the text), then with the traceback's end kept (where it was raised) and the
    message's start, each marked where it was cut."""
    sizes = [len(failure.type_name), len(failure.message.encode()), len(failure.traceback.encode())]
    if sum(sizes) + len(failure.pickled_exception) <= budget:
        return failure
    if sum(sizes) <= budget:
        return replace(failure, pickled_exception=b"")
    type_name_ = _head_text(failure.type_name, budget // 8)
    rest = budget - len(type_name_.encode())
    message = _head_text(failure.message, max(rest // 4, rest - sizes[2]))
    traceback = _tail_text(failure.traceback, rest - len(message.encode()))
    return replace(
        failure, type_name=type_name_, message=message, traceback=traceback, pickled_exception=b""
    )


def _truncated_output(result: CommandResult, budget: int) -> CommandResult:
    """stdout and stderr sharing `budget` bytes: a stream that needs less than half keeps all
    of it, the other gets the rest; each keeps its start and ends with a marker."""
    half = budget // 2
    if len(result.stdout) <= half:
        out_share = len(result.stdout)
    elif len(result.stderr) <= half:
        out_share = budget - len(result.stderr)
    else:
        out_share = half
    return CommandResult(
        result.returncode,
        _head(result.stdout, out_share),
        _head(result.stderr, budget - out_share),
    )


def _marker(cut: int) -> bytes:
    return f"\n… [truncated {cut} bytes]".encode()


def _head(data: bytes, size: int) -> bytes:
    """The start of `data`, marked, in at most `size` bytes (all of it if it fits)."""
    if len(data) <= size:
        return data
    keep = max(0, size - len(_marker(len(data))))  # the marker is never longer than this
    return data[:keep] + _marker(len(data) - keep)


def _head_text(text: str, size: int) -> str:
    data = text.encode()
    if len(data) <= size:
        return text
    return _head(data, size).decode(errors="ignore")  # a character cut in two is dropped


def _tail_text(text: str, size: int) -> str:
    """The end of `text`, marked at the front, in at most `size` bytes once encoded."""
    data = text.encode()
    if len(data) <= size:
        return text
    marker = f"[truncated {len(data)} bytes] …\n".encode()
    keep = max(0, size - len(marker))
    cut = f"[truncated {len(data) - keep} bytes] …\n"
    return cut + data[len(data) - keep :].decode(errors="ignore")


def _describe(exc: BaseException) -> str:
    """`Type: message` of an exception raised by user code, whose __str__ may raise too."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:
        return type(exc).__name__


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
