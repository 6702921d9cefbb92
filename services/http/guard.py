"""The ASGI edge in front of every route: what a request must be before the app sees it, and what every response
carries.

  - Host allow-list (DNS rebinding): `Host` must name this server: the configured names
    (VIGIL_HTTP_ALLOWED_HOSTS; "*": any), else loopback names only on a server without a token (a token-less
    server answers only loopback names), any name on one with a token. Else 421.
  - Bodies: at most `max_login_bytes` to /login and /logout, `max_body_bytes` to every other route. A
    Content-Length past it is 413 at once (not a byte read); a body without one is read with a counter and
    refused (413) the moment it passes; one that takes longer than `body_timeout_s` is 408. These close the
    connection (`Connection: close`), so the rest is never read. The app gets the body already read.
  - Cross-site requests: a POST without `Authorization` (a browser's: the login cookie, or a token-less server)
    to the API needs `Content-Type: application/json`; its `Origin` (or, without one, its `Referer`) must be
    this server's own (`Host`), and must be there at all when a cookie could be what authenticates it (a
    server with a token). /login and /logout (plain forms) need only a matching Origin when one is sent.
    Else 403. On a server with a token, an API POST with neither the token nor the sign-in cookie carries no
    credential to abuse and goes on to authentication (401). A bearer-token call is not a browser's ambient credential and skips this.
  - Every response: Content-Security-Policy (the page's own script and style only; no inline code, no frames),
    `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff`, `Referrer-Policy: same-origin`.
"""
from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

from services.http.limits import HttpLimits

COOKIE = "vigil_session"  # the browser's sign-in: a random session id (services/http/sessions.py)

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
FORM_PATHS = frozenset({"/login", "/logout"})
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


def host_name(host: str) -> str:
    """The name part of a Host header ("[::1]:8080" -> "::1", "Example.org:80" -> "example.org")."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def allowed_hosts(configured: tuple[str, ...], has_token: bool) -> frozenset[str] | None:
    """The Host names answered (None: any)."""
    if "*" in configured:
        return None
    if configured:
        return frozenset(host_name(h) for h in configured)
    return None if has_token else LOOPBACK_HOSTS


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _header(headers, name: bytes) -> bytes | None:
    return next((v for k, v in headers if k == name), None)


class Edge:
    """ASGI app wrapping `app` with the checks above."""

    def __init__(self, app, limits: HttpLimits, hosts: frozenset[str] | None, has_token: bool) -> None:
        self.app, self.limits, self.hosts, self.has_token = app, limits, hosts, has_token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *(h for h in SECURITY_HEADERS if h[0] not in names)]}
            await send(message)

        try:
            self._check_host(scope)
            self._check_origin(scope)
            receive = await self._read_body(scope, receive)
        except Refused as r:
            await self._refuse(scope, secured, r)
            return
        if receive is None:  # the client went away mid-body
            return
        await self.app(scope, receive, secured)

    # ---- checks ---------------------------------------------------------------------------------------------

    def _check_host(self, scope) -> None:
        if self.hosts is None:
            return
        raw = _header(scope["headers"], b"host")
        name = host_name(raw.decode("latin-1")) if raw else ""
        if name not in self.hosts:
            raise Refused(421, "this server does not answer to that Host name (VIGIL_HTTP_ALLOWED_HOSTS)")

    def _check_origin(self, scope) -> None:
        headers = scope["headers"]
        if scope["method"] not in UNSAFE or _header(headers, b"authorization") is not None:
            return
        if (self.has_token and scope["path"] not in FORM_PATHS
                and f"{COOKIE}=".encode() not in (_header(headers, b"cookie") or b"")):
            return  # neither the token nor the sign-in cookie: no ambient credential to abuse (auth answers 401)
        path = scope["path"]
        form = path in FORM_PATHS
        if not form:
            ctype = (_header(headers, b"content-type") or b"").split(b";")[0].strip().lower()
            if ctype != b"application/json":
                raise Refused(415, "a POST needs Content-Type: application/json (or an Authorization header)")
        origin = _header(headers, b"origin")
        source = origin if origin is not None else _header(headers, b"referer")
        if source is None:
            if self.has_token and not form:
                raise Refused(403, "a cookie-authenticated POST needs an Origin or Referer header of this server")
            return
        host = (_header(headers, b"host") or b"").decode("latin-1").strip().lower()
        netloc = urlsplit(source.decode("latin-1").strip()).netloc.lower() if source != b"null" else ""
        if not host or netloc != host:
            raise Refused(403, "cross-origin request refused: its Origin is not this server")

    async def _read_body(self, scope, receive):
        """`receive` replaying the whole body once read (at most the route's cap), or the original one when the
        request has no body; None when the client left."""
        headers = scope["headers"]
        cap = self.limits.max_login_bytes if scope["path"] in FORM_PATHS else self.limits.max_body_bytes
        length = _header(headers, b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                raise Refused(400, "Content-Length is not a number") from None
            if n > cap:
                raise Refused(413, f"request body of {n} bytes is over this route's limit of {cap} bytes")
            if n == 0:
                return receive
        elif _header(headers, b"transfer-encoding") is None:
            return receive
        chunks, size = [], 0

        async def read_all() -> bool:
            nonlocal size
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return False
                body = message.get("body", b"")
                size += len(body)
                if size > cap:
                    raise Refused(413, f"request body over this route's limit of {cap} bytes")
                chunks.append(body)
                if not message.get("more_body", False):
                    return True

        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                if not await read_all():
                    return None
        except TimeoutError:
            raise Refused(408, f"the request body did not arrive within {self.limits.body_timeout_s:g} s") from None
        replay = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        sent = False

        async def replayed():
            nonlocal sent
            if not sent:
                sent = True
                return replay
            return await receive()  # after the body: the client's disconnect

        return replayed

    async def _refuse(self, scope, send, r: Refused) -> None:
        body = json.dumps({"error": {"code": _CODES.get(r.status, "INVALID_ARGUMENT"), "message": r.message}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store")]
        if r.status in (400, 408, 413):  # the rest of the request is never read: the connection cannot go on
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": r.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


_CODES = {403: "PERMISSION_DENIED", 408: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT",
          421: "PERMISSION_DENIED"}
