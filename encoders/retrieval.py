"""Retrieval vectors: how a block of tokens (a clip, a text chunk) is found again by a question.

Two representations, both read from the language model's own pre-RoPE keys and queries:

* **mean key** (ReKV's idea, the baseline): a block is the mean of its pre-RoPE keys at the middle decoder
  layer, a question the mean of its pre-RoPE queries there (averaged within each KV head's group of query
  heads). One vector each; their inner product is the mean attention logit without positions. Measured on
  real SmolLM2 weights it barely beats chance: every key and query shares a large common direction (the
  q/k projection biases of Qwen2-style models), so all blocks look alike.
* **representative keys, late interaction** (the default; re-derived from InfLLM's representative tokens
  and ColBERT's max-sim): a block keeps the pre-RoPE keys of `m` of its tokens per KV head at a few layers
  (`retrieval_layers`), chosen by farthest-point sampling over the block's own centred, unit keys, so they
  cover what the block contains rather than what it shares with every other block. A question keeps its
  per-token queries at the same layers (every query head, scored against its KV head's keys), **minus each
  head's mean query over a fixed set of generic questions** (`CALIBRATION_QUESTIONS`): what every question shares, the direction
  that made all blocks score alike, is removed. A block scores sum over query tokens of the max over its
  keys (`memory.multivec`). Centring the keys would not change the ranking (q . mu is the same for every
  block), centring the queries does.

Works for any decoder layer with `input_layernorm` and `self_attn.{q,k}_proj` (Qwen2/2.5(-VL), Llama), and
`self_attn.{q,k}_norm` where the family has them (Qwen3-VL).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# Depths (fractions of the decoder stack) whose keys retrieve. Chosen by measurement on real weights
# (SmolLM2-135M, 30 layers, two ~7.5K-token planted-fact streams, 30 questions): in a sweep with every
# chunk's keys read behind the whole stream, layer 8 alone found a 15-token fact's 256-token chunk at hit@1
# 0.70 / hit@4 0.90 with 64 covering keys per head, layers 8 + 17 together 0.73 / 0.97 (0.93 / 1.00 with 128),
# the mean key 0.07 / 0.17; the first and last layers are near chance. Through the production path (keys read
# behind the working memory, benchmarks/bench_memory_facts.py) late interaction reaches hit@4 0.80-0.97.
RETRIEVAL_DEPTHS = (0.27, 0.57)

# The question-independent part of a question's queries is estimated from these (and removed).
CALIBRATION_QUESTIONS = (
    "What happened?", "When did it happen?", "Who was there?", "Where did they go?", "What is the name of the dog?",
    "What colour was the car?", "How many people were in the room?", "What was written on the sign?",
    "What did the man in the red jacket carry?", "Which door did they use?", "Was there a truck at the gate?",
    "What happens at the start of the video?",
)


def middle_layer(num_layers: int) -> int:
    """The decoder layer of the mean-key baseline (the middle one)."""
    return num_layers // 2


def retrieval_layers(num_layers: int) -> tuple[int, ...]:
    """The decoder layers whose keys represent a block (`RETRIEVAL_DEPTHS` of the stack, distinct)."""
    out = []
    for d in RETRIEVAL_DEPTHS:
        layer = min(num_layers - 1, max(0, round(d * num_layers)))
        if layer not in out:
            out.append(layer)
    return tuple(out)


@dataclass(frozen=True)
class BlockKeys:
    """A stored block's retrieval vectors."""

    tokens: np.ndarray  # [C, m, D] float16 representative pre-RoPE keys; C = retrieval layers x KV heads
    # (layer-major), rows in selection order (any prefix is itself a covering selection)
    mean: np.ndarray  # [Hkv*D] float32 unit mean pre-RoPE key at the middle layer (the baseline)


@dataclass(frozen=True)
class QueryKeys:
    """A question's (or an example image's) retrieval vectors, in the same spaces as `BlockKeys`."""

    tokens: np.ndarray  # [C, Q*G, D] float32 pre-RoPE queries of every question token and query head of each
    # KV head's group, each head's calibration mean removed
    mean: np.ndarray  # [Hkv*D] float32 unit mean query at the middle layer (the baseline)


def _unit_on_device(vec: torch.Tensor) -> torch.Tensor:
    return (vec / vec.norm().clamp_min(1e-12)).float()


def _unit(vec: torch.Tensor) -> np.ndarray:
    return _unit_on_device(vec).cpu().numpy()


def _head_norm(attn, name: str, x: torch.Tensor) -> torch.Tensor:
    """x [S, heads, D] through the attention's per-head q/k RMSNorm where the family has one (Qwen3)."""
    norm = getattr(attn, name, None)
    return x if norm is None else norm(x)


def pre_rope_keys(layer, hidden: torch.Tensor, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """hidden [S, Hd] at the layer's input -> pre-RoPE keys [S, Hkv, D] (after a k_norm, as the cache's)."""
    k = layer.self_attn.k_proj(layer.input_layernorm(hidden)).view(-1, num_kv_heads, head_dim)  # [S, Hkv, D]
    return _head_norm(layer.self_attn, "k_norm", k)


def pre_rope_queries(layer, hidden: torch.Tensor, num_kv_heads: int, num_heads: int, head_dim: int) -> torch.Tensor:
    """hidden [S, Hd] -> pre-RoPE queries [S, Hkv, G, D], grouped by the KV head they attend with."""
    q = layer.self_attn.q_proj(layer.input_layernorm(hidden)).view(-1, num_heads, head_dim)  # [S, H, D]
    q = _head_norm(layer.self_attn, "q_norm", q)
    return q.view(-1, num_kv_heads, num_heads // num_kv_heads, head_dim)  # [S, Hkv, G, D]


def mean_key(layer, hidden: torch.Tensor) -> torch.Tensor:
    """hidden [S, Hd] at the layer's input -> [Hkv*D] float32 unit mean pre-RoPE key, on hidden's device."""
    attn = layer.self_attn
    d = attn.head_dim
    keys = pre_rope_keys(layer, hidden, attn.k_proj.out_features // d, d).flatten(1)  # [S, Hkv*D]
    return _unit_on_device(keys.float().mean(0))


def mean_query(layer, hidden: torch.Tensor, num_kv_heads: int, num_heads: int, head_dim: int) -> np.ndarray:
    """hidden [S, Hd] at the layer's input -> [Hkv*D] float32 unit mean pre-RoPE query, each KV head's
    query group averaged so it lines up with `mean_key`."""
    q = pre_rope_queries(layer, hidden, num_kv_heads, num_heads, head_dim)  # [S, Hkv, G, D]
    return _unit(q.float().mean(dim=(0, 2)).reshape(-1))


def covering_rows(keys: torch.Tensor, m: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """keys [S, Hkv, D] (or a batch [B, S, Hkv, D] with `valid` [B, S] marking each block's own rows) ->
    indices [Hkv, min(m, S)] (batch: [B, Hkv, min(m, S)]) of the rows farthest-point sampling picks per head,
    over each block's keys centred by their own mean and made unit length; the first pick is the key farthest
    from the mean. Padding rows are never picked while a block has unpicked rows of its own (a block with
    fewer than m rows repeats its picks: keep its first `valid.sum()`). Stays on the keys' device."""
    single = keys.dim() == 3
    if single:
        keys = keys[None]
    B, S, hkv, _ = keys.shape
    m = min(m, S)
    if valid is None:
        valid = torch.ones(B, S, dtype=torch.bool, device=keys.device)
    w = valid[:, :, None, None].float()  # [B, S, 1, 1]
    k = keys.float()
    centred = k - (k * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1)  # [B, S, Hkv, D]
    x = centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x = x.permute(0, 2, 1, 3)  # [B, Hkv, S, D]
    pad = ~valid[:, None, :]  # [B, 1, S]
    far = centred.norm(dim=-1).permute(0, 2, 1).masked_fill(pad, -1.0)  # [B, Hkv, S]
    first = far.argmax(-1)  # [B, Hkv]
    picks = [first]

    def dist_to(idx: torch.Tensor) -> torch.Tensor:  # idx [B, Hkv] -> cosine distance of every row [B, Hkv, S]
        chosen = x.gather(2, idx[..., None, None].expand(-1, -1, 1, x.shape[-1]))  # [B, Hkv, 1, D]
        return (1 - (x * chosen).sum(-1)).masked_fill(pad, -float("inf"))

    dist = dist_to(first)  # [B, Hkv, S] distance to the picked set
    for _ in range(m - 1):
        nxt = dist.argmax(-1)  # [B, Hkv]
        picks.append(nxt)
        dist = torch.minimum(dist, dist_to(nxt))
    out = torch.stack(picks, -1)  # [B, Hkv, m]
    return out[0] if single else out


def block_keys(layers, hidden_states, mask: torch.Tensor, which: tuple[int, ...], middle: int, m: int,
               num_kv_heads: int, head_dim: int) -> BlockKeys:
    """A block's `BlockKeys` from the hidden states entering each decoder layer (`hidden_states[l]` [S, Hd])
    of the tokens where `mask` [S] is set: `m` covering keys per KV head at each layer in `which` (m <= 0:
    every token), and the mean key at `middle`."""
    return blocks_keys(layers, [hidden_states], [mask], which, middle, m, num_kv_heads, head_dim)[0]


def blocks_keys(layers, hidden_states: list, masks: list[torch.Tensor], which: tuple[int, ...], middle: int, m: int,
                num_kv_heads: int, head_dim: int) -> list[BlockKeys]:
    """`block_keys` of several blocks at once (a batch of clips): one key projection and one farthest-point
    sampling per layer for all of them (padded to the longest block), then one copy to the host of every block's
    rows and one of their mean keys.

    Where this waits for the device: selecting each block's masked tokens (`h[layer][mask]`, a boolean index:
    its size is read on the host) at each retrieval layer and the middle one, and the two copies at the end. The
    copies are wanted: `BlockKeys` are host arrays because the store writes them to Redis with the chunk and the
    index scores them on the host."""
    rows: list[list[torch.Tensor]] = [[] for _ in hidden_states]
    for layer in which:
        sel = [h[layer][mask] for h, mask in zip(hidden_states, masks)]  # [S_b, Hd] each
        sizes = [t.shape[0] for t in sel]
        k = pre_rope_keys(layers[layer], torch.cat(sel), num_kv_heads, head_dim)  # [sum S_b, Hkv, D]
        parts = torch.split(k, sizes)
        if m <= 0:
            for b, kb in enumerate(parts):
                rows[b].append(kb.transpose(0, 1))  # [Hkv, S_b, D]
            continue
        S = max(sizes)
        padded = torch.stack([nn.functional.pad(kb, (0, 0, 0, 0, 0, S - kb.shape[0])) for kb in parts])  # [B, S, Hkv, D]
        valid = torch.arange(S, device=k.device)[None] < torch.tensor(sizes, device=k.device)[:, None]  # [B, S]
        idx = covering_rows(padded, m, valid)  # [B, Hkv, m]
        for b, kb in enumerate(parts):
            mb = min(m, kb.shape[0])
            picked = padded[b].permute(1, 0, 2).gather(1, idx[b, :, :mb, None].expand(-1, -1, head_dim))  # [Hkv, mb, D]
            rows[b].append(picked)
    tokens = [torch.cat(r).to(torch.float16) for r in rows]  # [C, m_b, D] each, on the device
    means = torch.stack([mean_key(layers[middle], h[middle][mask])
                         for h, mask in zip(hidden_states, masks)])  # [B, Hkv*D] on the device
    # the host copies (the store's: retrieval rows go to Redis with the chunk), one for all blocks' rows, one for
    # their mean keys
    flat = torch.cat([t.reshape(-1) for t in tokens]).cpu().numpy()  # [sum C*m_b*D] float16
    host_means = means.cpu().numpy()  # [B, Hkv*D] float32
    ends = np.cumsum([t.numel() for t in tokens])[:-1]
    host = [part.reshape(t.shape) for part, t in zip(np.split(flat, ends), tokens)]  # [C, m_b, D] each
    return [BlockKeys(t, m) for t, m in zip(host, host_means)]


def question_keys(lm, ids: torch.Tensor, which: tuple[int, ...], middle: int, calibration: torch.Tensor | None,
                  num_kv_heads: int, num_heads: int, head_dim: int) -> QueryKeys:
    """Token ids [S] run alone through the decoder stack `lm` (no memory) -> `QueryKeys`. The first token
    is dropped from the late-interaction rows when there are others (it attends like a sink).
    `calibration` [C, G, D]: each query head's mean query, removed from its rows (None: nothing removed)."""
    hs = lm(input_ids=ids[None], output_hidden_states=True, use_cache=False).hidden_states
    rows = []
    for layer in which:
        q = pre_rope_queries(lm.layers[layer], hs[layer][0], num_kv_heads, num_heads, head_dim)  # [S, Hkv, G, D]
        rows.append((q[1:] if q.shape[0] > 1 else q).permute(1, 0, 2, 3).float())  # [Hkv, S', G, D]
    q = torch.cat(rows)  # [C, S', G, D]
    if calibration is not None:
        q = q - calibration[:, None].to(q)
    tokens = q.reshape(q.shape[0], -1, q.shape[-1])  # [C, S'*G, D]
    mean = mean_query(lm.layers[middle], hs[middle][0], num_kv_heads, num_heads, head_dim)
    return QueryKeys(tokens.cpu().numpy(), mean)


def calibration_mean(lm, encode, which: tuple[int, ...], num_kv_heads: int, num_heads: int,
                     head_dim: int) -> torch.Tensor:
    """[C, G, D] mean pre-RoPE query of each query head over every token (but the first) of
    `CALIBRATION_QUESTIONS` at each retrieval layer; `encode(text) -> token ids [S]`."""
    per_layer: list[list[torch.Tensor]] = [[] for _ in which]
    for text in CALIBRATION_QUESTIONS:
        ids = encode(text)
        hs = lm(input_ids=ids[None], output_hidden_states=True, use_cache=False).hidden_states
        for i, layer in enumerate(which):
            q = pre_rope_queries(lm.layers[layer], hs[layer][0], num_kv_heads, num_heads, head_dim)  # [S, Hkv, G, D]
            per_layer[i].append(q[1:] if q.shape[0] > 1 else q)
    return torch.cat([torch.cat(qs).float().mean(0) for qs in per_layer])  # [C, G, D]


def question_vector(lm, layer: int, ids: torch.Tensor, num_kv_heads: int, num_heads: int, head_dim: int) -> np.ndarray:
    """Token ids [S] of a question, run alone through the decoder stack `lm` (no memory) -> `mean_query` at
    `layer` (the baseline)."""
    hidden = lm(input_ids=ids[None], output_hidden_states=True, use_cache=False).hidden_states[layer][0]  # [S, Hd]
    return mean_query(lm.layers[layer], hidden, num_kv_heads, num_heads, head_dim)
