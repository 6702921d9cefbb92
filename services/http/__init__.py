"""The HTTP side of a server (Starlette, served by uvicorn in the server's own event loop): `/metrics` now; the
timeline page and the JSON API join it on the same port.

`app.build_app` is the ASGI app (routes and the bearer-token check), `serve.HttpSide` binds the port and runs
uvicorn. Both are used by `services.server.VigilServer`.
"""
from services.http.app import build_app
from services.http.limits import HttpLimits
from services.http.serve import HttpSide, PortInUse, port_free

__all__ = ["HttpLimits", "HttpSide", "PortInUse", "build_app", "port_free"]
