"""Start a whole local cell (`heapd up`) as a child process and stop it: for the demo, the
benchmarks and the end-to-end tests.

`heapd up` prints one JSON line when every role is ready; that is read instead of polling.
With the unix transport it names the PLM's and the register's sockets too: `local_address`
is how a client on this host reaches the PLM, and `add_worker` joins the register the way the
cell's own workers do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from heapd import shm
from heapd.runtime import sockets
from heapd.security import Security, read_token

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


class CellStartError(RuntimeError):
    """`heapd up` exited or stayed silent instead of announcing the cell."""


class LocalCell:
    """`with LocalCell("name", workers=2) as cell: Client(cell.address)`."""

    def __init__(
        self,
        name: str,
        *,
        workers: int = 2,
        slots: int = 2,
        log_dir: Path | None = None,
        state_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        transport: str | None = None,
    ) -> None:
        """`transport`: `heapd up --transport` (unix, tcp); None: its default."""
        self.name = name
        self.workers = workers
        self.slots = slots
        self.log_dir = log_dir
        self.state_dir = state_dir
        self.extra_args = list(extra_args)
        self.env = env
        self.transport = transport
        self.process: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self.extra_workers: list[subprocess.Popen[bytes]] = []  # started by add_worker

    @property
    def address(self) -> str:
        """The PLM's HOST:PORT."""
        return str(self.info["address"])

    @property
    def local_address(self) -> str:
        """How a client on this host reaches the PLM: its unix: socket when the cell has one
        (the unix transport), else its HOST:PORT."""
        return str(self.info.get("socket") or self.info["address"])

    @property
    def socket_dir(self) -> Path:
        """Where `heapd up` keeps this cell's sockets with the unix transport."""
        return sockets.cell_dir(self.name, os.environ if self.env is None else self.env)

    @property
    def security(self) -> Security:
        """How a client proves itself to this cell: the token file `heapd up` named (else
        the environment's settings, e.g. HEAPD_TOKEN)."""
        token_file = self.info.get("token_file")
        if token_file:
            return dataclasses.replace(
                Security.from_env(self.env), token=read_token(Path(token_file))
            )
        return Security.from_env(self.env)

    @property
    def register(self) -> str:
        """The register's HOST:PORT."""
        return str(self.info["register"])

    def __enter__(self) -> LocalCell:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Run `heapd up` and wait for its ready line."""
        # Any free ports: the cells of tests and benchmarks run side by side.
        argv = [
            sys.executable, "-m", "heapd", "up", "--cell", self.name, "--port", "0",
            "--register-port", "0", "--workers", str(self.workers), "--slots", str(self.slots),
            *self.extra_args,
        ]  # fmt: skip
        if self.log_dir is not None:
            argv += ["--logs", str(self.log_dir)]
        if self.state_dir is not None:
            argv += ["--state-dir", str(self.state_dir)]
        if self.transport is not None:
            argv += ["--transport", self.transport]
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
        )
        try:
            self.info = self._read_ready(self.process)
        except BaseException:
            self.stop()
            raise

    def add_worker(self, slots: int, launcher: Sequence[str] = ()) -> int:
        """Start one more `heapd worker` of `slots` slots on this cell's register (`heapd up`
        starts equal workers; cells of unequal ones add theirs here); returns its pid once it
        has joined. `launcher` is a command that execs the worker's (e.g. `taskset -c 1 nice
        -n 10`: a pinned, niced worker, task processes included). `stop` drains it before the
        cell, `crash` kills it with the cell. It follows the cell's transport: with unix, it
        listens on a socket of the cell's directory and joins the register's socket."""
        argv = [
            *launcher, sys.executable, "-m", "heapd.worker", "--slots", str(slots), "--port", "0",
        ]  # fmt: skip
        register_socket = str(self.info.get("register_socket", ""))
        if register_socket:
            name = sockets.worker_name(f"extra-{len(self.extra_workers)}")
            directory = Path(sockets.path_of(register_socket)).parent
            argv += ["--register", register_socket]
            argv += ["--socket", str(sockets.socket_path(directory, name))]
        else:
            argv += ["--register", self.register, "--socket", ""]
        if self.info.get("token_file"):
            argv += ["--token-file", str(self.info["token_file"])]
        with contextlib.ExitStack() as files:
            log = None  # None: its log goes where ours does
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                name = f"worker-extra-{len(self.extra_workers)}.log"
                log = files.enter_context(open(self.log_dir / name, "ab"))
            process = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                stderr=log,
                env=self.env,
                start_new_session=True,
            )
        self.extra_workers.append(process)
        self._read_ready(process, "worker")
        return process.pid

    def _stop_extra_workers(self) -> None:
        """SIGTERM (drain and leave the cell) each added worker, wait, then kill its session
        (leftover task children)."""
        for process in self.extra_workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.extra_workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(STOP_TIMEOUT_S)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self.extra_workers = []

    def stop(self) -> int | None:
        """SIGTERM the supervisor, wait, and make sure nothing of the cell is left (a clean
        stop removes the socket directory itself: tests check it does)."""
        self._stop_extra_workers()
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                sockets.remove_dir(self.socket_dir)
        if process.stdout is not None:
            process.stdout.close()
        shm.Cell.unlink(self.name)
        return process.returncode

    def crash(self) -> None:
        """What a power cut and a reboot leave: SIGKILL `heapd up` and every role's process
        group at once (the pids announced when the cell came up), and remove the cell's shared
        memory and socket directory (a reboot clears both). The journal in the state directory
        stays."""
        process = self.process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for pid in [*self.info.get("pids", {}).values(), *(p.pid for p in self.extra_workers)]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        if process is not None:
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self._stop_extra_workers()  # already killed: this reaps them
        self.process = None
        shm.Cell.unlink(self.name)
        sockets.remove_dir(self.socket_dir)

    @staticmethod
    def _read_ready(process: subprocess.Popen[bytes], role: str = "cell") -> dict[str, Any]:
        """The {"ready": role, ...} line of `heapd up` (role "cell") or of a role."""
        assert process.stdout is not None
        command = "up" if role == "cell" else role
        deadline = time.monotonic() + READY_TIMEOUT_S
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(deadline - time.monotonic()):
                    break
                line = process.stdout.readline()
                if not line:
                    raise CellStartError(
                        f"heapd {command} exited with {process.wait()} before it was ready"
                    )
                with contextlib.suppress(ValueError):
                    message = json.loads(line)
                    if isinstance(message, dict) and message.get("ready") == role:
                        return message
        raise CellStartError(f"heapd {command} did not announce itself within {READY_TIMEOUT_S}s")
