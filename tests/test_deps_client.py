"""Task dependencies on the client side: futures among the arguments, `after=`, their bounds,
the placeholders a worker resolves, and `DependencyFailed` from the wire. No cell needed."""

from __future__ import annotations

import asyncio
import pickle
from collections import namedtuple
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest

from heapd import DependencyFailed, TaskFailed, convert, deps, options
from heapd.cli import main as cli_main
from heapd.cli import show
from heapd.core import ClientCore
from heapd.errors import ClientClosed, FailureKind, InvalidArgument
from heapd.futures import AsyncTaskFuture, TaskFuture
from heapd.results import Settled, TaskState
from heapd.v1 import task_pb2, task_service_pb2

Point = namedtuple("Point", "x y")


def _pending(task_id: int) -> TaskFuture:
    return TaskFuture(task_id, lambda _: False)


def _succeeded(task_id: int, value: object) -> TaskFuture:
    future = _pending(task_id)
    future.set_result(value)
    return future


def _failed(task_id: int, error: BaseException) -> TaskFuture:
    future = _pending(task_id)
    future.set_exception(error)
    return future


def _cancelled(task_id: int) -> TaskFuture:
    future = _pending(task_id)
    assert future.settle_cancelled()
    return future


def _core() -> ClientCore[TaskFuture]:
    return ClientCore("127.0.0.1:1", session="s")


def _python_request(core: ClientCore[TaskFuture], *args: Any, **kwargs: Any) -> Any:
    after = kwargs.pop("after", None)
    return core.python_request(
        "tests.tasks_for_tests:add",
        args,
        kwargs,
        priority=0,
        retries=0,
        timeout=None,
        retry_on=(),
        cpus=None,
        after=after,
    )


def _args_of(request: task_service_pb2.SubmitTasksRequest, index: int = 0) -> Any:
    data = request.tasks[index].spec.python.pickled_args
    return pickle.loads(data) if data else ((), {})


# -- extract: futures among the arguments ---------------------------------------------------------


def test_futures_are_found_in_nested_lists_dicts_and_tuples() -> None:
    a, b, c = _pending(1), _pending(2), _pending(3)
    args, kwargs, ids = deps.extract(
        (a, ({"k": [b, 5]}, "x"), Point(c, 0)), {"key": {"inner": (a, c)}}
    )
    ref = deps.DependencyRef
    assert args == (ref(1), ({"k": [ref(2), 5]}, "x"), Point(ref(3), 0))
    assert type(args[2]) is Point, "a namedtuple keeps its type"
    assert kwargs == {"key": {"inner": (ref(1), ref(3))}}
    assert ids == [1, 2, 3], "first-seen order"


def test_a_future_named_twice_is_one_dependency() -> None:
    a, b = _pending(7), _pending(8)
    _, _, ids = deps.extract((a, [b, a], {"again": a}), {"b": b})
    assert ids == [7, 8]


def test_arguments_without_futures_are_kept_as_they_are() -> None:
    inner = [1, 2, {"x": (3, 4)}]
    args = (inner, Point(1, 2), "s")
    kwargs = {"d": {"y": [5]}}
    new_args, new_kwargs, ids = deps.extract(args, kwargs)
    assert ids == []
    assert new_args is args and new_args[0] is inner and new_kwargs["d"] is kwargs["d"]


def test_other_containers_are_not_searched() -> None:
    future = _pending(4)
    holder = {future: "key"}  # a future as a dict key
    frozen = frozenset({future})

    class Box(list[Any]):
        pass

    box = Box([future])
    args, _, ids = deps.extract((holder, frozen, box), {})
    assert ids == [] and args[0] is holder and args[1] is frozen and args[2] is box


def test_a_list_that_holds_itself_is_walked_once() -> None:
    loop: list[Any] = [_pending(9)]
    loop.append(loop)
    args, _, ids = deps.extract((loop,), {})
    assert ids == [9]
    assert args[0][0] == deps.DependencyRef(9)


def test_a_future_that_succeeded_is_its_value_and_no_dependency() -> None:
    done = _succeeded(5, {"v": 1})
    args, kwargs, ids = deps.extract(([done],), {"k": done})
    assert args == ([{"v": 1}],) and kwargs == {"k": {"v": 1}}
    assert ids == []


def test_a_future_that_failed_raises_dependency_failed_at_submit() -> None:
    error = ZeroDivisionError("division by zero")
    with pytest.raises(DependencyFailed) as raised:
        deps.extract(({"x": [_failed(11, error)]},), {})
    assert raised.value.dependency_id == 11
    assert str(raised.value) == "dependency 11 failed: ZeroDivisionError: division by zero"
    assert raised.value.__cause__ is error
    assert isinstance(raised.value, TaskFailed)


def test_a_cancelled_future_raises_dependency_failed_at_submit() -> None:
    with pytest.raises(DependencyFailed, match="dependency 12 was cancelled") as raised:
        deps.extract((), {"x": _cancelled(12)})
    assert raised.value.dependency_id == 12


def test_a_future_only_its_client_gave_up_on_is_still_waited_on() -> None:
    """ClientClosed says nothing of the task, which may still run: the cell knows."""
    closed = _failed(13, ClientClosed("closed"))
    _, _, ids = deps.extract((closed,), {})
    assert ids == [13]
    assert deps.after_ids([closed]) == [13]


def test_async_futures_are_dependencies_too() -> None:
    async def check() -> None:
        pending = AsyncTaskFuture(21, lambda _: None)
        done = AsyncTaskFuture(22, lambda _: None)
        done.set_result("value")
        failed = AsyncTaskFuture(23, lambda _: None)
        failed.set_exception(KeyError("k"))
        args, _, ids = deps.extract((pending, done), {})
        assert args == (deps.DependencyRef(21), "value") and ids == [21]
        with pytest.raises(DependencyFailed, match="dependency 23 failed: KeyError") as raised:
            deps.after_ids([failed])
        assert raised.value.dependency_id == 23

    asyncio.run(check())


# -- after= ---------------------------------------------------------------------------------------


def test_after_takes_futures_and_ids_mixed() -> None:
    assert deps.after_ids(None) == []
    assert deps.after_ids([3, _pending(4), 3, _succeeded(5, "x"), _pending(4)]) == [3, 4]
    with pytest.raises(DependencyFailed) as raised:
        deps.after_ids([1, _failed(6, ValueError("bad"))])
    assert raised.value.dependency_id == 6


@pytest.mark.parametrize("after", [_pending(1), 3, "3", b"3", {3: 4}])
def test_after_must_be_a_list(after: Any) -> None:
    with pytest.raises(InvalidArgument, match="after= takes a list"):
        deps.after_ids(after)


@pytest.mark.parametrize("item", [True, 1.0, "4", None])
def test_after_holds_only_futures_and_ids(item: Any) -> None:
    with pytest.raises(InvalidArgument, match="after= takes futures or task ids"):
        deps.after_ids([item])


@pytest.mark.parametrize("bad", [0, -1, 1 << 64])
def test_a_dependency_is_a_positive_uint64(bad: int) -> None:
    with pytest.raises(InvalidArgument, match="a dependency is a task id"):
        options.dependency_ids([bad])
    assert options.dependency_ids([options.TASK_ID_MAX]) == [options.TASK_ID_MAX]


def test_at_most_so_many_dependencies_duplicates_counted_once() -> None:
    limit = options.DEPENDENCIES_MAX
    assert options.dependency_ids([*range(1, limit + 1), 1, 2]) == list(range(1, limit + 1))
    with pytest.raises(InvalidArgument, match=f"at most {limit} dependencies"):
        options.dependency_ids(range(1, limit + 2))


# -- requests: what goes on the wire -------------------------------------------------------------


def test_a_python_request_carries_after_and_placeholders() -> None:
    a, b = _pending(31), _pending(32)
    request = _python_request(_core(), [a, 1], after=[b, 40, a], scale=b)
    assert list(request.tasks[0].options.after) == [32, 40, 31], "after= first, then arguments"
    args, kwargs = _args_of(request)
    assert args == ([deps.DependencyRef(31), 1],) and kwargs == {"scale": deps.DependencyRef(32)}
    with deps.resolving({31: 10, 32: 3}):
        assert _args_of(request) == (([10, 1],), {"scale": 3})


def test_a_request_without_dependencies_sends_none() -> None:
    request = _python_request(_core(), 1, 2)
    assert list(request.tasks[0].options.after) == []
    assert _args_of(request) == ((1, 2), {})


def test_arguments_and_after_together_are_bounded() -> None:
    limit = options.DEPENDENCIES_MAX
    ids = list(range(1, limit))  # one short of the limit
    _python_request(_core(), _pending(5000), after=ids)  # exactly at the limit
    with pytest.raises(InvalidArgument, match="at most"):
        _python_request(_core(), _pending(5000), _pending(5001), after=ids)


def test_commands_and_builtins_wait_through_after() -> None:
    core = _core()
    command = core.command_request(
        ["true"],
        env=None,
        cwd=None,
        stdin=None,
        priority=0,
        retries=0,
        timeout=None,
        cpus=None,
        after=[_pending(3), 4],
        key="k",
    )
    builtin = core.builtin_request(
        "sleep", {"seconds": 0.0}, priority=0, retries=0, timeout=None, cpus=None, after=[9]
    )
    assert list(command.tasks[0].options.after) == [3, 4]
    assert command.tasks[0].options.key == "k"
    assert list(builtin.tasks[0].options.after) == [9]
    with pytest.raises(DependencyFailed):
        core.command_request(
            ["true"],
            env=None,
            cwd=None,
            stdin=None,
            priority=0,
            retries=0,
            timeout=None,
            cpus=None,
            after=[_cancelled(3)],
        )


def _map(core: ClientCore[TaskFuture], items: list[Any], after: Any, size: int) -> Iterator[Any]:
    return core.map_requests(
        "tests.tasks_for_tests:add",
        items,
        priority=0,
        retries=0,
        timeout=None,
        retry_on=(),
        cpus=None,
        batch_size=size,
        after=after,
    )


def test_map_applies_after_to_every_task_and_each_items_futures_to_its_own() -> None:
    a, b = _pending(51), _pending(52)
    requests = list(_map(_core(), [1, a, [b, a], _succeeded(53, "v")], after=[50], size=3))
    tasks = [task for request in requests for task in request.tasks]
    assert [list(t.options.after) for t in tasks] == [[50], [50, 51], [50, 52, 51], [50]]
    args = [pickle.loads(t.spec.python.pickled_args)[0] for t in tasks]
    ref = deps.DependencyRef
    assert args == [(1,), (ref(51),), ([ref(52), ref(51)],), ("v",)]


def test_map_refuses_a_failed_future_before_sending_anything() -> None:
    items = [1, 2, _failed(60, RuntimeError("no"))]
    with pytest.raises(DependencyFailed, match="dependency 60 failed: RuntimeError: no"):
        _map(_core(), items, after=None, size=1)


# -- placeholders: what the worker resolves -------------------------------------------------------


def test_a_placeholder_round_trips_as_itself_outside_resolving() -> None:
    ref = deps.DependencyRef(77)
    data = pickle.dumps(([ref], {"k": ref}))
    assert pickle.loads(data) == ([ref], {"k": ref})
    with deps.resolving({1: "other"}):
        assert pickle.loads(data) == ([ref], {"k": ref}), "an id not registered stays a ref"


def test_resolving_puts_each_value_in_place_and_nests() -> None:
    data = pickle.dumps((deps.DependencyRef(1), [deps.DependencyRef(2)]))
    value = {"big": list(range(3))}
    with deps.resolving({1: value, 2: None}):
        first, (second,) = pickle.loads(data)
        assert first is value and second is None
        with deps.resolving({1: "inner"}):
            assert pickle.loads(data)[0] == "inner"
        assert pickle.loads(data)[0] is value, "the outer values are back"
    assert pickle.loads(data)[0] == deps.DependencyRef(1)


def test_placeholders_among_a_lambdas_args_travel_by_cloudpickle() -> None:
    offset = 5
    fn = lambda x, y: x + y + offset  # noqa: E731  (a closure: pickled by value)
    ref = deps.DependencyRef(8)
    data = cloudpickle.dumps((fn, ((ref, [ref]), {"y": ref})))
    with deps.resolving({8: 2}):
        loaded_fn, (args, kwargs) = pickle.loads(data)
    assert args == (2, [2]) and kwargs == {"y": 2}
    assert loaded_fn(args[0], **kwargs) == 9


def test_arguments_holding_a_closure_are_cloudpickled_with_their_placeholders() -> None:
    scale = 3
    spec = convert.python_spec(lambda f, x: f(x), (lambda v: v * scale, deps.DependencyRef(4)))
    with deps.resolving({4: 7}):
        args, _ = pickle.loads(spec.python.pickled_args)
    assert args[0](args[1]) == 21


# -- DependencyFailed from the wire --------------------------------------------------------------


def _failure_outcome(failure: task_pb2.Failure) -> Settled:
    outcome = task_pb2.TaskOutcome(failure=failure).SerializeToString()
    return Settled(90, TaskState.FAILED, outcome)


def test_a_dependency_failure_from_the_wire_is_dependency_failed() -> None:
    text = "dependency 123 failed: ZeroDivisionError: division by zero"
    failure = task_pb2.Failure(
        kind=task_pb2.DEPENDENCY_FAILED, message=text, dependency_id=123, traceback="Traceback..."
    )
    with pytest.raises(DependencyFailed) as raised:
        convert.result_value(_failure_outcome(failure))
    assert raised.value.dependency_id == 123
    assert str(raised.value) == text
    assert raised.value.remote_traceback == "Traceback..."
    assert int(FailureKind.DEPENDENCY_FAILED) == task_pb2.DEPENDENCY_FAILED == 8


def test_a_dependency_failure_without_a_message_still_names_the_dependency() -> None:
    failure = task_pb2.Failure(kind=task_pb2.DEPENDENCY_FAILED, dependency_id=4)
    with pytest.raises(DependencyFailed, match="dependency 4 did not succeed"):
        convert.result_value(_failure_outcome(failure))


def test_dependency_failed_pickles_with_its_dependency() -> None:
    error = pickle.loads(pickle.dumps(DependencyFailed("dependency 3 failed", dependency_id=3)))
    assert type(error) is DependencyFailed and error.dependency_id == 3
    assert str(error) == "dependency 3 failed"


def test_a_pending_tasks_dependencies_are_in_its_status() -> None:
    status = convert.status_from_proto(
        task_service_pb2.TaskStatus(task_id=5, state=task_pb2.PENDING, after=[3, 4])
    )
    assert status.state == "PENDING" and status.after == [3, 4]
    assert convert.status_from_proto(task_service_pb2.TaskStatus(task_id=6)).after == []


# -- the command line ------------------------------------------------------------------------------


def test_heapd_submit_takes_after_repeated() -> None:
    args = cli_main.parser().parse_args(["submit", "--after", "3", "--after", "4", "--", "true"])
    assert args.after == [3, 4]
    assert cli_main.parser().parse_args(["submit", "--", "true"]).after == []


def test_heapd_tasks_shows_what_a_pending_task_waits_on() -> None:
    assert show._waits_on([]) == "-"
    assert show._waits_on([3, 4]) == "3,4"
    many = list(range(1, show.DEPENDENCIES_SHOWN + 3))
    assert show._waits_on(many).endswith("(+2 more)")
