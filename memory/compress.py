"""Query-agnostic scoring and fixed-budget pruning (re-derived from StreamMem's idea).

All pure tensor functions: no I/O, no logging, no host syncs (no `.item()`, no value-dependent shapes or
branches: tests/memory/test_host_syncs.py), every tensor made on the inputs' device.

* `proxy_attention`: the attention of a short generic proxy query (the chat template's
  assistant opener) over the cached tokens, built for the proxy's rows only.
* `select`: per layer, which tokens a fixed budget keeps under a policy (attention, recency,
  uniform).
* `frame_prototypes`: one token per frame, the attention-weighted mean of its keys and values.
* `value_novelty` / `mix_scores`: how unlike the earlier candidates each token is (InfiniPot-V's
  temporal redundancy, re-derived), mixed with the attention scores.
* `compress_tokens`: candidates -> a TokenSet of at most `budget` tokens per layer.
"""
from __future__ import annotations

import torch

from memory.layout import TokenSet
from memory.options import Policy  # the names live with the memory options


def proxy_attention(q: torch.Tensor, k_ctx: torch.Tensor, k_proxy: torch.Tensor) -> torch.Tensor:
    """Attention mass of the proxy rows on each context token, per KV head.

    q [L, H, Q, D] rotated proxy queries; k_ctx [L, Hkv, S, D] cached keys; k_proxy [L, Hkv, Q, D]
    the proxy's own keys (causal among themselves, part of the softmax as in the model).
    Returns [L, Hkv, S]: softmax weights summed over the Q proxy rows and the G = H / Hkv query
    heads that share each KV head. Only [L, H, Q, S + Q] scores are ever built.
    """
    L, H, Q, D = q.shape
    hkv, S = k_ctx.shape[1], k_ctx.shape[2]
    qg = q.float().reshape(L, hkv, H // hkv, Q, D)  # [L, Hkv, G, Q, D]: query head h uses KV head h // G
    scale = D ** -0.5
    ctx = torch.einsum("lkgqd,lksd->lkgqs", qg, k_ctx.float()) * scale  # [L, Hkv, G, Q, S]
    own = torch.einsum("lkgqd,lkpd->lkgqp", qg, k_proxy.float()) * scale  # [L, Hkv, G, Q, Q]
    future = torch.ones(Q, Q, dtype=torch.bool, device=q.device).triu(1)  # [Q, Q]
    own = own.masked_fill(future, float("-inf"))
    weights = torch.cat([ctx, own], dim=-1).softmax(dim=-1)[..., :S]  # [L, Hkv, G, Q, S]
    return weights.sum(dim=(2, 3))  # [L, Hkv, S]


def select(scores: torch.Tensor, budget: int, policy: Policy = Policy.ATTENTION,
           order: torch.Tensor | None = None) -> torch.Tensor:
    """scores [L, N] -> indices [L, min(N, budget)] of the kept tokens, ascending per layer.

    attention: the highest scores (ties: the older token); recency: the newest; uniform: evenly spaced
    over stream time when `order` [L, N] (e.g. `arrival_key` of the serials) is given, else over the
    candidates (both baselines ignore scores).
    """
    L, N = scores.shape
    b = min(N, budget)
    if policy == Policy.ATTENTION:
        idx = torch.argsort(-scores, dim=1, stable=True)[:, :b]  # [L, b]
        return idx.sort(dim=1).values
    if policy == Policy.RECENCY:
        if order is not None:
            return torch.argsort(order, dim=1, stable=True)[:, N - b:].sort(dim=1).values
        return torch.arange(N - b, N, device=scores.device)[None].expand(L, -1).contiguous()
    if policy == Policy.UNIFORM:
        if b == 0:
            return torch.zeros(L, 0, dtype=torch.long, device=scores.device)
        if order is not None:
            return _uniform_in_time(order, b)
        idx = torch.linspace(0, N - 1, b, device=scores.device).round().long()  # distinct: step >= 1
        return idx[None].expand(L, -1).contiguous()
    raise ValueError(f"unknown policy {str(policy)!r}; one of {tuple(str(p) for p in Policy)}")


def _uniform_in_time(key: torch.Tensor, b: int) -> torch.Tensor:
    """Per layer, b of the N candidates closest to b evenly spaced times between the oldest and newest key
    [L, N] (0 < b <= N) -> indices [L, b], ascending; targets that share a nearest token leave their slots to
    the unchosen, spread evenly over them (rank j * (F - 1) / (m - 1) of the F unchosen, rounded half to even).

    Fixed shapes, no host syncs: with d = b - 1 the targets are d * t_i = d * k_0 + (k_N - k_0) * i, compared
    with d * k in exact integer arithmetic for integer keys (float keys: float64)."""
    L, N = key.shape
    dev = key.device
    sorted_idx = torch.argsort(key, dim=1, stable=True)  # [L, N] candidate of each stream-order rank
    ks = key.gather(1, sorted_idx)  # [L, N] ascending
    if ks.is_floating_point():
        ks = ks.double()
    d = max(b - 1, 1)
    i = torch.arange(b, device=dev)[None]  # [1, b]
    first, last = ks[:, :1], ks[:, -1:]  # [L, 1]
    t = first * d + (last - first) * i  # [L, b] the targets, times d
    kd = ks * d  # [L, N] the keys, times d
    right = torch.searchsorted(kd, t).clamp_(max=N - 1)  # [L, b] first key at or after each target
    left = (right - 1).clamp_(min=0)  # [L, b]
    nearest = torch.where(2 * t <= kd.gather(1, left) + kd.gather(1, right), left, right)  # [L, b] ties: older
    taken = torch.zeros(L, N, dtype=torch.bool, device=dev).scatter_(1, nearest, True)  # [L, N] ranks chosen
    u = taken.sum(dim=1, keepdim=True)  # [L, 1] distinct nearest ranks
    m, F = b - u, N - u  # [L, 1] slots left, unchosen ranks (F >= m)
    den = (m - 1).clamp(min=1)  # [L, 1]
    num = i * (F - 1)  # [L, b]
    q = num.div(den, rounding_mode="floor")
    r = num - q * den
    e = q + ((2 * r > den) | ((2 * r == den) & (q % 2 == 1))).long()  # [L, b] round half to even
    e = torch.where(i < m, e, N)  # [L, b] unchosen-order number of extra j; N: no extra j
    pick = torch.zeros(L, N + 1, dtype=torch.bool, device=dev).scatter_(1, e, True)[:, :N]  # [L, N]
    free_no = ((~taken).cumsum(dim=1) - 1).clamp_(min=0)  # [L, N] unchosen-order number of each rank
    keep = taken | (~taken & pick.gather(1, free_no))  # [L, N] exactly b per layer
    return torch.where(keep, sorted_idx, N).sort(dim=1).values[:, :b]  # [L, b]


def frame_prototypes(tokens: TokenSet, weights: torch.Tensor, frame_ids: torch.Tensor, n_frames: int) -> TokenSet:
    """One prototype per frame: per layer and KV head, the attention-weighted mean of the frame's keys
    and values. weights [L, Hkv, C] (attention on each of the C tokens), frame_ids [C] (-1: no frame).

    A prototype takes the position of its frame's most attended token (its anchor) in that layer,
    the serial -1 - anchor serial (so it sorts right after its anchor, see `arrival_key`), and the
    frame's attention mass (summed over KV heads) as its score.
    """
    member = (frame_ids[:, None] == torch.arange(n_frames, device=frame_ids.device)[None]).float()  # [C, F]
    w = weights.float()[..., None] * member  # [L, Hkv, C, F]
    mass = w.sum(dim=2)  # [L, Hkv, F]
    share = w / mass[:, :, None, :].clamp_min(1e-30)  # [L, Hkv, C, F]
    keys = torch.einsum("lkcf,lkcd->lkfd", share, tokens.keys.float()).to(tokens.keys.dtype)  # [L, Hkv, F, D]
    values = torch.einsum("lkcf,lkcd->lkfd", share, tokens.values.float()).to(tokens.values.dtype)
    layer_w = w.sum(dim=1)  # [L, C, F]
    layer_w = layer_w.masked_fill(member[None] == 0, -1.0)
    anchor = layer_w.argmax(dim=1)  # [L, F] most attended token of each frame
    pidx = anchor[:, None, :].expand(-1, tokens.positions.shape[1], -1)  # [L, P, F]
    positions = tokens.positions.gather(2, pidx)  # [L, P, F]
    serial = -1 - tokens.serial.gather(1, anchor)  # [L, F]
    return TokenSet(keys, values, positions, serial, mass.sum(dim=1))


def arrival_key(serial: torch.Tensor) -> torch.Tensor:
    """Sort key of stream order: token s -> 2s, the prototype anchored at s -> 2s + 1."""
    return torch.where(serial >= 0, 2 * serial, 2 * (-1 - serial) + 1)


def compress_tokens(candidates: TokenSet, scores: torch.Tensor, budget: int, policy: Policy) -> TokenSet:
    """Keep at most `budget` of the candidates per layer; scores [L, N] travel with the kept tokens.
    The baselines (recency, uniform) order candidates by stream time."""
    idx = select(scores, budget, policy, order=arrival_key(candidates.serial))  # [L, b]
    return candidates.with_scores(scores).take(idx)


def value_novelty(values: torch.Tensor, order: torch.Tensor, window: int = 0) -> torch.Tensor:
    """How unlike the candidates before it each token is: values [L, Hkv, N, D], order [L, N] (a stream-order
    sort key, e.g. `arrival_key`) -> novelty [L, N] in [0, 1].

    Per layer, two tokens' similarity is the cosine of their values averaged over the KV heads; a token's
    novelty is 1 - its largest similarity to an earlier token (the first token: 1). `window` 0 compares with
    every earlier candidate ([N, N] per layer); window W with the earlier ones of its own block of W
    candidates (in stream order) and the whole block before it: W to 2W - 1 predecessors, [N, 2W] per layer
    (InfiniPot-V's temporal axis: redundancy against what came just before). A scene that repeats scores
    high once, then low, so a budget can keep one copy of it and room for rare content. Values, not keys:
    stored keys are rotated, so their cosine would depend on how far apart tokens sit.
    """
    L, hkv, N, D = values.shape
    if N == 0:
        return values.new_zeros(L, 0, dtype=torch.float32)
    W = N if window <= 0 or window >= N else window
    nb = -(-N // W)  # blocks
    unit = torch.nn.functional.normalize(values.float(), dim=-1).permute(0, 2, 1, 3).reshape(L, N, hkv * D)
    rank = torch.argsort(order, dim=1, stable=True)  # [L, N] candidate index of each stream-order slot
    i = torch.arange(W, device=values.device)[:, None]  # [W, 1] row within its block
    j = torch.arange(2 * W, device=values.device)[None, :]  # [1, 2W] column: previous block, then own block
    blk = torch.arange(nb, device=values.device)[:, None, None]  # [nb, 1, 1]
    allowed = (j < W + i)[None] & ((blk > 0) | (j >= W)[None])  # [nb, W, 2W] strictly earlier; block 0: own only
    if nb == 1:
        allowed = allowed[:, :, W:]  # [1, W, W]: one block, nothing before it
    rows = []
    for layer in range(L):
        u = torch.nn.functional.pad(unit[layer].index_select(0, rank[layer]), (0, 0, 0, nb * W - N))
        u = u.view(nb, W, -1)  # [nb, W, E] in stream order
        cols = u if nb == 1 else torch.cat([torch.cat([u.new_zeros(1, W, u.shape[2]), u[:-1]]), u], dim=1)
        sim = torch.bmm(u, cols.transpose(1, 2)) / hkv  # [nb, W, 2W] (one block: [1, N, N]) mean cosine
        best = sim.masked_fill_(~allowed, float("-inf")).amax(dim=2).reshape(-1)[:N]  # [N] in stream order
        nov = (1.0 - best).clamp_(0.0, 1.0)  # [N] in stream order
        rows.append(torch.empty_like(nov).scatter_(0, rank[layer], nov))  # [N] in candidate order
    return torch.stack(rows)  # [L, N]


def mix_scores(attention: torch.Tensor, novelty: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 - weight) x attention share + weight x novelty share, each normalised to sum 1 per layer [L, N].
    weight 0 returns the attention scores unchanged."""
    if weight == 0:
        return attention
    a = attention.float() / attention.float().sum(dim=1, keepdim=True).clamp_min(1e-30)  # [L, N]
    v = novelty.float() / novelty.float().sum(dim=1, keepdim=True).clamp_min(1e-30)  # [L, N]
    return (1.0 - weight) * a + weight * v


def novelty_boost(novelty: float, weight: float) -> float:
    """How much a clip's scores are raised by the keyframe detector's novelty (0..1)."""
    return 1.0 + weight * max(0.0, novelty)


def in_arrival_order(tokens: TokenSet) -> TokenSet:
    """The same tokens, each layer sorted into stream order."""
    return tokens.take(torch.argsort(arrival_key(tokens.serial), dim=1, stable=True))  # [L, n]
