"""Retention plans, checked by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from memory.layout import TokenSet
from memory.retention import Action, Chunk, Retention, merge_tokens, merge_vectors, plan


def chunks(n: int, size: int = 100, level: int = 0) -> list[Chunk]:
    return [Chunk(i, end_s=8.0 * (i + 1), bytes=size, level=level) for i in range(n)]


def test_no_limits_no_actions():
    assert plan(chunks(10), 80.0, Retention()) == []


def test_byte_limit_consolidates_the_oldest_pairs():
    acts = plan(chunks(6), 48.0, Retention(max_bytes=450))
    # 600 > 450: merge (0, 1) -> 500; the oldest same-level pair is now (2, 3) -> 400
    assert acts == [Action("merge", (0, 1)), Action("merge", (2, 3))]


def test_merged_chunks_merge_again_up_to_max_level_then_delete():
    acts = plan(chunks(5), 40.0, Retention(max_bytes=150, max_level=1))
    # merge (0,1), (2,3) -> [L1, L1, 4] 300; no same-level pair below max_level remains -> delete oldest
    assert acts == [Action("merge", (0, 1)), Action("merge", (2, 3)), Action("delete", (0,)), Action("delete", (2,))]


def test_delete_mode_and_the_newest_chunk_is_kept():
    # 400 -> 300 -> 200 -> 100 <= 150
    assert plan(chunks(4), 32.0, Retention(max_bytes=150, mode="delete")) == [
        Action("delete", (0,)), Action("delete", (1,)), Action("delete", (2,))]
    assert plan(chunks(2, size=500), 16.0, Retention(max_bytes=10, mode="delete")) == [Action("delete", (0,))]


def test_age_limit_deletes_what_ended_before_it():
    acts = plan(chunks(6), 48.0, Retention(max_age_s=20.0))
    assert acts == [Action("delete", (0, 1, 2))]  # ends 8, 16, 24 < 48 - 20 = 28


def test_bad_limits_are_refused():
    with pytest.raises(ValueError):
        Retention(mode="shred")
    with pytest.raises(ValueError):
        Retention(merge=1)


def test_merge_tokens_keeps_the_best_scored_in_stream_order():
    def ts(serials, scores):
        n = len(serials)
        s = torch.tensor([serials])
        return TokenSet(s.float()[:, None, :, None].expand(1, 1, n, 2).contiguous(), torch.zeros(1, 1, n, 2),
                        s[:, None].expand(1, 3, n).contiguous(), s, torch.tensor([scores]))
    merged = merge_tokens([ts([0, 1, 2], [0.5, 0.1, 0.9]), ts([3, 4, 5], [0.2, 0.8, 0.3])], 3)
    assert merged.serial.tolist() == [[0, 2, 4]]
    v = merge_vectors([np.array([1, 0], np.float32), np.array([0, 1], np.float32)])
    assert np.allclose(v, [2 ** -0.5, 2 ** -0.5])
