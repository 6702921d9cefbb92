"""Ranking chunks of several streams together (pure functions): each stream's signals ranked on their own
(`StreamIndex.ranked`), then made comparable and fused once over all streams.

Per-stream fusion (`memory.fusion.fuse`) is rank-based: every stream's best chunk gets the same fused score,
however weak its match, so fused scores of two streams cannot be compared. Across streams each signal's lists are
pooled and ranked globally by a score that means the same in every stream, then fused by weighted reciprocal rank
as for one stream:

* `ocr`, `labels`, `image`, `mean`: cosines of one embedding model, the same scale everywhere: pooled as they are;
  the floors apply as for one stream, the relative floor against the best cosine of all streams.
* `kv`: late interaction is standardised per stream (z: standard deviations above that stream's typical chunk).
  The best z of a stream grows with its chunk count (the maximum of n noise scores is about sqrt(2 ln n)), so a
  camera with many chunks would outrank one with few on noise alone. It is calibrated to Phi(z)^n: the
  probability, under a normal model of the stream's chunks, that this chunk beats all n of them by chance -- a
  value in [0, 1] whose meaning does not depend on n (benchmarks/bench_cameras.py measures both spreads).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from encoders.signals import Signal
from memory.fusion import Ranked, SearchOptions, SignalScore


@dataclass(frozen=True)
class Found:
    """One chunk of one stream in the ranking across streams."""
    stream: int  # index into the list of streams given
    chunk_id: int
    score: float  # fused across streams
    signals: tuple[SignalScore, ...]  # each with its calibrated score and its rank across all streams


def kv_calibrated(z: float, n: int) -> float:
    """Phi(z)^n: a stream-size-free value of a chunk's late-interaction z-score among n chunks."""
    if n <= 1:
        return 0.5
    tail = 0.5 * math.erfc(z / math.sqrt(2.0))  # 1 - Phi(z), precise for large z
    return math.exp(n * math.log1p(-min(tail, 1.0 - 1e-300)))


def calibrated(name: Signal, rows: list[tuple[int, float]], depth: int | None = None) -> list[tuple[int, float]]:
    """One stream's list of one signal (best first) with scores that compare across streams; only its first
    `depth` rows (no more of one stream can count among the first `depth` of all streams; n stays its length)."""
    top = rows[:depth] if depth is not None else rows
    if name == Signal.KV:
        n = len(rows)
        return [(cid, kv_calibrated(z, n)) for cid, z in top]
    return top


def fuse_across(per_stream: list[Ranked], opts: SearchOptions, k: int) -> list[Found]:
    """Each stream's per-signal rankings -> the top `k` chunks of all streams, best first."""
    pooled: dict[Signal, list[tuple[float, int, int]]] = {}  # signal -> [(score, stream, chunk id)]
    for si, ranked in enumerate(per_stream):
        for name, rows in ranked.items():
            pooled.setdefault(Signal(name), []).extend(
                (s, si, cid) for cid, s in calibrated(Signal(name), rows, opts.depth))
    fused: dict[tuple[int, int], float] = {}
    found: dict[tuple[int, int], list[SignalScore]] = {}
    for name, rows in pooled.items():
        rows.sort(key=lambda r: (-r[0], r[1], r[2]))
        w = opts.weight(name)
        floor = opts.floor(name)
        if opts.floored(name) and rows:
            floor = max(floor, opts.relative_floor * rows[0][0])
        kept = [r for r in rows if r[0] >= floor][:opts.depth]
        for rank, (score, si, cid) in enumerate(kept, start=1):
            found.setdefault((si, cid), []).append(SignalScore(name, rank, float(score)))
            if w > 0:
                fused[(si, cid)] = fused.get((si, cid), 0.0) + w / (opts.rrf_k + rank)
    order = sorted(fused, key=lambda key: (-fused[key], key))[:max(k, 0)]
    return [Found(si, cid, fused[(si, cid)], tuple(found[(si, cid)])) for si, cid in order]
