"""What one caller may ask of a role: named limits with documented defaults, the checks that
apply them, and the gRPC server options that enforce the transport-level ones.

Every refusal names the setting it hit, so that whoever reads it knows what to change::

    session: 867530 bytes, over the limit max_name_bytes=256

A request too big or malformed is INVALID_ARGUMENT (`heapd.errors.InvalidArgument`: sending it
again will not help); a caller holding too much at once (open streams) is RESOURCE_EXHAUSTED.
Counts are checked before a repeated field is walked (its `len()` is cheap), so an oversized
request costs a role the refusal and nothing else.

The bounds of a task's options (priority, retries, timeout, resources, labels, idempotency key,
dependencies) are `heapd.options`': the client checks them before sending, the PLM again on
arrival, with the same messages. `Limits` holds what only a server enforces; the PLM's come from
`[plm]` settings (`heapd.runtime.config.load(Limits, "plm", ...)`: HEAPD_PLM_MAX_NAME_BYTES, ...).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from heapd.errors import InvalidArgument, ResourceExhausted


@dataclass(frozen=True)
class Limits:
    """The limits of one role's server. Sizes are in bytes of UTF-8; counts per request."""

    # --- transport (`server_options`)
    # Largest request message; gRPC refuses a bigger one with RESOURCE_EXHAUSTED.
    max_receive_bytes: int = 64 << 20
    # Streams open at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); a client
    # over it waits for one to end.
    max_concurrent_streams: int = 1000
    # Keepalive enforcement: a ping sooner than this after the previous one, with no data
    # between, is a strike (heapd's own channels ping every 10 s) ...
    min_ping_interval_ms: int = 5_000
    # ... and a connection that collects more strikes than this is closed (GOAWAY
    # ENHANCE_YOUR_CALM, "too_many_pings").
    max_ping_strikes: int = 2

    # --- requests
    # Tasks in one SubmitTasks request (or one request of a SubmitStream); clients send 1,000.
    max_tasks_per_request: int = 10_000
    # Task ids in one repeated field: WatchTasks task_ids, SubmitTasks acks, SubmitTasks adopt.
    max_ids_per_request: int = 100_000
    # A session name.
    max_name_bytes: int = 256
    # A function reference ("package.module:function") and an exception name of retry_on.
    max_ref_bytes: int = 1024
    # A command's argv and env together, each string counted with its NUL ("KEY=VALUE\0" for
    # env), as exec counts them: Linux allows 2 MiB with the worker's own environment.
    max_command_bytes: int = 1 << 20
    # One argv string or env entry: Linux's MAX_ARG_STRLEN, 128 KiB with its NUL.
    max_arg_bytes: int = (128 << 10) - 1
    # A command's working directory: PATH_MAX, 4096 with its NUL.
    max_cwd_bytes: int = 4095
    # What a command reads on its standard input.
    max_stdin_bytes: int = 16 << 20

    # --- callers
    # Streams (WatchTasks, SubmitStream) open at once from one peer host; each client holds
    # two, clients of one process share a connection.
    max_streams_per_peer: int = 1024

    def server_options(self) -> list[tuple[str, Any]]:
        """The gRPC server options that enforce the transport limits."""
        return [
            ("grpc.max_receive_message_length", self.max_receive_bytes),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.http2.min_ping_interval_without_data_ms", self.min_ping_interval_ms),
            ("grpc.http2.max_ping_strikes", self.max_ping_strikes),
        ]

    # --- checks: each raises InvalidArgument naming the setting, or returns what it checked

    def session(self, name: str) -> str:
        """A session name of at most max_name_bytes."""
        if len(name) * 4 > self.max_name_bytes:  # else it fits, whatever its characters
            size = _utf8_size(name)
            if size > self.max_name_bytes:
                raise InvalidArgument(over("session", size, "bytes", "max_name_bytes", self))
        return name

    def tasks(self, count: int) -> None:
        """The number of tasks in one request."""
        if count > self.max_tasks_per_request:
            raise InvalidArgument(
                over("tasks", count, "per request", "max_tasks_per_request", self)
            )

    def ids(self, what: str, count: int) -> None:
        """The number of task ids in the repeated field `what` of one request."""
        if count > self.max_ids_per_request:
            raise InvalidArgument(over(what, count, "ids", "max_ids_per_request", self))

    def ref(self, what: str, text: str) -> None:
        """A function reference or exception name."""
        if len(text) * 4 > self.max_ref_bytes:  # else it fits, whatever its characters
            size = _utf8_size(text)
            if size > self.max_ref_bytes:
                raise InvalidArgument(over(what, size, "bytes", "max_ref_bytes", self))

    def command(self, argv: Sequence[str], env: Mapping[str, str], cwd: str, stdin: bytes) -> None:
        """A command exec can run: sizes within the limits, no NUL byte in argv, env or cwd (a
        C string ends at it), env keys non-empty and without "=". argv and env are not walked
        when they hold more strings than there are bytes to spend."""
        if len(argv) + len(env) > self.max_command_bytes:
            raise InvalidArgument(
                over("command", len(argv) + len(env), "strings", "max_command_bytes", self)
            )
        total = 0
        for index, arg in enumerate(argv):
            total += self._exec_string(f"argv[{index}]", arg)
        for key, value in env.items():
            if not key or "=" in key:
                raise InvalidArgument(f"env key {_short(key)} must be non-empty, without '='")
            total += self._exec_string(f"env[{_short(key)}]", f"{key}={value}")
        if total > self.max_command_bytes:
            raise InvalidArgument(
                over("command argv and env", total, "bytes", "max_command_bytes", self)
            )
        if "\0" in cwd:
            raise InvalidArgument("cwd must not contain a NUL byte")
        size = _utf8_size(cwd)
        if size > self.max_cwd_bytes:
            raise InvalidArgument(over("cwd", size, "bytes", "max_cwd_bytes", self))
        if len(stdin) > self.max_stdin_bytes:
            raise InvalidArgument(over("stdin", len(stdin), "bytes", "max_stdin_bytes", self))

    def _exec_string(self, what: str, text: str) -> int:
        """Bytes one exec string takes, with its NUL."""
        if "\0" in text:
            raise InvalidArgument(f"{what} must not contain a NUL byte")
        size = _utf8_size(text)
        if size > self.max_arg_bytes:
            raise InvalidArgument(over(what, size, "bytes", "max_arg_bytes", self))
        return size + 1


def over(what: str, amount: int, unit: str, setting: str, limits: Limits) -> str:
    """The refusal of `what` (`amount` `unit`) for passing the setting `setting` of `limits`."""
    return f"{what}: {amount} {unit}, over the limit {setting}={getattr(limits, setting)}"


class PeerStreams:
    """Streams open at once per peer host, refused (ResourceExhausted) beyond
    `limits.max_streams_per_peer`. A peer is the caller's host as gRPC names it
    ("ipv4:10.0.0.7"): one client reconnecting from new ports, or opening many connections,
    counts as one."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._open: Counter[str] = Counter()

    def __len__(self) -> int:
        return self._open.total()

    @contextmanager
    def opened(self, peer: str) -> Iterator[None]:
        """Count one stream of `peer` while the block runs."""
        host = peer_host(peer)
        if self._open[host] >= self._limits.max_streams_per_peer:
            raise ResourceExhausted(
                over(
                    f"streams of {host}",
                    self._open[host] + 1,
                    "open",
                    "max_streams_per_peer",
                    self._limits,
                )
            )
        self._open[host] += 1
        try:
            yield
        finally:
            self._open[host] -= 1
            if not self._open[host]:
                del self._open[host]


def peer_host(peer: str) -> str:
    """ "ipv4:127.0.0.1:5312" -> "ipv4:127.0.0.1", "ipv6:[::1]:5312" -> "ipv6:[::1]"; any
    other peer (unix:...) as it is."""
    if peer.startswith(("ipv4:", "ipv6:")):
        host, sep, port = peer.rpartition(":")
        if sep and port.isdigit():
            return host
    return peer


def _utf8_size(text: str) -> int:
    """UTF-8 bytes of `text` (a lone surrogate, which a Python str may hold, counts 3)."""
    return len(text.encode("utf-8", "surrogatepass"))


def _short(text: str, keep: int = 40) -> str:
    """`text` quoted, cut to `keep` characters for a message."""
    return repr(text if len(text) <= keep else text[:keep] + "...")
