"""The roles' side of the trust boundary: the token check on every gRPC port, TLS/mTLS server
credentials, and the refusal to listen beyond loopback without them.

A server interceptor checks the bearer token of every call before its handler runs (so before
its request is even parsed), in constant time, and answers UNAUTHENTICATED with the same message
whatever was wrong. The standard health service stays open, for load balancers and probes;
reflection and every heapd service do not.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import logging
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from heapd.runtime import config
from heapd.runtime.config import SecurityConfig
from heapd.security import AUTH_HEADER, BEARER, Security, SecurityError, read_pem, read_token

log = logging.getLogger(__name__)

OPEN_PREFIX = "/grpc.health.v1.Health/"
UNAUTHENTICATED_MESSAGE = (
    "missing or invalid token: send the cell's token as 'authorization: Bearer <token>'"
    " (heapd clients read it from --token-file, HEAPD_TOKEN_FILE or HEAPD_TOKEN)"
)
TOKEN_BYTES = 32


class InsecureBinding(ValueError):
    """A role was asked to listen beyond loopback without TLS and a token."""


@dataclass(frozen=True)
class RoleSecurity:
    """What one role enforces on its ports and presents to the others: the cell's token, its
    certificate and key, the CA its peers' certificates must be signed by."""

    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    insecure: bool = False

    @property
    def tls(self) -> bool:
        """Whether this role's ports speak TLS."""
        return bool(self.tls_cert)

    @classmethod
    def from_config(cls, cfg: SecurityConfig, env: dict[str, str] | None = None) -> RoleSecurity:
        """Read the token file (or HEAPD_TOKEN) and check the TLS files can be read
        (SecurityError)."""
        env = dict(os.environ) if env is None else env
        token = read_token(Path(cfg.token_file)) if cfg.token_file else env.get("HEAPD_TOKEN")
        if bool(cfg.tls_cert) != bool(cfg.tls_key):
            raise SecurityError("--tls-cert and --tls-key go together: give both or neither")
        if cfg.tls_ca and not cfg.tls_cert:
            raise SecurityError("--tls-ca needs --tls-cert and --tls-key: mutual TLS")
        for path in (cfg.tls_cert, cfg.tls_key, cfg.tls_ca):
            if path:
                read_pem(path)
        return cls(
            token=token or None,
            tls_cert=cfg.tls_cert or None,
            tls_key=cfg.tls_key or None,
            tls_ca=cfg.tls_ca or None,
            insecure=cfg.insecure,
        )

    def client(self) -> Security:
        """How this role talks to other roles: the same token, its certificate as client
        certificate (mutual TLS), the same CA."""
        return Security(
            token=self.token, tls_ca=self.tls_ca, tls_cert=self.tls_cert, tls_key=self.tls_key
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """TLS server credentials; with a CA, clients must present a certificate it signed."""
        assert self.tls_cert and self.tls_key
        pair = (read_pem(self.tls_key), read_pem(self.tls_cert))
        ca = read_pem(self.tls_ca) if self.tls_ca else None
        return grpc.ssl_server_credentials(
            [pair], root_certificates=ca, require_client_auth=bool(ca)
        )

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The token check, when there is a token."""
        return [TokenCheck(self.token)] if self.token else []

    def check_binding(self, role: str, host: str) -> None:
        """Refuse (InsecureBinding) to listen on a non-loopback `host` without TLS and a
        token, unless `insecure`; warn when `insecure` lets it through."""
        if is_loopback(host) or (self.tls and self.token):
            return
        if not self.insecure:
            raise InsecureBinding(
                f"heapd {role}: refusing to listen on {host} without TLS and a token: give"
                " --tls-cert/--tls-key (and --tls-ca for mutual TLS) and --token-file"
                " (heapd certs makes the files), or --insecure to accept the risk"
            )
        missing = " and ".join(
            what for what, have in (("TLS", self.tls), ("a token", self.token)) if not have
        )
        log.warning(
            "listening on %s without %s (--insecure): anyone who can reach it can run code",
            host,
            missing,
            extra={"fields": {"host": host, "role": role}},
        )


def for_role(role: str, args: argparse.Namespace, hosts: Sequence[str]) -> RoleSecurity:
    """A role's security from its flags, HEAPD_* and the TOML file, checked against the hosts
    it listens on; a bad setting or an unsafe binding ends the role (a message, exit 2)."""
    cfg = config.from_args(SecurityConfig, "security", args, os.environ)
    try:
        security = RoleSecurity.from_config(cfg)
        for host in hosts:
            security.check_binding(role, host)
    except (SecurityError, InsecureBinding) as exc:
        print(f"heapd {role}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return security


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and "localhost"; anything else (0.0.0.0, a name) is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token_file(path: Path) -> str:
    """Write a fresh random token to `path` (0600, created exclusively) and return it."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class TokenCheck(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """UNAUTHENTICATED for any call without the cell's bearer token (health checks aside)."""

    def __init__(self, token: str) -> None:
        self._expected = (BEARER + token).encode()

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIX):
            return handler
        if self._valid(details.invocation_metadata):
            return handler
        return _refusal(handler)

    def _valid(self, metadata: Any) -> bool:
        given = b""
        for key, value in metadata or ():
            if key == AUTH_HEADER:
                given = value.encode() if isinstance(value, str) else bytes(value)
                break
        return hmac.compare_digest(given, self._expected)


async def _refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)


async def _refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
    yield  # pragma: no cover - a generator, as streaming handlers are


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that refuses without reading the request
    (requests stay raw bytes: nothing of an unauthenticated caller is parsed)."""
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_refuse_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_refuse_stream)
    return grpc.unary_unary_rpc_method_handler(_refuse)
