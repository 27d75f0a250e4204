"""Fuzzing (issue 10): well-formed but random requests and byte-level garbage to every RPC of
every service of a real cell, authenticated; afterwards every daemon is the process it was,
the shared memory is consistent, and a plain task runs. Also: the Guard that keeps the fuzz
from running harmful tasks or acting for real workers does its job (no cell needed).

hypothesis runs derandomized and without its example database: the same requests every run,
nothing written to the repository.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
from typing import Any

import cloudpickle
import grpc
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, Phase, given, settings

from heapd.runtime.bench.fuzz import Fuzzer
from heapd.runtime.bench.fuzz_guard import (
    ABSENT,
    CPU_CAPS,
    ENV_PREFIX,
    NOT_A_MESSAGE,
    NOT_A_PICKLE,
    SLEEP_CAP_S,
    Guard,
)
from heapd.runtime.bench.fuzz_requests import (
    HARMLESS_PROGRAMS,
    NOOP_REF,
    RPCS,
    RPCS_BY_NAME,
    TEST_SIZES,
    Request,
    basic_requests,
    extreme_requests,
    message,
    requests,
)
from heapd.runtime.bench.workloads import noop
from heapd.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc, worker_service_pb2
from tests.conftest import StartCell

EXAMPLES = 250  # hypothesis-drawn requests, after the basic and extreme ones
REAL_WORKERS = (1, 2)  # ids of real workers, for the Guard: small ones, which draws often hit
SETTINGS = settings(
    deadline=None,
    database=None,
    derandomize=True,
    phases=(Phase.generate,),
    suppress_health_check=list(HealthCheck),
)


# --- the guard (no cell)


class _NamesGlobal(Exception):
    """A pickle being loaded reached a global it may not use."""


class _Recorder(pickle.Unpickler):
    """Loads a pickle without importing anything: `allowed` globals become a harmless stand-in,
    any other raises _NamesGlobal, which is exactly where a real load would import it."""

    allowed: frozenset[str] = frozenset()

    def find_class(self, module: str, name: str) -> Any:
        if f"{module}.{name}" in self.allowed:
            return lambda *args, **kwargs: None
        raise _NamesGlobal(f"{module}.{name}")


def _loads_only(data: bytes, allowed: frozenset[str] = frozenset()) -> bool:
    """Whether loading the pickle could reach no global but `allowed` ones."""
    recorder = _Recorder(io.BytesIO(data))
    recorder.allowed = allowed
    try:
        recorder.load()
    except _NamesGlobal:
        return False
    except Exception:
        pass  # it fails before any global: so does the real load
    return True


def _spec_problems(spec: task_pb2.TaskSpec) -> list[str]:
    """What in a task spec could do harm if the cell ran it."""
    return [
        *_command_problems(spec.command),
        *_python_problems(spec.python),
        *_builtin_problems(spec.builtin),
        *(p for dependency in spec.inputs for p in _dependency_problems(dependency)),
    ]


def _command_problems(command: task_pb2.CommandCall) -> list[str]:
    program = command.argv[0] if command.argv else "true"
    problems = [f"sets env {name!r}" for name in command.env if not name.startswith(ENV_PREFIX)]
    absent = program.startswith(ABSENT) and "/" not in program
    if program not in HARMLESS_PROGRAMS and not absent:
        problems.append(f"runs {program!r}")
    return problems


def _python_problems(python: task_pb2.PythonCall) -> list[str]:
    problems = []
    ref = python.ref if python.WhichOneof("target") == "ref" else NOOP_REF
    if ref != NOOP_REF and not ref.startswith(ABSENT):
        problems.append(f"imports {ref!r}")
    if not _loads_only(python.pickled_callable, frozenset({NOOP_REF.replace(":", ".")})):
        problems.append("loads a pickled callable other than noop")
    if not _loads_only(python.pickled_args):
        problems.append("loads pickled arguments that name globals")
    return problems


def _builtin_problems(builtin: task_pb2.BuiltinCall) -> list[str]:
    caps = {"sleep": {"seconds": SLEEP_CAP_S}, "cpu": CPU_CAPS}.get(builtin.name, {})
    return [
        f"{builtin.name} with {name}={builtin.params[name]}"
        for name, cap in caps.items()
        if cap < builtin.params.get(name, 0.0) <= 1e7
    ]


def _dependency_problems(dependency: task_pb2.DependencyResult) -> list[str]:
    try:
        outcome = task_pb2.TaskOutcome.FromString(dependency.outcome)
    except DecodeError:
        return []
    return [] if _loads_only(outcome.pickled_value) else ["a dependency's value names globals"]


def _specs(message: Message) -> list[task_pb2.TaskSpec]:
    """Every task spec a request carries (an Assignment's as bytes)."""
    found = []
    if isinstance(message, task_pb2.TaskSpec):
        found.append(message)
    if isinstance(message, worker_service_pb2.Assignment):
        with contextlib.suppress(DecodeError):
            found.append(task_pb2.TaskSpec.FromString(message.spec))
    for fd, value in message.ListFields():
        if fd.message_type is not None and not fd.message_type.GetOptions().map_entry:
            for one in value if fd.is_repeated else (value,):
                found += _specs(one)
    return found


def _problems(request: Request, payload: bytes | None) -> list[str]:
    """What the payload sent for `request` could do to the cell."""
    rpc = request.rpc
    if payload is None:
        return []
    try:
        sent = rpc.request.FromString(payload)
    except DecodeError:
        return []  # the server refuses it before acting
    if rpc.name == "WorkerService/Drain":
        return ["a Drain that parses"]
    problems = [p for spec in _specs(sent) for p in _spec_problems(spec)]
    worker_id = getattr(sent, "worker_id", None)
    if worker_id in REAL_WORKERS:
        problems.append(f"acts for real worker {worker_id}")
    if rpc.name == "WorkerService/CancelTask" and sent.task_id < 1 << 40:
        problems.append(f"cancels task {sent.task_id} on a worker")
    return problems


@settings(SETTINGS, max_examples=300)
@given(requests(TEST_SIZES))
def test_the_guard_lets_nothing_harmful_through(request: Request) -> None:
    guard = Guard(REAL_WORKERS)
    for item in request.messages:
        assert _problems(request, guard.payload(request.rpc, item)) == []


@settings(SETTINGS, max_examples=300)
@given(message(task_pb2.TaskSpec.DESCRIPTOR, TEST_SIZES))
def test_the_guard_leaves_no_task_spec_harmful(spec: task_pb2.TaskSpec) -> None:
    Guard(REAL_WORKERS).defuse(spec)
    assert _spec_problems(spec) == []


def test_the_guard_rewrites_what_would_do_harm() -> None:
    guard = Guard(REAL_WORKERS)
    submit = RPCS_BY_NAME["TaskService/SubmitTask"]
    rm = task_service_pb2.SubmitTaskRequest(
        spec=task_pb2.TaskSpec(
            command=task_pb2.CommandCall(argv=["/bin/rm", "-rf", "/x"], env={"PATH": "/tmp"})
        )
    )
    sent = task_service_pb2.SubmitTaskRequest.FromString(guard.payload(submit, rm) or b"")
    assert sent.spec.command.argv[0] == ABSENT + "_bin_rm"
    assert dict(sent.spec.command.env) == {ENV_PREFIX + "PATH": "/tmp"}
    # the same request as garbage bytes: it parses, so it is made unparseable
    raw = rm.SerializeToString()
    assert guard.payload(submit, raw) == NOT_A_MESSAGE + raw
    # a pickled callable other than noop is never loadable
    evil = task_service_pb2.SubmitTaskRequest(
        spec=task_pb2.TaskSpec(python=task_pb2.PythonCall(pickled_callable=pickle.dumps(os.system)))
    )
    sent = task_service_pb2.SubmitTaskRequest.FromString(guard.payload(submit, evil) or b"")
    assert sent.spec.python.pickled_callable.startswith(NOT_A_PICKLE)
    kept = task_service_pb2.SubmitTaskRequest(
        spec=task_pb2.TaskSpec(python=task_pb2.PythonCall(pickled_callable=cloudpickle.dumps(noop)))
    )
    assert guard.payload(submit, kept) == kept.SerializeToString()
    # never a Drain that a worker would obey
    drain = RPCS_BY_NAME["WorkerService/Drain"]
    assert guard.payload(drain, worker_service_pb2.DrainRequest()) is None
    assert guard.payload(drain, b"") == NOT_A_MESSAGE


def test_every_rpc_of_every_service_is_fuzzed() -> None:
    assert {rpc.name for rpc in RPCS} == {
        *(f"TaskService/{m}" for m in ("SubmitTask", "SubmitTasks", "SubmitStream", "GetTask")),
        *(f"TaskService/{m}" for m in ("WatchTasks", "CancelTask", "ListTasks")),
        "TaskService/GetClusterStatus",
        *(f"RegisterService/{m}" for m in ("RegisterWorker", "Heartbeat", "Deregister")),
        *(f"WorkerService/{m}" for m in ("AssignTasks", "AssignStream", "CancelTask", "Drain")),
    }
    kinds = {(r.rpc.name, r.garbage) for r in basic_requests()}
    assert kinds == {(rpc.name, garbage) for rpc in RPCS for garbage in (False, True)}


# --- a real cell


def test_fuzzed_requests_leave_the_cell_whole(start_cell: StartCell) -> None:
    cell = start_cell(workers=1, slots=2, extra_args=("--result-ttl-s", "1"))
    with Fuzzer(cell) as fuzzer:
        fuzzer.send_all(basic_requests())
        fuzzer.send_all(extreme_requests(TEST_SIZES))

        @settings(SETTINGS, max_examples=EXAMPLES)
        @given(requests(TEST_SIZES))
        def fuzzed(request: Request) -> None:
            fuzzer.send(request)

        fuzzed()
        report = fuzzer.finish()
    figures = json.dumps(report.figures(), indent=1, default=str)  # what a failure shows
    assert report.errors == [], "the fuzzer itself failed"
    codes = report.tally.codes
    assert codes["structured"]["UNAUTHENTICATED"] == codes["garbage"]["UNAUTHENTICATED"] == 0, (
        "every call carries the cell's token: the fuzz must get past the interceptor"
    )
    assert report.crashed == [], figures
    assert report.stall == "", figures
    assert report.fsck == [], figures
    assert report.normal_task == "ok", figures
    assert report.leftover_tasks == 0, figures
    # A well-formed request is answered with a status that says what is wrong with it, never
    # INTERNAL or UNKNOWN (a server bug); garbage too (INVALID_ARGUMENT: it did not parse).
    assert dict(report.tally.findings["structured"]) == {}, figures
    assert dict(report.tally.findings["garbage"]) == {}, figures
    reached = report.tally.reached()
    assert all("garbage" in kinds for kinds in reached.values()), reached
    assert all("structured" in k for n, k in reached.items() if n != "WorkerService/Drain")
    assert not [k for k in report.tally.in_band if k.endswith("ACCEPTED")], "a real worker took"


def test_an_ack_past_int64_leaves_the_plm_taking_tasks(start_cell: StartCell) -> None:
    """Found by the fuzz: acks are uint64, the journal's ids SQLite's signed INTEGER; an ack
    of 2**63 or more stopped the PLM's journal writer for good, and with it every submission."""
    cell = start_cell(workers=1, slots=1)
    sleep = task_service_pb2.SubmitTaskRequest(
        spec=task_pb2.TaskSpec(builtin=task_pb2.BuiltinCall(name="sleep")), session="s"
    )
    acks = task_service_pb2.SubmitTasksRequest(session="s", acks=[2**63, 2**64 - 1])
    with cell.security.channel(cell.address, []) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        try:
            stub.SubmitTasks(acks, timeout=30)
        except grpc.RpcError as exc:  # refused is fine; no answer at all is not
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
        assert stub.SubmitTask(sleep, timeout=30).task_id
