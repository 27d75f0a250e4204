"""gRPC aio server setup shared by every daemon: health checking, reflection, message limits.

Server-side only: clients import `heapd.runtime.channels`, never this module (it pulls in the
health and reflection services).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from heapd.runtime.channels import CHANNEL_OPTIONS

SERVER_OPTIONS: list[tuple[str, Any]] = [
    *CHANNEL_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.so_reuseport", 0),
]

Registration = Callable[[grpc.aio.Server], None]


async def start(
    host: str, port: int, registrations: Sequence[Registration], service_names: Sequence[str]
) -> tuple[grpc.aio.Server, int]:
    """Start an aio server with these services plus health and reflection: (server, port)."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    for register in registrations:
        register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    for name in ("", *service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound
