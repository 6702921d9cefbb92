"""Run the HTTP app with uvicorn inside the caller's event loop, on a socket bound up front (so a busy port fails
before anything else starts, and port -1 takes any free port whose number is known at once)."""
from __future__ import annotations

import asyncio
import contextlib
import errno
import socket

import uvicorn

from services.http.limits import Connections, HttpLimits, guarded_protocol, quiet_loggers


class PortInUse(RuntimeError):
    """Another process listens on the port."""


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        yield  # the process's signals belong to `vigil serve` (it stops gRPC, HTTP and the streams together)


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    # SO_REUSEADDR: a restart may bind over connections still in TIME_WAIT; on Linux it never lets two
    # sockets listen on one port (that is SO_REUSEPORT, which is left off)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


def port_free(host: str, port: int) -> bool:
    """Whether `host:port` can be bound now (no other process listens on it)."""
    try:
        _bind(host, port).close()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return False
        raise
    return True


class HttpSide:
    """`HttpSide.bind(host, port)` now, `await start(app)` in the server's loop, `await stop()` at shutdown.

    `port` -1: any free port; `self.port` is the one bound. `ssl`: uvicorn's ssl_* keyword arguments (HTTPS)."""

    def __init__(self, sock: socket.socket, host: str) -> None:
        self._sock, self.host = sock, host
        self.port: int = sock.getsockname()[1]
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task | None = None
        self.connections: Connections | None = None  # open connections, in all and per client (once started)

    @classmethod
    def bind(cls, host: str, port: int) -> "HttpSide":
        try:
            return cls(_bind(host, 0 if port == -1 else port), host)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(f"HTTP port {port} on {host} is in use (another `vigil serve`?): pick another with "
                                "--http-port P (VIGIL_HTTP_PORT), or 0 to turn the HTTP side off") from None
            raise RuntimeError(f"cannot bind the HTTP port {host}:{port}: {exc.strerror}") from None

    @property
    def scheme(self) -> str:
        return "https" if self._server is not None and self._server.config.ssl is not None else "http"

    async def start(self, app, limits: HttpLimits | None = None, **ssl) -> int:
        """Serve `app` on the bound socket in the running loop, under `limits` (connections per server and per
        client, header timeout, keep-alive, header size: services/http/limits.py); returns once it accepts
        connections."""
        limits = limits or HttpLimits()
        quiet_loggers()  # a flood of failing connections logs once a minute per cause, not once per connection
        self.connections = Connections(limits)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", ws="none",
                                http=guarded_protocol(limits, self.connections), server_header=False,
                                timeout_graceful_shutdown=2, timeout_keep_alive=limits.keep_alive_s,
                                h11_max_incomplete_event_size=limits.max_header_bytes, **ssl)
        self._server = _Uvicorn(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name="vigil-http")
        while not self._server.started:  # startup is a few loop turns; a failure ends the task
            if self._task.done():
                self._task.result()
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        return self.port

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self._task
        self.close()

    def close(self) -> None:
        """Release the port (a server that failed to start, or after stop)."""
        with contextlib.suppress(OSError):
            self._sock.close()
