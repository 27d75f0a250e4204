"""`heapd certs`: a CA and the certificates a test or a small deployment needs for TLS and
mutual TLS.

Made with the `cryptography` package (the maintained X.509 library for Python, also what
grpc's own examples use): ECDSA P-256 keys, SHA-256 signatures, valid one year.

    ca.pem / ca-key.pem          a self-signed CA (give ca.pem to every role as --tls-ca)
    server.pem / server-key.pem  the roles' certificate: serverAuth for their ports, and
                                 clientAuth too, since a role presents it when it calls
                                 another role under mutual TLS; SANs localhost, 127.0.0.1,
                                 ::1, this host's name and every --host given
    client.pem / client-key.pem  a client's certificate (clientAuth only)

Keys are written 0600, certificates 0644, each through a temporary file renamed into place.
Existing files are never overwritten unless `force`: a CA replaced by mistake locks every
peer out.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from heapd.shm.names import validate_cell_name

VALIDITY = datetime.timedelta(days=365)
BACKDATE = datetime.timedelta(minutes=5)  # peers whose clocks are a little behind accept it
KEY_MODE = 0o600
CERT_MODE = 0o644
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class CertPaths:
    """Where `make_certs` wrote each file."""

    ca: Path
    ca_key: Path
    server: Path
    server_key: Path
    client: Path
    client_key: Path

    @classmethod
    def under(cls, out: Path) -> CertPaths:
        """The file names `heapd certs` uses in `out`."""
        return cls(
            ca=out / "ca.pem",
            ca_key=out / "ca-key.pem",
            server=out / "server.pem",
            server_key=out / "server-key.pem",
            client=out / "client.pem",
            client_key=out / "client-key.pem",
        )

    def all(self) -> list[Path]:
        """Every file, certificates and keys."""
        return [self.ca, self.ca_key, self.server, self.server_key, self.client, self.client_key]


class CertsExist(FileExistsError):
    """`heapd certs` would overwrite files (give force to replace them)."""


def make_certs(
    cell: str, out: Path, hosts: Sequence[str] = (), *, force: bool = False
) -> CertPaths:
    """Write a new CA, a server and a client certificate for `cell` into `out` (created 0700
    if missing). `hosts` are names or IP addresses the roles are reached at, besides
    localhost, 127.0.0.1, ::1 and this host's name. CertsExist if a file exists and not
    `force`; ValueError for a bad cell name or host."""
    validate_cell_name(cell)
    names, ips = subject_alt_names(hosts)
    paths = CertPaths.under(out)
    existing = [str(p) for p in paths.all() if p.exists() or p.is_symlink()]
    if existing and not force:
        raise CertsExist(
            f"heapd certs: {', '.join(existing)} already exist: pass --force to replace them"
            " (every peer then needs the new ca.pem)"
        )
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"heapd {cell} CA")
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    san = x509.SubjectAlternativeName(
        [x509.DNSName(n) for n in names] + [x509.IPAddress(ip) for ip in ips]
    )
    server_key, server = _leaf(
        ca,
        ca_key,
        f"heapd {cell} server",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        san,
        now,
    )
    client_key, client = _leaf(
        ca, ca_key, f"heapd {cell} client", [ExtendedKeyUsageOID.CLIENT_AUTH], None, now
    )
    for file, cert in ((paths.ca, ca), (paths.server, server), (paths.client, client)):
        _write(file, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)
    for file, key in ((paths.ca_key, ca_key), (paths.server_key, server_key)):
        _write(file, _pem(key), KEY_MODE)
    _write(paths.client_key, _pem(client_key), KEY_MODE)
    return paths


def subject_alt_names(hosts: Sequence[str]) -> tuple[list[str], list[IP]]:
    """DNS names and IP addresses for the server certificate: the local ones and `hosts`, each
    once, in order. ValueError for a host that is neither an IP address nor a DNS name."""
    names: list[str] = []
    ips: list[IP] = []
    for host in ["localhost", "127.0.0.1", "::1", socket.gethostname(), *hosts]:
        host = host.strip().strip("[]")  # "[::1]" as written in addresses
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            name = _dns_name(host)
            if name not in names:
                names.append(name)
            continue
        if ip not in ips:
            ips.append(ip)
    return names, ips


def _dns_name(host: str) -> str:
    labels = host.rstrip(".").split(".")
    ok = 0 < len(host) <= 253 and all(
        0 < len(label) <= 63
        and label.isascii()
        and (label.replace("-", "").replace("_", "").isalnum() or label == "*")
        and not label.startswith("-")
        for label in labels
    )
    if not ok:
        raise ValueError(
            f"heapd certs: bad --host {host!r}: give a DNS name (ASCII letters, digits, -, .)"
            " or an IP address"
        )
    return host.rstrip(".").lower()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "heapd"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
    )


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    san: x509.SubjectAlternativeName | None,
    now: datetime.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and a certificate signed by the CA, for the given extended key usages."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(_name(common_name), ca.subject, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()  # the CA's key identifier, as its SKI
            ),
            critical=False,
        )
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(file: Path, data: bytes, mode: int) -> None:
    """Write through a new temporary file (created with `mode`, never following a link) and
    rename it over `file`: a key is never readable by others, not even for a moment."""
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def run(cell: str, out: Path, hosts: Sequence[str], force: bool) -> int:
    """`heapd certs`: make the files and say how to use them; exit code 2 on a refusal."""
    try:
        paths = make_certs(cell, out, hosts, force=force)
    except (ValueError, OSError) as exc:
        print(exc if str(exc).startswith("heapd certs") else f"heapd certs: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {', '.join(str(p) for p in paths.all())}\n"
        f"roles:   --tls-cert {paths.server} --tls-key {paths.server_key} --tls-ca {paths.ca}\n"
        f"clients: --tls-cert {paths.client} --tls-key {paths.client_key} --tls-ca {paths.ca}\n"
        f"keep {paths.ca_key} offline: whoever has it can make certificates every peer accepts"
    )
    return 0
