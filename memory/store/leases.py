"""Ownership: one ingest worker per stream, through a lease with a fencing token."""
from __future__ import annotations

from memory.errors import StoreError
from memory.store import scripts
from memory.store.keys import StoreBase


class LeaseLost(StoreError):
    """The writer no longer holds the stream's lease (another worker adopted it, or it was deleted)."""


class Leases(StoreBase):
    def _init_leases(self) -> None:
        self._claim = self.r.register_script(scripts.CLAIM)
        self._renew = self.r.register_script(scripts.RENEW)
        self._release = self.r.register_script(scripts.RELEASE)

    def claim(self, sid: str, owner: str, ttl_ms: int) -> str | None:
        """Take the stream's lease: its fencing token, or None when another worker holds it (or the stream is
        gone). Every write the worker makes carries the token."""
        tok = self._claim(keys=[self._k(sid, "lease"), self._k(sid, "fence"), self._k(sid, "meta")],
                          args=[owner, ttl_ms])
        return tok.decode() if tok else None

    def renew(self, sid: str, token: str, ttl_ms: int) -> bool:
        """Extend the lease (or take it back with the same token if it lapsed with no other taker)."""
        return bool(self._renew(keys=[self._k(sid, "lease"), self._k(sid, "meta")], args=[token, ttl_ms]))

    def release(self, sid: str, token: str) -> None:
        self._release(keys=[self._k(sid, "lease")], args=[token])

    def holders(self, sids: list[str]) -> list[bool]:
        """Whether each stream's lease is held by anyone now."""
        pipe = self.r.pipeline(transaction=False)
        for sid in sids:
            pipe.exists(self._k(sid, "lease"))
        return [bool(x) for x in pipe.execute()]
