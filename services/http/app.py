"""The ASGI app: routes, and the same bearer token as gRPC on every one of them (VIGIL_AUTH_TOKEN).

The token comes as `Authorization: Bearer <token>` (compared in constant time), or (browsers) as the HttpOnly
cookie the login form at /login sets: a random session id kept in Redis with an expiry (services/http/sessions.py)
and deleted by /logout. Failed tokens and logins are slowed per client address (services/auth.AuthThrottle,
shared with gRPC). `/metrics` is behind the token like the rest (it names every stream id);
`VIGIL_METRICS_OPEN=true` serves it without, for a scraper on a trusted network that cannot send a token. /login
and /static/* (the page's own JS and CSS, no data) are open. Everything passes the edge first
(services/http/guard.py: Host allow-list, body caps, cross-site checks, security headers).
"""
from __future__ import annotations

import asyncio
import hmac
import html
from pathlib import Path
from urllib.parse import parse_qs

from prometheus_client.exposition import choose_encoder
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from services.auth import AuthThrottle, TooManyAttempts
from services.http.guard import COOKIE, Edge, allowed_hosts
from services.http.limits import HttpLimits
from services.http.sessions import MemorySessions, SessionStore
from services.metrics import Metrics

STATIC = Path(__file__).with_name("static")
INDEX = "vigil HTTP\n  /metrics  Prometheus metrics\n"

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vigil: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/timeline.css"></head>
<body class="login"><main>
<h1>vigil</h1>
<form method="post" action="/login" id="login">
<label for="token">Access token (VIGIL_AUTH_TOKEN)</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button>
{message}
</form></main></body></html>
"""


def login_page(message: str = "", status: int = 200) -> HTMLResponse:
    shown = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    return HTMLResponse(LOGIN_PAGE.format(message=shown), status_code=status, headers={"Cache-Control": "no-store"})


def client_address(scope) -> str:
    client = scope.get("client")
    return client[0] if client else "?"


def cookie_value(headers, name: str = COOKIE) -> str | None:
    for k, v in headers:
        if k == b"cookie":
            for part in v.split(b";"):
                key, _, value = part.strip().partition(b"=")
                if key == name.encode():
                    return value.decode("latin-1")
    return None


class BearerAuth:
    """ASGI middleware: `Authorization: Bearer <token>` (or a live session cookie) on every request but
    `open_paths` and `open_prefixes`; anything else is 401 with a `WWW-Authenticate: Bearer` challenge: JSON
    under /api, the login form for a browser asking for a page, plain text otherwise. A wrong token is slowed
    (`throttle`); too many waiting from one address are 429."""

    def __init__(self, app, token: str, sessions, throttle: AuthThrottle, open_paths: tuple[str, ...] = (),
                 open_prefixes: tuple[str, ...] = ()) -> None:
        if not token.strip():  # never let an empty token mean "anyone"
            raise ValueError("empty auth token")
        self.app, self.open_paths, self.open_prefixes = app, frozenset(open_paths), tuple(open_prefixes)
        self.sessions, self.throttle = sessions, throttle
        self._expected = f"Bearer {token}".encode()

    async def allowed(self, scope) -> bool:
        headers = scope["headers"]
        given = next((v for k, v in headers if k == b"authorization"), None)
        if given is not None:
            addr = client_address(scope)
            await self.throttle.turn(addr)
            if hmac.compare_digest(given, self._expected):
                self.throttle.succeeded(addr)
                return True
            self.throttle.failed(addr, "http bearer")
            return False
        sid = cookie_value(headers)
        return bool(sid) and await asyncio.to_thread(self.sessions.valid, sid)

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self.open_paths or path.startswith(self.open_prefixes):
            await self.app(scope, receive, send)
            return
        try:
            if await self.allowed(scope):
                await self.app(scope, receive, send)
                return
        except TooManyAttempts as exc:
            await JSONResponse({"error": {"code": "RESOURCE_EXHAUSTED", "message": str(exc)}},
                               status_code=429)(scope, receive, send)
            return
        except RedisError:  # the session store is down: the sign-in cannot be checked (not "signed out")
            await JSONResponse({"error": {"code": "UNAVAILABLE", "message": "the session store (Redis) is not "
                                          "reachable; try again, or send the bearer token"}},
                               status_code=503)(scope, receive, send)
            return
        challenge = {"WWW-Authenticate": 'Bearer realm="vigil"'}
        accept = next((v for k, v in scope["headers"] if k == b"accept"), b"")
        if path.startswith("/api/"):
            denied: Response = JSONResponse({"error": {"code": "UNAUTHENTICATED", "message": (
                "missing or wrong bearer token: send `Authorization: Bearer <VIGIL_AUTH_TOKEN>` or sign in at "
                "/login")}}, status_code=401, headers=challenge)
        elif scope.get("method") == "GET" and b"text/html" in accept:
            denied = login_page("Sign in to see this page.", 401)
            denied.headers.update(challenge)
        else:
            denied = PlainTextResponse("missing or wrong bearer token: send `Authorization: Bearer "
                                       "<VIGIL_AUTH_TOKEN>`\n", status_code=401, headers=challenge)
        await denied(scope, receive, send)


def build_app(metrics: Metrics, token: str | None = None, metrics_open: bool = False, rt=None,
              work=None, settings=None, throttle: AuthThrottle | None = None, limits: HttpLimits | None = None,
              mcp=None):
    """The HTTP app of one server, behind its edge (guard.Edge). `token`: required on every request (None: no
    auth); `metrics_open`: /metrics without it; `rt` (services.runtime.Runtime) and `work` (its question queue):
    the timeline page and the JSON API (None: /metrics only); `settings` (services.config.Settings): the Host
    allow-list, session lifetime and limits (None: their defaults); `throttle`: the server's failed-attempt
    throttle (shared with gRPC); `mcp`: the ASGI app of /mcp, the MCP endpoint for agents
    (services/mcp_server.py HttpEndpoint; None: none), behind the token like the rest."""
    limits = limits or (HttpLimits.from_settings(settings) if settings is not None else HttpLimits())
    throttle = throttle or (AuthThrottle.from_settings(settings) if settings is not None else AuthThrottle())
    ttl_s = settings.session_ttl_s if settings is not None else 12 * 3600.0
    sessions = (SessionStore(rt.store.r, rt.store.ns, ttl_s) if rt is not None else MemorySessions(ttl_s))
    hosts = allowed_hosts(settings.http_allowed_hosts if settings is not None else (), token is not None)

    def metrics_page(request: Request) -> Response:  # sync: Starlette runs it in a worker thread (it reads Redis)
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))  # text or OpenMetrics
        return Response(encoder(metrics.registry), media_type=content_type)

    def index(request: Request) -> Response:
        if rt is None:
            return PlainTextResponse(INDEX)
        return FileResponse(STATIC / "timeline.html", headers={"Cache-Control": "no-cache"})

    async def login(request: Request) -> Response:
        if token is None:
            return RedirectResponse("/", status_code=303)
        if request.method == "GET":
            return login_page()
        addr = client_address(request.scope)
        try:
            await throttle.turn(addr)  # a client with recent failures waits its turn, right token or not
        except TooManyAttempts:
            return login_page("Too many sign-in attempts at once from your address; wait and try again.", 429)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0].encode()
        if not hmac.compare_digest(given, token.encode()):
            throttle.failed(addr, "http login")
            return login_page("That token is not the server's.", 401)
        throttle.succeeded(addr)
        try:
            sid = await asyncio.to_thread(sessions.create)
        except RedisError:
            return login_page("The server cannot reach its store (Redis) to sign you in; try again shortly.", 503)
        done = RedirectResponse("/", status_code=303)
        done.set_cookie(COOKIE, sid, max_age=int(ttl_s), httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
        return done

    async def logout(request: Request) -> Response:
        sid = cookie_value(request.scope["headers"])
        if sid:  # deleted server-side: a copy of the cookie stops working too
            try:
                await asyncio.to_thread(sessions.revoke, sid)
            except RedisError:
                return PlainTextResponse("the server cannot reach its store (Redis) to end the session; try again "
                                         "shortly\n", status_code=503)
        done = RedirectResponse("/login", status_code=303)
        done.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return done

    routes = [Route("/", index), Route("/metrics", metrics_page),
              Route("/login", login, methods=["GET", "POST"]), Route("/logout", logout, methods=["POST"]),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    if rt is not None:
        from services.http.api import Api  # the API needs the runtime; /metrics alone does not
        routes[1:1] = Api(rt, work).routes()
    if mcp is not None:  # streamable HTTP (MCP) at /mcp: an ASGI app, every method
        routes.append(Route("/mcp", mcp))
    middleware = []
    if token is not None:
        middleware.append(Middleware(BearerAuth, token=token, sessions=sessions, throttle=throttle,
                                     open_paths=("/login", *(("/metrics",) if metrics_open else ())),
                                     open_prefixes=("/static/",)))
    return Edge(Starlette(routes=routes, middleware=middleware), limits, hosts, token is not None)
