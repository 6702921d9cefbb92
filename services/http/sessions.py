"""Browser sign-ins: a random session id in the login cookie, kept server-side with an expiry and deleted on
sign-out, so a copied cookie stops working when its owner signs out, and at most `ttl_s` after sign-in.

    {ns}:http-session:<sha256 of the id>   string "1", expiring `ttl_s` after sign-in

In Redis under the server's namespace, so every replica of the namespace (QA servers behind one address) knows
every sign-in. Only a hash of the id is stored: reading Redis does not give a usable cookie. The calls block
(Redis): callers run them off the event loop.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time

import redis

SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32): 256 random bits


class SessionStore:
    def __init__(self, client: redis.Redis, namespace: str, ttl_s: float) -> None:
        self.r, self.ns, self.ttl_s = client, namespace, ttl_s

    def _key(self, sid: str) -> str:
        return f"{self.ns}:http-session:{hashlib.sha256(sid.encode()).hexdigest()}"

    def create(self) -> str:
        sid = secrets.token_urlsafe(32)
        self.r.set(self._key(sid), b"1", px=int(self.ttl_s * 1000))
        return sid

    def valid(self, sid: str) -> bool:
        return bool(SESSION_ID.match(sid)) and bool(self.r.exists(self._key(sid)))

    def revoke(self, sid: str) -> None:
        if SESSION_ID.match(sid):
            self.r.delete(self._key(sid))


class MemorySessions:
    """The same in this process only (an HTTP app built without a runtime, which has no Redis)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._until: dict[str, float] = {}

    def create(self) -> str:
        now = time.monotonic()
        self._until = {k: t for k, t in self._until.items() if t > now}
        sid = secrets.token_urlsafe(32)
        self._until[sid] = now + self.ttl_s
        return sid

    def valid(self, sid: str) -> bool:
        return self._until.get(sid, 0.0) > time.monotonic()

    def revoke(self, sid: str) -> None:
        self._until.pop(sid, None)
