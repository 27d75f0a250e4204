"""gRPC channel settings shared by the clients and every role: message limits, keepalive.

Kept apart from `heapd.runtime.server` so that `from heapd import Client` stays light.
"""

from __future__ import annotations

from typing import Any

import grpc

from heapd.security import Security

MAX_MESSAGE_BYTES = 64 << 20
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def channel(address: str, security: Security | None = None) -> grpc.aio.Channel:
    """An aio channel to another role with heapd's message limits and keepalive, sending the
    token and speaking TLS as `security` says."""
    return (security or Security()).aio_channel(address, CHANNEL_OPTIONS)


def format_address(host: str, port: int) -> str:
    """host:port, bracketing IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
