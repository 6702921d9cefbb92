"""Per-stream search indexes over chunk retrieval vectors, derived from the store.

One `StreamIndex` per stream holds, for every stored chunk: its representative keys (late interaction,
`memory.multivec`; exact while small, candidates from a FAISS HNSW index per channel above
`exact_max_rows` keys per channel, then exact rescoring; 65 536 keys are 1 024 chunks of 64 keys: 2.3 h of
full 8-s clips, under an hour of busy footage whose clips close early at scene cuts), its mean key (the baseline, FAISS inner product), and one
vector per frame-index signal (on-screen text, labels, image embedding; FAISS inner product). Each
signal ranks what it can score; `memory.fusion` combines them.

An index is brought up to date from Redis before each search (only chunks it has not seen are read;
everything again after retention deleted or merged chunks, which bumps the stream's epoch), so a QA
replica started after ingest, or restarted, serves the same top-k.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

import faiss
import numpy as np

from encoders.retrieval import QueryKeys
from memory.fusion import SearchOptions, Ranked, SignalScore, fuse
from memory.multivec import combined, pad_rows
from memory.store import ChunkRecord, IndexRow, MemoryStore

HNSW_NEIGHBOURS = 32
HNSW_CANDIDATES = 64  # keys fetched per query row and channel on the approximate path


@dataclass(frozen=True)
class Hit:
    chunk: ChunkRecord
    score: float  # fused score
    signals: tuple[SignalScore, ...] = ()  # every signal that ranked the chunk, with its own rank and score


@dataclass(frozen=True)
class Query:
    """What a question (or an example image) is searched with: any subset of the signals."""
    keys: QueryKeys | None = None  # late interaction over the model's keys (+ the mean-key baseline)
    dense: dict[str, np.ndarray] = field(default_factory=dict)  # frame-index signal -> [d] unit vector


class _Dense:
    """Unit vectors of chunks (one each, several for a merged chunk), FAISS inner product; a chunk scores
    its best vector."""

    def __init__(self, dim: int) -> None:
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.rows: dict[int, int] = {}  # chunk id -> vectors

    def add(self, cids: list[int], vecs: list[np.ndarray]) -> None:
        mats = [np.asarray(v, np.float32).reshape(-1, self.index.d) for v in vecs]  # [n_i, d] each
        ids = np.concatenate([np.full(len(m), c, dtype=np.int64) for c, m in zip(cids, mats)])
        self.index.add_with_ids(np.concatenate(mats), ids)
        for c, m in zip(cids, mats):
            self.rows[c] = self.rows.get(c, 0) + len(m)

    def rank(self, vec: np.ndarray, allowed: list[int]) -> list[tuple[int, float]]:
        ok = [c for c in allowed if c in self.rows]
        if not ok or vec.shape[-1] != self.index.d:  # a vector from another describer model: not comparable
            return []
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.array(ok, dtype=np.int64)))
        k = sum(self.rows[c] for c in ok)
        scores, ids = self.index.search(vec.reshape(1, -1).astype(np.float32), k, params=params)
        out: dict[int, float] = {}
        for s, i in zip(scores[0], ids[0]):  # best first: a chunk's first row is its best
            if i >= 0 and int(i) not in out:
                out[int(i)] = float(s)
        return list(out.items())


class _Keys:
    """Every chunk's representative keys [N, C, m, D]; HNSW per channel once the stream is large."""

    def __init__(self, n_layers: int, exact_max_rows: int) -> None:
        self.n_layers = n_layers
        self.exact_max_rows = exact_max_rows
        self.cids: list[int] = []
        self.parts: list[np.ndarray] = []  # [C, k_i, D] float16 each, as stored (k_i <= m)
        self.m = 0  # the most keys any chunk has: every chunk is padded to it (a repeated key changes no max)
        self._channels: np.ndarray | None = None  # [C, N, m, D] float32: what scoring reads
        self.hnsw: list[faiss.Index] | None = None
        self._hnsw_rows = 0  # chunks added to the HNSW indexes

    def add(self, cids: list[int], keys: list[np.ndarray]) -> None:
        self.cids += cids
        self.parts += keys
        m = max(self.m, max(k.shape[1] for k in keys))
        if m != self.m:  # wider chunks: every row position changes, so the HNSW graphs are rebuilt
            self.m, self.hnsw, self._hnsw_rows = m, None, 0
        self._channels = None

    def channels(self) -> np.ndarray:
        if self._channels is None:
            st = np.stack([pad_rows(k, self.m) for k in self.parts])  # [N, C, m, D]
            self._channels = np.ascontiguousarray(st.transpose(1, 0, 2, 3), dtype=np.float32)
        return self._channels

    @property
    def approximate(self) -> bool:
        return len(self.cids) * self.m > self.exact_max_rows

    def _sync_hnsw(self) -> list[faiss.Index]:
        ch = self.channels()
        C, N, m, D = ch.shape
        if self.hnsw is None:
            self.hnsw = []
            for _ in range(C):
                idx = faiss.IndexHNSWFlat(D, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
                idx.hnsw.efSearch = 128
                self.hnsw.append(idx)
        if self._hnsw_rows < N:
            for c, idx in enumerate(self.hnsw):
                idx.add(ch[c, self._hnsw_rows:].reshape(-1, D))  # row r -> chunk position r // m
            self._hnsw_rows = N
        return self.hnsw

    def rank(self, q: QueryKeys, allowed: list[int], mode: str = "auto") -> list[tuple[int, float]]:
        if not self.cids:
            return []
        pos_of = {c: i for i, c in enumerate(self.cids)}
        pos = np.array([pos_of[c] for c in allowed if c in pos_of], dtype=np.int64)
        if pos.size == 0:
            return []
        approx = mode == "approx" or (mode == "auto" and pos.size * self.m > self.exact_max_rows)
        if approx:
            pos = self._candidates(q, pos, whole=pos.size == len(self.cids))
        keys = self.channels()  # [C, N, m, D]
        if pos.size != len(self.cids) or (pos != np.arange(len(self.cids))).any():
            keys = keys[:, pos]  # a window or candidates: only those chunks
        scores = combined(q.tokens, keys, self.n_layers, channel_major=True)  # [n]
        order = np.argsort(-scores, kind="stable")
        return [(self.cids[int(pos[i])], float(scores[i])) for i in order]

    def _candidates(self, q: QueryKeys, pos: np.ndarray, whole: bool) -> np.ndarray:
        """Positions (within `pos`) of the chunks whose keys the HNSW indexes return for any query row; a
        window's chunks are selected inside the graph search, not after it."""
        m = self.m
        found: set[int] = set()
        params = None
        if not whole:
            rows = (pos[:, None] * m + np.arange(m)[None]).ravel().astype(np.int64)  # the window's key rows
            params = faiss.SearchParametersHNSW(sel=faiss.IDSelectorBatch(rows), efSearch=128)
        for c, idx in enumerate(self._sync_hnsw()):
            _, rows = idx.search(q.tokens[c].astype(np.float32), min(HNSW_CANDIDATES, idx.ntotal), params=params)
            found.update(int(r) // m for r in rows.ravel() if r >= 0)
        keep = pos[np.isin(pos, np.fromiter(found, dtype=np.int64, count=len(found)))]
        return keep if keep.size else pos


class StreamIndex:
    """Safe to share between threads: additions and searches of one stream take turns."""

    def __init__(self, n_layers: int, epoch: int = 0, exact_max_rows: int = SearchOptions().exact_max_rows) -> None:
        self._lock = threading.RLock()
        self.epoch = epoch
        self.records: dict[int, ChunkRecord] = {}
        self.last_id = -1
        self.keys = _Keys(n_layers, exact_max_rows)
        self.dense: dict[str, _Dense] = {}  # signal -> index ("mean" is the mean-key baseline)

    def add(self, rows: list[IndexRow]) -> None:
        if not rows:
            return
        with self._lock:
            self._add(rows)

    def _add(self, rows: list[IndexRow]) -> None:
        for r in rows:
            self.records[r.record.chunk_id] = r.record
            self.last_id = max(self.last_id, r.record.chunk_id)
        with_keys = [r for r in rows if r.keys is not None]
        if with_keys:
            self.keys.add([r.record.chunk_id for r in with_keys], [r.keys for r in with_keys])
        vectors: dict[str, list[tuple[int, np.ndarray]]] = {}
        for r in rows:
            vectors.setdefault("mean", []).append((r.record.chunk_id, r.mean))
            for name, v in r.dense.items():
                vectors.setdefault(name, []).append((r.record.chunk_id, v))
        for name, items in vectors.items():
            if name not in self.dense:
                self.dense[name] = _Dense(items[0][1].shape[-1])
            self.dense[name].add([c for c, _ in items], [v for _, v in items])

    def allowed(self, window: tuple[float, float] | None) -> list[int]:
        with self._lock:
            if window is None:
                return sorted(self.records)
            lo, hi = window
            return sorted(cid for cid, r in self.records.items() if r.end_s > lo and r.start_s < hi)

    def wall_anchors(self) -> list[tuple[float, float]]:
        """(media start, wall-clock start) of every chunk received live: how wall-clock words are read."""
        with self._lock:
            return [(r.start_s, r.wall_start) for r in self.records.values() if r.wall_start]

    def ranked(self, query: Query, window: tuple[float, float] | None = None, mode: str = "auto") -> Ranked:
        """Each signal's ranking of the chunks overlapping `window` that it can score."""
        with self._lock:
            return self._ranked(query, window, mode)

    def _ranked(self, query: Query, window: tuple[float, float] | None, mode: str) -> Ranked:
        allowed = self.allowed(window)
        out: Ranked = {}
        if not allowed:
            return out
        if query.keys is not None:
            out["kv"] = self.keys.rank(query.keys, allowed, mode)
            if "mean" in self.dense:
                out["mean"] = self.dense["mean"].rank(query.keys.mean, allowed)
        for name, vec in query.dense.items():
            if name in self.dense:
                out[name] = self.dense[name].rank(vec, allowed)
        return {k: v for k, v in out.items() if v}

    def search(self, query: Query, k: int, window: tuple[float, float] | None = None,
               fusion: SearchOptions = SearchOptions(), mode: str = "auto") -> list[Hit]:
        """Top-k chunks by the fused ranking, best first, only those overlapping [start_s, end_s]."""
        if k <= 0:
            return []
        with self._lock:
            ranked = self._ranked(query, window, mode)
            unkeyed = set(self.allowed(window)) - set(self.keys.cids)
            if unkeyed and query.keys is not None and fusion.mean_weight == 0 and "mean" in ranked:
                # chunks stored before representative keys existed: the mean key ranks them in kv's place
                ranked["mean"] = [(c, s) for c, s in ranked["mean"] if c in unkeyed]
                fusion = replace(fusion, mean_weight=fusion.kv_weight)
            fused = fuse(ranked, fusion)
            return [Hit(self.records[cid], score, signals) for cid, score, signals in fused[:k]]


class IndexRegistry:
    """Keeps one StreamIndex per stream in this process, synced from Redis on use."""

    def __init__(self, store: MemoryStore, n_layers: int, exact_max_rows: int = SearchOptions().exact_max_rows) -> None:
        self.store = store
        self.n_layers = n_layers
        self.exact_max_rows = exact_max_rows
        self._indexes: dict[str, StreamIndex] = {}
        self._lock = threading.Lock()

    def synced(self, sid: str) -> StreamIndex:
        with self._lock:
            epoch = self.store.epoch(sid)
            idx = self._indexes.get(sid)
            if idx is None or idx.epoch != epoch:
                idx = self._indexes[sid] = StreamIndex(self.n_layers, epoch, self.exact_max_rows)
            new_ids = self.store.chunk_ids(sid, after=idx.last_id)
            if new_ids:
                idx.add(self.store.chunk_index_rows(sid, new_ids))
            return idx

    def drop(self, sid: str) -> None:
        with self._lock:
            self._indexes.pop(sid, None)
