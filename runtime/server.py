"""gRPC aio server setup shared by every daemon: health checking, reflection, message limits,
the token check and TLS (`heapd.runtime.security`).

Server-side only: clients import `heapd.runtime.channels`, never this module (it pulls in the
health and reflection services).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from heapd.runtime import sockets, status
from heapd.runtime.channels import CHANNEL_OPTIONS, format_address
from heapd.runtime.limits import Limits
from heapd.runtime.security import RoleSecurity


def server_options(limits: Limits) -> list[tuple[str, Any]]:
    """A server's options: the transport limits first (of an option given twice, gRPC takes
    the first), then the channel settings every role shares."""
    return [*limits.server_options(), *CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)]


SERVER_OPTIONS = server_options(Limits())

Registration = Callable[[grpc.aio.Server], None]


async def start(
    host: str,
    port: int | None,
    registrations: Sequence[Registration],
    service_names: Sequence[str],
    security: RoleSecurity | None = None,
    limits: Limits | None = None,
    socket: str = "",
) -> tuple[grpc.aio.Server, int]:
    """Start an aio server with these services plus health and reflection: (server, port).

    It listens on host:port (`port` None: on no TCP port, and returns port 0) and, given a
    `socket` path, on that Unix domain socket too (made 0600 once bound; the role checks the
    path first with `sockets.role_socket`, to end with a message if it cannot). With
    `security`, every call but health checks needs its token, and both speak TLS (mutual TLS
    with a CA) when it has a certificate: over a Unix socket the same as over TCP. `limits`
    sets its transport limits (the defaults without)."""
    security = security or RoleSecurity()
    # The token is checked first (nothing of a stranger is parsed), then requests that do not
    # parse are refused as INVALID_ARGUMENT without a traceback per message.
    interceptors = [*security.interceptors(), status.DecodeGuard()]
    options = SERVER_OPTIONS if limits is None else server_options(limits)
    server = grpc.aio.server(options=options, interceptors=interceptors)
    for register in registrations:
        register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    credentials = security.server_credentials() if security.tls else None  # read once
    bound = 0
    if port is not None:
        bound = _listen(server, format_address(host, port), credentials)
        if bound == 0:
            raise OSError(f"cannot listen on {format_address(host, port)}")
    if socket and _listen(server, sockets.address(socket), credentials) == 0:
        raise OSError(f"cannot listen on the Unix socket {socket}")
    await server.start()
    if socket:
        sockets.make_private(socket)
    for name in ("", *service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound


def _listen(
    server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None
) -> int:
    """Add a port at `address` (host:port or unix:path), TLS with `credentials`; gRPC's
    answer (the bound port, 1 for a socket, 0 if it cannot)."""
    if credentials is not None:
        return int(server.add_secure_port(address, credentials))
    return int(server.add_insecure_port(address))
