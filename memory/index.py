"""Per-stream FAISS inner-product indexes over chunk retrieval vectors, derived from the store.

An index is brought up to date from Redis before each search (only chunks it has not seen are
read; everything again after retention deleted or merged chunks, which bumps the stream's
epoch), so a QA replica started after ingest, or restarted, serves the same top-k.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import faiss
import numpy as np

from memory.store import ChunkRecord, MemoryStore


@dataclass(frozen=True)
class Hit:
    chunk: ChunkRecord
    score: float


class StreamIndex:
    def __init__(self, dim: int, epoch: int = 0) -> None:
        self.epoch = epoch
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.records: dict[int, ChunkRecord] = {}
        self.last_id = -1

    def add(self, rows: list[tuple[ChunkRecord, np.ndarray]]) -> None:
        if not rows:
            return
        vecs = np.stack([v for _, v in rows]).astype(np.float32)  # [N, E]
        ids = np.array([r.chunk_id for r, _ in rows], dtype=np.int64)  # [N]
        self.index.add_with_ids(vecs, ids)
        for r, _ in rows:
            self.records[r.chunk_id] = r
        self.last_id = max(self.last_id, int(ids.max()))

    def search(self, query: np.ndarray, k: int, window: tuple[float, float] | None = None) -> list[Hit]:
        """Top-k chunks by inner product, optionally only those overlapping [start_s, end_s]."""
        if window is None:
            allowed = list(self.records)
        else:
            lo, hi = window
            allowed = [cid for cid, r in self.records.items() if r.end_s > lo and r.start_s < hi]
        if not allowed or k <= 0:
            return []
        k = min(k, len(allowed))
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.array(allowed, dtype=np.int64)))
        scores, ids = self.index.search(query.reshape(1, -1).astype(np.float32), k, params=params)
        return [Hit(self.records[int(i)], float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0]


class IndexRegistry:
    """Keeps one StreamIndex per stream in this process, synced from Redis on use."""

    def __init__(self, store: MemoryStore, dim: int) -> None:
        self.store = store
        self.dim = dim
        self._indexes: dict[str, StreamIndex] = {}
        self._lock = threading.Lock()

    def synced(self, sid: str) -> StreamIndex:
        with self._lock:
            epoch = self.store.epoch(sid)
            idx = self._indexes.get(sid)
            if idx is None or idx.epoch != epoch:
                idx = self._indexes[sid] = StreamIndex(self.dim, epoch)
            new_ids = self.store.chunk_ids(sid, after=idx.last_id)
            if new_ids:
                idx.add(self.store.chunk_index_rows(sid, new_ids))
            return idx

    def drop(self, sid: str) -> None:
        with self._lock:
            self._indexes.pop(sid, None)
