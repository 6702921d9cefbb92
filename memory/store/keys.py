"""Key names, and what every part of the store shares: the client, the namespace, the blob layout."""
from __future__ import annotations

import re

from memory.layout import KVLayout
from memory.store.client import Client

STREAM_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
EVENTS_MAXLEN = 1000

# per-stream keys, all under the stream's hash tag (one Redis Cluster slot per stream)
STREAM_KEYS = ("meta", "prefix", "chunks", "wm", "wmlog", "ckpt", "gaps", "gapz", "events", "lease", "fence", "source")


class StoreBase:
    def __init__(self, client: Client, namespace: str, layout: KVLayout, fingerprint: str) -> None:
        self.r = client
        self.ns = namespace
        self.layout = layout
        self.fingerprint = fingerprint

    def _k(self, sid: str, suffix: str) -> str:
        return f"{self.ns}:s:{{{sid}}}:{suffix}"

    def _chunk_key(self, sid: str, cid: int) -> str:
        return self._k(sid, f"c:{cid}")

    @property
    def _streams(self) -> str:
        return f"{self.ns}:streams"

    @property
    def _active(self) -> str:
        return f"{self.ns}:active"
