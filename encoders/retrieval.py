"""Retrieval vectors (ReKV's idea, re-derived): a block of tokens is represented by the mean of its
pre-RoPE keys at one decoder layer, a question by the mean of its pre-RoPE queries at the same layer,
averaged within each KV head's group of query heads. Their inner product is the mean attention logit
the question's tokens would give the block's tokens, without the positions.

Works for any decoder layer with `input_layernorm` and `self_attn.{q,k}_proj` (Qwen2/2.5(-VL), Llama).
"""
from __future__ import annotations

import numpy as np
import torch


def middle_layer(num_layers: int) -> int:
    """The decoder layer whose keys and queries retrieve (the middle one)."""
    return num_layers // 2


def _unit(vec: torch.Tensor) -> np.ndarray:
    return (vec / vec.norm().clamp_min(1e-12)).cpu().numpy()


def mean_key(layer, hidden: torch.Tensor) -> np.ndarray:
    """hidden [S, Hd] at the layer's input -> [Hkv*D] float32 unit mean pre-RoPE key."""
    keys = layer.self_attn.k_proj(layer.input_layernorm(hidden))  # [S, Hkv*D]
    return _unit(keys.float().mean(0))


def mean_query(layer, hidden: torch.Tensor, num_kv_heads: int, num_heads: int, head_dim: int) -> np.ndarray:
    """hidden [S, Hd] at the layer's input -> [Hkv*D] float32 unit mean pre-RoPE query, each KV head's
    query group averaged so it lines up with `mean_key`."""
    q = layer.self_attn.q_proj(layer.input_layernorm(hidden))  # [S, H*D]
    q = q.view(-1, num_kv_heads, num_heads // num_kv_heads, head_dim)  # [S, Hkv, G, D]
    return _unit(q.float().mean(dim=(0, 2)).reshape(-1))  # [Hkv*D]


def question_vector(lm, layer: int, ids: torch.Tensor, num_kv_heads: int, num_heads: int, head_dim: int) -> np.ndarray:
    """Token ids [S] of a question, run alone through the decoder stack `lm` (no memory) -> `mean_query` at
    `layer`."""
    hidden = lm(input_ids=ids[None], output_hidden_states=True, use_cache=False).hidden_states[layer][0]  # [S, Hd]
    return mean_query(lm.layers[layer], hidden, num_kv_heads, num_heads, head_dim)
