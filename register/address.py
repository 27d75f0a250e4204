"""What a worker may announce as its address: HOST:PORT that the scheduler will dial, or, from a
worker of the cell's own host, `unix:/PATH`; nothing else.

The scheduler hands the announced address to gRPC as a channel target, and gRPC reads a target
as a URI first: `unix:/path`, `unix-abstract:name`, `vsock:...`, `ipv4:...`, `dns:///...` would
make it dial a local socket or a host other than the one named. So the host is a DNS name or an
IP literal (IPv6 in brackets), the port a number in 1..65535, and the whole within what the
worker table stores; no scheme, no whitespace, no control characters.

The one scheme let through is `unix:` with an absolute path (segments of letters, digits and
`._+-~@=,`; no `.` or `..` segment, no `//`; within sun_path), and only when the worker itself
registered over a Unix socket (gRPC names such a peer "unix:..."): a worker that can reach the
register's socket is on its host; one that came over TCP may be anywhere, and must never make
the scheduler dial a socket of the control-plane host.
"""

from __future__ import annotations

import ipaddress
import re

from heapd.errors import InvalidArgument
from heapd.runtime.sockets import SUN_PATH_MAX, UNIX, is_unix
from heapd.shm.layout import ADDRESS_BYTES

# Channel target schemes gRPC resolves (a host spelled like one would be read as the scheme).
GRPC_SCHEMES = frozenset(
    {
        "dns",
        "ipv4",
        "ipv6",
        "unix",
        "unix-abstract",
        "vsock",
        "xds",
        "google-c2p",
        "google-c2p-experimental",
        "passthrough",
        "fake",
        "sockaddr",
    }
)
# Letters, digits, hyphens (not at either end); underscores too, as container names have them.
DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
DNS_NAME_MAX = 253
SOCKET_SEGMENT = re.compile(r"[A-Za-z0-9._+~@=,-]+")


def check_worker_address(address: str, peer: str = "") -> str:
    """`address` if it is HOST:PORT, or unix:/PATH registered by a Unix-socket `peer` (the
    registering call's `context.peer()`), as described above; else InvalidArgument saying
    why."""
    if not address:
        raise InvalidArgument("worker address is empty; expected HOST:PORT")
    if not address.isascii() or not address.isprintable() or any(c.isspace() for c in address):
        raise InvalidArgument(
            f"worker address {address!r} has whitespace, control or non-ASCII characters"
        )
    if len(address) > ADDRESS_BYTES:
        raise InvalidArgument(f"worker address is over {ADDRESS_BYTES} bytes")
    if is_unix(address):
        return _check_socket_address(address, peer)
    if "/" in address or "@" in address or "%" in address:
        raise InvalidArgument(f"worker address {address!r} is not HOST:PORT (no URI, no path)")
    host, sep, port = address.rpartition(":")
    if not (host and sep and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        raise InvalidArgument(f"worker address {address!r} is not HOST:PORT with PORT 1..65535")
    _check_host(host, address)
    return address


def _check_socket_address(address: str, peer: str) -> str:
    if not is_unix(peer):
        raise InvalidArgument(
            f"worker address {address!r} names a Unix socket: accepted only from a worker that"
            " registers over the register's own Unix socket, on its host (else HOST:PORT)"
        )
    path = address[len(UNIX) :]
    if len(path) > SUN_PATH_MAX:
        raise InvalidArgument(
            f"worker address {address!r}: a socket path is at most {SUN_PATH_MAX} bytes (sun_path)"
        )
    segments = path.split("/")
    if segments[0] or len(segments) < 2:
        raise InvalidArgument(f"worker address {address!r}: expected unix:/ABSOLUTE/PATH")
    for segment in segments[1:]:
        if segment in ("", ".", "..") or not SOCKET_SEGMENT.fullmatch(segment):
            raise InvalidArgument(
                f"worker address {address!r}: each part of the socket path is letters, digits"
                " and ._+~@=,- (no empty, . or .. part)"
            )
    return address


def _check_host(host: str, address: str) -> None:
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidArgument(f"worker address {address!r}: not an IPv6 literal") from None
        return
    if ":" in host:
        raise InvalidArgument(
            f"worker address {address!r}: a scheme, or an IPv6 literal without [brackets]"
        )
    if host.lower() in GRPC_SCHEMES:
        raise InvalidArgument(f"worker address {address!r}: host {host!r} reads as a URI scheme")
    try:
        ipaddress.IPv4Address(host)
        return
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if len(name) > DNS_NAME_MAX or not all(DNS_LABEL.fullmatch(p) for p in name.split(".")):
        raise InvalidArgument(
            f"worker address {address!r}: host is neither a DNS name nor an IP literal"
        )
