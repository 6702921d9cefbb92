"""The ASGI app: routes, and the same bearer token as gRPC on every one of them (VIGIL_AUTH_TOKEN).

`/metrics` is behind the token like the rest (it names every stream id); `VIGIL_METRICS_OPEN=true` serves it without,
for a scraper on a trusted network that cannot send a token.
"""
from __future__ import annotations

import hmac

from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from services.metrics import Metrics

INDEX = "vigil HTTP\n  /metrics  Prometheus metrics\n"


class BearerAuth:
    """ASGI middleware: `Authorization: Bearer <token>` on every request but `open_paths`, compared in constant
    time; anything else is 401 with a `WWW-Authenticate: Bearer` challenge."""

    def __init__(self, app, token: str, open_paths: tuple[str, ...] = ()) -> None:
        if not token.strip():  # never let an empty token mean "anyone"
            raise ValueError("empty auth token")
        self.app, self.open_paths = app, frozenset(open_paths)
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        denied = PlainTextResponse("missing or wrong bearer token: send `Authorization: Bearer <VIGIL_AUTH_TOKEN>`\n",
                                   status_code=401, headers={"WWW-Authenticate": 'Bearer realm="vigil"'})
        await denied(scope, receive, send)


def build_app(metrics: Metrics, token: str | None = None, metrics_open: bool = False) -> Starlette:
    """The HTTP app of one server. `token`: required on every request (None: no auth); `metrics_open`: /metrics
    without it."""

    def metrics_page(request: Request) -> Response:  # sync: Starlette runs it in a worker thread (it reads Redis)
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))  # text or OpenMetrics
        return Response(encoder(metrics.registry), media_type=content_type)

    def index(request: Request) -> Response:
        return PlainTextResponse(INDEX)

    middleware = []
    if token is not None:
        middleware.append(Middleware(BearerAuth, token=token, open_paths=("/metrics",) if metrics_open else ()))
    return Starlette(routes=[Route("/", index), Route("/metrics", metrics_page)], middleware=middleware)
