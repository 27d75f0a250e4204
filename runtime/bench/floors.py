"""The floors every figure is divided by, measured in the same run (BENCHMARKS.md).

F0: p50 of one no-op's round trip through a ProcessPoolExecutor with SLOTS processes
(`submit(noop, i).result()`, W2's pattern with no scheduler). F1: p50 of a unary gRPC call with
a tiny message to another Python process on loopback (sync client, aio server: as heapd's
client uses gRPC). F1_unix: the same call over a Unix domain socket (the transport of a cell's
local hops with `--transport unix`). F2: tasks/s of a ProcessPoolExecutor with SLOTS processes
mapping the no-op, chunksize=1.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from heapd.runtime.bench.workloads import noop

ECHO_CALLS = 1000
WARMUP_CALLS = 100


def echo_p50_ms(unix: bool = False) -> float:
    """F1: p50 round trip (ms) of a health Check to a server in another process, over
    loopback TCP; `unix`: over a Unix socket in a private scratch directory (F1_unix)."""
    with tempfile.TemporaryDirectory(prefix="heapd-echo-") as scratch:
        socket = [str(Path(scratch) / "echo.sock")] if unix else []
        server = subprocess.Popen(
            [sys.executable, "-m", "heapd.runtime.bench.echo", *socket],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        return _echo_p50_ms(server, "socket" if unix else "address")


def _echo_p50_ms(server: subprocess.Popen[bytes], key: str) -> float:
    """Time health Checks to the echo `server` at the address its ready line gives as `key`,
    then stop it."""
    try:
        assert server.stdout is not None
        address = json.loads(server.stdout.readline())[key]
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest()
            for _ in range(WARMUP_CALLS):
                stub.Check(request)
            samples = []
            for _ in range(ECHO_CALLS):
                start = time.perf_counter()
                stub.Check(request)
                samples.append(time.perf_counter() - start)
        return statistics.median(samples) * 1000
    finally:
        server.terminate()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


def pool_round_trip_p50_ms(slots: int, rounds: int, warmup: int) -> float:
    """F0: p50 (ms) of `ProcessPoolExecutor(slots).submit(noop, i).result()`, repeated
    sequentially after `warmup` round trips, pool already started."""
    context = multiprocessing.get_context("spawn")
    samples = []
    with concurrent.futures.ProcessPoolExecutor(max_workers=slots, mp_context=context) as pool:
        list(pool.map(noop, range(slots * 4), chunksize=1))  # start every process first
        for i in range(warmup + rounds):
            start = time.perf_counter()
            value = pool.submit(noop, i).result()
            if i >= warmup:
                samples.append(time.perf_counter() - start)
            if value != i:
                raise AssertionError("F0 pool returned a wrong result")
    return statistics.median(samples) * 1000


def pool_tasks_per_s(slots: int, items: int) -> float:
    """F2: ProcessPoolExecutor(slots).map(noop, range(items), chunksize=1), pool already started."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=slots, mp_context=context) as pool:
        list(pool.map(noop, range(slots * 4), chunksize=1))  # start every process first
        start = time.perf_counter()
        results = list(pool.map(noop, range(items), chunksize=1))
        elapsed = time.perf_counter() - start
    if results != list(range(items)):
        raise AssertionError("F2 pool returned wrong results")
    return items / elapsed
