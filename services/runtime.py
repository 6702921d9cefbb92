"""Everything one process serves with: settings, the model, the store, the indexes, the ingest workers."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import redis

from encoders.base import VideoLM
from memory.index import IndexRegistry
from memory.layout import KVLayout
from memory.store import MemoryStore
from services.config import Settings


@dataclass
class Runtime:
    settings: Settings
    adapter: VideoLM
    store: MemoryStore
    indexes: IndexRegistry
    model_lock: threading.Lock  # one forward pass at a time per model (CPU: no gain from overlap)

    @classmethod
    def create(cls, settings: Settings, adapter: VideoLM, redis_url: str) -> "Runtime":
        client = redis.Redis.from_url(redis_url)
        client.ping()
        spec = adapter.spec
        store = MemoryStore(client, settings.namespace, KVLayout.from_spec(spec), spec.fingerprint)
        return cls(settings, adapter, store, IndexRegistry(store, spec.retrieval_dim), threading.Lock())
