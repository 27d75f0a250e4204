"""Workers on other hosts, for real (issue 10, item 6): a worker in its own network namespace
(host B, `tests.netns`) joins a cell on host A over a veth link, with mutual TLS and a token.

- Its link is cut: the register declares it dead by the heartbeat deadline, its task runs on
  A's worker, nothing is lost; the link comes back: the worker is fenced, registers again under a
  new epoch, and the result it finished during the cut is dropped.
- 20 ms of delay and 1% loss between it and the cell (a relay, `tests.relay`: this kernel has
  no `netem`): every task completes.
- A worker without the token, or with a certificate of another CA, never joins.

The tests skip where namespaces cannot be made (not root, no `ip`). After each, what ran in B
is killed, `start_cell` checks the cell's shared memory and that no process or /dev/shm entry
survives, then the link and the namespace are deleted (`secure_cell`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from heapd import Client, Security, shm
from heapd.runtime.certs import CertPaths, make_certs
from heapd.runtime.launch import LocalCell
from tests import tasks_for_faults as f
from tests import tasks_for_tests as t
from tests.conftest import StartCell
from tests.helpers import MARK, assert_eventually, log_events, release_gate
from tests.netns import NamespacesUnavailable, TwoHosts, ready, stop, two_hosts

HEARTBEAT_INTERVAL_S = 0.2
MISSED_HEARTBEATS = 3
DEADLINE_S = HEARTBEAT_INTERVAL_S * MISSED_HEARTBEATS
LIVENESS = (
    "--heartbeat-interval-s", str(HEARTBEAT_INTERVAL_S),
    "--missed-heartbeats", str(MISSED_HEARTBEATS),
)  # fmt: skip
ONE_TASK_PER_SLOT = ("--prefetch-per-slot", "1")  # a worker holds exactly the tasks it runs
ON_B = {"host": "b"}  # the label only the worker on host B carries
WORKER_PORT = 17072  # in B's fresh namespace nothing else listens
DELAY_MS, LOSS, SEED = 20, 0.01, 0
FENCED = "fenced out by the register; cancelling and re-registering"
REFUSAL_TIMEOUT_S = 2  # a refused worker's --register-timeout-s


def gated(tag: int, gate: str, journal: str) -> tuple[int, int]:
    """A task: wait for a line on the FIFO `gate`, note "end TAG WORKER_PID" in `journal`,
    return (tag, the pid of the worker that ran it)."""
    worker = os.getppid()  # a pool child's parent is its worker daemon
    with open(gate) as fifo:
        fifo.readline()
    f.note(journal, f"end {tag} {worker}")
    return tag, worker


# --- fixtures


@pytest.fixture
def net() -> Iterator[TwoHosts]:
    """Host B and its link to A (set up before the cell, removed after it)."""
    stack = contextlib.ExitStack()
    try:
        hosts = stack.enter_context(two_hosts())
    except NamespacesUnavailable as exc:
        pytest.skip(f"cannot make a second host (network namespace + veth): {exc}")
    with stack:
        yield hosts


@pytest.fixture
def certs(net: TwoHosts, tmp_path: Path) -> CertPaths:
    """The cell's CA and certificates, valid for both hosts' addresses."""
    return make_certs("multihost", tmp_path / "certs", [net.host_a, net.host_b])


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    """The test session's token (HEAPD_TOKEN), in a file as a remote worker is given it."""
    path = tmp_path / "token"
    path.write_text(os.environ["HEAPD_TOKEN"] + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def secure_cell(
    net: TwoHosts, start_cell: StartCell, certs: CertPaths, token_file: Path
) -> Iterator[StartCell]:
    """Factory: a cell whose PLM and register listen on host A's link address, with mutual TLS
    and the token. Teardown order (the reverse of `net`, `start_cell`, this): what runs in B
    (and the relays) is killed, then the cell is checked and stopped while its link is still
    up, then the link and B are removed."""

    def start(**kwargs: Any) -> LocalCell:
        extra = ("--host", net.host_a, "--token-file", str(token_file), *tls_flags(certs))
        return start_cell(extra_args=(*extra, *kwargs.pop("extra_args", ())), **kwargs)

    yield start
    net.kill_processes()


# --- helpers


def tls_flags(certs: CertPaths, ca: Path | None = None) -> list[str]:
    """A role's or worker's TLS flags with these certificates (and `ca`, default theirs)."""
    return [
        "--tls-cert", str(certs.server), "--tls-key", str(certs.server_key),
        "--tls-ca", str(ca or certs.ca),
    ]  # fmt: skip


def client_of(cell: LocalCell, certs: CertPaths, token_file: Path) -> Client:
    """A client on host A with the cell's token and a client certificate."""
    security = Security.from_files(
        str(token_file), str(certs.ca), str(certs.client), str(certs.client_key)
    )
    return Client(cell.address, security=security)


def remote_env(cell: LocalCell) -> dict[str, str]:
    """The environment of a process on host B: no HEAPD_TOKEN (a remote worker has only what
    it is given), marked as the cell's so that the cell's teardown finds any leftover."""
    env = {k: v for k, v in os.environ.items() if k != "HEAPD_TOKEN"}
    return {**env, MARK: cell.name}


def worker_argv(register: str, host: str, advertise: str, *flags: str) -> list[str]:
    """`heapd worker` joining `register`, listening on `host`, reached at `advertise`."""
    return [
        sys.executable, "-m", "heapd.worker", "--register", register, "--host", host,
        "--advertise-host", advertise, "--slots", "1", "--labels", "host=b", *flags,
    ]  # fmt: skip


def relay_argv(listen: str, to: str) -> list[str]:
    return [
        sys.executable, "-m", "tests.relay", "--listen", listen, "--to", to,
        "--delay-ms", str(DELAY_MS), "--loss", str(LOSS), "--seed", str(SEED),
    ]  # fmt: skip


def workers_with_pid(client: Client, pid: int, state: str = "") -> list[Any]:
    return [w for w in client.cluster_status().workers if w.pid == pid and state in ("", w.state)]


def one_worker(client: Client, pid: int, state: str, not_id: int = 0) -> Any:
    """The worker record of process `pid` in `state` (other than worker `not_id`), or None."""
    found = [w for w in workers_with_pid(client, pid, state) if w.worker_id != not_id]
    return found[0] if found else None


def ended(journal: Path, tag: int) -> list[str]:
    """The "end" lines of task `tag` in the journal of `gated`."""
    lines = journal.read_text().splitlines() if journal.exists() else []
    return [line for line in lines if line.split()[:2] == ["end", str(tag)]]


def relayed(output: str) -> dict[str, int]:
    """The stats line a relay prints when it stops."""
    [stats] = [json.loads(line)["relayed"] for line in output.splitlines() if "relayed" in line]
    return dict(stats)


def first_loss(seed: int, loss: float) -> int:
    """The index of the first chunk a relay seeded with `seed` loses."""
    rng = random.Random(seed)
    return next(i for i in range(1 << 20) if rng.random() < loss)


# --- a cut link


@pytest.mark.timeout(60)
def test_cut_link_worker_dead_by_deadline_then_fenced_and_back(
    secure_cell: StartCell, net: TwoHosts, certs: CertPaths, token_file: Path, tmp_path: Path
) -> None:
    """B joins over TLS and runs tasks; its link is cut while it runs one: DEAD by the
    heartbeat deadline, its task runs on A, nothing lost; the link back: B is fenced, joins
    under a new epoch, its attempt's result (finished during the cut) is never taken."""
    cell = secure_cell(workers=1, slots=1, extra_args=(*LIVENESS, *ONE_TASK_PER_SLOT))
    assert cell.log_dir is not None
    b_log = cell.log_dir / "worker-remote.log"
    argv = worker_argv(cell.register, net.host_b, net.host_b, "--port", "0")
    remote = net.spawn(
        [*argv, "--token-file", str(token_file), *tls_flags(certs)],
        env=remote_env(cell),
        log=b_log,
    )
    ready(remote, "worker")
    journal = tmp_path / "journal"
    gates = [tmp_path / f"gate-{i}" for i in range(2)]
    for gate in gates:
        os.mkfifo(gate)
    with client_of(cell, certs, token_file) as client:
        b = assert_eventually(lambda: one_worker(client, remote.pid, "ALIVE"), timeout_s=20)
        assert b.address.startswith(f"{net.host_b}:"), "the scheduler dials B across the link"
        [a] = [w for w in client.cluster_status().workers if w.pid != remote.pid]
        # It runs tasks (only it carries the label).
        assert client.gather(client.map(t.square, range(6), labels=ON_B), timeout=30) == [
            x * x for x in range(6)
        ]

        # One held task on each worker (strict dispatch, both slots full), 20 queued behind.
        held = [
            client.submit(gated, i, str(g), str(journal), priority=10) for i, g in enumerate(gates)
        ]
        queued = client.map(t.square, range(20))

        def placed() -> dict[int, int]:
            statuses = [client.get_task(h.task_id) for h in held]
            assert all(s.state == "RUNNING" for s in statuses), statuses
            return {s.worker_id: i for i, s in enumerate(statuses)}

        where = assert_eventually(placed, timeout_s=20)
        assert sorted(where) == sorted([a.worker_id, b.worker_id])
        on_b, on_a = where[b.worker_id], where[a.worker_id]

        cut_at = time.time()
        net.cut()
        dead = assert_eventually(
            lambda: one_worker(client, remote.pid, "DEAD"), timeout_s=DEADLINE_S + 10
        )
        dead_seen_at = time.time()
        # B's task ends while B is cut off: its result cannot reach the cell.
        assert_eventually(lambda: release_gate(gates[on_b]), timeout_s=10)
        assert_eventually(lambda: ended(journal, on_b), timeout_s=10)
        # A finishes its own held task, then runs B's (requeued, higher priority than the rest).
        assert_eventually(lambda: release_gate(gates[on_a]), timeout_s=10)

        def moved_to_a() -> Any:
            status = client.get_task(held[on_b].task_id)
            assert (status.state, status.worker_id) == ("RUNNING", a.worker_id), status
            return status

        moved = assert_eventually(moved_to_a, timeout_s=20)
        assert moved.attempt == 2

        # The link comes back while attempt 2 runs. B's old stream delivers what B sent while
        # cut off, beats of its dead registration and then attempt 1's result: the register
        # refuses the first (and counts the results it carries as stale), B is fenced, drops
        # everything of that registration and registers again. Only then is attempt 2 let go.
        restored_at = time.time()
        net.restore()
        again = assert_eventually(
            lambda: one_worker(client, remote.pid, "ALIVE", not_id=b.worker_id), timeout_s=30
        )
        back_s = time.time() - restored_at
        assert again.epoch != b.epoch
        assert_eventually(lambda: release_gate(gates[on_b]), timeout_s=10)
        results = client.gather(held, timeout=30)
        assert results == [(0, a.pid), (1, a.pid)], "both held tasks were settled by A's worker"
        assert client.gather(queued, timeout=30) == [x * x for x in range(20)]
        # B works again, under its new registration.
        assert client.gather(client.map(t.square, range(4), labels=ON_B), timeout=30) == [
            0, 1, 4, 9,
        ]  # fmt: skip
        status = client.cluster_status()
    # Attempt 1 ran to its end on B during the cut; its result was never taken (attempt 2's was).
    assert [line.split()[2] for line in ended(journal, on_b)] == [str(remote.pid), str(a.pid)]

    [death] = [
        e for e in log_events(cell.log_dir, "register.log", "worker dead")
        if e.get("worker_id") == b.worker_id
    ]  # fmt: skip
    assert death["reason"] == "heartbeat deadline passed"
    assert death["requeued"] == 1, "the one task it held went back to the queue"
    silent_s = death["ts"] - dead.last_heartbeat
    print(
        f"multihost-timing cut -> DEAD seen {dead_seen_at - cut_at:.3f} s (silent {silent_s:.3f}"
        f" s, deadline {DEADLINE_S:g} s); link back -> re-registered {back_s:.3f} s"
    )
    # DEAD by the deadline: never sooner (10 ms for the log's rounded time), later only by the
    # register's timer running late, which 1 s covers on a loaded machine.
    assert DEADLINE_S - 0.01 <= silent_s <= DEADLINE_S + 1.0
    assert len(log_events(cell.log_dir, "worker-remote.log", FENCED)) == 1
    # Nothing settled twice: 6 + 2 + 20 + 4 tasks, each once; the one requeue is B's task.
    assert status.succeeded_total == 32
    with shm.Cell.attach(cell.name) as handle:
        stats = handle.stats()
    assert stats.requeued_total == 1
    dropped = log_events(cell.log_dir, "register.log", "late results of a fenced worker dropped")
    print(
        f"multihost stale: cell stale_total={stats.stale_total}, register dropped "
        f"{sum(e['dropped'] for e in dropped)} late result(s) of the fenced worker"
    )


# --- delay and loss


@pytest.mark.timeout(60)
def test_worker_behind_delay_and_loss_completes_every_task(
    secure_cell: StartCell, net: TwoHosts, certs: CertPaths, token_file: Path
) -> None:
    """Both of the worker's connections pass a relay adding 20 ms each way and 1% loss: its
    register stream (a relay on A in front of the register) and the scheduler's stream to it
    (a relay on B in front of the worker, which listens on B's loopback and advertises the
    relay's address)."""
    cell = secure_cell(workers=0)
    assert cell.log_dir is not None
    env = remote_env(cell)
    front_of_register = net.spawn(
        relay_argv(f"{net.host_a}:0", cell.register),
        env=env,
        log=cell.log_dir / "relay-register.log",
        inside=False,
    )
    register_via = ready(front_of_register, "relay")["address"]
    front_of_worker = net.spawn(
        relay_argv(f"{net.host_b}:{WORKER_PORT}", f"127.0.0.1:{WORKER_PORT}"),
        env=env,
        log=cell.log_dir / "relay-worker.log",
    )
    ready(front_of_worker, "relay")
    argv = worker_argv(register_via, "127.0.0.1", net.host_b, "--port", str(WORKER_PORT))
    remote = net.spawn(
        [*argv, "--token-file", str(token_file), *tls_flags(certs)],
        env=env,
        log=cell.log_dir / "worker-remote.log",
    )
    ready(remote, "worker")
    with client_of(cell, certs, token_file) as client:
        b = assert_eventually(lambda: one_worker(client, remote.pid, "ALIVE"), timeout_s=20)
        assert b.address == f"{net.host_b}:{WORKER_PORT}", "the scheduler dials the relay"
        blobs = [bytes([i]) * 50_000 for i in range(20)]  # many segments each way
        echoed = client.map(t.identity, blobs)
        squares = client.map(t.square, range(100))
        assert client.gather(echoed, timeout=45) == blobs
        assert client.gather(squares, timeout=45) == [x * x for x in range(100)]
        still = one_worker(client, remote.pid, "ALIVE")
        assert still.worker_id == b.worker_id, "it stayed in the cell throughout"
    loss_at = first_loss(SEED, LOSS)
    for name, relay in (("register", front_of_register), ("worker", front_of_worker)):
        stats = relayed(stop(relay))
        print(f"multihost relay in front of the {name}: {stats}")
        assert stats["connections"] >= 1
        # The draws are seeded: past the first lost chunk's index, a loss has happened.
        assert stats["chunks"] > loss_at and stats["lost"] >= 1


# --- refused workers


@pytest.mark.timeout(60)
def test_worker_without_token_or_with_a_foreign_certificate_is_refused(
    secure_cell: StartCell, net: TwoHosts, certs: CertPaths, token_file: Path, tmp_path: Path
) -> None:
    """Workers on B that lack the token, present a certificate of another CA, or trust another
    CA never appear in the cluster; a good worker on the same link joins."""
    cell = secure_cell(workers=0)
    assert cell.log_dir is not None
    foreign = make_certs("other", tmp_path / "foreign", [net.host_b])
    base = worker_argv(cell.register, net.host_b, net.host_b, "--port", "0")
    token = ["--token-file", str(token_file)]
    timeout = ["--register-timeout-s", str(REFUSAL_TIMEOUT_S)]
    variants = {
        # TLS right, no token: --insecure only lets it listen on B's address without one.
        "no-token": [*base, *timeout, *tls_flags(certs), "--insecure"],
        # Token and CA right, its own certificate signed by another CA.
        "foreign-cert": [*base, *timeout, *token, *tls_flags(foreign, ca=certs.ca)],
        # Everything of another cell's CA: it does not trust the register either.
        "foreign-ca": [*base, *timeout, *token, *tls_flags(foreign)],
        # The control: everything right, on the same link.
        "good": [*base, *token, *tls_flags(certs)],
    }
    logs = {name: cell.log_dir / f"worker-{name}.log" for name in variants}
    started = {
        name: net.spawn(argv, env=remote_env(cell), log=logs[name])
        for name, argv in variants.items()
    }
    ready(started["good"], "worker")
    codes = {name: started[name].wait(timeout=40) for name in variants if name != "good"}
    texts = {name: logs[name].read_text() for name in codes}
    assert all(code != 0 for code in codes.values()), (codes, texts)
    assert "UNAUTHENTICATED" in texts["no-token"], texts["no-token"]
    for name in ("foreign-cert", "foreign-ca"):
        assert codes[name] == 3 and "register unreachable" in texts[name], texts[name]
    with client_of(cell, certs, token_file) as client:
        workers = client.cluster_status().workers
    assert [w.pid for w in workers] == [started["good"].pid], "only the good worker ever joined"
