"""What keeps the fuzz (`heapd.runtime.bench.fuzz`) from harming the cell it tests: a task is
code, so a fuzzed request must never run a harmful one, stop a worker, or act for a real one.

`Guard.payload` rewrites a drawn request before it is sent, and garbage that happens to parse
into something it would rewrite is made unparseable (a leading field number 0):

- commands run only `true` or `false`: any other program name becomes one no PATH holds, and
  the names of their environment variables are prefixed (no PATH, no LD_PRELOAD);
- pickles (callables, arguments, dependency results) load only plain data, or the bench's
  `noop`; any other function reference names a package that does not exist;
- builtins sleep and compute for a moment at most;
- WorkerService requests never carry a real worker's id (so they are refused and never run a
  task), its CancelTask never names a task id in use, and its Drain (which ends a worker) is
  never sent in a form that parses; Heartbeat and Deregister never name a real worker.
"""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.message import DecodeError, Message

from heapd.runtime.bench.fuzz_requests import HARMLESS_PROGRAMS, NOOP_REF, Rpc
from heapd.runtime.bench.workloads import noop
from heapd.v1 import task_pb2, worker_service_pb2

ABSENT = "heapd_fuzz_absent_"  # no module or program has this prefix: importing it fails
ENV_PREFIX = "HEAPD_FUZZ_"  # a task's environment never sets PATH, LD_PRELOAD, ...
NOT_A_PICKLE = b"\xff"  # no pickle opcode: a payload starting with it fails to load
NOT_A_MESSAGE = b"\x00"  # field number 0: a request starting with it fails to parse
SLEEP_CAP_S = 0.05
CPU_CAPS = {"steps": 20.0, "size": 256.0}


class _PlainData(pickle.Unpickler):
    """Loads a pickle only if it names no global beyond the allowed ones."""

    allowed: frozenset[tuple[str, str]] = frozenset()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")


class _Noop(_PlainData):
    allowed = frozenset({(noop.__module__, noop.__qualname__)})


def _harmless_pickle(data: bytes, loader: type[_PlainData] = _PlainData) -> bool:
    """Whether `data` is empty, can never load, or loads nothing but plain data."""
    if not data or data.startswith(NOT_A_PICKLE):
        return True
    try:
        loader(io.BytesIO(data)).load()
    except Exception:
        return False
    return True


def _disarm(data: bytes, loader: type[_PlainData] = _PlainData) -> bytes:
    return data if _harmless_pickle(data, loader) else NOT_A_PICKLE + data


class Guard:
    """What the fuzz must not do to the cell it runs against: rewrites requests that could run
    a harmful task, stop a worker, or act for a real worker (see the module's docstring)."""

    def __init__(self, worker_ids: Sequence[int]) -> None:
        self.worker_ids = frozenset(worker_ids)
        self._fixes: dict[str, Callable[[Any], None]] = {
            "heapd.v1.PythonCall": self._python,
            "heapd.v1.CommandCall": self._command,
            "heapd.v1.BuiltinCall": self._builtin,
            "heapd.v1.DependencyResult": self._dependency,
            "heapd.v1.Assignment": self._assignment,
            "heapd.v1.AssignTasksRequest": self._not_a_real_worker,
            "heapd.v1.HeartbeatRequest": self._not_a_real_worker,
            "heapd.v1.DeregisterRequest": self._not_a_real_worker,
            "heapd.v1.WorkerCancelRequest": self._no_task_in_use,
        }

    def payload(self, rpc: Rpc, item: Message | bytes) -> bytes | None:
        """What to send for `item`: its serialization made harmless; None if it cannot be."""
        if isinstance(item, bytes):
            return self._garbage(rpc, item)
        if rpc.method == "Drain":
            return None  # a well-formed Drain makes the worker leave the cell
        safe = copy.deepcopy(item)
        self.defuse(safe)
        return bytes(safe.SerializeToString())

    def _garbage(self, rpc: Rpc, raw: bytes) -> bytes:
        try:
            parsed = rpc.request.FromString(raw)
        except DecodeError:
            return raw
        if rpc.method == "Drain":
            return NOT_A_MESSAGE + raw
        probe = copy.deepcopy(parsed)
        self.defuse(probe)
        return raw if probe == parsed else NOT_A_MESSAGE + raw

    def defuse(self, msg: Message) -> None:
        """Make `msg` and every message in it harmless, in place."""
        fix = self._fixes.get(msg.DESCRIPTOR.full_name)
        if fix is not None:
            fix(msg)
        for fd, value in msg.ListFields():
            if fd.message_type is None or fd.message_type.GetOptions().map_entry:
                continue  # no map of these protos holds messages
            for one in value if fd.is_repeated else (value,):
                self.defuse(one)

    @staticmethod
    def _python(call: task_pb2.PythonCall) -> None:
        if call.WhichOneof("target") == "ref" and call.ref != NOOP_REF:
            call.ref = ABSENT + call.ref
        if call.WhichOneof("target") == "pickled_callable":
            call.pickled_callable = _disarm(call.pickled_callable, _Noop)
        call.pickled_args = _disarm(call.pickled_args)

    @staticmethod
    def _command(call: task_pb2.CommandCall) -> None:
        if call.argv and call.argv[0] not in HARMLESS_PROGRAMS:
            call.argv[0] = ABSENT + call.argv[0].replace("/", "_")
        env = dict(call.env)
        if any(not name.startswith(ENV_PREFIX) for name in env):
            call.env.clear()
            call.env.update(
                {n if n.startswith(ENV_PREFIX) else ENV_PREFIX + n: v for n, v in env.items()}
            )

    @staticmethod
    def _builtin(call: task_pb2.BuiltinCall) -> None:
        # A param in range runs for a moment at most; out of range, it is refused anyway.
        caps = {"sleep": {"seconds": SLEEP_CAP_S}, "cpu": CPU_CAPS}.get(call.name, {})
        for name, cap in caps.items():
            if name in call.params and cap < call.params[name] <= 1e7:
                call.params[name] = cap

    @staticmethod
    def _dependency(result: task_pb2.DependencyResult) -> None:
        try:
            outcome = task_pb2.TaskOutcome.FromString(result.outcome)
        except DecodeError:
            return
        safe = copy.deepcopy(outcome)
        if safe.HasField("pickled_value"):
            safe.pickled_value = _disarm(safe.pickled_value)
        failures = [*([safe.failure] if safe.HasField("failure") else []), *safe.earlier_failures]
        for failure in failures:
            failure.pickled_exception = _disarm(failure.pickled_exception)
        if safe != outcome:
            result.outcome = safe.SerializeToString()

    def _assignment(self, assignment: worker_service_pb2.Assignment) -> None:
        try:
            spec = task_pb2.TaskSpec.FromString(assignment.spec)
        except DecodeError:
            return
        safe = copy.deepcopy(spec)
        self.defuse(safe)
        if safe != spec:
            assignment.spec = safe.SerializeToString()

    def _not_a_real_worker(self, request: Any) -> None:
        if request.worker_id in self.worker_ids:
            request.worker_id ^= 1 << 62

    @staticmethod
    def _no_task_in_use(request: worker_service_pb2.WorkerCancelRequest) -> None:
        if request.task_id < 1 << 40:
            request.task_id |= 1 << 40
