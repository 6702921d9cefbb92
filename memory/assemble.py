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
    L, N = joined.serial.shape
    kept: list[torch.Tensor] = []
    for layer in range(L):
        serial = joined.serial[layer]  # [N]
        uniq, inverse = torch.unique(serial, return_inverse=True)
        first = torch.full((uniq.shape[0],), N, dtype=torch.long).scatter_reduce(
            0, inverse, torch.arange(N), reduce="amin")  # first index of each serial
        kept.append(first.sort().values)
    count = min(k.shape[0] for k in kept)
    rows = []
    for layer, idx in enumerate(kept):
        if idx.shape[0] > count:  # drop this layer's lowest-scored extras, keeping arrival order
            order = torch.argsort(joined.score[layer, idx], stable=True)
            idx = idx[order[idx.shape[0] - count:]].sort().values
        rows.append(idx[torch.argsort(arrival_key(joined.serial[layer, idx]), stable=True)])
    return joined.take(torch.stack(rows) if rows else torch.zeros(L, 0, dtype=torch.long))


def covered(working: TokenSet, span: tuple[int, int]) -> bool:
    """True when every layer of the working memory still holds all tokens serials span[0]..span[1]-1
    (a chunk of that clip would add only copies and prototypes of what is already there)."""
    a, b = span
    inside = ((working.serial >= a) & (working.serial < b)).sum(dim=1)  # [L]
    return bool((inside == b - a).all())


def answer_memory(prefix: EncodedSegment, working: TokenSet | None, chunks: list[tuple[TokenSet, tuple[int, int]]],
                  next_pos: int, max_pos: int) -> EncodedSegment:
    """prefix + working memory + retrieved chunks (each with its clip's serial span), deduplicated,
    as one segment the adapter can answer from."""
    parts = [] if working is None else [working]
    parts += [t for t, span in chunks if working is None or not covered(working, span)]
    L = prefix.keys.shape[0]
    head = EncodedSegment(prefix.keys, prefix.values, layered(prefix.positions, L), prefix.next_pos,
                          prefix.max_pos, None)
    segs = [head]
    nonempty = [p for p in parts if p.length]
    if nonempty:
        t = dedupe(nonempty)
        segs.append(EncodedSegment(t.keys, t.values, t.positions, next_pos, max_pos, None))
    return concat_segments(segs, next_pos=next_pos, max_pos=max_pos)
