"""Limits on the HTTP side's connections, below the ASGI app (uvicorn has no header timeout and no per-client cap).

`guarded_protocol(limits)` is uvicorn's h11 protocol with:
  - a cap on open connections per server and per client address: one more is closed at once (before a byte of
    it is read), so a flood of half-open connections cannot take every file descriptor of the process;
  - a header timeout: the request line and headers must be complete `header_timeout_s` after the connection
    opens (after the previous response plus the keep-alive, on a kept-alive connection), else it is closed.
Bodies are capped and timed in the ASGI edge (services/http/guard.py); idle keep-alive is uvicorn's own.

`QuietLog` is a logging filter: one record per cause (logger and message template) per `period_s`, the next one
saying how many were dropped, and the traceback only on the first: a flood of failing connections (EMFILE 'Too
many open files', invalid requests) cannot fill the log.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("vigil.http")


@dataclass(frozen=True)
class HttpLimits:
    max_login_bytes: int = 4096  # /login, /logout bodies
    max_body_bytes: int = 64 * 1024  # every other route's body
    max_header_bytes: int = 16 * 1024  # request line + headers (h11's incomplete-event limit)
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    max_connections: int = 1000
    max_connections_per_client: int = 64

    @classmethod
    def from_settings(cls, s) -> "HttpLimits":
        return cls(s.http_max_login_bytes, s.http_max_body_bytes, s.http_max_header_bytes, s.http_header_timeout_s,
                   s.http_body_timeout_s, s.http_keep_alive_s, s.http_max_connections,
                   s.http_max_connections_per_client)


class Connections:
    """Open connections of one server: in all, and per client address; and what was refused or timed out
    (logged once a minute at most, as counts)."""

    def __init__(self, limits: HttpLimits, report_s: float = 60.0) -> None:
        self.limits, self.report_s = limits, report_s
        self.total = 0
        self.per_client: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()  # cause -> connections closed since the last report
        self._reported = 0.0

    def admit(self, addr: str) -> str | None:
        """None: counted in (call `release` when it closes); else why it is refused."""
        if self.total >= self.limits.max_connections:
            return "the server's connection cap"
        if self.per_client[addr] >= self.limits.max_connections_per_client:
            return "the per-client connection cap"
        self.total += 1
        self.per_client[addr] += 1
        return None

    def release(self, addr: str) -> None:
        self.total -= 1
        self.per_client[addr] -= 1
        if self.per_client[addr] <= 0:
            del self.per_client[addr]

    def drop(self, cause: str) -> None:
        self.dropped[cause] += 1
        now = time.monotonic()
        if now - self._reported >= self.report_s:
            self._reported = now
            counts = ", ".join(f"{n} ({c})" for c, n in self.dropped.items())
            log.warning("HTTP connections closed: %s; %d open (cap %d, %d per client); counts again in %.0f s at "
                        "most", counts, self.total, self.limits.max_connections,
                        self.limits.max_connections_per_client, self.report_s)
            self.dropped.clear()


def guarded_protocol(limits: HttpLimits, conns: Connections) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with the connection caps and the header timeout of one server."""

    class Guarded(H11Protocol):
        _addr: str | None = None
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            addr = self.client[0] if self.client else "?"
            refused = conns.admit(addr)
            if refused is not None:
                conns.drop(refused)
                transport.abort()  # unread; connection_lost follows
                return
            self._addr = addr
            self._arm(limits.header_timeout_s)

        def _arm(self, after_s: float) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(after_s, self._header_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_late(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                conns.drop("request header not complete in time")
                self.transport.abort()

        def handle_events(self) -> None:
            super().handle_events()
            if self._header_timer is not None and self.conn.their_state is not h11.IDLE:
                self._disarm()  # the header is in; the body has its own timeout (guard.py)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._addr is not None and not self.transport.is_closing():
                self._arm(limits.keep_alive_s + limits.header_timeout_s)

        def connection_lost(self, exc) -> None:
            self._disarm()
            if self._addr is not None:
                conns.release(self._addr)
                self._addr = None
            super().connection_lost(exc)

    return Guarded


class QuietLog(logging.Filter):
    """One record per (logger, message template) per `period_s`; the next one says how many were dropped, and
    only the first of a cause keeps its traceback."""

    def __init__(self, period_s: float = 60.0) -> None:
        super().__init__()
        self.period_s = period_s
        self._last: dict[tuple[str, str], float] = {}
        self._dropped: Counter[tuple[str, str]] = Counter()
        self._traced: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg)[:200])
        now = time.monotonic()
        if now - self._last.get(key, -1e18) < self.period_s:
            self._dropped[key] += 1
            return False
        self._last[key] = now
        if len(self._last) > 1000:  # causes are few; never let the table grow without bound
            self._last = {k: t for k, t in self._last.items() if now - t < self.period_s}
        if n := self._dropped.pop(key, 0):
            record.msg = f"{record.msg} ({n} more like this in the last {self.period_s:.0f} s not logged)"
        if record.exc_info and key in self._traced:
            record.exc_info, record.exc_text = None, None
        self._traced.add(key)
        return True


QUIET_LOGGERS = ("uvicorn.error", "asyncio")


def quiet_loggers(period_s: float = 60.0) -> None:
    """Install `QuietLog` on the loggers a connection flood writes to (uvicorn's, asyncio's accept errors); once
    per process."""
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietLog) for f in logger.filters):
            logger.addFilter(QuietLog(period_s))
