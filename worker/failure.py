"""Why an attempt failed, in plain form: exceptions and dead children become `FailureInfo`.

`to_failure` is the worker half of the symmetric pair; the client half is
`client.errors.from_failure`, which rebuilds the original exception type when the pickled
exception loads on the client, and a `RemoteError` carrying the same text when it does not.
"""

from __future__ import annotations

import os
import pickle
import signal
import traceback
from dataclasses import dataclass
from enum import IntEnum

import cloudpickle


class FailureKind(IntEnum):
    """Why an attempt failed; numbered as `heapd.v1.FailureKind` on the wire."""

    EXCEPTION = 1
    TIMEOUT = 2
    CRASHED = 3
    BAD_TASK = 4
    BAD_RESULT = 5
    CANCELLED_BY_USER = 6
    WORKER_LOST = 7
    DEPENDENCY_FAILED = 8


@dataclass(frozen=True, slots=True)
class FailureInfo:
    """A failed attempt: what kind, which exception type, and the text a user needs to debug it."""

    kind: FailureKind
    type_name: str = ""  # "module.Qualname" of the exception; empty when there is none
    message: str = ""
    traceback: str = ""
    pickled_exception: bytes = b""  # empty when the exception could not be pickled


def type_name(cls: type) -> str:
    """The "module.Qualname" of a class, as carried on the wire and matched by retry_on."""
    return f"{cls.__module__}.{cls.__qualname__}"


def to_failure(
    exc: BaseException, kind: FailureKind = FailureKind.EXCEPTION, *, message: str | None = None
) -> FailureInfo:
    """Describe `exc` for the client; `message` overrides str(exc) (e.g. to name a bad ref)."""
    return FailureInfo(
        kind=kind,
        type_name=type_name(type(exc)),
        message=_safe_str(exc) if message is None else message,
        traceback="".join(traceback.format_exception(exc)),
        pickled_exception=pickle_exception(exc),
    )


def pickle_exception(exc: BaseException) -> bytes:
    """Pickle `exc` so that it loads again, or b"" when it can't.

    Plain pickle first (smallest, by reference); cloudpickle for classes defined in `__main__`
    or inside functions (sent by value). The bytes are loaded once here because many exception
    classes pickle fine but fail to unpickle (an `__init__` with extra required arguments).
    """
    for dumps in (_pickle_dumps, _cloudpickle_dumps):
        try:
            data = dumps(exc)
            pickle.loads(data)
        except BaseException:  # any failure (SystemExit from a __reduce__ too): next, or give up
            continue
        return data
    return b""


def timed_out(timeout_s: float) -> FailureInfo:
    """The failure of an attempt killed for running past its timeout."""
    return FailureInfo(
        FailureKind.TIMEOUT, message=f"task exceeded its timeout of {timeout_s:g} s and was killed"
    )


def cancelled() -> FailureInfo:
    """The failure of an attempt cancelled on its worker (WorkerService.CancelTask, or the
    register's word that its lease ran out)."""
    return FailureInfo(
        FailureKind.CANCELLED_BY_USER, message="the attempt was cancelled on its worker"
    )


def crashed(exitcode: int | None) -> FailureInfo:
    """The failure of an attempt whose child process died under it."""
    return FailureInfo(
        FailureKind.CRASHED, message=f"the task's process died ({describe_exitcode(exitcode)})"
    )


def describe_exitcode(exitcode: int | None) -> str:
    """Read a `multiprocessing` exit code (negative = killed by that signal) as text."""
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        return f"killed by {signal_name(-exitcode)}"
    return f"exit code {exitcode}"


def describe_wait_status(status: int) -> str:
    """Read a raw `os.waitpid` status as text: "killed by SIGKILL", "exit code 3"."""
    return describe_exitcode(os.waitstatus_to_exitcode(status))


def signal_name(signum: int) -> str:
    """ "SIGKILL" for 9; "signal 77" for numbers without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:
        return f"<{type(exc).__name__}: str() failed>"


def _pickle_dumps(exc: BaseException) -> bytes:
    return pickle.dumps(exc, protocol=5)


def _cloudpickle_dumps(exc: BaseException) -> bytes:
    data: bytes = cloudpickle.dumps(exc, protocol=5)
    return data
