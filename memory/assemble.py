"""Retrieved memory back into one model cache: prefix, working memory and chunks, in time order.

Working memory and chunks can hold the same token (it survived in both); each token is kept
once per layer, recognised by its serial. Every layer must end with the same number of tokens,
so a layer that lost more copies than another gives up its lowest-scored extra tokens.
Within each layer the tokens are put in stream (time) order: by serial, each prototype right
after the token it is anchored at. (mRoPE's temporal row is not monotonic in stream order:
a video's last frames can sit above the next text's positions.)
Keys stay as the model rotated them, so positions never change: the question goes after the
stream's `next_pos`, and answers are decoded after its `max_pos`.
"""
from __future__ import annotations

import torch

from encoders.base import EncodedSegment
from memory.compress import arrival_key
from memory.layout import TokenSet, concat_segments, layered


def dedupe(parts: list[TokenSet]) -> TokenSet:
    """One copy of each serial per layer, the same count in every layer, time order within layers."""
    joined = TokenSet.cat(parts)
    return _dedupe(joined, torch.zeros_like(joined.serial, dtype=torch.bool))


def _dedupe(joined: TokenSet, drop: torch.Tensor) -> TokenSet:
    """`dedupe` of the tokens not dropped (drop [L, N] bool), on their device. Fixed shapes throughout; the one
    host sync is the result's length (the per-layer count of distinct serials, smallest over layers)."""
    L, N = joined.serial.shape
    dev = joined.serial.device
    if N == 0:
        return joined
    col = torch.arange(N, device=dev)[None]  # [1, N]
    serial = torch.where(drop, joined.serial.max() + 1 + col, joined.serial)  # [L, N] dropped: unique, unmatched
    s_sorted, perm = torch.sort(serial, dim=1, stable=True)  # [L, N] equal serials in index order
    first = torch.ones_like(s_sorted, dtype=torch.bool)
    first[:, 1:] = s_sorted[:, 1:] != s_sorted[:, :-1]  # [L, N] first copy of each serial (its lowest index)
    keep = torch.zeros_like(first).scatter_(1, perm, first) & ~drop  # [L, N] in candidate order
    count = int(keep.sum(dim=1).min())  # the result's length: a host value by nature
    by_score = torch.argsort(joined.score, dim=1, stable=True)  # [L, N] ascending; ties: the lower index first
    kept_last = torch.argsort(keep.gather(1, by_score).to(torch.int8), dim=1, stable=True)  # the kept go last
    order = by_score.gather(1, kept_last)  # [L, N]: dropped, then kept by (score, index) ascending
    idx = order[:, N - count:]  # [L, count] each layer's best `count` kept tokens (extras: lowest scores go)
    return joined.take(idx.gather(1, torch.argsort(arrival_key(joined.serial.gather(1, idx)), dim=1, stable=True)))


def _covered(working: TokenSet, span: tuple[int, int]) -> torch.Tensor:
    """`covered` as a 0-dim bool tensor on the working memory's device."""
    a, b = span
    inside = ((working.serial >= a) & (working.serial < b)).sum(dim=1)  # [L]
    return (inside == b - a).all()


def covered(working: TokenSet, span: tuple[int, int]) -> bool:
    """True when every layer of the working memory still holds all tokens serials span[0]..span[1]-1
    (a chunk of that clip would add only copies and prototypes of what is already there)."""
    return bool(_covered(working, span))


def answer_memory(prefix: EncodedSegment, working: TokenSet | None, chunks: list[tuple[TokenSet, tuple[int, int]]],
                  next_pos: int, max_pos: int) -> EncodedSegment:
    """prefix + working memory + retrieved chunks (each with its clip's serial span), deduplicated,
    as one segment the adapter can answer from. A chunk the working memory covers contributes nothing; that is
    decided on the device, so the whole assembly syncs with the host once (the memory's length)."""
    parts = [] if working is None else [working]
    parts += [t for t, _ in chunks]
    L = prefix.keys.shape[0]
    head = EncodedSegment(prefix.keys, prefix.values, layered(prefix.positions, L), prefix.next_pos,
                          prefix.max_pos, None)
    segs = [head]
    nonempty = [p for p in parts if p.length]
    if nonempty:
        joined = TokenSet.cat(nonempty)
        drops = [torch.zeros(L, working.length, dtype=torch.bool, device=joined.serial.device)] \
            if working is not None and working.length else []
        drops += [_covered(working, span).expand(L, t.length) if working is not None
                  else torch.zeros(L, t.length, dtype=torch.bool, device=joined.serial.device)
                  for t, span in chunks if t.length]
        t = _dedupe(joined, torch.cat(drops, dim=1))  # [L, N] chunks the working memory covers: dropped
        segs.append(EncodedSegment(t.keys, t.values, t.positions, next_pos, max_pos, None))
    return concat_segments(segs, next_pos=next_pos, max_pos=max_pos)
