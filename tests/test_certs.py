"""`heapd certs`: the CA and certificates it makes work for gRPC TLS and mutual TLS, and a
server requiring client certificates refuses one from another CA."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import stat
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from heapd.cli import main as cli
from heapd.runtime import certs
from heapd.runtime.certs import CertPaths, CertsExist, make_certs

CALL_TIMEOUT_S = 30.0  # only bounds a broken handshake; never asserted


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


async def _check(
    port: int, ca: Path, cert: Path | None, key: Path | None, host: str = "localhost"
) -> int:
    """One health check over TLS, presenting `cert` (if any); the serving status."""
    creds = grpc.ssl_channel_credentials(
        ca.read_bytes(),
        key.read_bytes() if key else None,
        cert.read_bytes() if cert else None,
    )
    async with grpc.aio.secure_channel(f"{host}:{port}", creds) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S
        )
    return int(reply.status)


async def _mtls_server(paths: CertPaths) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    creds = grpc.ssl_server_credentials(
        [(paths.server_key.read_bytes(), paths.server.read_bytes())],
        root_certificates=paths.ca.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    return server, port


def test_files_modes_and_contents(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    paths = make_certs("tcell", out, ["db.example", "10.1.2.3", "[fd00::7]"])
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for key in (paths.ca_key, paths.server_key, paths.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for cert in (paths.ca, paths.server, paths.client):
        assert stat.S_IMODE(cert.stat().st_mode) == 0o644, cert
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.all())

    ca, server, client = _load(paths.ca), _load(paths.server), _load(paths.client)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf in (server, client):
        assert leaf.issuer == ca.subject
        leaf.verify_directly_issued_by(ca)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert certs.VALIDITY <= lifetime <= certs.VALIDITY + certs.BACKDATE
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) >= {
        "localhost",
        "db.example",
        socket.gethostname().lower(),
    }
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.1.2.3", "fd00::7")
    }

    def usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)

    assert usages(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    # roles present the server certificate when they call each other under mutual TLS
    assert usages(server) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_existing_files_are_kept_unless_forced(tmp_path: Path) -> None:
    first = make_certs("tcell", tmp_path)
    ca = first.ca.read_bytes()
    with pytest.raises(CertsExist, match="--force"):
        make_certs("tcell", tmp_path)
    assert first.ca.read_bytes() == ca
    make_certs("tcell", tmp_path, force=True)
    assert first.ca.read_bytes() != ca
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


@pytest.mark.parametrize("host", ["bad host", "-x.example", "ü.example", "a" * 64 + ".example"])
def test_bad_hosts_are_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(ValueError, match="--host"):
        make_certs("tcell", tmp_path, [host])
    assert list(tmp_path.iterdir()) == []


def test_run_reports_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert certs.run("tcell", tmp_path, [], force=False) == 0
    assert "--tls-ca" in capsys.readouterr().out
    assert certs.run("tcell", tmp_path, [], force=False) == 2
    assert "already exist" in capsys.readouterr().err
    assert certs.run("bad/name", tmp_path / "x", [], force=False) == 2
    assert "cell name" in capsys.readouterr().err


def test_mutual_tls_accepts_the_cells_certificates_and_refuses_another_ca(
    tmp_path: Path,
) -> None:
    paths = make_certs("tcell", tmp_path / "cell")
    other = make_certs("tcell", tmp_path / "other")
    serving = health_pb2.HealthCheckResponse.SERVING

    async def scenario() -> None:
        server, port = await _mtls_server(paths)
        try:
            assert await _check(port, paths.ca, paths.client, paths.client_key) == serving
            assert (
                await _check(port, paths.ca, paths.client, paths.client_key, "127.0.0.1") == serving
            )
            # a role calling another role presents the server certificate
            assert await _check(port, paths.ca, paths.server, paths.server_key) == serving
            for cert, key in ((other.client, other.client_key), (None, None)):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await _check(port, paths.ca, cert, key)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            # and a client trusting only the other CA refuses this server
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _check(port, other.ca, other.client, other.client_key)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await server.stop(None)

    asyncio.run(scenario())


def test_keys_are_never_readable_by_others_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        paths = make_certs("tcell", tmp_path)
    finally:
        os.umask(old)
    for key in (paths.ca_key, paths.server_key, paths.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_the_cli_makes_them(tmp_path: Path) -> None:
    argv = ["certs", "--cell", "tcell", "--out", str(tmp_path), "--host", "db.example"]
    assert cli.main(argv) == 0
    san = _load(CertPaths.under(tmp_path).server).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "db.example" in san.value.get_values_for_type(x509.DNSName)
    assert cli.main(argv) == 2
    assert cli.main([*argv, "--force"]) == 0
