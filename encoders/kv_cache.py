"""The one place a stored memory becomes a `transformers` cache and a prefill's KV is read back out."""
from __future__ import annotations

import torch
from transformers import DynamicCache

from encoders.base import EncodedSegment


def cache_of(memory: EncodedSegment | None, config, device, dtype) -> DynamicCache:
    """A DynamicCache holding `memory`'s keys/values [L, Hkv, S, D] (each layer its own tokens), or empty."""
    cache = DynamicCache(config=config)
    if memory is not None and memory.length:
        k = memory.keys.to(device, dtype)  # [L, Hkv, S, D]
        v = memory.values.to(device, dtype)
        for layer in range(k.shape[0]):
            cache.update(k[layer][None], v[layer][None], layer)
    return cache


def tail(cache: DynamicCache, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [L, Hkv, S, D] the cache holds from token `start` on (what a prefill added)."""
    keys = torch.stack([layer.keys[0, :, start:] for layer in cache.layers])  # [L, Hkv, S, D]
    values = torch.stack([layer.values[0, :, start:] for layer in cache.layers])  # [L, Hkv, S, D]
    return keys, values
