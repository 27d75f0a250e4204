"""worker.execute: each task kind in-process, and how each way of failing is reported."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any

import pytest

from heapd import convert as client_convert
from heapd.errors import FailureInfo, FailureKind
from heapd.results import CommandResult
from heapd.v1 import task_pb2
from heapd.worker.child import Execution, execute
from tests import tasks_for_worker as t


def run(spec: task_pb2.TaskSpec | bytes) -> tuple[Execution, Any]:
    """Execute a spec; return the verdict and the outcome's result as the client reads it."""
    data = spec if isinstance(spec, bytes) else spec.SerializeToString()
    verdict = execute(data)
    outcome = client_convert.outcome_from_bytes(verdict.outcome)
    assert outcome is not None
    assert 0 < outcome.started_at <= outcome.finished_at
    return verdict, outcome.result


def value_of(spec: task_pb2.TaskSpec) -> Any:
    verdict, result = run(spec)
    assert verdict.succeeded, result
    return pickle.loads(result)


def failure_of(spec: task_pb2.TaskSpec | bytes) -> tuple[bool, FailureInfo]:
    verdict, result = run(spec)
    assert not verdict.succeeded
    assert isinstance(result, FailureInfo)
    return verdict.retryable, result


# -- Python calls --------------------------------------------------------------------------------


def test_a_function_by_reference_returns_its_value() -> None:
    spec = client_convert.python_spec(t.add, (2,), {"b": 3})
    assert spec.python.ref == "tests.tasks_for_worker:add"
    assert value_of(spec) == 5


def test_a_closure_travels_cloudpickled() -> None:
    offset = 40
    spec = client_convert.python_spec(lambda x: x + offset, (2,))
    assert spec.python.pickled_callable
    assert value_of(spec) == 42


def test_a_result_of_a_local_class_comes_back_by_value() -> None:
    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

    spec = client_convert.python_spec(lambda: Point(7))
    assert value_of(spec).x == 7


def test_an_exception_fails_the_task_with_its_type_and_traceback() -> None:
    retryable, failure = failure_of(client_convert.python_spec(t.fail, ("ValueError", "bad x")))
    assert failure.kind == FailureKind.EXCEPTION
    assert failure.type_name == "builtins.ValueError"
    assert failure.message == "bad x"
    assert "in fail" in failure.traceback and "ValueError: bad x" in failure.traceback
    assert pickle.loads(failure.pickled_exception).args == ("bad x",)
    assert retryable, "an empty retry_on means any exception may be retried"


def test_sys_exit_in_a_task_is_an_exception_not_an_exit() -> None:
    _, failure = failure_of(client_convert.python_spec(sys.exit, (4,)))
    assert failure.type_name == "builtins.SystemExit"


@pytest.mark.parametrize(
    ("kind", "retry_on", "retryable"),
    [
        ("KeyError", ["KeyError"], True),
        ("KeyError", ["builtins.KeyError"], True),
        ("KeyError", ["LookupError"], True),  # a base class in the MRO
        ("KeyError", ["ValueError", "builtins.LookupError"], True),
        ("KeyError", ["ValueError"], False),
        ("Flaky", [t.Flaky], True),  # a class, sent as "tests.tasks_for_worker.Flaky"
        ("Flaky", ["Flaky"], True),
        ("Flaky", ["other.module.Flaky"], False),
    ],
)
def test_retry_on_matches_the_exception_mro_by_name(
    kind: str, retry_on: list[Any], retryable: bool
) -> None:
    spec = client_convert.python_spec(t.fail, (kind, "x"), retry_on=retry_on)
    assert failure_of(spec)[0] is retryable


@pytest.mark.parametrize(
    "ref",
    ["tests.tasks_for_worker:no_such_function", "no_such_module_xyz:f", "nocolon", "os:sep"],
)
def test_an_unknown_reference_is_a_bad_task(ref: str) -> None:
    spec = task_pb2.TaskSpec(python=task_pb2.PythonCall(ref=ref))
    retryable, failure = failure_of(spec)
    assert failure.kind == FailureKind.BAD_TASK
    assert ref in failure.message
    assert not retryable


@pytest.mark.parametrize(
    "call",
    [
        task_pb2.PythonCall(pickled_callable=b"not a pickle"),
        task_pb2.PythonCall(ref="tests.tasks_for_worker:add", pickled_args=b"garbage"),
        task_pb2.PythonCall(ref="tests.tasks_for_worker:add", pickled_args=pickle.dumps([1, 2])),
        task_pb2.PythonCall(pickled_callable=pickle.dumps(3)),
    ],
)
def test_undecodable_callables_and_arguments_are_bad_tasks(call: task_pb2.PythonCall) -> None:
    retryable, failure = failure_of(task_pb2.TaskSpec(python=call))
    assert failure.kind == FailureKind.BAD_TASK
    assert not retryable


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"", task_pb2.TaskSpec(retry_on=["x"])])
def test_a_spec_without_a_runnable_kind_is_a_bad_task(data: bytes | task_pb2.TaskSpec) -> None:
    retryable, failure = failure_of(data)
    assert failure.kind == FailureKind.BAD_TASK and not retryable


def test_an_unpicklable_result_is_a_bad_result_not_a_lost_task() -> None:
    retryable, failure = failure_of(client_convert.python_spec(t.lock_result))
    assert failure.kind == FailureKind.BAD_RESULT
    assert "_thread.lock" in failure.message and "could not be pickled" in failure.message
    assert not retryable


# -- commands ------------------------------------------------------------------------------------


def command(argv: list[str], **kwargs: Any) -> CommandResult:
    verdict, result = run(client_convert.command_spec(argv, **kwargs))
    assert verdict.succeeded and isinstance(result, CommandResult)
    return result


def test_a_command_reports_exit_code_and_output_and_a_non_zero_exit_still_succeeds() -> None:
    result = command(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert result == CommandResult(3, b"out\n", b"err\n")


def test_a_command_gets_env_added_cwd_and_stdin(tmp_path: Path) -> None:
    script = 'printf "%s|%s|" "$HEAPD_TEST_VAR" "$(pwd)"; cat; test -n "$PATH"'
    result = command(
        ["sh", "-c", script], env={"HEAPD_TEST_VAR": "v1"}, cwd=tmp_path, stdin="from stdin"
    )
    assert result.stdout == f"v1|{tmp_path}|from stdin".encode()
    assert result.returncode == 0, "the worker's own environment (PATH) is kept"


def test_a_command_that_cannot_start_fails_as_an_exception() -> None:
    retryable, failure = failure_of(client_convert.command_spec(["/no/such/program"]))
    assert failure.kind == FailureKind.EXCEPTION
    assert failure.type_name == "builtins.FileNotFoundError"
    assert retryable, "another host may have the program"


# -- builtins ------------------------------------------------------------------------------------


def test_builtin_sleep_sleeps_and_returns_the_seconds() -> None:
    verdict = execute(client_convert.builtin_spec("sleep", {"seconds": 0.01}).SerializeToString())
    outcome = client_convert.outcome_from_bytes(verdict.outcome)
    assert verdict.succeeded and outcome is not None and isinstance(outcome.result, bytes)
    assert pickle.loads(outcome.result) == 0.01
    assert outcome.finished_at - outcome.started_at >= 0.01, "it slept (never less)"


def test_builtin_cpu_trains_and_infers_deterministically() -> None:
    spec = client_convert.builtin_spec("cpu", {"steps": 50, "size": 200})
    first, second = value_of(spec), value_of(spec)
    assert first == second
    assert first["accuracy"] > 0.8 and first["loss"] < 0.7


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("nope", {}),
        ("sleep", {"seconds": -1}),
        ("sleep", {"minutes": 1}),
        ("cpu", {"steps": 1.5}),
        ("cpu", {"size": 0}),
    ],
)
def test_unknown_builtins_and_bad_params_are_bad_tasks(name: str, params: dict[str, float]) -> None:
    retryable, failure = failure_of(client_convert.builtin_spec(name, params))
    assert failure.kind == FailureKind.BAD_TASK and not retryable
