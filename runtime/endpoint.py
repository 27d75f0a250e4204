"""A role's HTTP endpoint: Prometheus `/metrics`, plus the pages a role adds (`/status`, `/`).

A few read-only GET routes on the role's own event loop (asyncio streams), so a page handler
reads the role's state without a thread and the role needs no web framework. `/metrics` is
rendered in a worker thread: its collectors only read shared memory and plain counters, and a
scrape of a cell holding a million tasks then never stalls the loop. One request per
connection (`Connection: close`); heads and bodies are bounded; at most MAX_CONNECTIONS are
served at once, more are closed unanswered.

It follows the role's gRPC security: with a token, every request needs
`Authorization: Bearer <token>` (401 otherwise); with a certificate, it speaks HTTPS, and with a
CA, clients must present a certificate it signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import logging
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from heapd.runtime.channels import format_address
from heapd.runtime.security import RoleSecurity
from heapd.security import BEARER

log = logging.getLogger(__name__)

HEAD_LIMIT = 16 * 1024  # request line and headers
READ_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 32

Body = tuple[str, bytes]  # content type, bytes
Route = Callable[[], Body | Awaitable[Body]]


class Endpoint:
    """Serves `registry` at /metrics and `routes` (path -> handler) beside it."""

    def __init__(
        self,
        registry: CollectorRegistry,
        routes: Mapping[str, Route] | None = None,
        security: RoleSecurity | None = None,
    ):
        self._registry = registry
        self._security = security or RoleSecurity()
        token = self._security.token
        self._authorization = (BEARER + token).encode() if token else None
        self._routes: dict[str, Route] = {"/metrics": self._metrics, **(routes or {})}
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 = any); returns the bound port (OSError if it cannot)."""
        self._server = await asyncio.start_server(
            self._serve, host, port, limit=HEAD_LIMIT, ssl=_tls_context(self._security)
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and end open connections."""
        if self._server is not None:
            self._server.close()
            for task in list(self._open):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _metrics(self) -> Body:
        body = await asyncio.to_thread(generate_latest, self._registry)
        return CONTENT_TYPE_LATEST, body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._open) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._open.add(task)
        try:
            status, content_type, body, head_only = await self._answer(reader)
            await _respond(writer, status, content_type, b"" if head_only else body, len(body))
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass
        finally:
            self._open.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[HTTPStatus, str, bytes, bool]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        except (asyncio.LimitOverrunError, ValueError):
            return _text(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return _text(HTTPStatus.BAD_REQUEST, "malformed request line")
        method, target = parts[0], parts[1].decode("latin-1")
        if not self._authorized(head):
            return _text(HTTPStatus.UNAUTHORIZED, "missing or invalid bearer token")
        if method not in (b"GET", b"HEAD"):
            return _text(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD")
        route = self._routes.get(target.split("?", 1)[0])
        if route is None:
            paths = ", ".join(sorted(self._routes))
            return _text(HTTPStatus.NOT_FOUND, f"not found; this endpoint serves {paths}")
        try:
            result = route()
            content_type, body = await result if inspect.isawaitable(result) else result
        except Exception:
            log.exception("HTTP route %s failed", target)
            return _text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the role's log)")
        return HTTPStatus.OK, content_type, body, method == b"HEAD"

    def _authorized(self, head: bytes) -> bool:
        if self._authorization is None:
            return True
        given = b""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"authorization":
                given = value.strip()
                break
        return hmac.compare_digest(given, self._authorization)


def _tls_context(security: RoleSecurity) -> ssl.SSLContext | None:
    """HTTPS with the role's certificate; client certificates required when it has a CA."""
    if not (security.tls_cert and security.tls_key):
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(security.tls_cert, security.tls_key)
    if security.tls_ca:
        context.load_verify_locations(security.tls_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def serve_if_asked(
    host: str,
    port: int,
    registry: CollectorRegistry,
    routes: Mapping[str, Route] | None = None,
    security: RoleSecurity | None = None,
) -> tuple[Endpoint | None, str]:
    """Start an endpoint on host:port unless `port` is negative (metrics off): (endpoint or
    None, its "host:port" or ""). A port that cannot be bound ends the role with a one-line
    message (exit 2), as a bad flag does."""
    if port < 0:
        return None, ""
    endpoint = Endpoint(registry, routes, security)
    try:
        bound = await endpoint.start(host, port)
    except OSError as exc:
        print(
            f"heapd: cannot serve metrics on {format_address(host, port)}: {exc}", file=sys.stderr
        )
        raise SystemExit(2) from None
    return endpoint, format_address(host, bound)


def _text(status: HTTPStatus, message: str) -> tuple[HTTPStatus, str, bytes, bool]:
    return status, "text/plain; charset=utf-8", (message + "\n").encode(), False


async def _respond(
    writer: asyncio.StreamWriter, status: HTTPStatus, content_type: str, body: bytes, length: int
) -> None:
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode("latin-1") + body)
    await writer.drain()
