"""Reads the queries a model's own attention layers compute, without changing what they compute.

Registered once as an attention implementation ("vigil_probe") through transformers'
`AttentionInterface`: it hands every call to the stock SDPA function, and, only while a
`capture()` block is open, keeps the (already rotated) query of each decoder layer. Nothing
else is materialised: the scorer in `memory.compress` builds attention for just those rows.
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Iterator

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

PROBE = "vigil_probe"
_queries: contextvars.ContextVar[dict[int, torch.Tensor] | None] = contextvars.ContextVar("vigil_queries",
                                                                                         default=None)


def _probe_attention(module, query, key, value, attention_mask, **kwargs):
    captured = _queries.get()
    layer = getattr(module, "layer_idx", None)
    if captured is not None and layer is not None:
        captured[layer] = query  # [B, H, Q, D] after RoPE
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(PROBE, _probe_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(PROBE, sdpa_mask)


def install(model) -> None:
    """Route the model's attention (every sub-model) through the probe; outputs stay SDPA's."""
    model.set_attn_implementation(PROBE)


@contextmanager
def capture() -> Iterator[dict[int, torch.Tensor]]:
    """Collect {layer index: query [B, H, Q, D]} of every attention call made inside the block."""
    found: dict[int, torch.Tensor] = {}
    token = _queries.set(found)
    try:
        yield found
    finally:
        _queries.reset(token)
