"""Redundancy-aware scoring on real clip KV (tiny seeded Qwen2.5-VL, real transformers classes): a stream
where one scene keeps coming back, with a few one-off scenes between. Mixing value novelty into the
attention scores must keep the budget and spend less of it on copies of the recurring scene."""
from __future__ import annotations

import numpy as np
import torch

from memory.options import MemoryOptions
from memory.working import WorkingState, context, step

FPS = 1.0
BUDGET = 48


def scene(seed: int) -> np.ndarray:
    """4 frames of one still scene: a random colour field with noise (the same seed: the same pixels)."""
    rs = np.random.RandomState(seed)
    base = rs.randint(0, 255, size=(1, 1, 1, 3))
    return np.clip(base + rs.randint(-40, 40, size=(4, 56, 56, 3)), 0, 255).astype(np.uint8)


# scene 0 recurs; scenes 1..3 are seen once each
ORDER = [0, 0, 1, 0, 0, 2, 0, 0, 3, 0, 0, 0]


def run(adapter, weight: float):
    prefix = adapter.encode_prefix()
    state = WorkingState.empty(prefix)
    policy = MemoryOptions(working_tokens=BUDGET, chunk_tokens=8, prototypes=False, redundancy_weight=weight)
    clip_of: dict[int, int] = {}  # serial -> index in ORDER
    for i, s in enumerate(ORDER):
        enc = adapter.ingest_clip(scene(s), FPS, 4.0 * i, 4.0 * i + 4, context(prefix, state))
        done = step(prefix, state, enc, 0.0, policy)
        clip_of.update({serial: i for serial in range(*done.span)})
        state = done.state
    return state, clip_of


def distinct_values(tokens, layer: int) -> int:
    """Distinct value vectors a layer holds (the recurring scene's frames give the same layer-0 values)."""
    v = tokens.values[layer].permute(1, 0, 2).reshape(tokens.length, -1)  # [n, Hkv*D]
    return torch.unique(torch.round(v * 1e4), dim=0).shape[0]


def test_redundancy_keeps_the_budget_and_fewer_copies_of_a_recurring_scene(tiny_adapter):
    plain, clip_of = run(tiny_adapter, 0.0)
    mixed, _ = run(tiny_adapter, 0.5)
    assert plain.tokens.length == mixed.tokens.length == BUDGET
    # layer 0's values come from the token embeddings alone: copies of a scene are exact copies
    assert distinct_values(mixed.tokens, 0) > distinct_values(plain.tokens, 0)

    def one_off_share(state) -> float:
        serials = state.tokens.serial[0].tolist()
        return sum(ORDER[clip_of[s]] != 0 for s in serials if s in clip_of) / len(serials)

    assert one_off_share(mixed) > one_off_share(plain)
