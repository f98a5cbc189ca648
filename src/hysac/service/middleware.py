"""ASGI middleware in front of every route: the site guard (Host allow-list, cross-site requests refused,
security headers) and the request-body size limit (413 before the body is parsed)."""

from __future__ import annotations

import json
from typing import Sequence

from .errors import error_body

__all__ = ["SiteGuardMiddleware", "BodyLimitMiddleware", "LOCAL_HOSTS", "MB", "DRAIN_CAP"]

MB = 1024 * 1024
#: a request body larger than this is not even drained before the 413 answer (the connection is closed)
DRAIN_CAP = 64 * MB


class _BodyTooLarge(Exception):
    pass


#: hosts a local server answers to by default (``hysac serve --allow-host`` adds more)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
#: sent with every answer; the API docs pages need their inline bootstrap script
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"))
CSP = b"default-src 'self'; img-src 'self' data: blob:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
CSP_DOCS = (b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            b"img-src 'self' data:; object-src 'none'; frame-ancestors 'none'")


def _host_only(value: str) -> str:
    """``"127.0.0.1:8000"`` → ``"127.0.0.1"``, ``"[::1]:8000"`` → ``"::1"`` (lower case)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class SiteGuardMiddleware:
    """Refuse what a web page on another site could make a browser send to this local server:

    * a ``Host`` header not among ``allowed_hosts`` (DNS rebinding) → 421;
    * a state-changing request (not GET/HEAD/OPTIONS) whose ``Origin`` is another site, or that the browser marks
      ``Sec-Fetch-Site: cross-site`` (cross-site form posts) → 403;

    and add ``nosniff`` / ``X-Frame-Options: DENY`` / ``Referrer-Policy`` / a Content-Security-Policy to every
    answer."""

    def __init__(self, app, allowed_hosts: Sequence[str]):
        self.app = app
        self.allowed = {_host_only(h) for h in allowed_hosts}

    async def _reply(self, send, status: int, code: str, message: str) -> None:
        body = json.dumps(error_body(status, code, message)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *SECURITY_HEADERS, (b"content-security-policy", CSP)]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if "*" not in self.allowed and _host_only(host) not in self.allowed:
            return await self._reply(send, 421, "bad_host", f"host {host[:80]!r} is not served here; start the "
                                     "server with --allow-host for other names")
        if scope.get("method", "GET") not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get("origin")
            if origin is not None and origin != "null":
                from urllib.parse import urlsplit

                o = urlsplit(origin)
                if (o.netloc or "").lower() != host.strip().lower():
                    return await self._reply(send, 403, "cross_origin",
                                             f"cross-origin request from {origin[:80]!r} refused")
            elif origin == "null" or headers.get("sec-fetch-site") == "cross-site":
                return await self._reply(send, 403, "cross_origin", "cross-site request refused")
        docs = scope.get("path", "").startswith(("/docs", "/redoc", "/_docs"))

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in have]
                if b"content-security-policy" not in have:
                    extra.append((b"content-security-policy", CSP_DOCS if docs else CSP))
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


class BodyLimitMiddleware:
    """Answer 413 (JSON) for request bodies over ``max_bytes``, by ``Content-Length`` up front or by counting the
    streamed body. The rest of an oversize body is read and dropped (up to :data:`DRAIN_CAP`) so that the client
    gets the answer instead of a reset connection."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    def _message(self) -> str:
        return (f"request body too large: the limit is {self.max_bytes} bytes "
                f"({self.max_bytes / MB:.1f} MiB) for JSON and uploads together")

    async def _reply(self, send, status: int, code: str, message: str) -> None:
        body = json.dumps(error_body(status, code, message)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _drain(receive, already: int) -> None:
        total = already
        while total <= DRAIN_CAP:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            total += len(msg.get("body", b""))
            if not msg.get("more_body", False):
                return

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = None
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    length = int(v)
                except ValueError:
                    await self._reply(send, 400, "bad_request", "invalid Content-Length header")
                    return
                break
        if length is not None and length > self.max_bytes:
            if length <= DRAIN_CAP:
                await self._drain(receive, 0)
            await self._reply(send, 413, "payload_too_large", self._message())
            return
        received = 0
        started = False
        more_body = True

        async def limited_receive():
            nonlocal received, more_body
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                more_body = bool(msg.get("more_body", False))
                if received > self.max_bytes:
                    raise _BodyTooLarge()
            return msg

        async def tracking_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            if more_body:  # never receive() past the last chunk: servers block there until disconnect
                await self._drain(receive, received)
            await self._reply(send, 413, "payload_too_large", self._message())
