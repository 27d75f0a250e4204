"""A TCP relay that adds latency and loss, for tests where the kernel has no `netem` qdisc:

    python -m tests.relay --listen HOST:PORT --to HOST:PORT --delay-ms 20 --loss 0.01

Every connection accepted on --listen is forwarded to --to. Each direction is read in chunks of
at most one segment (SEGMENT_BYTES) and each chunk is written out `--delay-ms` after it was read.

Loss is what a lost TCP segment does to the application above TCP, since a relay between two
TCP connections cannot drop bytes without corrupting the stream (and TLS would say so): with
probability `--loss` a chunk is held back one retransmission timeout more (`--rto-ms`, Linux's
minimum RTO by default), and the chunks behind it wait for it, as TCP delivers in order. One
random generator, seeded by `--seed`, draws once per chunk in the order chunks are read, so a
test knows how many chunks must pass before the first one is lost.

It prints {"ready": "relay", "address": "HOST:PORT"} on stdout once it listens (PORT 0 = any),
and on SIGTERM or SIGINT closes every connection and prints {"relayed": {...}}: connections,
chunks and bytes forwarded, chunks lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

SEGMENT_BYTES = 1448  # a TCP segment's payload on a 1500-byte Ethernet link
QUEUE_CHUNKS = 4096  # chunks in flight per direction before the relay stops reading
DEFAULT_RTO_MS = 200.0  # Linux's TCP_RTO_MIN


@dataclass
class Stats:
    """What the relay forwarded, reported when it stops."""

    connections: int = 0
    chunks: int = 0
    bytes: int = 0
    lost: int = 0


@dataclass(frozen=True)
class Impairment:
    """How every direction of every connection is slowed: delay per chunk, loss, retransmission
    timeout; `rng` decides which chunks are lost."""

    delay_s: float
    loss: float
    rto_s: float
    rng: random.Random

    def hold_s(self, stats: Stats) -> float:
        """How long the next chunk is held: the delay, plus an RTO if it is lost."""
        if self.rng.random() < self.loss:
            stats.lost += 1
            return self.delay_s + self.rto_s
        return self.delay_s


def split_address(text: str) -> tuple[str, int]:
    """("host", port) from HOST:PORT ([v6]:PORT too)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


class Relay:
    """Accepts connections and pumps both directions of each through the impairment."""

    def __init__(self, target: tuple[str, int], impairment: Impairment) -> None:
        self._target = target
        self._impairment = impairment
        self.stats = Stats()
        self._connections: set[asyncio.Task[None]] = set()

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection: connect to the target and relay until both sides are done."""
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.stats.connections += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream = await asyncio.open_connection(*self._target)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(reader, upstream))
                group.create_task(self._pump(up_reader, writer))
        except* (OSError, asyncio.IncompleteReadError):
            pass  # a side reset or could not be reached: both are closed below
        finally:
            for side in (writer, upstream):
                if side is not None:
                    side.close()
            self._connections.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward one direction until its end, then half-close; a failing side ends both."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._receive(reader, queue))
            group.create_task(self._send(queue, writer))

    async def _receive(
        self, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes] | None]
    ) -> None:
        """Read chunks and queue each with the time it is due out; None at the end."""
        loop = asyncio.get_running_loop()
        due = 0.0
        while data := await reader.read(SEGMENT_BYTES):
            # In order: a chunk behind a lost one waits for it, as TCP would make it.
            due = max(loop.time() + self._impairment.hold_s(self.stats), due)
            self.stats.chunks += 1
            self.stats.bytes += len(data)
            await queue.put((due, data))
        await queue.put(None)

    @staticmethod
    async def _send(
        queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter
    ) -> None:
        """Write each chunk when it is due; half-close after the last."""
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not None:
            due, data = item
            wait_s = due - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)  # the emulated link's delay, not a synchronisation
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def close(self) -> None:
        """End every connection."""
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)


async def serve(listen: tuple[str, int], relay: Relay) -> None:
    """Listen, announce the address, relay until SIGTERM or SIGINT."""
    server = await asyncio.start_server(relay.accept, *listen)
    host, port = server.sockets[0].getsockname()[:2]
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    print(json.dumps({"ready": "relay", "address": shown}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()
        server.close()
        await relay.close()
    print(json.dumps({"relayed": asdict(relay.stats)}), flush=True)


def parser() -> argparse.ArgumentParser:
    """The relay's flags."""
    p = argparse.ArgumentParser(prog="python -m tests.relay", description=__doc__.split("\n")[0])
    p.add_argument("--listen", type=split_address, required=True, metavar="HOST:PORT")
    p.add_argument("--to", type=split_address, required=True, metavar="HOST:PORT")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay per chunk")
    p.add_argument("--loss", type=float, default=0.0, help="probability a chunk is lost")
    p.add_argument(
        "--rto-ms", type=float, default=DEFAULT_RTO_MS, help="what a lost chunk costs more"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the loss draws")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: relay until signalled; exit code 0."""
    args = parser().parse_args(argv)
    if not 0.0 <= args.loss < 1.0 or args.delay_ms < 0 or args.rto_ms < 0:
        print("relay: --loss must be in [0, 1), --delay-ms and --rto-ms >= 0", file=sys.stderr)
        return 2
    impairment = Impairment(
        args.delay_ms / 1000, args.loss, args.rto_ms / 1000, random.Random(args.seed)
    )
    asyncio.run(serve(args.listen, Relay(args.to, impairment)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
