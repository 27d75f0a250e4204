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

from heapd.runtime import status
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
    port: int,
    registrations: Sequence[Registration],
    service_names: Sequence[str],
    security: RoleSecurity | None = None,
    limits: Limits | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Start an aio server with these services plus health and reflection: (server, port).
    With `security`, every call but health checks needs its token, and the port speaks TLS
    (mutual TLS with a CA) when it has a certificate; `limits` sets its transport limits
    (the defaults without)."""
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
    address = format_address(host, port)
    if security.tls:
        bound = server.add_secure_port(address, security.server_credentials())
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    for name in ("", *service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound
