"""int8 storage of KV: symmetric, one float32 scale per (layer, head, token) over the head dimension."""
from __future__ import annotations

import torch


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> (q [..., D] int8, scale [..., 1] float32) with x ~= q * scale."""
    scale = x.float().abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 127.0  # [..., 1]
    q = torch.round(x.float() / scale).clamp(-127, 127).to(torch.int8)  # [..., D]
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale).to(dtype)  # [..., D]


def relative_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """||x - y|| / ||x|| over all elements (for measurement, not the hot path)."""
    return float((x.float() - y.float()).norm() / x.float().norm().clamp_min(1e-30))
