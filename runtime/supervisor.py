"""`heapd up`: create a cell's shared memory, start its roles and local workers, supervise them.

Children are started with fork+exec (asyncio subprocesses) before this process creates any gRPC
object, each in its own session so a terminal's Ctrl-C reaches only the supervisor, which then
stops them in order: workers (drain), PLM, scheduler, register — and unlinks the shared memory.
A role that exits unexpectedly is restarted with backoff, reacting to its exit (no polling);
the register keeps its port across restarts so workers find it again. A second signal kills
every role's process group and removes the shared memory at once.

With the unix transport (`CellPlan.socket_dir`), the PLM and the register also listen on Unix
sockets in the cell's socket directory (`heapd.runtime.sockets`), and the local workers listen
on theirs only and join the register over its socket; a restarted role binds the same path
again (gRPC unlinks the socket file a killed one left before it binds). The directory goes with
the shared memory.

What happens to the cell is logged (`heapd.runtime.logs`, on stderr); the two lines meant for the
person at the terminal, "the cell is up" and "the cell already exists", are plain text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from heapd import shm
from heapd.runtime import pidfile as pidfiles
from heapd.runtime import signals, sockets
from heapd.runtime.config import (
    DEFAULT_PLM_PORT,
    DEFAULT_REGISTER_PORT,
    Durability,
    SecurityConfig,
)
from heapd.runtime.logs import LogLevel
from heapd.worker.execute import MIN_RESULT_BYTES
from heapd.worker.pool import MAX_RESULT_BYTES

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CELL_EXISTS = 2
EXIT_ROLE_FAILED = 4
EXIT_SOCKETS = 2  # the cell's socket directory cannot be used (refused as a bad flag is)
EXIT_KILLED = signals.EXIT_INTERRUPTED  # a second signal cut the graceful stop short
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
RESTART_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
STABLE_S = 30.0  # a role that ran this long before exiting starts the backoff over


def security_flags(cfg: SecurityConfig) -> list[str]:
    """The security flags `heapd up` hands every role and local worker: the token file ("":
    the roles read HEAPD_TOKEN from the environment they inherit), TLS files, --insecure."""
    given: dict[str, object | None] = {
        "--token-file": cfg.token_file or None,
        "--tls-cert": cfg.tls_cert or None,
        "--tls-key": cfg.tls_key or None,
        "--tls-ca": cfg.tls_ca or None,
    }
    return _given_flags(given) + (["--insecure"] if cfg.insecure else [])


@dataclass(frozen=True)
class CellPlan:
    """What `heapd up` starts."""

    cell: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PLM_PORT
    register_port: int = DEFAULT_REGISTER_PORT
    workers: int = 2
    slots: int = 2
    worker_resources: str = ""  # each local worker's --resources ("gpu=1"); "" = cpus = slots
    worker_labels: str = ""  # each local worker's --labels ("zone=a")
    capacities: shm.Capacities = field(default_factory=shm.Capacities)
    log_dir: Path | None = None
    state_dir: Path | None = None  # None: the PLM's default for the cell
    durability: Durability = Durability.FSYNC
    # `heapd up --log-level`, handed to every role; None: each role finds its own level in the
    # environment and TOML file it shares with `heapd up` (so `[scheduler] log_level` works).
    log_level: LogLevel | None = None
    config: Path | None = None  # the TOML file, handed to every role for its own settings
    prefetch_per_slot: int | None = None
    policy: str | None = None  # None: the scheduler's own default (least-loaded)
    aging_s: float | None = None
    heartbeat_interval_s: float | None = None  # None: the register's own default
    missed_heartbeats: int | None = None
    result_ttl_s: float | None = None  # None: the PLM's own default
    # HTTP endpoints: the PLM on this port, then the scheduler, the register and each worker on
    # the ports after it; -1 = off, 0 = any ports (each kept across restarts once bound).
    metrics_port: int = -1
    security: SecurityConfig = field(default_factory=SecurityConfig)  # files as absolute paths
    # The unix transport: the cell's socket directory (`sockets.cell_dir`); None: TCP only.
    socket_dir: Path | None = None

    def socket_problem(self) -> str:
        """Why the cell's socket paths cannot be used ("" if they can): the longest, the last
        worker's, must fit sun_path."""
        if self.socket_dir is None:
            return ""
        try:
            sockets.socket_path(self.socket_dir, sockets.worker_name(max(self.workers - 1, 0)))
        except sockets.SocketPathError as exc:
            return str(exc)
        return ""

    def socket(self, name: str) -> str:
        """The path of the cell's socket `name` ("" with the TCP transport)."""
        return "" if self.socket_dir is None else str(self.socket_dir / name)

    def metrics_problem(self) -> str:
        """Why the metrics ports cannot be used ("" if they can): past 65535, or one of them
        is the PLM's or the register's gRPC port."""
        if self.metrics_port <= 0:
            return ""
        last = self.metrics_port + 2 + self.workers
        if last > 65535:
            return f"--metrics-port {self.metrics_port}: the ports up to {last} exceed 65535"
        taken = {self.port, self.register_port} & set(range(self.metrics_port, last + 1))
        if taken:
            return (
                f"--metrics-port {self.metrics_port}: ports {self.metrics_port}..{last} include"
                f" the PLM's or register's port {min(taken)}"
            )
        return ""

    def max_result_bytes(self) -> int:
        """The local workers' result cap: the cell's largest blob, within what a pool takes."""
        return min(max(self.capacities.max_blob_bytes, MIN_RESULT_BYTES), MAX_RESULT_BYTES)

    def metrics_flags(self, offset: int) -> list[str]:
        """The `--metrics-port` of the role at `offset` (PLM 0, scheduler 1, register 2,
        worker i at 3 + i); -1 when metrics are off."""
        if self.metrics_port < 0:
            return ["--metrics-port", "-1"]  # off, whatever HEAPD_METRICS_PORT or a TOML says
        return ["--metrics-port", str(self.metrics_port + offset if self.metrics_port else 0)]


@dataclass
class Child:
    """One supervised role process."""

    name: str
    argv: list[str]
    process: asyncio.subprocess.Process | None = None
    address: str = ""
    socket: str = ""  # the unix: address it also listens on, if it does
    metrics: str = ""  # its HTTP endpoint (host:port), if it serves one
    restarts: int = 0  # consecutive quick exits: the index into RESTART_BACKOFF_S
    started_at: float = 0.0  # loop time of the last start
    stopping: bool = False


class Supervisor:
    """Starts, watches, restarts and stops the processes of one cell."""

    def __init__(self, plan: CellPlan, out: IO[str] = sys.stdout) -> None:
        self.plan = plan
        self._out = out
        self._children: list[Child] = []
        self._stop = asyncio.Event()
        self._failed: str | None = None
        self._created = False  # the cell's shared memory is ours to remove
        self._sockets = False  # and its socket directory
        self._killed = False
        self._drains: set[asyncio.Task[None]] = set()

    def request_stop(self) -> None:
        """Begin a graceful stop (first signal)."""
        self._stop.set()

    def kill(self) -> None:
        """Stop at once (second signal): SIGKILL every role's process group and remove the
        cell's shared memory now, so that nothing survives even if this process dies next;
        `run()` then only reaps the children and returns EXIT_KILLED."""
        log.warning(
            "killing every role of the cell now", extra={"fields": {"cell": self.plan.cell}}
        )
        self._killed = True
        self._stop.set()
        for child in self._children:
            _kill_group(child.process)
        if self._created:
            shm.Cell.unlink(self.plan.cell)
        self._remove_sockets()

    async def run(self) -> int:
        """Bring the cell up, supervise until stopped, bring it down; returns the exit code."""
        try:
            cell = shm.Cell.create(self.plan.cell, self.plan.capacities)
        except shm.CellExists:
            print(
                f"heapd up: cell {self.plan.cell!r} already exists; is it running? "
                f"(`heapd down --cell {self.plan.cell}` removes it)",
                file=sys.stderr,
            )
            return EXIT_CELL_EXISTS
        self._created = True
        cell.close()
        # Only once the cell is ours: a refused second `heapd up` must not take the running
        # one's pid file away, nor its sockets.
        pidfiles.claim(self.plan.cell)
        refused = False  # the socket directory cannot be used
        try:
            refused = not self._make_socket_dir()
            if not refused and await self._start_all():
                self._announce()
                await self._supervise()
        finally:
            await self._stop_all()
            shm.Cell.unlink(self.plan.cell)
            self._remove_sockets()
            pidfiles.release(self.plan.cell)
        if self._killed:
            return EXIT_KILLED
        if refused:
            return EXIT_SOCKETS
        return EXIT_ROLE_FAILED if self._failed else EXIT_OK

    # --- start

    def _make_socket_dir(self) -> bool:
        """Create the cell's socket directory (unix transport); False, with a message, if it
        cannot be used."""
        if self.plan.socket_dir is None:
            return True
        try:
            sockets.ensure_dir(self.plan.socket_dir)
        except sockets.SocketPathError as exc:
            print(f"heapd up: {exc}", file=sys.stderr)
            return False
        self._sockets = True
        return True

    def _remove_sockets(self) -> None:
        """Remove the socket directory this supervisor made (never one it refused)."""
        if self._sockets and self.plan.socket_dir is not None:
            sockets.remove_dir(self.plan.socket_dir)

    async def _start_all(self) -> bool:
        plan = self.plan
        common = ["--cell", plan.cell, *security_flags(plan.security)]
        if plan.config is not None:
            common += ["--config", str(plan.config)]
        register_args = [*common, "--host", plan.host, "--port", str(plan.register_port)]
        # Given even when empty: a HEAPD_SOCKET in the environment must not reach every role.
        register_args += ["--socket", plan.socket(sockets.REGISTER)]
        register_args += plan.metrics_flags(2)
        if plan.heartbeat_interval_s is not None:
            register_args += ["--heartbeat-interval-s", str(plan.heartbeat_interval_s)]
        if plan.missed_heartbeats is not None:
            register_args += ["--missed-heartbeats", str(plan.missed_heartbeats)]
        register = Child("register", self._role("register", register_args))
        if not await self._start(register):
            return False
        _pin_port(register.argv, "--port", register.address)
        scheduler_args = [*common, "--port", "0"]  # health only; never HEAPD_PORT's port
        scheduler_args += plan.metrics_flags(1)
        scheduler_args += _given_flags(
            {
                "--prefetch-per-slot": plan.prefetch_per_slot,
                "--policy": plan.policy,
                "--aging-s": plan.aging_s,
            }
        )
        scheduler = Child("scheduler", self._role("scheduler", scheduler_args))
        plm_args = [*common, "--host", plan.host, "--port", str(plan.port)]
        plm_args += ["--socket", plan.socket(sockets.PLM)]
        plm_args += ["--durability", str(plan.durability)]
        plm_args += plan.metrics_flags(0)
        if plan.result_ttl_s is not None:
            plm_args += ["--result-ttl-s", str(plan.result_ttl_s)]
        if plan.state_dir is not None:
            plm_args += ["--state-dir", str(plan.state_dir)]
        plm = Child("plm", self._role("plm", plm_args))
        for child in (scheduler, plm):
            if not await self._start(child):
                return False
        if plan.port == 0:
            _pin_port(plm.argv, "--port", plm.address)
        worker_args = ["--register", register.socket or register.address]
        worker_args += ["--slots", str(plan.slots), "--port", "0"]
        worker_args += security_flags(plan.security)
        worker_args += ["--max-result-bytes", str(plan.max_result_bytes())]
        if plan.config is not None:
            worker_args += ["--config", str(plan.config)]
        worker_args += _given_flags(
            {"--resources": plan.worker_resources or None, "--labels": plan.worker_labels or None}
        )
        workers = [
            Child(
                f"worker-{i}",
                self._role(
                    "worker",
                    [
                        *worker_args,
                        *["--socket", plan.socket(sockets.worker_name(i))],
                        *plan.metrics_flags(3 + i),
                    ],
                ),
            )
            for i in range(plan.workers)
        ]
        started = await asyncio.gather(*(self._start(w) for w in workers))
        return all(started)

    def _role(self, role: str, args: list[str]) -> list[str]:
        return [sys.executable, "-m", f"heapd.{role}", *args]

    async def _start(self, child: Child) -> bool:
        """Start a child and wait for its ready line; False (and stop) if it never comes."""
        if child not in self._children:
            self._children.append(child)
        stderr = self._log_file(child.name)
        child.started_at = asyncio.get_running_loop().time()
        child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=self._child_env(),
            start_new_session=True,
        )
        if stderr is not None:
            stderr.close()
        if self._killed:
            # A second signal handled while this spawn was in flight (the loop runs signal
            # callbacks between the fork and the line above) found no process to kill. This
            # check stands in for blocking signals around the spawn: a blocked mask would be
            # inherited across exec, and the role would never see our SIGTERM.
            _kill_group(child.process)
            return False
        try:
            child.address = await asyncio.wait_for(self._ready(child), READY_TIMEOUT_S)
        except (TimeoutError, EOFError):
            if not self._killed:
                self._failed = child.name
                log.error(
                    "%s did not start (see its log)",
                    child.name,
                    extra={"fields": {"child": child.name, "returncode": child.process.returncode}},
                )
            self._stop.set()
            return False
        log.info(
            "%s ready at %s",
            child.name,
            child.address,
            extra={"fields": {"child": child.name, "pid": child.process.pid}},
        )
        return True

    def _child_env(self) -> dict[str, str]:
        """The roles inherit this environment, with `--log-level` as HEAPD_LOG_LEVEL: above
        the TOML file, below a `HEAPD_<ROLE>_LOG_LEVEL` that turns one role up or down. (An
        environment variable rather than a flag: it needs no flag in every role's parser.)"""
        if self.plan.log_level is None:
            return dict(os.environ)
        return {**os.environ, "HEAPD_LOG_LEVEL": self.plan.log_level.value}

    async def _ready(self, child: Child) -> str:
        assert child.process is not None and child.process.stdout is not None
        stream = child.process.stdout
        while True:
            line = await stream.readline()
            if not line:
                raise EOFError(child.name)
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict) and "ready" in message:
                    self._drains.add(asyncio.create_task(_drain(stream)))
                    _keep_metrics_port(child, str(message.get("metrics", "")))
                    child.socket = str(message.get("socket", ""))
                    return str(message.get("address", ""))

    def _log_file(self, name: str) -> IO[bytes] | None:
        if self.plan.log_dir is None:
            return None
        self.plan.log_dir.mkdir(parents=True, exist_ok=True)
        return open(self.plan.log_dir / f"{name}.log", "ab")

    def _announce(self) -> None:
        plm = next(c for c in self._children if c.name == "plm")
        register = next(c for c in self._children if c.name == "register")
        message = {
            "ready": "cell",
            "cell": self.plan.cell,
            "address": plm.address,
            "register": register.address,
            "workers": self.plan.workers,
            "pid": os.getpid(),
            "pids": {c.name: c.process.pid for c in self._children if c.process is not None},
            "tls": bool(self.plan.security.tls_cert),
            "transport": "tcp" if self.plan.socket_dir is None else "unix",
        }
        if plm.socket:
            message["socket"] = plm.socket
            message["register_socket"] = register.socket
        if self.plan.security.token_file:
            message["token_file"] = self.plan.security.token_file
        endpoints = {c.name: c.metrics for c in self._children if c.metrics}
        if endpoints:
            message["metrics"] = endpoints
        self._out.write(json.dumps(message) + "\n")
        self._out.flush()
        plm_at = f"{plm.address} and {plm.socket}" if plm.socket else plm.address
        print(
            f"heapd: cell {self.plan.cell!r} is up — PLM at {plm_at}, register at "
            f"{register.address}, {self.plan.workers} worker(s) x {self.plan.slots} slot(s). "
            "Ctrl-C stops it.",
            file=sys.stderr,
        )
        if endpoints:
            print(
                f"heapd: status page at http://{plm.metrics}/ ; metrics at "
                + ", ".join(f"{name} http://{at}/metrics" for name, at in endpoints.items()),
                file=sys.stderr,
            )

    # --- supervise

    async def _supervise(self) -> None:
        waits = {asyncio.create_task(self._wait(c)): c for c in self._children}
        stop = asyncio.create_task(self._stop.wait())
        while not self._stop.is_set():
            done, _ = await asyncio.wait({*waits, stop}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stop}:
                child = waits.pop(task)
                if self._stop.is_set() or child.stopping:
                    continue
                if await self._restart(child):
                    waits[asyncio.create_task(self._wait(child))] = child
        stop.cancel()
        for task in waits:
            task.cancel()

    async def _wait(self, child: Child) -> int:
        assert child.process is not None
        return await child.process.wait()

    async def _restart(self, child: Child) -> bool:
        assert child.process is not None
        if asyncio.get_running_loop().time() - child.started_at > STABLE_S:
            child.restarts = 0  # a crash a day must not cost 5 s of downtime from day six on
        delay = RESTART_BACKOFF_S[min(child.restarts, len(RESTART_BACKOFF_S) - 1)]
        log.warning(
            "%s exited (%s); restart in %ss",
            child.name,
            child.process.returncode,
            delay,
            extra={
                "fields": {
                    "child": child.name,
                    "returncode": child.process.returncode,
                    "restart_in_s": delay,
                }
            },
        )
        child.restarts += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)
        if self._stop.is_set():
            return False
        return await self._start(child)

    # --- stop

    async def _stop_all(self) -> None:
        """Workers first (they drain), then PLM, scheduler, register."""
        order = ["worker", "plm", "scheduler", "register"]
        for prefix in order:
            group = [c for c in self._children if c.name.startswith(prefix)]
            await asyncio.gather(*(self._stop_child(c) for c in group))

    async def _stop_child(self, child: Child) -> None:
        process = child.process
        child.stopping = True
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            _kill_group(process)
            await process.wait()
        _kill_group(process)  # leftovers of its session (task children)


def _pin_port(argv: list[str], flag: str, address: str) -> None:
    """Rewrite `flag`'s port in a child's argv to the one it bound (it may have asked for
    port 0), so that a restart listens at the same address."""
    argv[argv.index(flag) + 1] = address.rpartition(":")[2]


def _keep_metrics_port(child: Child, metrics: str) -> None:
    """Remember a child's HTTP endpoint, and keep its port across restarts."""
    child.metrics = metrics
    if metrics and "--metrics-port" in child.argv:
        _pin_port(child.argv, "--metrics-port", metrics)


def _kill_group(process: asyncio.subprocess.Process | None) -> None:
    """SIGKILL a role's process group (its session: the role and whatever it started there)."""
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def _drain(stream: asyncio.StreamReader) -> None:
    """Read and drop a child's stdout after its ready line, so it never blocks on a full pipe."""
    while await stream.readline():
        pass


async def _main(plan: CellPlan) -> int:
    supervisor = Supervisor(plan)
    signals.install(asyncio.get_running_loop(), supervisor.request_stop, supervisor.kill)
    return await supervisor.run()


def up(plan: CellPlan) -> int:
    """Run a cell in the foreground until SIGINT/SIGTERM."""
    return asyncio.run(_main(plan))


def down(cell: str, timeout_s: float = 30.0, env: Mapping[str, str] | None = None) -> int:
    """Stop the cell's `heapd up` (SIGTERM, wait) if its pid file really names it (see
    `runtime.pidfile`), then remove any shared memory and socket directory left (the
    directory as `env`, default os.environ, places it)."""
    pidfiles.stop(cell, timeout_s)
    removed = shm.Cell.unlink(cell)
    sockets.remove_dir(sockets.cell_dir(cell, os.environ if env is None else env))
    return 0 if removed or not shm.Cell.exists(cell) else 1


def _given_flags(flags: dict[str, object | None]) -> list[str]:
    """`--flag value` for each flag whose value is set (None: the role's own default)."""
    out: list[str] = []
    for flag, value in flags.items():
        if value is not None:
            out += [flag, str(value)]
    return out
