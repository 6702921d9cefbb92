"""Who may call: the bearer token on gRPC (`TokenAuth`), and how failed attempts are slowed (`AuthThrottle`), shared
by gRPC, the HTTP bearer check and the HTTP login form of one server.

A client address that failed gets a turn: its next attempt is checked only `delay(n)` after its n-th failure
(`base_s * 2**(n-1)`, at most `max_s`), and its attempts are checked one at a time, so neither parallel
connections nor cancelled calls buy more guesses. Waiting is an `asyncio.sleep`: no thread and no other client
waits with it. Past `max_waiting` attempts queued from one address, more are refused at once, unchecked. An
address with no failure for `forget_s` starts again. A burst is logged twice: when it starts, and (with its count)
when it ends (a success from that address, or the next failure after `forget_s`).
"""
from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import grpc

log = logging.getLogger("vigil.auth")
OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass
class _Burst:
    """One client address's failed attempts since its last success (or since `forget_s` of quiet)."""
    failures: int = 0
    first: float = 0.0  # monotonic time of the first failure
    last: float = 0.0  # of the latest
    free_at: float = 0.0  # the next attempt is checked no earlier than this
    waiting: int = 0  # attempts queued for their turn
    kinds: set[str] = field(default_factory=set)  # "http login", "http bearer", "grpc token"


class TooManyAttempts(Exception):
    """More attempts from one address wait for their turn than `max_waiting`: refused unchecked."""


class AuthThrottle:
    def __init__(self, base_s: float = 0.25, max_s: float = 15.0, forget_s: float = 600.0, max_waiting: int = 8,
                 max_clients: int = 10_000) -> None:
        self.base_s, self.max_s, self.forget_s = base_s, max_s, forget_s
        self.max_waiting, self.max_clients = max_waiting, max_clients
        self._bursts: OrderedDict[str, _Burst] = OrderedDict()  # oldest failure first (evicted past max_clients)

    @classmethod
    def from_settings(cls, s) -> "AuthThrottle":
        return cls(s.auth_fail_delay_s, s.auth_fail_max_delay_s, s.auth_fail_forget_s)

    def delay(self, failures: int) -> float:
        """The wait before the attempt after `failures` failures (0: none)."""
        return 0.0 if failures <= 0 else min(self.base_s * 2 ** min(failures - 1, 60), self.max_s)

    def _current(self, addr: str, now: float) -> _Burst | None:
        b = self._bursts.get(addr)
        if b is not None and b.waiting == 0 and now - b.last > self.forget_s:
            self._end(addr, b, now)
            return None
        return b

    async def turn(self, addr: str) -> None:
        """Wait until `addr` may be checked (at once when it has no recent failure). TooManyAttempts: too many
        of its attempts wait already. After the check, call `failed` or `succeeded`."""
        now = time.monotonic()
        b = self._current(addr, now)
        if b is None:
            return
        if b.waiting >= self.max_waiting:
            raise TooManyAttempts(f"too many authentication attempts from {addr} at once")
        b.waiting += 1
        try:
            while (wait := b.free_at - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            # this attempt holds the turn: the next waits a full step even if this one is cancelled now
            b.free_at = time.monotonic() + self.delay(b.failures)
        finally:
            b.waiting -= 1

    def failed(self, addr: str, kind: str) -> None:
        now = time.monotonic()
        b = self._current(addr, now)
        if b is None:
            b = self._bursts[addr] = _Burst(first=now)
            log.warning("failed authentication (%s) from %s: further attempts from that address are slowed "
                        "(a growing delay); this burst is logged again when it ends", kind, addr)
            while len(self._bursts) > self.max_clients:
                old_addr, old = next(iter(self._bursts.items()))
                self._end(old_addr, old, now)
        b.failures += 1
        b.last = now
        b.kinds.add(kind)
        b.free_at = now + self.delay(b.failures)
        self._bursts.move_to_end(addr)

    def succeeded(self, addr: str) -> None:
        b = self._bursts.get(addr)
        if b is not None:
            self._end(addr, b, time.monotonic())

    def failures(self, addr: str) -> int:
        b = self._bursts.get(addr)
        return 0 if b is None else b.failures

    def _end(self, addr: str, b: _Burst, now: float) -> None:
        self._bursts.pop(addr, None)
        log.warning("authentication burst from %s ended: %d failed attempt(s) (%s) over %.1f s", addr, b.failures,
                    ", ".join(sorted(b.kinds)), max(0.0, b.last - b.first))


def peer_address(peer: str) -> str:
    """The address part of grpc's `context.peer()` ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:...")."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:rest.find("]")]
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer


def _gated(behavior, gate):
    """`behavior` (a grpc.aio handler: a coroutine function or an async generator function) that first awaits
    `gate(context)`; None: a kind this cannot wrap (left as it is)."""
    if inspect.isasyncgenfunction(behavior):
        async def gen(request, context):
            await gate(context)
            async for item in behavior(request, context):
                yield item
        return gen
    if inspect.iscoroutinefunction(behavior):
        async def coro(request, context):
            await gate(context)
            return await behavior(request, context)
        return coro
    return None


class TokenAuth(grpc.aio.ServerInterceptor):
    """Require `authorization: Bearer <token>` on every call except health checks and reflection; failures are
    slowed per client address (`throttle`), and a client with recent failures waits its turn even with the right
    token (else an answer's speed would tell a guess right)."""

    def __init__(self, token: str, throttle: AuthThrottle | None = None) -> None:
        if not token.strip():  # Settings refuses this too; never let an empty token mean "anyone"
            raise ValueError("empty auth token")
        self._expected = f"Bearer {token}".encode()
        self.throttle = throttle or AuthThrottle()

        from services.errors import Unauthenticated  # here: services.errors loads the model code (heavy imports)

        async def deny(request, context):
            addr = peer_address(context.peer())
            try:
                await self.throttle.turn(addr)
            except TooManyAttempts as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            self.throttle.failed(addr, "grpc token")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(Unauthenticated("missing or wrong bearer token")))

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    async def _admit(self, context) -> None:
        addr = peer_address(context.peer())
        if self.throttle.failures(addr):
            try:
                await self.throttle.turn(addr)
            except TooManyAttempts as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            self.throttle.succeeded(addr)

    async def intercept_service(self, continuation, details):
        if details.method.startswith(OPEN_METHODS):
            return await continuation(details)
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if not hmac.compare_digest(given.encode() if isinstance(given, str) else given, self._expected):
            return self._deny
        handler = await continuation(details)
        if handler is None:
            return None
        kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
        changes = {}
        for kind in kinds:
            behavior = getattr(handler, kind)
            if behavior is not None and (wrapped := _gated(behavior, self._admit)) is not None:
                changes[kind] = wrapped
        return handler._replace(**changes) if changes else handler
