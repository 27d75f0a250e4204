"""`heapd register`: run the register (RegisterService) of a cell."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Sequence

from heapd import shm
from heapd.register import convert, metrics, service
from heapd.register.daemon import Register
from heapd.runtime import (
    channels,
    config,
    entry,
    logs,
    ready,
    security,
    server,
    signals,
    sockets,
)
from heapd.runtime import endpoint as endpoint_mod
from heapd.runtime.security import RoleSecurity


def parser() -> argparse.ArgumentParser:
    """The `heapd register` flags."""
    p = argparse.ArgumentParser(prog="heapd register", description="Run the register of a cell.")
    config.add_common_flags(p, config.DEFAULT_REGISTER_PORT)
    config.add_socket_flag(
        p, "register", "also listen on this Unix socket, for workers of this host"
    )
    config.add_metrics_flag(p)
    p.add_argument("--heartbeat-interval-s", dest="heartbeat_interval_s", type=float)
    p.add_argument(
        "--missed-heartbeats",
        dest="missed_heartbeats",
        type=int,
        help="silent intervals before DEAD (4)",
    )
    return p


async def serve(cfg: config.RegisterConfig, cell: shm.Cell, sec: RoleSecurity) -> None:
    """Run until SIGTERM/SIGINT."""
    outcomes = convert.TaskOutcomes()
    async with Register(cell, cfg.heartbeat_interval_s, cfg.deadline_s, outcomes) as register:
        grpc_server, port = await server.start(
            cfg.host,
            cfg.port,
            [service.registration(register, cfg)],
            [service.SERVICE_NAME],
            sec,
            socket=cfg.socket,
        )
        signals.install(asyncio.get_running_loop(), register.shutdown)
        endpoint, metrics_at = await endpoint_mod.serve_if_asked(
            cfg.host, cfg.metrics_port, metrics.registry(register), security=sec
        )
        ready.announce(
            "register",
            channels.format_address(cfg.host, port),
            metrics_at,
            sockets.address(cfg.socket) if cfg.socket else "",
        )
        await register.wait_stopped()
        if endpoint is not None:
            await endpoint.close()
        await grpc_server.stop(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit 2 when the cell cannot be attached."""
    args = parser().parse_args(argv)
    cfg = config.from_args(config.RegisterConfig, "register", args, os.environ)
    cfg = dataclasses.replace(cfg, socket=sockets.role_socket("register", cfg.socket))
    logs.setup("register", cfg.log_level)
    sec = security.for_role("register", args, [cfg.host])
    return entry.run_attached("register", cfg.cell, lambda cell: serve(cfg, cell, sec))


if __name__ == "__main__":
    sys.exit(main())
