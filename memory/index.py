"""Per-stream search indexes over chunk retrieval vectors, derived from the store.

One `StreamIndex` per stream holds, for every stored chunk: its representative keys (late interaction,
`memory.multivec`; float16 as stored, appended in place; exact while small, above `exact_max_rows` keys per
channel a first pass over each chunk's first keys picks the candidates scored exactly; 65 536 keys are 1 024
chunks of 64 keys: 2.3 h of full 8-s clips), its mean key (the baseline, FAISS inner product), and one
vector per frame-index signal (on-screen text, labels, image embedding; FAISS inner product). Each
signal ranks what it can score; `memory.fusion` combines them.

An index is brought up to date from Redis before each search (only chunks it has not seen are read;
everything again after retention deleted or merged chunks, which bumps the stream's epoch), so a QA
replica started after ingest, or restarted, serves the same top-k. The registry keeps at most `max_bytes` of
indexes: the least recently searched streams are dropped and rebuilt from Redis when asked again.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import faiss
import numpy as np
import torch

from encoders.retrieval import QueryKeys
from encoders.signals import Signal
from memory.fusion import SearchOptions, Ranked, SignalScore, fuse
from memory.multivec import pad_rows, standardise
from memory.store import ChunkRecord, IndexRow, MemoryStore

BLOCK = 64  # chunks per key block (8 MB at the 7B layout: what a short stream over-allocates)
COARSE_ROWS = 16  # keys per chunk and channel the approximate path's first pass scores (bench_retrieval_index)
COARSE_QUERY_ROWS = 16  # query rows (question tokens x heads of a group, evenly spread) the first pass scores with
COARSE_SHARE = 0.1  # chunks it passes on to exact scoring (at least COARSE_MIN): recall@5 0.94-0.97 at 6-24 h
COARSE_MIN = 256


@dataclass(frozen=True)
class Hit:
    chunk: ChunkRecord
    score: float  # fused score
    signals: tuple[SignalScore, ...] = ()  # every signal that ranked the chunk, with its own rank and score


@dataclass(frozen=True)
class Query:
    """What a question (or an example image) is searched with: any subset of the signals."""
    keys: QueryKeys | None = None  # late interaction over the model's keys (+ the mean-key baseline)
    dense: dict[Signal, np.ndarray] = field(default_factory=dict)  # frame-index signal -> [d] unit vector


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
    """Every chunk's representative keys, kept as stored (float16) in blocks of BLOCK chunks, channel-major
    [C, BLOCK, m, D]: a new chunk is written into the last block's next slot (nothing restacked); scoring
    converts one block and channel at a time to float32 (exact: the stored values, summed in float32).

    Above `exact_max_rows` keys per channel the approximate path first scores every chunk by its first
    COARSE_ROWS keys only (a farthest-point selection's prefix is a coarse cover of the chunk's keys; the same
    storage, no second index), then scores the best candidates exactly. RAM: the keys alone
    (C x m x D x 2 bytes a chunk)."""

    def __init__(self, n_layers: int, exact_max_rows: int) -> None:
        self.n_layers = n_layers
        self.exact_max_rows = exact_max_rows
        self.cids: list[int] = []
        self.pos_of: dict[int, int] = {}
        self.blocks: list[torch.Tensor] = []  # [C, BLOCK, m, D] float16 each; the last one filling up
        self.m = 0  # the most keys any chunk has: every chunk is padded to it (a repeated key changes no max)
        self.C = self.D = 0
        self.coarse_min = COARSE_MIN

    def add(self, cids: list[int], keys: list[np.ndarray]) -> None:
        m = max(self.m, max(k.shape[1] for k in keys))
        if m != self.m and self.cids:  # wider chunks: every block is laid out again (rare: an option changed)
            old = [self.row(i) for i in range(len(self.cids))]
            old_cids = self.cids
            self.cids, self.pos_of, self.blocks, self.m = [], {}, [], m
            self._append(old_cids, old)
        self.m = m
        self._append(cids, keys)

    def _append(self, cids: list[int], keys: list[np.ndarray]) -> None:
        for cid, k in zip(cids, keys):
            if not self.blocks:
                self.C, _, self.D = k.shape
            n = len(self.cids)
            if n % BLOCK == 0:
                self.blocks.append(torch.zeros(self.C, BLOCK, self.m, self.D, dtype=torch.float16))
            self.blocks[-1][:, n % BLOCK] = torch.from_numpy(pad_rows(np.asarray(k, np.float16), self.m))
            self.pos_of[cid] = n
            self.cids.append(cid)

    def row(self, pos: int) -> np.ndarray:
        """One chunk's keys [C, m, D] float16."""
        return self.blocks[pos // BLOCK][:, pos % BLOCK].numpy()

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.blocks)

    @property
    def approximate(self) -> bool:
        return len(self.cids) * self.m > self.exact_max_rows

    def _maxsim(self, q: np.ndarray, pos: np.ndarray, rows: int) -> np.ndarray:
        """Per-layer max-sim [n, R] of the chunks at positions `pos` (sorted), over their first `rows` keys."""
        C, D = self.C, self.D
        qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))  # [C, Q*G, D]
        out = np.empty((len(pos), C), np.float32)
        done = 0
        for b in np.unique(pos // BLOCK):
            sel = pos[(pos // BLOCK) == b] % BLOCK
            block = self.blocks[b]
            whole = np.array_equal(sel, np.arange(len(sel)))  # a prefix of the block: a view, no gather
            part = block[:, :len(sel), :rows] if whole else block[:, torch.from_numpy(sel), :rows]  # [C, n, r, D]
            n = len(sel)
            for c in range(C):  # one channel at a time keeps the float32 copy small
                sim = part[c].reshape(n * rows, D).float() @ qt[c].T  # [n*r, Q]
                out[done:done + n, c] = sim.view(n, rows, -1).amax(dim=1).sum(dim=1).numpy()
            done += n
        return out.reshape(len(pos), self.n_layers, C // self.n_layers).sum(axis=2)  # [n, R]

    def rank(self, q: QueryKeys, allowed: list[int], mode: str = "auto") -> list[tuple[int, float]]:
        if not self.cids:
            return []
        pos = np.array(sorted(self.pos_of[c] for c in allowed if c in self.pos_of), dtype=np.int64)
        if pos.size == 0:
            return []
        approx = mode == "approx" or (mode == "auto" and pos.size * self.m > self.exact_max_rows)
        if approx and self.m > COARSE_ROWS:
            rows = q.tokens.shape[1]
            sub = q.tokens[:, np.linspace(0, rows - 1, min(rows, COARSE_QUERY_ROWS)).round().astype(int)]
            coarse = standardise(self._maxsim(sub, pos, COARSE_ROWS)).sum(axis=1)  # [n]
            keep = max(self.coarse_min, int(pos.size * COARSE_SHARE))
            if keep < pos.size:
                pos = np.sort(pos[np.argsort(-coarse, kind="stable")[:keep]])
        scores = standardise(self._maxsim(q.tokens, pos, self.m)).sum(axis=1)  # [n]
        order = np.argsort(-scores, kind="stable")
        return [(self.cids[int(pos[i])], float(scores[i])) for i in order]


class StreamIndex:
    """Safe to share between threads: additions and searches of one stream take turns."""

    def __init__(self, n_layers: int, epoch: int = 0, exact_max_rows: int = SearchOptions().exact_max_rows) -> None:
        self._lock = threading.RLock()
        self.epoch = epoch
        self.records: dict[int, ChunkRecord] = {}
        self.last_id = -1
        self.keys = _Keys(n_layers, exact_max_rows)
        self.dense: dict[Signal, _Dense] = {}  # signal -> index (MEAN is the mean-key baseline)

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
        vectors: dict[Signal, list[tuple[int, np.ndarray]]] = {}
        for r in rows:
            vectors.setdefault(Signal.MEAN, []).append((r.record.chunk_id, r.mean))
            for name, v in r.dense.items():
                vectors.setdefault(name, []).append((r.record.chunk_id, v))
        for name, items in vectors.items():
            if name not in self.dense:
                self.dense[name] = _Dense(items[0][1].shape[-1])
            self.dense[name].add([c for c, _ in items], [v for _, v in items])

    @property
    def nbytes(self) -> int:
        """RAM of the index: keys, and every vector signal's FAISS vectors."""
        with self._lock:
            return self.keys.nbytes + sum(d.index.ntotal * d.index.d * 4 for d in self.dense.values())

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
            out[Signal.KV] = self.keys.rank(query.keys, allowed, mode)
            if Signal.MEAN in self.dense:
                out[Signal.MEAN] = self.dense[Signal.MEAN].rank(query.keys.mean, allowed)
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
            if unkeyed and query.keys is not None and fusion.mean_weight == 0 and Signal.MEAN in ranked:
                # chunks stored before representative keys existed: the mean key ranks them in kv's place
                ranked[Signal.MEAN] = [(c, s) for c, s in ranked[Signal.MEAN] if c in unkeyed]
                fusion = replace(fusion, mean_weight=fusion.kv_weight)
            fused = fuse(ranked, fusion)
            return [Hit(self.records[cid], score, signals) for cid, score, signals in fused[:k]]


class IndexRegistry:
    """Keeps one StreamIndex per stream in this process, synced from Redis on use, at most `max_bytes` of them
    (0: no limit): the least recently used are dropped first (never the one just asked for)."""

    def __init__(self, store: MemoryStore, n_layers: int, exact_max_rows: int = SearchOptions().exact_max_rows,
                 max_bytes: int = 0) -> None:
        self.store = store
        self.n_layers = n_layers
        self.exact_max_rows = exact_max_rows
        self.max_bytes = max_bytes
        self._indexes: OrderedDict[str, StreamIndex] = OrderedDict()
        self._lock = threading.Lock()
        self.rebuilds = 0  # indexes built from nothing (first use, retention, or after being dropped)

    def synced(self, sid: str) -> StreamIndex:
        with self._lock:
            epoch = self.store.epoch(sid)
            idx = self._indexes.get(sid)
            if idx is None or idx.epoch != epoch:
                idx = self._indexes[sid] = StreamIndex(self.n_layers, epoch, self.exact_max_rows)
                self.rebuilds += 1
            self._indexes.move_to_end(sid)
            last = idx.records.get(idx.last_id)
            new_ids = self.store.chunk_ids(sid, after=idx.last_id, from_s=last.start_s if last else None)
            if new_ids:
                idx.add(self.store.chunk_index_rows(sid, new_ids))
            self._evict()
            return idx

    def _evict(self) -> None:
        if not self.max_bytes:
            return
        total = sum(i.nbytes for i in self._indexes.values())
        for sid in list(self._indexes)[:-1]:
            if total <= self.max_bytes:
                return
            total -= self._indexes.pop(sid).nbytes

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(i.nbytes for i in self._indexes.values())

    def drop(self, sid: str) -> None:
        with self._lock:
            self._indexes.pop(sid, None)
