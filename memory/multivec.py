"""Late-interaction (max-sim) scoring of stored blocks by a question's per-token queries. Pure numpy.

A block holds `m` representative pre-RoPE keys per channel (channel = retrieval layer x KV head,
layer-major, `encoders.retrieval.BlockKeys`); a question holds Q query rows per channel
(`encoders.retrieval.QueryKeys`). Per layer, a block scores

    s_l(block) = sum over the layer's channels c, sum over query rows q, max over the block's keys j of <q_cq, k_cj>

Layers' scores live on different scales, so each is standardised over the blocks being ranked (z-score)
before they are summed: the result reads as "standard deviations above the typical block".
"""
from __future__ import annotations

import numpy as np


def pad_rows(keys: np.ndarray, m: int) -> np.ndarray:
    """keys [C, k, D] with k <= m -> [C, m, D], padded by repeating the first row (a repeated key never
    changes a max)."""
    k = keys.shape[1]
    if k >= m:
        return keys[:, :m]
    return np.concatenate([keys, np.repeat(keys[:, :1], m - k, axis=1)], axis=1)


def maxsim(queries: np.ndarray, keys: np.ndarray, n_layers: int, channel_major: bool = False) -> np.ndarray:
    """queries [C, Q, D], keys [N, C, m, D] (or [C, N, m, D] float32 with `channel_major`, the search index's
    layout: each channel's keys contiguous) -> per-layer scores [N, R] (R = n_layers, C = R x heads)."""
    if channel_major:
        C, N, m, D = keys.shape
    else:
        N, C, m, D = keys.shape
    if N == 0:
        return np.zeros((0, n_layers), np.float32)
    out = np.empty((N, C), np.float32)
    for c in range(C):  # one channel at a time keeps the [N*m, Q] product small
        kc = keys[c] if channel_major else keys[:, c]  # [N, m, D]
        sim = kc.reshape(N * m, D).astype(np.float32, copy=False) @ queries[c].astype(np.float32).T  # [N*m, Q]
        out[:, c] = sim.reshape(N, m, -1).max(axis=1).sum(axis=1)  # [N]
    return out.reshape(N, n_layers, C // n_layers).sum(axis=2)  # [N, R]


def standardise(scores: np.ndarray) -> np.ndarray:
    """scores [N, R] -> each column minus its mean over the N blocks, over its standard deviation
    (a column with no spread becomes 0)."""
    if scores.shape[0] == 0:
        return scores
    mu = scores.mean(axis=0, keepdims=True)
    sd = scores.std(axis=0, keepdims=True)
    return np.where(sd > 1e-9, (scores - mu) / np.maximum(sd, 1e-9), 0.0).astype(np.float32)


def combined(queries: np.ndarray, keys: np.ndarray, n_layers: int, channel_major: bool = False) -> np.ndarray:
    """[N] late-interaction score of each block: per-layer max-sim, standardised, summed over layers."""
    return standardise(maxsim(queries, keys, n_layers, channel_major)).sum(axis=1)


def merged_keys(parts: list[np.ndarray]) -> np.ndarray:
    """Representative keys of a merged block from its parts' [C, m, D] (rows in selection order): the first
    m / len(parts) rows of each part (a prefix of a farthest-point selection is itself one), so a merged block
    keeps the fixed size m."""
    m = max(p.shape[1] for p in parts)
    take = max(1, m // len(parts))
    joined = np.concatenate([p[:, :take] for p in parts], axis=1)
    return pad_rows(joined, m)
