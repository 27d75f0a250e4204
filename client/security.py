"""How a client (or a role calling another role) proves itself: a bearer token, TLS, mTLS.

`Security` is what `Client(address, security=...)` takes, like Dask's `Security`: a token sent
as `authorization: Bearer ...` metadata on every call, and TLS settings (the CA that signed the
server's certificate; for mutual TLS, the client's own certificate and key). Left out, it is
found in the environment (`Security.from_env`): HEAPD_TOKEN, HEAPD_TOKEN_FILE, HEAPD_TLS_CA,
HEAPD_TLS_CERT, HEAPD_TLS_KEY, else the token file `heapd up` wrote for the cell named by
HEAPD_CELL (default "default"), so a client on the cell's own host needs no setting at all.

The token travels in metadata added by a channel interceptor: once per call, so once per stream
on the hot paths, never per task.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from heapd.runtime import config

TOKEN_FILE_NAME = "token"  # in the cell's state directory
AUTH_HEADER = "authorization"
BEARER = "Bearer "
# gRPC names a unix: target's authority after its path, and TLS checks the server's certificate
# against that. A server on a Unix socket is on this host: it is checked as "localhost", which
# `heapd certs` puts in every server certificate.
UNIX_AUTHORITY = ("grpc.default_authority", "localhost")


class SecurityError(ValueError):
    """A token or certificate file cannot be used (missing, unreadable, empty)."""


@dataclass(frozen=True)
class Security:
    """A token and TLS files for talking to a cell. All optional: an empty `Security` talks
    plain gRPC without a token (a cell started without auth)."""

    token: str | None = field(default=None, repr=False)
    tls_ca: str | None = None  # PEM file of the CA that signed the servers' certificates
    tls_cert: str | None = None  # PEM files of our own certificate and key (mutual TLS)
    tls_key: str | None = None

    @property
    def tls(self) -> bool:
        """Whether channels use TLS."""
        return bool(self.tls_ca or self.tls_cert)

    @classmethod
    def from_files(
        cls,
        token_file: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> Security:
        """A `Security` with the token read from `token_file` (if given)."""
        token = read_token(Path(token_file)) if token_file else None
        return cls(token=token, tls_ca=tls_ca or None, tls_cert=tls_cert, tls_key=tls_key)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, cell: str | None = None) -> Security:
        """Settings from the environment; without a token there, the token file of `cell`
        (HEAPD_CELL, default "default") in its default state directory, if it exists."""
        env = os.environ if env is None else env
        token = env.get("HEAPD_TOKEN") or None
        token_file = env.get("HEAPD_TOKEN_FILE") or None
        if token is None and token_file is None:
            found = cell_token_file(cell or env.get("HEAPD_CELL") or "default", env)
            token_file = str(found) if found.is_file() else None
        if token is None and token_file is not None:
            token = read_token(Path(token_file))
        return cls(
            token=token,
            tls_ca=env.get("HEAPD_TLS_CA") or None,
            tls_cert=env.get("HEAPD_TLS_CERT") or None,
            tls_key=env.get("HEAPD_TLS_KEY") or None,
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata that carries the token (none without one)."""
        return ((AUTH_HEADER, BEARER + self.token),) if self.token else ()

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """TLS credentials for a channel (only when `tls`)."""
        key, cert = _read_pair(self.tls_key, self.tls_cert)
        return grpc.ssl_channel_credentials(
            root_certificates=read_pem(self.tls_ca) if self.tls_ca else None,
            private_key=key,
            certificate_chain=cert,
        )

    def channel(self, address: str, options: list[tuple[str, Any]]) -> grpc.Channel:
        """A synchronous channel to `address` that sends the token on every call."""
        options = _target_options(address, options)
        if self.tls:
            base = grpc.secure_channel(address, self.channel_credentials(), options=options)
        else:
            base = grpc.insecure_channel(address, options=options)
        if not self.token:
            return base
        return grpc.intercept_channel(base, _SyncToken(self.metadata()))

    def aio_channel(self, address: str, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
        """An asyncio channel to `address` that sends the token on every call."""
        options = _target_options(address, options)
        interceptors = _aio_interceptors(self.metadata()) if self.token else None
        if self.tls:
            return grpc.aio.secure_channel(
                address, self.channel_credentials(), options=options, interceptors=interceptors
            )
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)


def _target_options(address: str, options: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """`options`, with the authority of a unix: target (`UNIX_AUTHORITY`)."""
    # Not `heapd.runtime.sockets.is_unix`: that module pulls in heapd.shm (numpy), and
    # `import heapd` stays light (tests/test_public_api.py).
    if address.startswith("unix:") and all(key != UNIX_AUTHORITY[0] for key, _ in options):
        return [*options, UNIX_AUTHORITY]
    return options


def cell_token_file(cell: str, env: Mapping[str, str]) -> Path:
    """Where `heapd up` keeps a cell's token: `<state dir>/token` (HEAPD_STATE_DIR, else the
    cell's default state directory, as the PLM finds its journal)."""
    return config.state_dir(cell, env.get("HEAPD_STATE_DIR", ""), env) / TOKEN_FILE_NAME


def read_token(path: Path) -> str:
    """The token in `path`: its first line, stripped (SecurityError if none)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SecurityError(f"cannot read the token file {path}: {exc.strerror}") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise SecurityError(f"the token file {path} is empty")
    return token


def read_pem(path: str) -> bytes:
    """A PEM file's bytes (SecurityError if it cannot be read)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecurityError(f"cannot read {path}: {exc.strerror}") from None


def _read_pair(key: str | None, cert: str | None) -> tuple[bytes | None, bytes | None]:
    if bool(key) != bool(cert):
        raise SecurityError("a TLS certificate and its key go together: give both or neither")
    if key is None or cert is None:
        return None, None
    return read_pem(key), read_pem(cert)


class _Details(NamedTuple):
    """grpc.ClientCallDetails with the token added to its metadata."""

    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


def _merged(metadata: Any, token: tuple[tuple[str, str], ...]) -> Any:
    """A call's metadata with the token added."""
    return (*metadata, *token) if metadata else token


def _with_token(details: Any, token: tuple[tuple[str, str], ...]) -> _Details:
    return _Details(
        details.method,
        details.timeout,
        _merged(details.metadata, token),
        details.credentials,
        details.wait_for_ready,
        details.compression,
    )


class _SyncToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds the token to every call of a synchronous channel."""

    def __init__(self, token: tuple[tuple[str, str], ...]) -> None:
        self._token = token

    def _call(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(_with_token(details, self._token), request)

    intercept_unary_unary = _call
    intercept_unary_stream = _call
    intercept_stream_unary = _call
    intercept_stream_stream = _call


class _AioTokenMixin:
    def __init__(self, token: tuple[tuple[str, str], ...]) -> None:
        self._token = token

    async def _call(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        aio_details = grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            _merged(details.metadata, self._token),
            details.credentials,
            details.wait_for_ready,
        )
        return await continuation(aio_details, request)


class _AioUnaryUnary(_AioTokenMixin, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    intercept_unary_unary = _AioTokenMixin._call


class _AioUnaryStream(_AioTokenMixin, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    intercept_unary_stream = _AioTokenMixin._call


class _AioStreamUnary(_AioTokenMixin, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    intercept_stream_unary = _AioTokenMixin._call


class _AioStreamStream(_AioTokenMixin, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    intercept_stream_stream = _AioTokenMixin._call


def _aio_interceptors(token: tuple[tuple[str, str], ...]) -> list[Any]:
    """grpc.aio wants one interceptor object per call kind."""
    kinds = (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)
    return [kind(token) for kind in kinds]
