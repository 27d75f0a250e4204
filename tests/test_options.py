"""Task options are checked once (`heapd.options`), with one error type, before anything is sent."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from heapd import AsyncClient, Client, HeapdError, InvalidArgument, convert
from heapd.options import (
    CPUS_MAX,
    PRIORITY_MAX,
    PRIORITY_MIN,
    RETRIES_MAX,
    RETRY_ON_MAX,
    TIMEOUT_MAX_S,
    TaskOptions,
    priority_from_name,
    retry_on_names,
    task_options,
)
from tests import tasks_for_tests as t
from tests.conftest import StartCell


class Transient(Exception):
    """An exception class of this module, named by `retry_on`."""


@pytest.mark.parametrize(
    ("given", "level"),
    [
        (PRIORITY_MIN, PRIORITY_MIN),
        (PRIORITY_MAX, PRIORITY_MAX),
        (0, 0),
        ("high", 100),
        ("medium", 0),
        ("low", -100),
        (" HIGH ", 100),
        ("42", 42),
        ("-7", -7),
    ],
)
def test_priority_accepts_integers_in_range_and_names(given: int | str, level: int) -> None:
    assert task_options(priority=given).priority == level
    assert priority_from_name(given) == level


@pytest.mark.parametrize(
    "given", [PRIORITY_MIN - 1, PRIORITY_MAX + 1, "40000", "urgent", "", True, 1.5, None, b"1"]
)
def test_priority_out_of_range_or_unnamed_is_refused(given: Any) -> None:
    with pytest.raises(InvalidArgument, match="priority"):
        task_options(priority=given)


@pytest.mark.parametrize("given", [0, 1, RETRIES_MAX])
def test_retries_in_range(given: int) -> None:
    assert task_options(retries=given).retries == given


@pytest.mark.parametrize("given", [-1, RETRIES_MAX + 1, 1.0, True, "3", None])
def test_retries_out_of_range_or_not_an_integer_is_refused(given: Any) -> None:
    with pytest.raises(InvalidArgument, match="retries"):
        task_options(retries=given)


@pytest.mark.parametrize(
    ("given", "seconds"),
    [(None, 0.0), (0, 0.0), (2.5, 2.5), (3, 3.0), (TIMEOUT_MAX_S, TIMEOUT_MAX_S)],
)
def test_timeout_none_or_zero_means_none_and_is_a_float(given: Any, seconds: float) -> None:
    checked = task_options(timeout_s=given)
    assert checked.timeout_s == seconds and type(checked.timeout_s) is float


@pytest.mark.parametrize(
    "given", [-1, -0.001, math.nan, math.inf, -math.inf, TIMEOUT_MAX_S + 1, True, False, "5"]
)
def test_timeout_negative_infinite_nan_bool_or_text_is_refused(given: Any) -> None:
    with pytest.raises(InvalidArgument, match="timeout"):
        task_options(timeout_s=given)


@pytest.mark.parametrize("given", [1, 2, CPUS_MAX])
def test_cpus_in_range_is_the_cpus_resource(given: int) -> None:
    assert task_options(cpus=given).resources == {"cpus": given}


@pytest.mark.parametrize("given", [None, 0])
def test_no_cpus_is_no_need(given: int | None) -> None:
    assert task_options(cpus=given).resources == {}


@pytest.mark.parametrize("given", [-1, CPUS_MAX + 1, 2.0, True, "2"])
def test_cpus_out_of_range_or_not_an_integer_is_refused(given: Any) -> None:
    with pytest.raises(InvalidArgument, match="cpus"):
        task_options(cpus=given)


def test_defaults_are_the_plain_options() -> None:
    assert task_options() == TaskOptions(priority=0, retries=0, timeout_s=0.0)
    assert task_options().resources == {} and task_options().labels == {}


def test_retry_on_becomes_names() -> None:
    assert retry_on_names([KeyError, "pkg.mod.Custom", Transient]) == [
        "builtins.KeyError",
        "pkg.mod.Custom",
        "tests.test_options.Transient",
    ]
    assert retry_on_names(["x"] * RETRY_ON_MAX) == ["x"] * RETRY_ON_MAX


@pytest.mark.parametrize("given", ["KeyError", [int], [""], [None], ["x"] * (RETRY_ON_MAX + 1), 3])
def test_bad_retry_on_is_refused(given: Any) -> None:
    with pytest.raises(InvalidArgument, match="retry_on"):
        retry_on_names(given)


def test_one_error_type_for_every_bound() -> None:
    assert issubclass(InvalidArgument, HeapdError) and issubclass(InvalidArgument, ValueError)
    wire = convert.options(priority="low", retries=2, timeout_s=1.5, cpus=3, labels={"z": "a"})
    assert (wire.priority, wire.retries, wire.timeout_s) == (-100, 2, 1.5)
    assert (dict(wire.resources), dict(wire.labels)) == ({"cpus": 3.0}, {"z": "a"})
    with pytest.raises(InvalidArgument, match="priority"):
        convert.options(priority=PRIORITY_MAX + 1)


# Bad options for each client method; none of them may reach the cell.
BAD: list[dict[str, Any]] = [
    {"priority": PRIORITY_MAX + 1},
    {"priority": "urgent"},
    {"retries": -1},
    {"timeout": math.nan},
    {"timeout": -1},
    {"cpus": -1},
    {"resources": {"gpu": -1}},
    {"labels": {"zone": ""}},
]

SYNC: list[Callable[[Client, dict[str, Any]], object]] = [
    lambda client, bad: client.submit(t.square, 1, **bad),
    lambda client, bad: client.submit_command(["true"], **bad),
    lambda client, bad: client.submit_builtin("sleep", seconds=0, **bad),
    lambda client, bad: client.map(t.square, [1, 2], **bad),
]

ASYNC: list[Callable[[AsyncClient, dict[str, Any]], Awaitable[object]]] = [
    lambda client, bad: client.submit(t.square, 1, **bad),
    lambda client, bad: client.submit_command(["true"], **bad),
    lambda client, bad: client.submit_builtin("sleep", seconds=0, **bad),
    lambda client, bad: client.map(t.square, [1, 2], **bad),
]


def test_both_clients_refuse_bad_options_before_sending(start_cell: StartCell) -> None:
    cell = start_cell(workers=0)
    with Client(cell.address) as client:
        for bad in BAD:
            for submit in SYNC:
                with pytest.raises(InvalidArgument):
                    submit(client, bad)
        with pytest.raises(InvalidArgument, match="retry_on"):
            client.submit(t.square, 1, retry_on="KeyError")
        assert client.cluster_status().submitted_total == 0

    async def run() -> None:
        async with AsyncClient(cell.address) as client:
            for bad in BAD:
                for submit in ASYNC:
                    with pytest.raises(InvalidArgument):
                        await submit(client, bad)
            assert (await client.cluster_status()).submitted_total == 0

    asyncio.run(run())
