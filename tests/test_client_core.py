"""The IO-free core both clients share: retry policy, result routing, request building."""

from __future__ import annotations

import asyncio
import pickle
from typing import Any

import grpc
import pytest

from heapd import convert
from heapd import core as core_mod
from heapd.core import ClientCore, ResultRouter, RetryPolicy, fail_closed, settle
from heapd.errors import ClientClosed, InvalidArgument
from heapd.futures import AsyncTaskFuture, TaskFuture
from heapd.results import Settled, TaskState
from heapd.v1 import task_pb2, task_service_pb2
from tests import tasks_for_tests as t


class _Failed(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return str(self._code.name)


def _future(task_id: int) -> TaskFuture:
    return TaskFuture(task_id, lambda _: False)


def _value(task_id: int, value: object) -> Settled:
    outcome = task_pb2.TaskOutcome(pickled_value=pickle.dumps(value)).SerializeToString()
    return Settled(task_id, TaskState.SUCCEEDED, outcome)


def _watch_reply(*results: Settled) -> task_service_pb2.WatchTasksResponse:
    return task_service_pb2.WatchTasksResponse(
        results=[
            task_service_pb2.TaskResult(
                task_id=r.task_id, state=task_pb2.TaskState.Name(r.state), outcome=r.outcome
            )
            for r in results
        ]
    )


# -- the retry policy ----------------------------------------------------------------------------


def test_calls_are_retried_only_while_unavailable_and_only_so_often() -> None:
    policy = RetryPolicy(backoff_s=(0.1, 0.2))
    unavailable = _Failed(grpc.StatusCode.UNAVAILABLE)
    assert [policy.call_delay(i, unavailable) for i in range(3)] == [0.1, 0.2, None]
    assert policy.call_delay(0, _Failed(grpc.StatusCode.INVALID_ARGUMENT)) is None
    assert policy.call_delay(0, _Failed(grpc.StatusCode.DEADLINE_EXCEEDED)) is None


def test_the_result_stream_reopens_forever_at_the_last_pace() -> None:
    policy = RetryPolicy(backoff_s=(0.1, 0.2))
    assert [policy.reconnect_delay(i) for i in range(4)] == [0.1, 0.2, 0.2, 0.2]


# -- routing results to futures ------------------------------------------------------------------


def test_a_result_that_arrives_before_its_future_waits_for_it() -> None:
    router: ResultRouter[TaskFuture] = ResultRouter()
    early = _value(7, "early")
    assert router.route(early) is None
    future, other = _future(7), _future(8)
    assert router.add([future, other]) == [(future, early)]
    assert router.awaited() == [8]
    assert router.route(_value(8, "late")) is other
    assert router.awaited() == []


def test_closing_the_router_hands_back_the_waiting_futures_and_refuses_more() -> None:
    router: ResultRouter[TaskFuture] = ResultRouter()
    waiting = _future(1)
    router.add([waiting])
    assert router.close() == [waiting]
    assert router.route(_value(1, "too late")) is None
    assert router.route(_value(2, "no one")) is None
    with pytest.raises(ClientClosed):
        router.add([_future(2)])
    assert router.awaited() == []


def test_the_core_settles_futures_from_stream_messages_in_any_order() -> None:
    core: ClientCore[TaskFuture] = ClientCore("127.0.0.1:1", session="s")
    before = _future(1)
    core.track([before])
    core.deliver(_watch_reply(_value(1, "one"), _value(2, "two")))  # 2 arrives before its future
    after = _future(2)
    core.track([after])
    assert (before.result(0), after.result(0)) == ("one", "two")
    waiting = _future(3)
    core.track([waiting])
    request, adopts = core.watch_request()
    assert list(convert.watch_request("s", [3]).task_ids) == list(request.task_ids)
    assert adopts == []
    core.close()
    with pytest.raises(ClientClosed, match="task 3"):
        waiting.result(0)


def test_settle_gives_values_failures_and_cancellation() -> None:
    cancelled = _future(1)
    settle(cancelled, Settled(1, TaskState.CANCELLED, b""))
    assert cancelled.cancelled()
    lost = _future(2)
    settle(lost, Settled(2, 0, b""))
    assert "unknown to the PLM" in str(lost.exception(0))
    done = _future(3)
    done.set_result("first")
    settle(done, _value(3, "second"))
    fail_closed(done)
    assert done.result(0) == "first", "a settled future keeps what it has"


def test_a_closed_client_future_says_why() -> None:
    future = _future(42)
    fail_closed(future)
    error = future.exception(0)
    assert isinstance(error, ClientClosed)
    assert "task 42" in str(error) and "closed" in str(error)


def test_async_futures_settle_the_same_way() -> None:
    async def run() -> None:
        cancels: list[int] = []
        value = AsyncTaskFuture(1, cancels.append)
        settle(value, _value(1, 49))
        assert await value == 49
        cancelled = AsyncTaskFuture(2, cancels.append)
        settle(cancelled, Settled(2, TaskState.CANCELLED, b""))
        assert cancelled.cancelled() and cancels == [], "cancelled by the cell: not asked again"
        mine = AsyncTaskFuture(3, cancels.append)
        assert mine.cancel() and cancels == [3]
        stopped = AsyncTaskFuture(4, cancels.append)
        stopped.set_exception(StopIteration("done"))  # asyncio refuses to store StopIteration
        with pytest.raises(RuntimeError, match="StopIteration"):
            await stopped

    asyncio.run(run())


# -- building requests ---------------------------------------------------------------------------


def test_map_builds_batches_and_pickles_a_lambda_once() -> None:
    core: ClientCore[TaskFuture] = ClientCore("127.0.0.1:1", session="s")
    requests = list(
        core.map_requests(
            lambda x: x + 1,
            range(5),
            priority="high",
            retries=1,
            timeout=None,
            retry_on=(KeyError,),
            cpus=2,
            batch_size=2,
        )
    )
    assert [len(r.tasks) for r in requests] == [2, 2, 1]
    tasks = [task for request in requests for task in request.tasks]
    assert all(r.session == "s" for r in requests)
    assert len({task.spec.python.pickled_callable for task in tasks}) == 1
    assert [pickle.loads(task.spec.python.pickled_args) for task in tasks] == [
        ((i,), {}) for i in range(5)
    ]
    assert {
        (task.options.priority, task.options.retries, task.options.resources["cpus"])
        for task in tasks
    } == {(100, 1, 2)}
    assert all(list(task.spec.retry_on) == ["builtins.KeyError"] for task in tasks)


@pytest.mark.parametrize(
    ("retries", "retry_on", "batch_size", "message"),
    [
        (0, (), 0, "batch_size"),
        (0, (), True, "batch_size"),
        (-1, (), 10, "retries"),
        (0, "KeyError", 10, "retry_on"),
        (0, (int,), 10, "retry_on"),
    ],
)
def test_map_checks_everything_before_building_a_batch(
    retries: int, retry_on: object, batch_size: object, message: str
) -> None:
    core: ClientCore[TaskFuture] = ClientCore("127.0.0.1:1")
    with pytest.raises(InvalidArgument, match=message):
        core.map_requests(
            t.square,
            range(3),
            priority=0,
            retries=retries,
            timeout=None,
            retry_on=retry_on,  # type: ignore[arg-type]
            cpus=1,
            batch_size=batch_size,  # type: ignore[arg-type]
        )


def test_a_function_importable_by_name_goes_by_reference() -> None:
    core: ClientCore[TaskFuture] = ClientCore("127.0.0.1:1", session="s")
    request = core.python_request(
        t.add, (1,), {"b": 2}, priority=0, retries=0, timeout=5, retry_on=(), cpus=1
    )
    (task,) = request.tasks
    assert task.spec.python.ref == "tests.tasks_for_tests:add"
    assert pickle.loads(task.spec.python.pickled_args) == ((1,), {"b": 2})
    assert task.options.timeout_s == 5.0


def test_a_bad_address_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        ClientCore("")
    assert len(ClientCore("h:1").session) == 32, "a fresh session name"


def test_a_reconnect_awaiting_more_than_one_request_may_name_adopts_the_rest_in_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The PLM refuses a WatchTasks naming over max_ids_per_request ids: the client names the
    first ones and adopts the rest in chunks, so a reconnect never fails for good."""
    monkeypatch.setattr(core_mod, "WATCH_IDS", 4)
    core = ClientCore[Any]("127.0.0.1:1", "s")
    core.track([_future(i) for i in range(1, 11)])
    request, adopts = core.watch_request()
    assert list(request.task_ids) == [1, 2, 3, 4]
    assert [list(a.adopt) for a in adopts] == [[5, 6, 7, 8], [9, 10]]
    assert all(a.session == "s" and not a.tasks for a in adopts)
    core.close()
