"""`heapd worker --register HOST:PORT`: run a worker that joins a cell's register."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Sequence

from heapd.errors import InvalidArgument
from heapd.options import label_pairs, pairs_from_text, resource_amounts, resources_from_text
from heapd.runtime import channels, config, logs, security, server, signals, sockets
from heapd.runtime import endpoint as endpoint_mod
from heapd.runtime.security import RoleSecurity
from heapd.worker import convert, metrics, service
from heapd.worker.daemon import Worker
from heapd.worker.pool import Pool

SHUTDOWN_GRACE_S = 1.0


def parser() -> argparse.ArgumentParser:
    """The `heapd worker` flags."""
    p = argparse.ArgumentParser(
        prog="heapd worker", description="Run a worker for a cell's register."
    )
    p.add_argument(
        "--register",
        help="the register's HOST:PORT, or unix:PATH on its host (HEAPD_WORKER_REGISTER;"
        f" default {config.WorkerConfig.register})",
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 0 = any)")
    p.add_argument("--advertise-host", dest="advertise_host", help="host the scheduler should dial")
    config.add_socket_flag(
        p,
        "worker",
        "listen on this Unix socket instead of a TCP port, announced as unix:PATH (a worker"
        " on the cell's host; needs --register unix:PATH)",
    )
    p.add_argument("--slots", type=int, help="task processes (default 2)")
    p.add_argument(
        "--resources",
        metavar="NAME=AMOUNT,...",
        help="what it offers, e.g. cpus=4,gpu=1,mem_gb=16 (HEAPD_WORKER_RESOURCES; cpus"
        " defaults to --slots); tasks asking resources= hold them while they run",
    )
    p.add_argument(
        "--labels",
        metavar="KEY=VALUE,...",
        help="labels tasks may ask for, e.g. zone=a,arch=x86_64 (HEAPD_WORKER_LABELS)",
    )
    p.add_argument(
        "--register-timeout-s",
        dest="register_timeout_s",
        type=float,
        help="exit after the register is unreachable this long (default 30)",
    )
    p.add_argument("--config", help="TOML configuration file (or HEAPD_CONFIG)")
    p.add_argument(
        "--max-result-bytes",
        dest="max_result_bytes",
        type=int,
        help="largest result sent back (default 1 MiB; set to the cell's --max-blob-kb): above"
        " it a task fails with BAD_RESULT, command output is truncated",
    )
    config.add_metrics_flag(p)
    config.add_log_level_flag(p)
    config.add_security_flags(p)
    return p


def offers(cfg: config.WorkerConfig) -> tuple[dict[str, float], dict[str, str]]:
    """The worker's resources and labels from their "a=1,b=2" form; InvalidArgument names the
    bad one."""
    resources = resource_amounts(resources_from_text(cfg.resources))
    return resources, label_pairs(pairs_from_text(cfg.labels, "labels"))


async def serve(
    cfg: config.WorkerConfig,
    pool: Pool,
    resources: dict[str, float] | None = None,
    labels: dict[str, str] | None = None,
    sec: RoleSecurity | None = None,
) -> int:
    """Serve WorkerService and stay in the cell until drained (SIGTERM) or cut off from the
    register; returns the exit code."""
    sec = sec or RoleSecurity()
    async with channels.channel(cfg.register, sec.client()) as channel:
        register = convert.RegisterCalls(channel, cfg.register, resources, labels)
        worker = Worker(pool, register, cfg.slots, cfg.register_timeout_s)
        signals.install(asyncio.get_running_loop(), worker.shutdown)
        grpc_server, port = await server.start(
            cfg.host,
            None if cfg.socket else cfg.port,
            [service.registration(worker)],
            [service.SERVICE_NAME],
            sec,
            socket=cfg.socket,
        )
        endpoint, worker.metrics_address = await endpoint_mod.serve_if_asked(
            cfg.host, cfg.metrics_port, metrics.registry(worker), security=sec
        )
        try:
            return await worker.run(announced_address(cfg, port))
        finally:
            if endpoint is not None:
                await endpoint.close()
            await grpc_server.stop(SHUTDOWN_GRACE_S)


def announced_address(cfg: config.WorkerConfig, port: int) -> str:
    """Where schedulers dial this worker: unix:PATH when it listens on a socket, else
    HOST:PORT (the advertised host, else the one it listens on)."""
    if cfg.socket:
        return sockets.address(cfg.socket)
    return channels.format_address(cfg.advertise_host or cfg.host, port)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. The pool's children are spawned before any gRPC object exists."""
    args = parser().parse_args(argv)
    cfg = config.from_args(config.WorkerConfig, "worker", args, os.environ)
    if cfg.slots < 1:
        print("heapd worker: --slots must be at least 1", file=sys.stderr)
        return 2
    if cfg.socket and not sockets.is_unix(cfg.register):
        # The register takes a unix: address only from a worker that came over its socket.
        print(
            "heapd worker: --socket needs the register's own socket: --register unix:PATH",
            file=sys.stderr,
        )
        return 2
    cfg = dataclasses.replace(cfg, socket=sockets.role_socket("worker", cfg.socket))
    try:
        resources, labels = offers(cfg)
    except InvalidArgument as exc:
        print(f"heapd worker: {exc}", file=sys.stderr)
        return 2
    logs.setup("worker", cfg.log_level)
    sec = security.for_role("worker", args, [cfg.host])
    try:
        pool = Pool(cfg.slots, max_result_bytes=cfg.max_result_bytes)
    except ValueError as exc:
        print(f"heapd worker: {exc}", file=sys.stderr)
        return 2
    pool.start()
    try:
        return asyncio.run(serve(cfg, pool, resources, labels, sec))
    finally:
        pool.close()


if __name__ == "__main__":
    sys.exit(main())
