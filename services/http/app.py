"""The ASGI app: routes, and the same bearer token as gRPC on every one of them (VIGIL_AUTH_TOKEN).

The token comes as `Authorization: Bearer <token>`, or (browsers) as the HttpOnly cookie the login form at
/login sets; both are compared in constant time. `/metrics` is behind the token like the rest (it names every
stream id); `VIGIL_METRICS_OPEN=true` serves it without, for a scraper on a trusted network that cannot send a
token. /login and /static/* (the page's own JS and CSS, no data) are open.
"""
from __future__ import annotations

import hashlib
import hmac
import html
from pathlib import Path
from urllib.parse import parse_qs

from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from services.metrics import Metrics

STATIC = Path(__file__).with_name("static")
COOKIE = "vigil_token"
INDEX = "vigil HTTP\n  /metrics  Prometheus metrics\n"

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vigil: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
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


def session_value(token: str) -> str:
    """What the login cookie holds: a keyed hash of the token (cookie-safe characters; the token itself never
    sits in the browser)."""
    return hmac.new(token.encode(), b"vigil-login-cookie-v1", hashlib.sha256).hexdigest()


def login_page(message: str = "", status: int = 200) -> HTMLResponse:
    shown = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    return HTMLResponse(LOGIN_PAGE.format(message=shown), status_code=status, headers={"Cache-Control": "no-store"})


class BearerAuth:
    """ASGI middleware: `Authorization: Bearer <token>` (or the login cookie) on every request but `open_paths`
    and `open_prefixes`, compared in constant time; anything else is 401 with a `WWW-Authenticate: Bearer`
    challenge: JSON under /api, the login form for a browser asking for a page, plain text otherwise."""

    def __init__(self, app, token: str, open_paths: tuple[str, ...] = (), open_prefixes: tuple[str, ...] = ()) -> None:
        if not token.strip():  # never let an empty token mean "anyone"
            raise ValueError("empty auth token")
        self.app, self.open_paths, self.open_prefixes = app, frozenset(open_paths), tuple(open_prefixes)
        self._expected = f"Bearer {token}".encode()
        self._session = session_value(token).encode()

    def allowed(self, scope) -> bool:
        headers = scope["headers"]
        given = next((v for k, v in headers if k == b"authorization"), None)
        if given is not None:
            return hmac.compare_digest(given, self._expected)
        for k, v in headers:
            if k == b"cookie":
                for part in v.split(b";"):
                    name, _, value = part.strip().partition(b"=")
                    if name == COOKIE.encode() and hmac.compare_digest(value, self._session):
                        return True
        return False

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if (scope["type"] != "http" or path in self.open_paths or path.startswith(self.open_prefixes)
                or self.allowed(scope)):
            await self.app(scope, receive, send)
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
              work=None, mcp=None) -> Starlette:
    """The HTTP app of one server. `token`: required on every request (None: no auth); `metrics_open`: /metrics
    without it; `rt` (services.runtime.Runtime) and `work` (its question queue): the timeline page and the JSON
    API (None: /metrics only); `mcp`: the ASGI app of /mcp, the MCP endpoint for agents (services/mcp_server.py
    HttpEndpoint; None: none), behind the token like the rest."""

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
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0].encode()
        if not hmac.compare_digest(given, token.encode()):
            return login_page("That token is not the server's.", 401)
        done = RedirectResponse("/", status_code=303)
        done.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
        return done

    async def logout(request: Request) -> Response:
        done = RedirectResponse("/login", status_code=303)
        done.delete_cookie(COOKIE, path="/")
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
        middleware.append(Middleware(BearerAuth, token=token, open_paths=("/login", *(("/metrics",) if metrics_open
                                                                                     else ())),
                                     open_prefixes=("/static/",)))
    return Starlette(routes=routes, middleware=middleware)
