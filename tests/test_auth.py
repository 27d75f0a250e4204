"""The token on every gRPC port: refused without it on every RPC of every service, the token
file `heapd up` makes, the refusal to listen beyond loopback without TLS and a token."""

from __future__ import annotations

import logging
import os
import ssl
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool

from heapd import Client, Security
from heapd.runtime import security
from heapd.runtime.certs import CertPaths, make_certs
from heapd.runtime.config import SecurityConfig
from heapd.security import SecurityError, cell_token_file
from heapd.v1 import register_service_pb2, task_service_pb2, worker_service_pb2
from tests import tasks_for_tests as t
from tests.conftest import TRANSPORTS, StartCell
from tests.helpers import authed_channel

SERVICES = {
    "plm": ["heapd.v1.TaskService"],
    "register": ["heapd.v1.RegisterService"],
    "worker": ["heapd.v1.WorkerService"],
}
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
HEALTH = "/grpc.health.v1.Health/Check"
assert task_service_pb2 and register_service_pb2 and worker_service_pb2  # register descriptors


def methods(service: str) -> Iterator[tuple[str, bool, bool]]:
    """Every method of a service: (path, client streams, server streams)."""
    found = descriptor_pool.Default().FindServiceByName(service)
    for method in found.methods:
        path = f"/{service}/{method.name}"
        yield path, method.client_streaming, method.server_streaming


def call_raw(
    channel: grpc.Channel,
    path: str,
    client_streams: bool,
    server_streams: bool,
    metadata: tuple[tuple[str, str], ...] = (),
) -> grpc.StatusCode:
    """Call `path` with an empty request; the status code it ends with."""
    try:
        if client_streams and server_streams:
            for _ in channel.stream_stream(path)(iter([b""]), timeout=10, metadata=metadata):
                pass
        elif client_streams:
            channel.stream_unary(path)(iter([b""]), timeout=10, metadata=metadata)
        elif server_streams:
            for _ in channel.unary_stream(path)(b"", timeout=10, metadata=metadata):
                pass
        else:
            channel.unary_unary(path)(b"", timeout=10, metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture
def addresses(start_cell: StartCell) -> dict[str, str]:
    cell = start_cell(workers=1, slots=1)
    with Client(cell.address) as client:
        worker = client.cluster_status().workers[0].address
    return {"plm": cell.address, "register": cell.register, "worker": worker}


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),)])
def test_every_rpc_of_every_service_refuses_a_missing_or_wrong_token(
    addresses: dict[str, str], metadata: tuple[tuple[str, str], ...]
) -> None:
    for role, services in SERVICES.items():
        with grpc.insecure_channel(addresses[role]) as channel:
            for service in services:
                for path, client_streams, server_streams in methods(service):
                    code = call_raw(channel, path, client_streams, server_streams, metadata)
                    assert code == grpc.StatusCode.UNAUTHENTICATED, (role, path, code)
            # Reflection would list the services: closed too. Health checks stay open.
            assert call_raw(channel, REFLECTION, True, True, metadata) == (
                grpc.StatusCode.UNAUTHENTICATED
            )
            assert call_raw(channel, HEALTH, False, False, metadata) != (
                grpc.StatusCode.UNAUTHENTICATED
            )


def test_the_refusal_says_what_is_missing_and_nothing_else(addresses: dict[str, str]) -> None:
    with (
        grpc.insecure_channel(addresses["plm"]) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        channel.unary_unary("/heapd.v1.TaskService/GetClusterStatus")(b"", timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details() == security.UNAUTHENTICATED_MESSAGE
    with authed_channel(addresses["plm"]) as channel:  # the right token gets through
        channel.unary_unary("/heapd.v1.TaskService/GetClusterStatus")(b"", timeout=10)


def test_heapd_up_makes_a_private_token_file_that_clients_find(
    start_cell: StartCell, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HEAPD_TOKEN")  # no token given: `heapd up` makes one
    state = tmp_path / "state"
    cell = start_cell(workers=1, slots=1, state_dir=state)
    token_file = Path(cell.info["token_file"])
    assert token_file == state / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert len(token_file.read_text().strip()) >= 40
    no_token = Client(cell.address, security=Security())
    with no_token, pytest.raises(Exception, match="token"):
        no_token.cluster_status()
    monkeypatch.setenv("HEAPD_STATE_DIR", str(state))  # found as `heapd up` wrote it
    assert cell_token_file(cell.name, os.environ) == token_file
    with Client(cell.address) as client:
        assert client.submit(t.square, 7).result(timeout=30) == 49
    done = subprocess.run(
        [sys.executable, "-m", "heapd", "submit", "--address", cell.address, "--", "echo", "ok"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stdout


def test_a_role_refuses_a_public_address_without_tls_and_a_token() -> None:
    for argv in (["plm", "--host", "0.0.0.0"], ["worker", "--host", "10.1.2.3"]):
        done = subprocess.run(
            [sys.executable, "-m", "heapd", *argv, "--cell", "tnone"],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if k != "HEAPD_TOKEN"},
        )
        assert done.returncode == 2, done.stderr
        assert "--tls-cert" in done.stderr and "--token-file" in done.stderr
        assert "--insecure" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "heapd", "up", "--cell", "tnone", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--insecure" in done.stderr


def test_insecure_lets_it_through_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    sec = security.RoleSecurity(token="x", insecure=True)
    with caplog.at_level(logging.WARNING, logger="heapd.runtime.security"):
        sec.check_binding("plm", "0.0.0.0")  # no TLS, but told so
    assert [r.getMessage() for r in caplog.records] == [
        "listening on 0.0.0.0 without TLS (--insecure): anyone who can reach it can run code"
    ]
    with pytest.raises(security.InsecureBinding):
        security.RoleSecurity(token="x").check_binding("plm", "0.0.0.0")
    security.RoleSecurity().check_binding("plm", "127.0.0.1")  # loopback needs nothing
    security.RoleSecurity().check_binding("plm", "::1")


def test_loopback_is_only_loopback() -> None:
    assert security.is_loopback("127.0.0.1") and security.is_loopback("127.8.9.1")
    assert security.is_loopback("::1") and security.is_loopback("localhost")
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.com", ""):
        assert not security.is_loopback(host), host


def test_token_sources(tmp_path: Path) -> None:
    path = tmp_path / "tok"
    written = security.new_token_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):  # never overwrites a cell's token
        security.new_token_file(path)
    env = {"HEAPD_TOKEN_FILE": str(path)}
    assert Security.from_env(env).token == written
    assert Security.from_env({**env, "HEAPD_TOKEN": "direct"}).token == "direct"
    assert Security.from_env({"XDG_STATE_HOME": str(tmp_path)}).token is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecurityError, match="empty"):
        Security.from_env({"HEAPD_TOKEN_FILE": str(tmp_path / "empty")})
    role = security.RoleSecurity.from_config(SecurityConfig(token_file=str(path)), {})
    assert role.token == written
    with pytest.raises(SecurityError, match="together"):
        security.RoleSecurity.from_config(SecurityConfig(tls_cert=str(path)), {})
    assert "direct" not in repr(Security(token="direct"))  # never printed by accident


@pytest.fixture(params=TRANSPORTS)
def tls_cell(
    start_cell: StartCell, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[str, CertPaths, dict[str, str]]:
    """A cell whose every port speaks mutual TLS (certificates from `heapd certs`), over each
    transport: with unix, the worker's and register's sockets and the PLM's, which the test's
    clients then use, speak it too (checked as "localhost")."""
    paths = make_certs("tls", tmp_path / "certs")
    flags = (
        "--tls-cert", str(paths.server), "--tls-key", str(paths.server_key),
        "--tls-ca", str(paths.ca), "--metrics-port", "0",
    )  # fmt: skip
    cell = start_cell(workers=1, slots=1, extra_args=flags, transport=request.param)
    assert cell.info["tls"] is True
    assert cell.info["transport"] == request.param
    return cell.local_address, paths, cell.info["metrics"]


def test_mutual_tls_runs_tasks_and_refuses_strangers(
    tls_cell: tuple[str, CertPaths, dict[str, str]], tmp_path: Path
) -> None:
    address, paths, endpoints = tls_cell
    token = os.environ["HEAPD_TOKEN"]
    ours = Security(
        token=token, tls_ca=str(paths.ca), tls_cert=str(paths.client), tls_key=str(paths.client_key)
    )
    with Client(address, security=ours) as client:
        assert client.gather(client.map(t.square, range(10)), timeout=60) == [
            i * i for i in range(10)
        ]
    other = make_certs("other", tmp_path / "other")
    strangers = {
        "no TLS": Security(token=token),
        "no client certificate": Security(token=token, tls_ca=str(paths.ca)),
        "a certificate of another CA": Security(
            token=token,
            tls_ca=str(paths.ca),
            tls_cert=str(other.client),
            tls_key=str(other.client_key),
        ),
        "trusting another CA": Security(
            token=token,
            tls_ca=str(other.ca),
            tls_cert=str(paths.client),
            tls_key=str(paths.client_key),
        ),
    }
    for what, security_ in strangers.items():
        with security_.channel(address, []) as channel, pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary("/heapd.v1.TaskService/GetClusterStatus")(b"", timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, what
    # The metrics endpoint speaks HTTPS with the same certificates and token.
    context = ssl.create_default_context(cafile=str(paths.ca))
    context.load_cert_chain(str(paths.client), str(paths.client_key))
    request = urllib.request.Request(
        f"https://{endpoints['plm']}/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10, context=context) as reply:
        assert b"heapd_tasks_submitted_total" in reply.read()
