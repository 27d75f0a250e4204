"""`heapd scheduler`: run the main scheduler of a cell."""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import os
import sys
from collections.abc import Sequence

from heapd import shm
from heapd.runtime import channels, config, entry, logs, ready, security, server, signals
from heapd.runtime import endpoint as endpoint_mod
from heapd.runtime.security import RoleSecurity
from heapd.scheduler import convert, metrics
from heapd.scheduler.daemon import Scheduler

SERVICE_NAMES: list[str] = []


def parser() -> argparse.ArgumentParser:
    """The `heapd scheduler` flags."""
    p = argparse.ArgumentParser(
        prog="heapd scheduler", description="Run the main scheduler of a cell."
    )
    config.add_common_flags(p, 0)
    config.add_metrics_flag(p)
    p.add_argument("--batch", type=int, help="tasks popped per lock acquisition (default 512)")
    p.add_argument(
        "--prefetch-per-slot",
        dest="prefetch_per_slot",
        type=int,
        help="tasks per worker slot when the queue is deep (default 8; 1 = no prefetch)",
    )
    p.add_argument(
        "--policy",
        choices=[policy.label for policy in shm.Policy],
        help="how a worker is picked for a task (default least-loaded)",
    )
    p.add_argument(
        "--aging-s",
        dest="aging_s",
        type=float,
        help="a queued task's priority grows by 1 for every this many seconds it waits "
        "(default 0 = off)",
    )
    return p


async def serve(cfg: config.SchedulerConfig, cell: shm.Cell, sec: RoleSecurity) -> None:
    """Run until SIGTERM/SIGINT; serves health and reflection only."""
    scheduler = Scheduler(
        cell,
        cfg.batch,
        cfg.prefetch_per_slot,
        functools.partial(convert.AssignCall, security=sec.client()),
        shm.Policy.parse(cfg.policy),
        cfg.aging_s,
    )
    async with scheduler:
        grpc_server, port = await server.start(cfg.host, cfg.port, [], SERVICE_NAMES, sec)
        signals.install(asyncio.get_running_loop(), scheduler.shutdown)
        endpoint, metrics_at = await endpoint_mod.serve_if_asked(
            cfg.host, cfg.metrics_port, metrics.registry(scheduler), security=sec
        )
        ready.announce("scheduler", channels.format_address(cfg.host, port), metrics_at)
        await scheduler.wait_stopped()
        if endpoint is not None:
            await endpoint.close()
        await grpc_server.stop(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit 2 when the cell cannot be attached."""
    args = parser().parse_args(argv)
    cfg = config.from_args(config.SchedulerConfig, "scheduler", args, os.environ)
    logs.setup("scheduler", cfg.log_level)
    sec = security.for_role("scheduler", args, [cfg.host])
    try:
        shm.Policy.parse(cfg.policy)
        if not (cfg.aging_s >= 0.0 and math.isfinite(cfg.aging_s)):
            raise ValueError(f"--aging-s must be a finite number >= 0, got {cfg.aging_s}")
    except ValueError as exc:
        print(f"heapd scheduler: {exc}", file=sys.stderr)
        return 2
    return entry.run_attached("scheduler", cfg.cell, lambda cell: serve(cfg, cell, sec))


if __name__ == "__main__":
    sys.exit(main())
