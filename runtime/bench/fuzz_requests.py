"""What the fuzz sends (`heapd.runtime.bench.fuzz`): a call to any RPC of the cell's three
services, with a well-formed but random message or with garbage.

Messages are drawn by hypothesis strategies walked from the protobuf descriptors (`message`):
integers at their extremes and anywhere in range, floats with NaN and infinities, strings and
bytes of any length (now and then a large one), repeated fields and maps of any length (now and
then a bulk one), nested messages, enums with unknown values. Garbage is random bytes,
well-formed messages with bytes flipped, cut, inserted or repeated, and a few classic
wire-format traps (varints that never end, lengths past the end). `extreme_requests` adds,
without chance, every field of every request alone at each of its extremes.

Nothing here is safe to send as it is: `heapd.runtime.bench.fuzz_guard` makes it so.
"""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import cloudpickle
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from heapd.runtime.bench.workloads import noop
from heapd.v1 import register_service_pb2, task_pb2, task_service_pb2, worker_service_pb2

NOOP_REF = f"{noop.__module__}:{noop.__qualname__}"
HARMLESS_PROGRAMS = ("true", "false")


@dataclass(frozen=True)
class Rpc:
    """One method of one service, and which daemon of the cell serves it."""

    service: str  # "heapd.v1.TaskService"
    method: str
    role: str  # "plm", "register" or "worker"
    request: type[Message]
    response: type[Message]
    client_streaming: bool
    server_streaming: bool

    @property
    def path(self) -> str:
        """The HTTP/2 path the method is called at."""
        return f"/{self.service}/{self.method}"

    @property
    def name(self) -> str:
        """The service's short name and the method: TaskService/SubmitTask."""
        return f"{self.service.rsplit('.', 1)[-1]}/{self.method}"


def _rpcs() -> tuple[Rpc, ...]:
    services = (
        (task_service_pb2, "TaskService", "plm"),
        (register_service_pb2, "RegisterService", "register"),
        (worker_service_pb2, "WorkerService", "worker"),
    )
    return tuple(
        Rpc(
            service.full_name,
            method.name,
            role,
            GetMessageClass(method.input_type),
            GetMessageClass(method.output_type),
            method.client_streaming,
            method.server_streaming,
        )
        for module, name, role in services
        for service in (module.DESCRIPTOR.services_by_name[name],)
        for method in service.methods
    )


RPCS = _rpcs()
RPCS_BY_NAME = {rpc.name: rpc for rpc in RPCS}


# --- strategies


@dataclass(frozen=True)
class Sizes:
    """How large fuzzed values get: ordinary ones, and now and then (one in `rare`) a large one."""

    text: int = 24  # longest ordinary string or bytes
    items: int = 5  # longest ordinary repeated field or map
    stream: int = 4  # most messages in one request stream
    large_bytes: int = 256 << 10  # longest rare string or bytes
    large_items: int = 2_000  # longest rare repeated field
    rare: int = 40
    depth: int = 5  # nested messages deeper than this are left empty


TEST_SIZES = Sizes()
BENCH_SIZES = Sizes(large_bytes=5 << 20, large_items=200_000)

_INT_BOUNDS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_SEEDS = st.integers(0, 2**32 - 1)


def _ints(low: int, high: int) -> st.SearchStrategy[int]:
    """Integers in [low, high], the extremes and their neighbours often."""
    edges = sorted({v for v in (low, low + 1, -1, 0, 1, 2, high - 1, high) if low <= v <= high})
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def _now_and_then(
    common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], sizes: Sizes
) -> st.SearchStrategy[Any]:
    """`common`, or once in `sizes.rare` draws `rare`."""
    return st.integers(1, sizes.rare).flatmap(lambda i: rare if i == sizes.rare else common)


def _random_bytes(limit: int) -> st.SearchStrategy[bytes]:
    """Up to `limit` random bytes, made from a drawn seed (drawing them one by one is slow)."""
    return st.tuples(st.integers(0, limit), _SEEDS).map(
        lambda t: random.Random(t[1]).randbytes(t[0])
    )


def _bytes(sizes: Sizes) -> st.SearchStrategy[bytes]:
    return _now_and_then(st.binary(max_size=sizes.text), _random_bytes(sizes.large_bytes), sizes)


def _text(sizes: Sizes) -> st.SearchStrategy[str]:
    # Latin-1 decoding makes every byte a character: NUL and controls included.
    large = _random_bytes(sizes.large_bytes).map(lambda b: b.decode("latin-1"))
    return _now_and_then(st.text(max_size=sizes.text), large, sizes)


def _scalar(fd: FieldDescriptor, sizes: Sizes, depth: int) -> st.SearchStrategy[Any]:
    """Values of one element of field `fd`."""
    override = _FIELD_VALUES.get(fd.full_name)
    if override is not None:
        return override(sizes)
    kind = fd.type
    if kind in _INT_BOUNDS:
        return _ints(*_INT_BOUNDS[kind])
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if kind == FieldDescriptor.TYPE_STRING:
        return _text(sizes)
    if kind == FieldDescriptor.TYPE_BYTES:
        return _bytes(sizes)
    if kind == FieldDescriptor.TYPE_ENUM:
        known = st.sampled_from([v.number for v in fd.enum_type.values])
        return st.one_of(known, _ints(-(2**31), 2**31 - 1))  # unknown values too
    return message(fd.message_type, sizes, depth + 1)


def _bulk(element: st.SearchStrategy[Any], fd: FieldDescriptor, sizes: Sizes) -> Any:
    """A rare long repeated field: distinct small ids for integers (task ids are small), one
    drawn element repeated otherwise, never more than about `large_bytes` in all (a field of
    them repeated as often as `large_items` could otherwise weigh terabytes)."""
    if fd.type in _INT_BOUNDS:
        low, high = _INT_BOUNDS[fd.type]

        def ids(t: tuple[int, int]) -> list[int]:
            n, seed = t
            rng = random.Random(seed)
            top = min(high, 4 * n + 16)
            return [rng.randint(max(low, 0), top) for _ in range(n)]

        return st.tuples(st.integers(0, sizes.large_items), _SEEDS).map(ids)

    def repeated(t: tuple[int, Any]) -> list[Any]:
        n, one = t
        return [one] * min(n, sizes.large_bytes // _weight(one))

    return st.tuples(st.integers(0, sizes.large_items), element).map(repeated)


def _weight(value: Any) -> int:
    """About how many bytes `value` takes on the wire (at least 1)."""
    if isinstance(value, Message):
        return max(1, int(value.ByteSize()))
    if isinstance(value, str | bytes):
        return max(1, len(value))
    return 8


def _field(fd: FieldDescriptor, sizes: Sizes, depth: int) -> st.SearchStrategy[Any]:
    """Values of field `fd`: a scalar or message, a list, or a dict for a map."""
    whole = _FIELD_LISTS.get(fd.full_name)
    if whole is not None:
        return whole(sizes)
    if _is_map(fd):
        key_fd = fd.message_type.fields_by_name["key"]
        value_fd = fd.message_type.fields_by_name["value"]
        keys, values = _scalar(key_fd, sizes, depth), _scalar(value_fd, sizes, depth)
        many = st.tuples(st.integers(0, sizes.large_items), values).map(
            lambda t: {f"k{i}": t[1] for i in range(min(t[0], sizes.large_bytes // _weight(t[1])))}
        )
        return _now_and_then(st.dictionaries(keys, values, max_size=sizes.items), many, sizes)
    element = _scalar(fd, sizes, depth)
    if not fd.is_repeated:
        return element
    return _now_and_then(st.lists(element, max_size=sizes.items), _bulk(element, fd, sizes), sizes)


@cache
def message(descriptor: Descriptor, sizes: Sizes, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of type `descriptor`: any subset of its fields set, each to any value."""
    cls = GetMessageClass(descriptor)
    if depth > sizes.depth:
        return st.just(cls())
    fields = {fd.name: _field(fd, sizes, depth) for fd in descriptor.fields}
    return st.fixed_dictionaries({}, optional=fields).map(partial(_build, cls))


def _build(cls: type[Message], values: Mapping[str, Any]) -> Message:
    built = cls()
    for fd in cls.DESCRIPTOR.fields:
        if fd.name in values:
            _assign(built, fd, values[fd.name])
    return built


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and bool(fd.message_type.GetOptions().map_entry)


def _assign(msg: Message, fd: FieldDescriptor, value: Any) -> None:
    """Set field `fd` of `msg` to `value` (a dict for a map, a list for a repeated field)."""
    if _is_map(fd):
        getattr(msg, fd.name).update(value)
    elif fd.is_repeated:
        getattr(msg, fd.name).extend(value)
    elif fd.message_type is not None:
        getattr(msg, fd.name).CopyFrom(value)
    else:
        setattr(msg, fd.name, value)


def _python_refs(sizes: Sizes) -> st.SearchStrategy[str]:
    return st.one_of(st.just(NOOP_REF), _text(sizes))


# Pickles naming globals the Guard must disarm (harmless ones: checking it needs no real threat).
_OTHER_GLOBALS = (pickle.dumps(len), pickle.dumps(print))


def _pickled_callables(sizes: Sizes) -> st.SearchStrategy[bytes]:
    known = st.sampled_from((cloudpickle.dumps(noop), *_OTHER_GLOBALS))
    return st.one_of(known, _bytes(sizes))


def _pickled_args(sizes: Sizes) -> st.SearchStrategy[bytes]:
    plain = st.one_of(st.integers(), st.text(max_size=sizes.text), st.none(), st.floats())
    args = st.tuples(st.lists(plain, max_size=3).map(tuple), st.dictionaries(st.text(), plain))
    return st.one_of(args.map(cloudpickle.dumps), st.sampled_from(_OTHER_GLOBALS), _bytes(sizes))


def _outcomes(sizes: Sizes) -> st.SearchStrategy[bytes]:
    """A dependency's result: a TaskOutcome with a pickled value, or any bytes."""
    values = _pickled_args(sizes).map(
        lambda v: task_pb2.TaskOutcome(pickled_value=v).SerializeToString()
    )
    return st.one_of(values, _bytes(sizes))


def _assigned_specs(sizes: Sizes) -> st.SearchStrategy[bytes]:
    """An assignment's task spec: a serialized TaskSpec, or any bytes."""
    specs = message(task_pb2.TaskSpec.DESCRIPTOR, sizes, 1)
    return st.one_of(specs.map(lambda spec: spec.SerializeToString()), _bytes(sizes))


def _argv(sizes: Sizes) -> st.SearchStrategy[list[str]]:
    program = st.one_of(st.sampled_from(HARMLESS_PROGRAMS), _text(sizes))
    rest = st.lists(_text(sizes), max_size=sizes.items)
    return st.one_of(st.tuples(program, rest).map(lambda t: [t[0], *t[1]]), st.just([]))


def _worker_addresses(sizes: Sizes) -> st.SearchStrategy[str]:
    # IP literals only: a name would send the scheduler to the resolver. Nothing listens on
    # port 1, and the fuzz deregisters a worker it registered at once.
    return st.one_of(st.sampled_from(("127.0.0.1:1", "[::1]:1")), _text(sizes))


def _builtin_names(sizes: Sizes) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(("sleep", "cpu")), _text(sizes))


def _builtin_params(sizes: Sizes) -> st.SearchStrategy[dict[str, float]]:
    names = st.one_of(st.sampled_from(("seconds", "steps", "size")), st.text(max_size=sizes.text))
    # Both sides of what a builtin accepts (0..1e7) and of what the Guard lets run.
    edges = st.sampled_from((-1.0, 0.0, 0.01, 1.0, 30.0, 300.0, 1e5, 1e7, 1e7 + 1))
    return st.dictionaries(names, st.one_of(edges, st.floats()), max_size=3)


# Fields whose values are drawn from a narrower or richer set than their type gives, so that
# runnable tasks are common (the Guard still checks them all).
_FIELD_VALUES: dict[str, Callable[[Sizes], st.SearchStrategy[Any]]] = {
    "heapd.v1.PythonCall.ref": _python_refs,
    "heapd.v1.PythonCall.pickled_callable": _pickled_callables,
    "heapd.v1.PythonCall.pickled_args": _pickled_args,
    "heapd.v1.DependencyResult.outcome": _outcomes,
    "heapd.v1.Assignment.spec": _assigned_specs,
    "heapd.v1.BuiltinCall.name": _builtin_names,
    "heapd.v1.RegisterWorkerRequest.address": _worker_addresses,
}
_FIELD_LISTS: dict[str, Callable[[Sizes], st.SearchStrategy[Any]]] = {
    "heapd.v1.CommandCall.argv": _argv,
    "heapd.v1.BuiltinCall.params": _builtin_params,
}


@dataclass(frozen=True)
class Request:
    """One call: its RPC and what it sends (one message, or a stream of them), each a message
    to serialize or, when `garbage`, raw bytes."""

    rpc: Rpc
    garbage: bool
    messages: tuple[Message | bytes, ...]


# Wire-format traps: a varint that never ends, a length past the end, a group never closed,
# a huge length prefix, a field number past the maximum.
_TRAPS = (
    b"\x08" + b"\xff" * 10 + b"\x01",
    b"\x0a\xff\xff\xff\xff\x0f",
    b"\x12\x05ab",
    b"\x0b\x10\x01",
    b"\x0a\x80\x80\x80\x80\x08",
    b"\xf8\xff\xff\xff\x7f\x01",
    b"",
)


@st.composite
def _mutated(draw: st.DrawFn, rpc: Rpc, sizes: Sizes) -> bytes:
    """A well-formed request with bytes flipped, cut, inserted or repeated."""
    data = bytearray(draw(message(rpc.request.DESCRIPTOR, sizes)).SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(("flip", "cut", "insert", "repeat")))
        if edit == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif edit == "cut":
            del data[at:]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=sizes.text))
        else:
            data[at:at] = data[at : at + draw(st.integers(1, sizes.text))]
    return bytes(data)


def _garbage(rpc: Rpc, sizes: Sizes) -> st.SearchStrategy[bytes]:
    random_bytes = _now_and_then(
        st.binary(max_size=4 * sizes.text), _random_bytes(sizes.large_bytes), sizes
    )
    return st.one_of(random_bytes, _mutated(rpc, sizes), st.sampled_from(_TRAPS))


def _request(sizes: Sizes, rpc: Rpc) -> st.SearchStrategy[Request]:
    least, most = (0, sizes.stream) if rpc.client_streaming else (1, 1)
    structured = st.lists(message(rpc.request.DESCRIPTOR, sizes), min_size=least, max_size=most)
    garbage = st.lists(_garbage(rpc, sizes), min_size=least, max_size=most)
    return st.one_of(
        structured.map(lambda m: Request(rpc, False, tuple(m))),
        garbage.map(lambda g: Request(rpc, True, tuple(g))),
    )


def requests(sizes: Sizes = TEST_SIZES) -> st.SearchStrategy[Request]:
    """Calls to any RPC, well-formed or garbage."""
    return st.sampled_from(RPCS).flatmap(partial(_request, sizes))


def basic_requests() -> list[Request]:
    """One empty message and one of each trap to every RPC: every RPC is reached both ways
    whatever hypothesis draws."""
    return [
        request
        for rpc in RPCS
        for request in (Request(rpc, False, (rpc.request(),)), Request(rpc, True, _TRAPS[:2]))
    ]


# --- every field at its extremes

Path = tuple[FieldDescriptor, ...]  # the message fields leading to a leaf field


def extreme_requests(sizes: Sizes = TEST_SIZES) -> Iterator[Request]:
    """For every RPC, one request per leaf field of its message (a scalar, a repeated scalar or
    a map, however deep) and per extreme of that field, the field alone set to it: integers at
    their bounds, NaN and infinities, a large string or bytes, an unknown enum value. Each is
    set on an empty message and on a minimal well-formed one (`_BASES`), so that it also
    reaches past the checks an empty request fails first. Random draws reach these only by
    luck, and one of them alone is what breaks a daemon."""
    for rpc in RPCS:
        bases = [rpc.request(), *([_BASES[rpc.name]] if rpc.name in _BASES else [])]
        for base in bases:
            for path, leaf in _leaves(rpc.request.DESCRIPTOR):
                for value in _extremes(leaf, sizes):
                    yield Request(rpc, False, (_with_leaf(base, path, leaf, value),))


_SLEEP = task_pb2.TaskSpec(builtin=task_pb2.BuiltinCall(name="sleep"))
_SESSION = "heapd-fuzz-extremes"
_BATCH = task_service_pb2.SubmitTasksRequest(
    tasks=[task_service_pb2.TaskSubmission(spec=_SLEEP)], session=_SESSION
)
_BASES: dict[str, Message] = {
    "TaskService/SubmitTask": task_service_pb2.SubmitTaskRequest(spec=_SLEEP, session=_SESSION),
    "TaskService/SubmitTasks": _BATCH,
    "TaskService/SubmitStream": _BATCH,
    "TaskService/WatchTasks": task_service_pb2.WatchTasksRequest(session=_SESSION),
    "RegisterService/RegisterWorker": register_service_pb2.RegisterWorkerRequest(
        address="127.0.0.1:1", slots=1
    ),
}


def _leaves(descriptor: Descriptor, depth: int = 0) -> Iterator[tuple[Path, FieldDescriptor]]:
    for fd in descriptor.fields:
        if fd.message_type is None or _is_map(fd):
            yield (), fd
        elif depth < EXTREME_DEPTH:
            for path, leaf in _leaves(fd.message_type, depth + 1):
                yield (fd, *path), leaf


EXTREME_DEPTH = 4  # TaskOutcome's failures inside a dependency's result inside a spec...


def _with_leaf(base: Message, path: Path, leaf: FieldDescriptor, value: Any) -> Message:
    """A copy of `base` with `leaf` (reached through `path`) set to `value` alone."""
    built = type(base)()
    built.CopyFrom(base)
    parent = built
    for fd in path:
        field = getattr(parent, fd.name)
        parent = (field[0] if len(field) else field.add()) if fd.is_repeated else field
        parent.SetInParent()
    parent.ClearField(leaf.name)
    _assign(parent, leaf, value)
    return built


def _extremes(fd: FieldDescriptor, sizes: Sizes) -> tuple[Any, ...]:
    if _is_map(fd):
        key_fd = fd.message_type.fields_by_name["key"]
        value_fd = fd.message_type.fields_by_name["value"]
        key, value = _plain(key_fd), _plain(value_fd)
        keys = tuple({k: value} for k in _scalar_extremes(key_fd, sizes))
        return keys + tuple({key: v} for v in _scalar_extremes(value_fd, sizes))
    values = _scalar_extremes(fd, sizes)
    return tuple([v] for v in values) if fd.is_repeated else values


def _scalar_extremes(fd: FieldDescriptor, sizes: Sizes) -> tuple[Any, ...]:
    kind = fd.type
    if kind in _INT_BOUNDS:
        return _INT_BOUNDS[kind]
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        largest = 1.7976931348623157e308 if kind == FieldDescriptor.TYPE_DOUBLE else 3.4028234e38
        return (math.nan, math.inf, -math.inf, largest, -largest)
    if kind == FieldDescriptor.TYPE_STRING:
        return ("x" * sizes.large_bytes, "\0\n\u202e\U0010ffff")
    if kind == FieldDescriptor.TYPE_BYTES:
        return (b"\xff" * sizes.large_bytes,)
    if kind == FieldDescriptor.TYPE_ENUM:
        return (2**31 - 1, -(2**31))
    return (True,)  # bool


def _plain(fd: FieldDescriptor) -> Any:
    """An ordinary value of a map's key or value field."""
    return {FieldDescriptor.TYPE_STRING: "k", FieldDescriptor.TYPE_BYTES: b"k"}.get(fd.type, 1)
