"""`heapd plm`: run the PLM (TaskService) of a cell."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence

from heapd import shm
from heapd.plm import convert, metrics, service
from heapd.plm.daemon import Plm
from heapd.plm.journal import Journal, JournalError
from heapd.plm.pages import Pages
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
from heapd.runtime.limits import Limits
from heapd.runtime.security import RoleSecurity

SHUTDOWN_GRACE_S = 2.0
EXIT_JOURNAL = 3  # the journal is another cell's, of another schema, damaged or unwritable

log = logging.getLogger("heapd.plm")


def parser() -> argparse.ArgumentParser:
    """The `heapd plm` flags."""
    p = argparse.ArgumentParser(
        prog="heapd plm", description="Run the PLM (TaskService) of a cell."
    )
    config.add_common_flags(p, config.DEFAULT_PLM_PORT)
    config.add_socket_flag(p, "plm", "also listen on this Unix socket, for clients of this host")
    p.add_argument(
        "--result-ttl-s", dest="result_ttl_s", type=float, help="hold unwatched results this long"
    )
    config.add_journal_flags(p)
    config.add_metrics_flag(p, "/metrics, /status (JSON) and / (a status page)")
    return p


async def serve(
    cfg: config.PlmConfig,
    cell: shm.Cell,
    journal: Journal | None,
    sec: RoleSecurity,
    limits: Limits,
) -> None:
    """Run the PLM until SIGTERM/SIGINT."""
    async with Plm(
        cell,
        cfg.result_ttl_s,
        convert.cancel_on_worker,
        convert.DEPENDENCY_MESSAGES,
        journal,
        sec.client(),
    ) as plm:
        grpc_server, port = await server.start(
            cfg.host,
            cfg.port,
            [service.registration(plm, limits)],
            [service.SERVICE_NAME],
            sec,
            limits,
            socket=cfg.socket,
        )
        signals.install(asyncio.get_running_loop(), plm.shutdown)
        pages = Pages(plm)
        endpoint, metrics_at = await endpoint_mod.serve_if_asked(
            cfg.host, cfg.metrics_port, metrics.registry(plm), pages.routes(), sec
        )
        if endpoint is not None:
            pages.start()
        ready.announce(
            "plm",
            channels.format_address(cfg.host, port),
            metrics_at,
            sockets.address(cfg.socket) if cfg.socket else "",
        )
        await plm.wait_stopped()
        await pages.close()
        if endpoint is not None:
            await endpoint.close()
        await grpc_server.stop(SHUTDOWN_GRACE_S)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit 2 when the cell cannot be attached."""
    args = parser().parse_args(argv)
    cfg = config.from_args(config.PlmConfig, "plm", args, os.environ)
    cfg = dataclasses.replace(cfg, socket=sockets.role_socket("plm", cfg.socket))
    logs.setup("plm", cfg.log_level)
    sec = security.for_role("plm", args, [cfg.host])
    limits = config.from_args(Limits, "plm", args, os.environ)
    try:
        journal = open_journal(cfg)
    except JournalError as exc:
        log.error("the journal cannot be used", extra={"fields": {"error": str(exc)}})
        print(f"heapd plm: {exc}", file=sys.stderr)
        return EXIT_JOURNAL
    return entry.run_attached("plm", cfg.cell, lambda cell: serve(cfg, cell, journal, sec, limits))


def open_journal(cfg: config.PlmConfig) -> Journal | None:
    """The cell's journal, unless durability is none (JournalError: refuse to start)."""
    if cfg.durability is config.Durability.NONE:
        return None
    state_dir = config.state_dir(cfg.cell, cfg.state_dir, os.environ)
    return Journal.open(state_dir, cfg.cell, cfg.durability)


if __name__ == "__main__":
    sys.exit(main())
