"""The F1 floor's server: a gRPC aio server (health service only) in its own process."""

from __future__ import annotations

import asyncio

from heapd.runtime import ready, server


async def _serve() -> None:
    grpc_server, port = await server.start("127.0.0.1", 0, [], [])
    ready.announce("echo", f"127.0.0.1:{port}")
    await grpc_server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(_serve())
