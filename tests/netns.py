"""Two hosts on one machine, for tests of workers on other hosts: the test's own network
namespace is host A (where the cell runs), a new namespace is host B, joined by a veth pair.

    with two_hosts() as net:          # NamespacesUnavailable: the test should skip
        net.host_a, net.host_b        # 10.213.X.1 and 10.213.X.2 (a /30 of 10.213.0.0/16)
        worker = net.spawn([...])     # runs in B (`ip netns exec`); inside=False: in A
        net.cut(); net.restore()      # B's end of the link down / up

Everything is made by `two_hosts` and removed when it exits, even when the test fails: every
process spawned (in either namespace) and every process left in B is killed, the veth pair
and the namespace are deleted. (`kill_processes` does the first part alone, for a test that
must stop its cell on A between the two.) The /30 is chosen under a lock among those no
interface of A uses, so test runs side by side never share one.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import selectors
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

TEST_NET = ipaddress.IPv4Network("10.213.0.0/16")  # private (RFC 1918), for tests only
LOCK_FILE = Path("/tmp/heapd-netns.lock")
REPO = Path(__file__).resolve().parents[1]  # `python -m tests.relay` and task imports need it
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class NamespacesUnavailable(RuntimeError):
    """This machine (or user) cannot make network namespaces and veth pairs; says why."""


def _ip(*args: str) -> str:
    """Run `ip ARGS`; RuntimeError with its message if it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _used_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks of A's interfaces."""
    found = []
    for line in _ip("-o", "-4", "addr", "show").splitlines():
        words = line.split()
        if "inet" in words:
            found.append(ipaddress.IPv4Interface(words[words.index("inet") + 1]).network)
    return found


def _free_subnet(start: int) -> ipaddress.IPv4Network:
    """The first /30 of TEST_NET from `start` (wrapping around) that A does not use."""
    used = _used_networks()
    subnets = list(TEST_NET.subnets(new_prefix=30))
    for i in range(len(subnets)):
        subnet = subnets[(start + i) % len(subnets)]
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise NamespacesUnavailable(f"every /30 of {TEST_NET} is in use")


def unavailable() -> str:
    """Why this process cannot make namespaces ("" if it can, as far as can be told first)."""
    if os.geteuid() != 0:
        return "network namespaces and veth pairs need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return ""


@dataclass
class TwoHosts:
    """Host A (this namespace) and host B (`namespace`), linked by veths `veth_a`/`veth_b`."""

    namespace: str
    veth_a: str
    veth_b: str
    host_a: str
    host_b: str
    spawned: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def inside(self, argv: Sequence[str]) -> list[str]:
        """`argv` run in host B."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log: Path,
        inside: bool = True,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in host B (or A when not `inside`) in its own session, in the repository
        (where `tests.*` imports), stdout piped (read its ready line with `ready`), stderr
        appended to `log`; killed at the end."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as stderr:
            process = subprocess.Popen(
                self.inside(argv) if inside else list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=dict(env),
                cwd=REPO,
                start_new_session=True,
            )
        self.spawned.append(process)
        return process

    def cut(self) -> None:
        """Take B's end of the link down: nothing passes either way. (A's end stays up, so A
        keeps its route to B and its packets die on the link instead of taking A's default
        route out of the machine.)"""
        _ip("-n", self.namespace, "link", "set", self.veth_b, "down")

    def restore(self) -> None:
        """Bring B's end of the link up again (its address and route come back with it)."""
        _ip("-n", self.namespace, "link", "set", self.veth_b, "up")

    def pids_inside(self) -> list[int]:
        """Processes living in host B."""
        return [int(p) for p in _ip("netns", "pids", self.namespace).split()]

    def kill_processes(self) -> None:
        """Kill every process spawned (in A or B) and every one still in B, and reap them."""
        for process in self.spawned:
            if process.returncode is None:  # not reaped yet: its pid is still its own
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(RuntimeError):  # B may never have been made
            for pid in self.pids_inside():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for process in self.spawned:
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self.spawned.clear()

    def close(self) -> None:
        """Kill what runs (`kill_processes`); delete the link and B."""
        self.kill_processes()
        with contextlib.suppress(RuntimeError):  # deleting one end deletes both
            _ip("link", "del", self.veth_a)
        with contextlib.suppress(RuntimeError):
            _ip("netns", "del", self.namespace)


@contextlib.contextmanager
def two_hosts() -> Iterator[TwoHosts]:
    """Make host B and its link to A; remove them (and kill what ran) on exit.
    NamespacesUnavailable if this machine cannot."""
    reason = unavailable()
    if reason:
        raise NamespacesUnavailable(reason)
    tag = uuid.uuid4().hex[:6]
    hosts: TwoHosts | None = None
    try:
        with open(LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two runs must not pick the same /30
            subnet = _free_subnet(int(tag, 16))
            a, b = list(subnet.hosts())
            hosts = TwoHosts(
                f"heapd-t{os.getpid()}-{tag}", f"hd{tag}a", f"hd{tag}b", str(a), str(b)
            )
            _make(hosts, subnet.prefixlen)
        yield hosts
    finally:
        if hosts is not None:
            hosts.close()


def _make(hosts: TwoHosts, prefix: int) -> None:
    """Create the namespace, the veth pair and the addresses; NamespacesUnavailable if the
    namespace or the pair cannot be made at all."""
    try:
        _ip("netns", "add", hosts.namespace)
        _ip("link", "add", hosts.veth_a, "type", "veth", "peer", "name", hosts.veth_b,
            "netns", hosts.namespace)  # fmt: skip
    except RuntimeError as exc:
        raise NamespacesUnavailable(str(exc)) from None
    _ip("addr", "add", f"{hosts.host_a}/{prefix}", "dev", hosts.veth_a)
    _ip("link", "set", hosts.veth_a, "up")
    _ip("-n", hosts.namespace, "addr", "add", f"{hosts.host_b}/{prefix}", "dev", hosts.veth_b)
    _ip("-n", hosts.namespace, "link", "set", hosts.veth_b, "up")
    _ip("-n", hosts.namespace, "link", "set", "lo", "up")


def ready(process: subprocess.Popen[bytes], role: str) -> dict[str, Any]:
    """The {"ready": role, ...} line `process` prints once it serves; RuntimeError if it
    exits first or stays silent for READY_TIMEOUT_S."""
    stdout: IO[bytes] | None = process.stdout
    assert stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        while selector.select(max(0.0, deadline - time.monotonic())):
            line = stdout.readline()
            if not line:
                raise RuntimeError(f"{role} exited with {process.wait()} before it was ready")
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict) and message.get("ready") == role:
                    return message
    raise RuntimeError(f"{role} did not announce itself within {READY_TIMEOUT_S}s")


def stop(process: subprocess.Popen[bytes]) -> str:
    """SIGTERM `process`, wait for it (SIGKILL after STOP_TIMEOUT_S) and return the rest of
    its stdout."""
    process.send_signal(signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
    return out.decode(errors="replace")
