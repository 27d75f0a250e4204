"""Worker → wire → client: failures come back as the original exception, specs and outcomes
survive the trip, and the plain enums agree with the wire's."""

from __future__ import annotations

import concurrent.futures
import os
import pickle
import signal
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from heapd import convert as client_convert
from heapd import errors
from heapd.results import CommandResult, Outcome, TaskState, decode_outcome
from heapd.v1 import task_pb2
from heapd.worker import convert as worker_convert
from heapd.worker import failure as worker_failure
from heapd.worker.failure import FailureInfo, FailureKind, to_failure
from tests import tasks_for_worker as t


def raised(fn: Any, *args: Any) -> BaseException:
    try:
        fn(*args)
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


def through_the_wire(info: FailureInfo) -> BaseException:
    """What a client raises for a failure the worker recorded."""
    data = worker_convert.outcome_to_bytes(worker_convert.Outcome(info, 1.0, 2.0))
    with pytest.raises(BaseException) as caught:
        decode_outcome(TaskState.FAILED, client_convert.outcome_from_bytes(data))
    return caught.value


# -- exceptions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "cls"), [("KeyError", KeyError), ("Flaky", t.Flaky)])
def test_an_exception_comes_back_as_its_original_type_with_the_remote_traceback(
    kind: str, cls: type[Exception]
) -> None:
    error = through_the_wire(to_failure(raised(t.fail, kind, "no such key")))
    assert type(error) is cls
    assert error.args == ("no such key",)
    assert isinstance(error.__cause__, errors.RemoteTraceback)
    assert "in fail" in str(error.__cause__), "the cause's str is the remote traceback"
    assert any("in fail" in note for note in error.__notes__)


def test_an_exception_of_a_class_defined_in_a_function_is_rebuilt_too() -> None:
    class LocalError(Exception):
        pass

    info = to_failure(LocalError("local"))
    assert info.pickled_exception, "sent by value with cloudpickle"
    error = through_the_wire(info)
    assert isinstance(error, LocalError) and error.args == ("local",)


@pytest.mark.parametrize(
    ("fn", "args", "type_name", "message"),
    [
        (t.fail_needing_two_args, (), "tests.tasks_for_worker.NeedsTwoArgs", "left/right"),
        (t.fail, ("HoldsALock", "locked"), "tests.tasks_for_worker.HoldsALock", "locked"),
    ],
)
def test_an_exception_that_cannot_travel_becomes_a_remote_error(
    fn: Any, args: tuple[Any, ...], type_name: str, message: str
) -> None:
    info = to_failure(raised(fn, *args))
    assert info.pickled_exception == b""
    error = through_the_wire(info)
    assert isinstance(error, errors.RemoteError)
    assert (error.type_name, error.message) == (type_name, message)
    assert str(error) == f"{type_name}: {message}"
    assert "Traceback" in error.remote_traceback
    assert isinstance(error.__cause__, errors.RemoteTraceback)
    again = pickle.loads(pickle.dumps(error))
    assert (again.type_name, again.remote_traceback) == (type_name, error.remote_traceback)


def test_a_pickled_exception_always_unpickles() -> None:
    for exc in (ValueError("v"), t.Flaky("f"), KeyError("k"), OSError(2, "gone", "/x")):
        data = worker_failure.pickle_exception(exc)
        again = pickle.loads(data)
        assert type(again) is type(exc) and again.args == exc.args


@pytest.mark.parametrize(
    ("info", "cls", "text"),
    [
        (worker_failure.timed_out(1.5), errors.TaskTimeout, "timeout of 1.5 s"),
        (worker_failure.crashed(-signal.SIGKILL), errors.TaskCrashed, "killed by SIGKILL"),
        (worker_failure.crashed(3), errors.TaskCrashed, "exit code 3"),
        (FailureInfo(FailureKind.BAD_TASK, message="cannot import 'x:y'"), errors.BadTask, "x:y"),
        (FailureInfo(FailureKind.BAD_RESULT, message="no pickle"), errors.BadResult, "no pickle"),
        (FailureInfo(FailureKind.CANCELLED_BY_USER), errors.TaskCancelled, "cancelled"),
        (FailureInfo(FailureKind.WORKER_LOST, message="w3 died"), errors.WorkerLost, "w3 died"),
    ],
)
def test_each_failure_kind_maps_to_its_error(
    info: FailureInfo, cls: type[errors.TaskFailed], text: str
) -> None:
    error = through_the_wire(info)
    assert type(error) is cls and isinstance(error, errors.TaskFailed)
    assert text in str(error)


def test_task_cancelled_is_a_concurrent_futures_cancelled_error() -> None:
    assert issubclass(errors.TaskCancelled, concurrent.futures.CancelledError)
    with pytest.raises(errors.TaskCancelled):
        decode_outcome(TaskState.CANCELLED, None)


def test_exit_statuses_read_as_text() -> None:
    assert worker_failure.describe_exitcode(-9) == "killed by SIGKILL"
    assert worker_failure.describe_exitcode(3) == "exit code 3"
    assert worker_failure.describe_exitcode(-77) == "killed by signal 77"  # no name for 77
    for script, text in (("exit 3", "exit code 3"), ("kill -9 $$", "killed by SIGKILL")):
        pid = os.posix_spawnp("sh", ["sh", "-c", script], os.environ)
        _, status = os.waitpid(pid, 0)
        assert worker_failure.describe_wait_status(status) == text


# -- RPC errors ----------------------------------------------------------------------------------


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "cls", "also"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument, ValueError),
        (grpc.StatusCode.NOT_FOUND, errors.NotFound, LookupError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted, errors.RpcFailed),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable, ConnectionError),
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated, errors.RpcFailed),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.RpcFailed, errors.HeapdError),
    ],
)
def test_rpc_errors_map_to_heapd_errors(
    code: grpc.StatusCode, cls: type[errors.RpcFailed], also: type[Exception]
) -> None:
    error = errors.from_rpc_error(FakeRpcError(code, "the details"))
    assert type(error) is cls and isinstance(error, also)
    assert isinstance(error, errors.RpcFailed)
    assert (error.code, error.details, str(error)) == (code.name, "the details", "the details")


# -- specs and outcomes ------------------------------------------------------------------------


def spec_through_the_wire(spec: task_pb2.TaskSpec) -> worker_convert.TaskSpec:
    return worker_convert.spec_from_bytes(spec.SerializeToString())


def test_a_python_spec_arrives_as_sent() -> None:
    spec = client_convert.python_spec(t.add, (1,), {"b": 2}, retry_on=[t.Flaky, "KeyError"])
    got = spec_through_the_wire(spec)
    assert isinstance(got, worker_convert.PythonCallSpec)
    assert got.ref == "tests.tasks_for_worker:add" and got.pickled_callable == b""
    assert pickle.loads(got.pickled_args) == ((1,), {"b": 2})
    assert got.retry_on == ("tests.tasks_for_worker.Flaky", "KeyError")


def test_a_lambda_goes_by_value_and_a_name_string_as_a_reference() -> None:
    by_value = spec_through_the_wire(client_convert.python_spec(lambda: 1))
    assert isinstance(by_value, worker_convert.PythonCallSpec) and by_value.pickled_callable
    assert by_value.pickled_args == b"", "no arguments travel as empty bytes"
    by_name = spec_through_the_wire(client_convert.python_spec("pkg.mod:fn"))
    assert isinstance(by_name, worker_convert.PythonCallSpec) and by_name.ref == "pkg.mod:fn"


def module_level() -> None:
    """Importable by name."""


def test_callable_ref_only_names_what_a_worker_can_import() -> None:
    def local() -> None:
        pass

    assert client_convert.callable_ref(module_level) == f"{__name__}:module_level"
    assert client_convert.callable_ref(len) == "builtins:len"
    assert client_convert.callable_ref(local) is None
    assert client_convert.callable_ref(lambda: None) is None
    assert client_convert.callable_ref("x".upper) is None


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"))


@given(
    argv=st.lists(text, min_size=1, max_size=5),
    env=st.dictionaries(text.filter(lambda k: bool(k) and "=" not in k), text, max_size=4),
    cwd=text,
    stdin=st.binary(max_size=64),
)
def test_command_specs_round_trip(
    argv: list[str], env: dict[str, str], cwd: str, stdin: bytes
) -> None:
    got = spec_through_the_wire(client_convert.command_spec(argv, env, cwd, stdin))
    assert got == worker_convert.CommandSpec(tuple(argv), env, cwd, stdin)


@given(
    name=text.filter(bool),
    params=st.dictionaries(text, st.floats(allow_nan=False), max_size=4),
)
def test_builtin_specs_round_trip(name: str, params: dict[str, float]) -> None:
    got = spec_through_the_wire(client_convert.builtin_spec(name, params))
    assert got == worker_convert.BuiltinSpec(name, params)


worker_results = st.one_of(
    st.binary(min_size=1),
    st.builds(
        worker_convert.CommandResult,
        st.integers(-(2**31), 2**31 - 1),
        st.binary(),
        st.binary(),
    ),
    st.builds(FailureInfo, st.sampled_from(FailureKind), text, text, text, st.binary()),
)


@given(result=worker_results, started=st.floats(0, 2e9), finished=st.floats(0, 2e9))
def test_outcomes_round_trip(result: Any, started: float, finished: float) -> None:
    data = worker_convert.outcome_to_bytes(worker_convert.Outcome(result, started, finished))
    got = client_convert.outcome_from_bytes(data)
    assert isinstance(got, Outcome)
    assert (got.started_at, got.finished_at) == (started, finished)
    if isinstance(result, bytes):
        assert got.result == result
    elif isinstance(result, worker_convert.CommandResult):
        assert got.result == CommandResult(result.returncode, result.stdout, result.stderr)
    else:
        assert got.result == errors.FailureInfo(
            int(result.kind),
            result.type_name,
            result.message,
            result.traceback,
            result.pickled_exception,
        )


def test_a_command_result_and_a_value_decode() -> None:
    command = worker_convert.Outcome(worker_convert.CommandResult(2, b"o", b"e"))
    data = worker_convert.outcome_to_bytes(command)
    value = decode_outcome(TaskState.SUCCEEDED, client_convert.outcome_from_bytes(data))
    assert value == CommandResult(2, b"o", b"e")
    assert decode_outcome(TaskState.SUCCEEDED, Outcome(pickle.dumps({"a": 1}))) == {"a": 1}
    with pytest.raises(errors.BadResult):
        decode_outcome(TaskState.SUCCEEDED, Outcome(b"not a pickle"))
    with pytest.raises(ValueError, match="RUNNING"):
        decode_outcome(TaskState.RUNNING, None)


@pytest.mark.parametrize(
    ("plain", "wire"),
    [
        (FailureKind, task_pb2.FailureKind),
        (errors.FailureKind, task_pb2.FailureKind),
        (TaskState, task_pb2.TaskState),
    ],
)
def test_plain_enums_agree_with_the_wire(plain: Any, wire: Any) -> None:
    assert {m.name: m.value for m in plain} == {
        name: value for name, value in wire.items() if not name.endswith("UNSPECIFIED")
    }


def test_bad_arguments_are_refused_before_sending() -> None:
    for call in (
        lambda: client_convert.options(priority=40_000),
        lambda: client_convert.options(timeout_s=-1),
        lambda: client_convert.command_spec([]),
        lambda: client_convert.command_spec("echo hi"),  # type: ignore[arg-type]
        lambda: client_convert.python_spec("no_colon"),
        lambda: client_convert.list_request(["NOPE"]),
    ):
        with pytest.raises(errors.InvalidArgument):
            call()
