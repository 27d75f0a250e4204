"""`heapd plm`: run the PLM (TaskService) of a cell."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from heapd import shm
from heapd.plm import convert, service
from heapd.plm.daemon import Plm
from heapd.runtime import channels, config, entry, logs, ready, server, signals

SHUTDOWN_GRACE_S = 2.0


def parser() -> argparse.ArgumentParser:
    """The `heapd plm` flags."""
    p = argparse.ArgumentParser(
        prog="heapd plm", description="Run the PLM (TaskService) of a cell."
    )
    config.add_common_flags(p, config.DEFAULT_PLM_PORT)
    p.add_argument(
        "--result-ttl-s", dest="result_ttl_s", type=float, help="hold unwatched results this long"
    )
    config.add_journal_flags(p)
    return p


async def serve(cfg: config.PlmConfig, cell: shm.Cell) -> None:
    """Run the PLM until SIGTERM/SIGINT."""
    async with Plm(cell, cfg.result_ttl_s, convert.cancel_on_worker) as plm:
        grpc_server, port = await server.start(
            cfg.host, cfg.port, [service.registration(plm)], [service.SERVICE_NAME]
        )
        signals.install(asyncio.get_running_loop(), plm.shutdown)
        ready.announce("plm", channels.format_address(cfg.host, port))
        await plm.wait_stopped()
        await grpc_server.stop(SHUTDOWN_GRACE_S)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit 2 when the cell cannot be attached."""
    cfg = config.from_args(config.PlmConfig, "plm", parser().parse_args(argv), os.environ)
    logs.setup("plm", cfg.log_level)
    return entry.run_attached("plm", cfg.cell, lambda cell: serve(cfg, cell))


if __name__ == "__main__":
    sys.exit(main())
