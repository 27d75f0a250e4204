"""The F1 floors' server: a gRPC aio server (health service only) in its own process; given a
socket path as its argument, it listens there too (F1_unix)."""

from __future__ import annotations

import asyncio
import sys

from heapd.runtime import ready, server, sockets


async def _serve(socket: str) -> None:
    grpc_server, port = await server.start("127.0.0.1", 0, [], [], socket=socket)
    ready.announce("echo", f"127.0.0.1:{port}", socket=sockets.address(socket) if socket else "")
    await grpc_server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1] if len(sys.argv) > 1 else ""))
