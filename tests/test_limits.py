"""Limits on every input (`heapd.runtime.limits`): each at its edge is accepted, one past it is
refused with INVALID_ARGUMENT or RESOURCE_EXHAUSTED and a message naming the limit, and the
cell is unharmed.

Most tests call the PLM's conversion functions directly (the limits apply there, before any
state changes); some run the TaskService in process on a real cell behind the interceptor every
role's server uses; a few run a real cell.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from heapd import Client, InvalidArgument, ResourceExhausted, shm
from heapd.options import (
    DEPENDENCIES_MAX,
    KEY_MAX_CHARS,
    LABEL_PART_MAX,
    LABELS_PER_TASK,
    PRIORITY_MAX,
    PRIORITY_MIN,
    RESOURCE_AMOUNT_MAX,
    RESOURCES_PER_TASK,
    RETRIES_MAX,
    RETRY_ON_MAX,
    TIMEOUT_MAX_S,
)
from heapd.plm import convert, service
from heapd.plm.daemon import Plm
from heapd.plm.held import COMPACT_AT, HeldResults
from heapd.plm.intake import Intake
from heapd.plm.sessions import Sessions
from heapd.runtime import config, status
from heapd.runtime.bench.cells import OpenCell
from heapd.runtime.limits import Limits, PeerStreams, peer_host
from heapd.runtime.server import SERVER_OPTIONS, server_options
from heapd.v1 import (
    register_service_pb2_grpc,
    task_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
    worker_service_pb2_grpc,
)
from tests.helpers import authed_channel, eventually

pb = task_service_pb2
SLEEP = task_pb2.TaskSpec(builtin=task_pb2.BuiltinCall(name="sleep"))
LIMITS = Limits()


def refused(message: str) -> Any:
    """Expect InvalidArgument whose text contains `message`."""
    return pytest.raises(InvalidArgument, match=re.escape(message))


def submit_one(session: str = "", spec: task_pb2.TaskSpec = SLEEP, **options: Any) -> Intake:
    request = pb.SubmitTaskRequest(
        spec=spec, options=task_pb2.TaskOptions(**options), session=session
    )
    return convert.submission_from_proto(request, LIMITS)


def command(**fields: Any) -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(command=task_pb2.CommandCall(**{"argv": ["true"], **fields}))


# --- strings


def test_a_session_name_up_to_max_name_bytes_is_accepted_one_byte_more_is_refused() -> None:
    edge = "é" * (LIMITS.max_name_bytes // 2)  # two bytes each: the limit counts bytes
    assert submit_one(edge).session == edge
    past = edge + "x"
    message = f"session: {LIMITS.max_name_bytes + 1} bytes, over the limit max_name_bytes=256"
    with refused(message):
        submit_one(past)
    with refused(message):
        convert.submissions_from_proto(pb.SubmitTasksRequest(session=past, acks=[1]), LIMITS)
    with refused(message):
        convert.watch_from_proto(pb.WatchTasksRequest(session=past), LIMITS)
    assert convert.watch_from_proto(pb.WatchTasksRequest(session=edge), LIMITS) == (edge, [])


def test_the_867_kb_session_name_of_the_fuzzer_is_refused() -> None:
    with refused("session: 867530 bytes, over the limit max_name_bytes=256"):
        submit_one("s" * 867_530)


def test_function_references_and_retry_on_names_are_bounded() -> None:
    def python(ref: str, retry_on: list[str] | None = None) -> task_pb2.TaskSpec:
        return task_pb2.TaskSpec(python=task_pb2.PythonCall(ref=ref), retry_on=retry_on or [])

    edge = "m:" + "f" * (LIMITS.max_ref_bytes - 2)
    submit_one(spec=python(edge))
    with refused("function reference: 1025 bytes, over the limit max_ref_bytes=1024"):
        submit_one(spec=python(edge + "f"))
    submit_one(spec=python("m:f", ["E" * LIMITS.max_ref_bytes]))
    with refused("retry_on[1]: 1025 bytes, over the limit max_ref_bytes=1024"):
        submit_one(spec=python("m:f", ["E", "E" * (LIMITS.max_ref_bytes + 1)]))
    submit_one(spec=python("m:f", ["E"] * RETRY_ON_MAX))
    with refused(f"retry_on: {RETRY_ON_MAX + 1} entries, over the limit of {RETRY_ON_MAX}"):
        submit_one(spec=python("m:f", ["E"] * (RETRY_ON_MAX + 1)))


def test_idempotency_keys_and_labels_are_bounded() -> None:
    submit_one(key="k" * KEY_MAX_CHARS)
    with refused(f"at most {KEY_MAX_CHARS} characters"):
        submit_one(key="k" * (KEY_MAX_CHARS + 1))
    submit_one(labels={"zone": "z" * LABEL_PART_MAX, "k" * LABEL_PART_MAX: "v"})
    with refused(f"at most {LABEL_PART_MAX} bytes"):
        submit_one(labels={"zone": "z" * (LABEL_PART_MAX + 1)})
    submit_one(labels={f"l{i}": "v" for i in range(LABELS_PER_TASK)})
    with refused(f"labels: {LABELS_PER_TASK + 1} entries, over the limit of {LABELS_PER_TASK}"):
        submit_one(labels={f"l{i}": "v" for i in range(LABELS_PER_TASK + 1)})


# --- numbers


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": PRIORITY_MAX}, None),
        ({"priority": PRIORITY_MAX + 1}, "priority"),
        ({"priority": PRIORITY_MIN}, None),
        ({"priority": PRIORITY_MIN - 1}, "priority"),
        ({"retries": RETRIES_MAX}, None),
        ({"retries": RETRIES_MAX + 1}, "retries"),
        ({"timeout_s": 0.0}, None),
        ({"timeout_s": TIMEOUT_MAX_S}, None),
        ({"timeout_s": TIMEOUT_MAX_S + 0.001}, "timeout"),
        ({"timeout_s": -0.001}, "timeout"),
        ({"timeout_s": float("inf")}, "timeout"),
        ({"timeout_s": float("nan")}, "timeout"),
        ({"resources": {"gpu": 0.0}}, None),
        ({"resources": {"gpu": RESOURCE_AMOUNT_MAX}}, None),
        ({"resources": {"gpu": RESOURCE_AMOUNT_MAX * 1.001}}, "gpu"),
        ({"resources": {"gpu": -0.001}}, "gpu"),
        ({"resources": {"gpu": float("inf")}}, "gpu"),
        ({"resources": {"gpu": float("nan")}}, "gpu"),
        ({"resources": {f"r{i}": 1.0 for i in range(RESOURCES_PER_TASK)}}, None),
        ({"resources": {f"r{i}": 1.0 for i in range(RESOURCES_PER_TASK + 1)}}, "resources: 9"),
    ],
)
def test_numeric_options_at_their_edges(options: dict[str, Any], message: str | None) -> None:
    if message is None:
        submit_one(**options)
    else:
        with refused(message):
            submit_one(**options)


def test_dependencies_are_counted_before_they_are_copied() -> None:
    task = submit_one(after=list(range(1, DEPENDENCIES_MAX + 1))).tasks[0]
    assert len(task.after) == DEPENDENCIES_MAX
    too_many = DEPENDENCIES_MAX * 1000 + 1
    with refused(f"after: {too_many} entries, over the limit of {DEPENDENCIES_MAX}"):
        submit_one(after=range(1, too_many + 1))


# --- counts per request (checked before the repeated field is walked)


def test_tasks_per_request_at_the_limit_and_one_past() -> None:
    small = Limits(max_tasks_per_request=3)
    item = pb.TaskSubmission(spec=SLEEP)
    intake = convert.submissions_from_proto(pb.SubmitTasksRequest(tasks=[item] * 3), small)
    assert len(intake.tasks) == 3
    with refused("tasks: 4 per request, over the limit max_tasks_per_request=3"):
        convert.submissions_from_proto(pb.SubmitTasksRequest(tasks=[item] * 4), small)


def test_too_many_tasks_are_refused_before_any_is_looked_at() -> None:
    """10,001 submissions that are each invalid: the count is what is refused, so none was
    converted."""
    count = LIMITS.max_tasks_per_request + 1
    request = pb.SubmitTasksRequest(tasks=[pb.TaskSubmission()] * count)
    with refused(f"tasks: {count} per request, over the limit max_tasks_per_request=10000"):
        convert.submissions_from_proto(request, LIMITS)


@pytest.mark.parametrize("field", ["acks", "adopt"])
def test_acks_and_adopted_ids_per_request(field: str) -> None:
    edge = LIMITS.max_ids_per_request
    ok = pb.SubmitTasksRequest(session="s", **{field: range(1, edge + 1)})
    assert len(getattr(convert.submissions_from_proto(ok, LIMITS), field)) == edge
    past = pb.SubmitTasksRequest(session="s", **{field: range(1, edge + 2)})
    with refused(f"{field}: {edge + 1} ids, over the limit max_ids_per_request=100000"):
        convert.submissions_from_proto(past, LIMITS)


def test_watch_task_ids_per_request() -> None:
    """The fuzzer's WatchTasks with 1.6 million ids stalled the PLM for 5 s: refused now, before
    one id is read."""
    edge = LIMITS.max_ids_per_request
    _, ids = convert.watch_from_proto(pb.WatchTasksRequest(session="s", task_ids=range(edge)))
    assert len(ids) == edge
    huge = pb.WatchTasksRequest(session="s", task_ids=range(1_600_000))
    with refused("task_ids: 1600000 ids, over the limit max_ids_per_request=100000"):
        convert.watch_from_proto(huge, LIMITS)


def test_list_tasks_state_filter_is_bounded() -> None:
    states = [task_pb2.TaskState.Value(s.name) for s in shm.TaskState if s != shm.TaskState.FREE]
    convert.list_from_proto(pb.ListTasksRequest(states=[*states, states[0]]))  # 8 entries
    with refused("states: 9 entries"):
        convert.list_from_proto(pb.ListTasksRequest(states=[*states, *states[:2]]))


# --- commands


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"argv": ["echo", "a\0b"]}, "argv[1] must not contain a NUL byte"),
        ({"env": {"K": "v\0"}}, "env['K'] must not contain a NUL byte"),
        ({"env": {"K\0": "v"}}, "env['K\\x00'] must not contain a NUL byte"),
        ({"env": {"A=B": "v"}}, "env key 'A=B' must be non-empty, without '='"),
        ({"env": {"": "v"}}, "env key '' must be non-empty"),
        ({"cwd": "/tmp\0/x"}, "cwd must not contain a NUL byte"),
    ],
)
def test_a_command_exec_would_refuse_is_refused_at_the_plm(
    fields: dict[str, Any], message: str
) -> None:
    with refused(message):
        submit_one(spec=command(**fields))


def test_the_client_refuses_the_same_commands_before_sending() -> None:
    from heapd.convert import command_spec

    assert command_spec(["echo", "x" * LIMITS.max_arg_bytes]).command.argv[1]
    with refused("argv[1] must not contain a NUL byte"):
        command_spec(["echo", "a\0b"])
    with refused("env key 'A=B' must be non-empty, without '='"):
        command_spec(["env"], env={"A=B": "1"})
    with refused("argv[1]: 131072 bytes, over the limit max_arg_bytes=131071"):
        command_spec(["echo", "x" * (LIMITS.max_arg_bytes + 1)])


def test_command_sizes_at_their_limits_and_one_past() -> None:
    arg = "a" * LIMITS.max_arg_bytes
    submit_one(spec=command(argv=["echo", arg]))
    with refused("argv[1]: 131072 bytes, over the limit max_arg_bytes=131071"):
        submit_one(spec=command(argv=["echo", arg + "a"]))
    value = "v" * (LIMITS.max_arg_bytes - 2)  # "K=" + value
    submit_one(spec=command(env={"K": value}))
    with refused("env['K']: 131072 bytes, over the limit max_arg_bytes=131071"):
        submit_one(spec=command(env={"K": value + "v"}))
    cwd = "/" + "d" * (LIMITS.max_cwd_bytes - 1)
    submit_one(spec=command(cwd=cwd))
    with refused("cwd: 4096 bytes, over the limit max_cwd_bytes=4095"):
        submit_one(spec=command(cwd=cwd + "d"))


def test_command_totals_and_stdin_at_their_limits_and_one_past() -> None:
    small = Limits(max_command_bytes=20, max_stdin_bytes=10)

    def check(spec: task_pb2.TaskSpec) -> None:
        convert.new_task_from_proto(spec, task_pb2.TaskOptions(), small)

    check(command(argv=["echo", "12345"], env={"K": "123456"}))  # 5 + 6 + 9 = 20 bytes
    with refused("command argv and env: 21 bytes, over the limit max_command_bytes=20"):
        check(command(argv=["echo", "12345"], env={"K": "1234567"}))
    with refused("command: 21 strings, over the limit max_command_bytes=20"):
        check(command(argv=["echo"] + [""] * 20))
    check(command(stdin=b"x" * 10))
    with refused("stdin: 11 bytes, over the limit max_stdin_bytes=10"):
        check(command(stdin=b"x" * 11))


# --- open streams per peer


def test_peer_streams_at_the_limit_and_one_past() -> None:
    streams = PeerStreams(Limits(max_streams_per_peer=2))
    with streams.opened("ipv4:10.0.0.7:4000"), streams.opened("ipv4:10.0.0.7:4001"):
        third = streams.opened("ipv4:10.0.0.7:4002")
        with pytest.raises(ResourceExhausted, match="max_streams_per_peer=2"):
            third.__enter__()
        with streams.opened("ipv4:10.0.0.8:4000"):  # another host has its own
            assert len(streams) == 3
    assert len(streams) == 0
    with streams.opened("ipv4:10.0.0.7:4003"):
        pass


def test_peer_host_drops_the_port_only() -> None:
    assert peer_host("ipv4:127.0.0.1:5312") == "ipv4:127.0.0.1"
    assert peer_host("ipv6:[::1]:5312") == "ipv6:[::1]"
    assert peer_host("unix:/run/heapd.sock") == "unix:/run/heapd.sock"


# --- the transport


def test_server_options_carry_the_transport_limits_first() -> None:
    """gRPC takes the first of an option given twice: the limits come before the channel
    options every role shares."""
    first: dict[str, Any] = {}
    for key, value in SERVER_OPTIONS:
        first.setdefault(key, value)
    assert first["grpc.max_receive_message_length"] == LIMITS.max_receive_bytes
    assert first["grpc.max_concurrent_streams"] == LIMITS.max_concurrent_streams
    assert first["grpc.http2.min_ping_interval_without_data_ms"] == LIMITS.min_ping_interval_ms
    assert first["grpc.http2.max_ping_strikes"] == LIMITS.max_ping_strikes


def test_a_configured_limit_reaches_the_server_options() -> None:
    """`[plm] max_receive_bytes` (HEAPD_PLM_MAX_RECEIVE_BYTES) sets the PLM's gRPC option."""
    limits = config.load(Limits, "plm", {}, {"HEAPD_PLM_MAX_RECEIVE_BYTES": "4096"})
    first: dict[str, Any] = {}
    for key, value in server_options(limits):
        first.setdefault(key, value)
    assert first["grpc.max_receive_message_length"] == 4096


@asynccontextmanager
async def health_server(options: list[tuple[str, Any]]) -> AsyncIterator[str]:
    """A server with only the health service, with these options: its address."""
    server = grpc.aio.server(options=options)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def test_a_request_at_max_receive_bytes_is_read_one_byte_more_is_refused() -> None:
    limit = 1000
    overhead = len(health_pb2.HealthCheckRequest(service="x" * 200).SerializeToString()) - 200

    async def main() -> None:
        async with (
            health_server(Limits(max_receive_bytes=limit).server_options()) as address,
            grpc.aio.insecure_channel(address) as channel,
        ):
            check = health_pb2_grpc.HealthStub(channel).Check
            with pytest.raises(grpc.aio.AioRpcError) as unknown:  # read, and answered
                await check(health_pb2.HealthCheckRequest(service="x" * (limit - overhead)))
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as big:
                await check(health_pb2.HealthCheckRequest(service="x" * (limit - overhead + 1)))
            assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"{limit + 1} vs. {limit}" in (big.value.details() or "")

    asyncio.run(main())


def test_a_client_pinging_too_often_is_cut_off() -> None:
    """Pings every 100 ms on an idle stream, against a minimum of 5 s: a few strikes and the
    server closes the connection (GOAWAY too_many_pings)."""
    pinging = [
        ("grpc.keepalive_time_ms", 100),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]

    async def main() -> None:
        async with (
            health_server(SERVER_OPTIONS) as address,
            grpc.aio.insecure_channel(address, options=pinging) as channel,
        ):
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=60
            )
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                async for _ in watch:
                    pass
            assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "Too many pings" in (cut.value.details() or "")

    asyncio.run(main())


# --- the TaskService in process, behind the DecodeGuard


@pytest.fixture
def cell(cell_name: str) -> Iterator[shm.Cell]:
    caps = shm.Capacities(tasks=256, workers=4, arena_bytes=1 << 18, max_blob_bytes=1 << 14)
    with shm.Cell.create(cell_name, caps) as c:
        yield c


@asynccontextmanager
async def serving(
    cell: shm.Cell, limits: Limits = LIMITS, ttl_s: float = 60.0
) -> AsyncIterator[tuple[Plm, grpc.aio.Channel]]:
    """A Plm on `cell`, its TaskService (and every other service, for the guard) on a server
    with the DecodeGuard: (the Plm, a channel to it)."""
    async with Plm(cell, ttl_s, convert.cancel_on_worker, convert.DEPENDENCY_MESSAGES) as plm:
        server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[status.DecodeGuard()])
        service.registration(plm, limits)(server)
        # The generated bases answer UNIMPLEMENTED: enough to show a request that does not
        # parse never reaches any servicer.
        register_service_pb2_grpc.add_RegisterServiceServicer_to_server(
            register_service_pb2_grpc.RegisterServiceServicer(), server
        )
        worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(
            worker_service_pb2_grpc.WorkerServiceServicer(), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        reflection.enable_server_reflection([service.SERVICE_NAME, reflection.SERVICE_NAME], server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield plm, channel
        finally:
            await server.stop(None)


def every_method() -> list[tuple[str, bool, bool]]:
    """(path, client streaming, server streaming) of every RPC of heapd's services and of the
    health and reflection services."""
    from grpc_reflection.v1alpha import reflection_pb2

    from heapd.v1 import register_service_pb2, worker_service_pb2

    out = []
    for module in (task_service_pb2, register_service_pb2, worker_service_pb2):
        for svc in module.DESCRIPTOR.services_by_name.values():
            out += [
                (f"/{svc.full_name}/{m.name}", m.client_streaming, m.server_streaming)
                for m in svc.methods
            ]
    for svc in (
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    ):
        out += [
            (f"/{svc.full_name}/{m.name}", m.client_streaming, m.server_streaming)
            for m in svc.methods
        ]
    return out


async def send_raw(
    channel: grpc.aio.Channel, method: str, streams: tuple[bool, bool], data: bytes
) -> grpc.StatusCode:
    """Send `data` as the request of `method` (unparsed: no serializer); the call's code."""
    client_streaming, server_streaming = streams
    try:
        if client_streaming and server_streaming:
            async for _ in channel.stream_stream(method)(iter([data]), timeout=10):
                pass
        elif client_streaming:
            await channel.stream_unary(method)(iter([data]), timeout=10)
        elif server_streaming:
            async for _ in channel.unary_stream(method)(data, timeout=10):
                pass
        else:
            await channel.unary_unary(method)(data, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


GARBAGE = b"\xff\xff\xff\xff\x0f"
BARE = ("/heapd.v1.RegisterService/", "/heapd.v1.WorkerService/")  # served by bare bases


def test_garbage_is_invalid_argument_on_every_rpc_with_one_log_line(
    cell: shm.Cell, caplog: pytest.LogCaptureFixture
) -> None:
    """Bytes that parse as no message, to every RPC of every service, unary and streaming:
    INVALID_ARGUMENT each time, no traceback, one warning in all; the PLM serves on. (The
    register's and worker's streamed requests need their daemons to be read; the PLM's
    SubmitStream and reflection's stream stand for them.)"""
    methods = every_method()
    assert len(methods) > 12

    async def main() -> None:
        async with serving(cell) as (plm, channel):
            for method, client_streaming, server_streaming in methods:
                if client_streaming and method.startswith(BARE):
                    continue  # a bare base never reads its stream, so never meets the garbage
                for _ in range(3):
                    code = await send_raw(
                        channel, method, (client_streaming, server_streaming), GARBAGE
                    )
                    assert code == grpc.StatusCode.INVALID_ARGUMENT, method
            stub = task_service_pb2_grpc.TaskServiceStub(channel)
            reply = await stub.SubmitTask(pb.SubmitTaskRequest(spec=SLEEP, session="s"))
            assert reply.task_id
            assert plm.holding()[3] == 0  # no stream left open

    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["refused requests that do not parse"]


def test_a_stream_ends_invalid_argument_at_its_first_garbage_message(cell: shm.Cell) -> None:
    """SubmitStream: the request before the garbage is taken and answered, the servicer sees
    the stream end there, the call ends INVALID_ARGUMENT, and the one after is never read."""
    good = pb.SubmitTasksRequest(session="s", tasks=[pb.TaskSubmission(spec=SLEEP)])

    async def main() -> None:
        async with serving(cell) as (plm, channel):
            call = channel.stream_stream("/heapd.v1.TaskService/SubmitStream")(
                iter([good.SerializeToString(), GARBAGE, good.SerializeToString()]), timeout=10
            )
            answers = []
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                async for answer in call:
                    answers.append(answer)
            assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "SubmitStream" in (ended.value.details() or "")
            assert len(answers) == 1
            assert plm.stats()[0].submitted_total == 1

    asyncio.run(main())


def test_log_every_reports_once_per_interval_with_the_count() -> None:
    now = [0.0]
    every = status.LogEvery(60.0, clock=lambda: now[0])
    assert every.due() == 1
    assert [every.due() for _ in range(5)] == [0] * 5
    now[0] = 60.0
    assert every.due() == 6


def test_watch_streams_per_peer_through_the_service(cell: shm.Cell) -> None:
    """Two WatchTasks open from this host: a third is RESOURCE_EXHAUSTED naming the limit;
    once one closes, a new one opens."""

    async def main() -> None:
        async with serving(cell, Limits(max_streams_per_peer=2)) as (plm, channel):
            stub = task_service_pb2_grpc.TaskServiceStub(channel)
            [task_id] = await plm.submit(Intake("a", [shm.NewTask(SLEEP.SerializeToString())]))
            cell.cancel(task_id, time.time())
            opened = []
            for session in ("a", "b"):
                call = stub.WatchTasks(pb.WatchTasksRequest(session=session, task_ids=[task_id]))
                await call.read()  # open: it delivered the settled task
                opened.append(call)
            third = stub.WatchTasks(pb.WatchTasksRequest(session="c"))
            with pytest.raises(grpc.aio.AioRpcError) as refused_:
                await third.read()
            assert refused_.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_streams_per_peer=2" in (refused_.value.details() or "")
            opened[0].cancel()
            await eventually(lambda: plm.holding()[3] == 1)
            again = stub.WatchTasks(pb.WatchTasksRequest(session="c", task_ids=[task_id]))
            assert (await again.read()).results[0].task_id == task_id
            again.cancel()
            opened[1].cancel()

    asyncio.run(main())


def test_an_oversized_session_is_refused_on_every_submit_path_and_nothing_is_kept(
    cell: shm.Cell,
) -> None:
    long = "s" * (LIMITS.max_name_bytes + 1)
    batch = pb.SubmitTasksRequest(session=long, tasks=[pb.TaskSubmission(spec=SLEEP)])

    async def main() -> None:
        async with serving(cell) as (plm, channel):
            stub = task_service_pb2_grpc.TaskServiceStub(channel)
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: stub.SubmitTask(pb.SubmitTaskRequest(spec=SLEEP, session=long)),
                lambda: stub.SubmitTasks(batch),
            ]
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call()
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "max_name_bytes=256" in (info.value.details() or "")
            [answer] = [a async for a in stub.SubmitStream(iter([batch]))]
            assert answer.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert "max_name_bytes=256" in answer.error_message
            with pytest.raises(grpc.aio.AioRpcError) as watched:
                await stub.WatchTasks(pb.WatchTasksRequest(session=long)).read()
            assert watched.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert plm.stats()[0].submitted_total == 0
            assert plm.holding()[2] == 0  # no session kept

    asyncio.run(main())


# --- results of sessions whose client went away


def test_held_results_queue_stays_bounded_when_results_are_handed_on() -> None:
    """Results held then discarded (delivered, acknowledged) leave stale deadline entries; they
    are compacted rather than kept for the whole TTL."""

    async def main() -> None:
        held = HeldResults(600.0, lambda ids: None, asyncio.get_running_loop())
        for start in range(0, 200_000, 1000):
            batch = range(start, start + 1000)
            held.hold_many(batch)
            held.discard(batch)
        assert len(held) == 0
        assert held.queued() <= COMPACT_AT + 1000
        held.hold_many([1, 2])
        held.hold_many([1])  # held again: its first entry is stale
        held.discard([2])
        assert len(held) == 1
        held.close()

    asyncio.run(main())


def test_a_result_queued_in_two_sessions_is_forgotten_in_both() -> None:
    """Adopted by a second session before the first took it: each may deliver it, and its
    release leaves neither session holding it (an idle session is dropped)."""
    sessions = Sessions()
    sessions.own("first", [7])
    first = sessions.settle(7)
    sessions.own("second", [7])
    second = sessions.settle(7)
    assert first is not None and second is not None
    assert list(first.queued) == list(second.queued) == [7]
    sessions.forget([7])
    assert len(sessions) == 0
    sessions.own("first", [8])
    sessions.settle(8)
    sessions.own("second", [8])
    sessions.settle(8)
    first = sessions.attach("first")
    assert sessions.take(first) == [8]
    sessions.detach(first)
    sessions.forget([8])
    assert len(sessions) == 0


def test_results_behind_a_stream_that_stopped_reading_are_released_after_the_ttl(
    cell: shm.Cell,
) -> None:
    """A client abandoned its WatchTasks call without closing it: once gRPC's buffers are full
    the stream's write never completes, and results that settle for its session queue behind
    it. They must still be released when the TTL runs out."""

    async def main() -> None:
        async with Plm(cell, 0.2, convert.cancel_on_worker, convert.DEPENDENCY_MESSAGES) as plm:
            [first, second] = await plm.submit(
                Intake("stuck", [shm.NewTask(SLEEP.SerializeToString())] * 2)
            )
            stream = plm.watch("stuck", [])
            reading = asyncio.ensure_future(anext(stream))
            cell.cancel(first, time.time())
            await reading  # delivered; the stream is now "writing" and never comes back
            cell.cancel(second, time.time())
            await eventually(lambda: released(cell, second), timeout_s=3.0)
            await stream.aclose()

    asyncio.run(main())


def released(cell: shm.Cell, task_id: int) -> bool:
    try:
        cell.get(task_id)
    except shm.TaskNotFound:
        return True
    return False


# --- a real cell


def test_limits_through_a_real_cell(open_cell: OpenCell) -> None:
    """An 867 KB session and a command with a NUL byte are refused by a real PLM; a session at
    the limit runs a task; the cell stays consistent (the fixture checks it)."""
    with open_cell("limits", 1, 1, ()) as cell:
        with authed_channel(cell.address) as channel:
            stub = task_service_pb2_grpc.TaskServiceStub(channel)
            for request, message in [
                (pb.SubmitTaskRequest(spec=SLEEP, session="s" * 867_530), "max_name_bytes=256"),
                (pb.SubmitTaskRequest(spec=command(argv=["a\0"])), "NUL byte"),
            ]:
                with pytest.raises(grpc.RpcError) as info:
                    stub.SubmitTask(request, timeout=10)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert message in info.value.details()
        with Client(cell.address, session="s" * LIMITS.max_name_bytes) as client:
            assert client.submit_builtin("sleep", seconds=0).result(timeout=30) is not None
            assert client.cluster_status().submitted_total == 1


def test_garbage_to_a_real_plm_is_invalid_argument(open_cell: OpenCell) -> None:
    with open_cell("garbage", 0, 1, ()) as cell, authed_channel(cell.address) as channel:
        call = channel.unary_unary("/heapd.v1.TaskService/GetTask")
        with pytest.raises(grpc.RpcError) as info:
            call(GARBAGE, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
