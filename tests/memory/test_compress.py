"""Scoring, pruning, prototypes and assembly on toy layouts (one head, head dim 4), checked by hand."""
from __future__ import annotations

import math

import pytest
import torch

from encoders.base import ClipEncoding, EncodedSegment
from memory.assemble import answer_memory, covered, dedupe
from memory.compress import arrival_key, frame_prototypes, mix_scores, proxy_attention, select, value_novelty
from memory.layout import TokenSet
from memory.options import MemoryOptions
from memory.working import WorkingState, context, prune, step

D = 4


def keys_along_x(xs: list[float]) -> torch.Tensor:
    """[1, 1, n, D] keys whose only non-zero coordinate is the first: x."""
    k = torch.zeros(1, 1, len(xs), D)
    k[0, 0, :, 0] = torch.tensor(xs)
    return k


def token_set(xs: list[float], serials: list[int]) -> TokenSet:
    n = len(xs)
    pos = torch.tensor(serials, dtype=torch.int64).abs()[None, None].expand(1, 3, n).contiguous()
    return TokenSet(keys_along_x(xs), keys_along_x(xs) + 10, pos, torch.tensor([serials], dtype=torch.int64),
                    torch.zeros(1, n))


# ---- proxy attention ------------------------------------------------------------------------------


def test_proxy_attention_is_the_softmax_of_the_proxy_rows_by_hand():
    q = torch.zeros(1, 1, 1, D)
    q[..., 0] = 2.0  # logits = q.k / sqrt(4) = k_x
    k_ctx = keys_along_x([2.0, 0.0, -2.0])
    k_proxy = keys_along_x([0.0])
    got = proxy_attention(q, k_ctx, k_proxy)  # [1, 1, 3]
    z = math.exp(2) + 1 + math.exp(-2) + 1  # the proxy's own key is part of the softmax
    assert torch.allclose(got[0, 0], torch.tensor([math.exp(2) / z, 1 / z, math.exp(-2) / z]), atol=1e-6)


def test_proxy_attention_sums_proxy_rows_causally_and_the_heads_of_a_group():
    # two proxy tokens, two query heads sharing one KV head (GQA group of 2)
    q = torch.zeros(1, 2, 2, D)
    q[0, 0, :, 0] = 2.0  # head 0 prefers large x
    q[0, 1, :, 0] = -2.0  # head 1 prefers small x
    k_ctx = keys_along_x([1.0, -1.0])
    k_proxy = keys_along_x([0.0, 5.0])  # the second proxy key is seen only by the second proxy row
    got = proxy_attention(q, k_ctx, k_proxy)[0, 0]
    e = math.exp
    # head 0, row 0 sees [1, -1, 0]; row 1 sees [1, -1, 0, 5]. head 1 mirrors the logits.
    h0 = [e(1) / (e(1) + e(-1) + 1) + e(1) / (e(1) + e(-1) + 1 + e(5)),
          e(-1) / (e(1) + e(-1) + 1) + e(-1) / (e(1) + e(-1) + 1 + e(5))]
    h1 = [e(-1) / (e(-1) + e(1) + 1) + e(-1) / (e(-1) + e(1) + 1 + e(-5)),
          e(1) / (e(-1) + e(1) + 1) + e(1) / (e(-1) + e(1) + 1 + e(-5))]
    assert torch.allclose(got, torch.tensor([h0[0] + h1[0], h0[1] + h1[1]]), atol=1e-6)


# ---- selection -------------------------------------------------------------------------------------


def test_select_policies_by_hand():
    s = torch.tensor([[0.1, 0.5, 0.5, 0.2, 0.9],
                      [0.9, 0.1, 0.1, 0.1, 0.1]])
    assert select(s, 3, "attention").tolist() == [[1, 2, 4], [0, 1, 2]]  # ties go to the older token
    assert select(s, 2, "attention").tolist() == [[1, 4], [0, 1]]
    assert select(s, 2, "recency").tolist() == [[3, 4], [3, 4]]
    assert select(s, 3, "uniform").tolist() == [[0, 2, 4], [0, 2, 4]]
    assert select(s, 9, "attention").tolist() == [[0, 1, 2, 3, 4]] * 2  # a budget above N keeps all
    assert select(s, 0, "uniform").shape == (2, 0)
    with pytest.raises(ValueError):
        select(s, 2, "random")


def test_frame_prototypes_by_hand():
    # tokens: two of frame 0, one of frame 1, one text token
    ks = torch.eye(D)[None, None]  # [1, 1, 4, 4]: token i's key is e_i
    ts = TokenSet(ks, ks * 2, torch.arange(4)[None, None].expand(1, 3, 4).contiguous(),
                  torch.tensor([[10, 11, 12, 13]]), torch.zeros(1, 4))
    weights = torch.tensor([[[1.0, 3.0, 2.0, 5.0]]])  # [1, 1, 4]
    p = frame_prototypes(ts, weights, torch.tensor([0, 0, 1, -1]), 2)
    assert torch.allclose(p.keys[0, 0], torch.tensor([[0.25, 0.75, 0, 0], [0, 0, 1.0, 0]]))
    assert torch.allclose(p.values[0, 0], 2 * p.keys[0, 0])
    assert p.score.tolist() == [[4.0, 2.0]]  # each frame's attention mass
    assert p.positions[0, 0].tolist() == [1, 2]  # the most attended token of each frame
    assert p.serial.tolist() == [[-12, -13]]  # -1 - anchor serial
    assert arrival_key(torch.tensor([11, -12, 12])).tolist() == [22, 23, 24]  # right after its anchor


# ---- redundancy (value novelty) ------------------------------------------------------------------------


def unit_values(rows: list[list[float]]) -> torch.Tensor:
    """[1, 1, n, D] values, one row per token."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


R = 2 ** -0.5
E0, E1, E01 = [1.0, 0, 0, 0], [0, 1.0, 0, 0], [R, R, 0, 0]


def test_value_novelty_by_hand():
    # t0 = e0, t1 = a copy of t0 (scaled), t2 = e1, t3 = (e0 + e1) / sqrt 2
    v = unit_values([E0, [3.0, 0, 0, 0], E1, E01])
    got = value_novelty(v, torch.tensor([[0, 1, 2, 3]]))
    assert torch.allclose(got, torch.tensor([[1.0, 0.0, 1.0, 1 - R]]), atol=1e-6)
    # in reverse stream order t3 comes first; t2 and t1 each sit at 45 degrees to it; t0 repeats t1
    got = value_novelty(v, torch.tensor([[3, 2, 1, 0]]))
    assert torch.allclose(got, torch.tensor([[0.0, 1 - R, 1 - R, 1.0]]), atol=1e-6)


def test_value_novelty_averages_the_heads_and_clamps():
    # two KV heads: head 0 repeats, head 1 turns 90 degrees -> mean cosine 0.5; an opposite value -> 1, not 2
    v = torch.tensor([[[E0, E0], [E0, E1]]])  # [1, 2, 2, 4]
    assert torch.allclose(value_novelty(v, torch.tensor([[0, 1]])), torch.tensor([[1.0, 0.5]]))
    opposite = unit_values([E0, [-1.0, 0, 0, 0]])
    assert value_novelty(opposite, torch.tensor([[0, 1]])).tolist() == [[1.0, 1.0]]
    assert value_novelty(unit_values([E0])[:, :, :0], torch.zeros(1, 0, dtype=torch.long)).shape == (1, 0)


def test_value_novelty_window_by_hand():
    # stream order t0..t4 with values e0, e1, e0, e1, e0. Window 2: t2, t3 (block 1) see block 0 and their own
    # block; t4 (block 2) sees block 1 (t2, t3) only. Window 1: each token sees just the one before it.
    v = unit_values([E0, E1, E0, E1, E0])
    order = torch.tensor([[0, 1, 2, 3, 4]])
    assert value_novelty(v, order, 0).tolist() == [[1.0, 1.0, 0.0, 0.0, 0.0]]
    assert value_novelty(v, order, 2).tolist() == [[1.0, 1.0, 0.0, 0.0, 0.0]]
    assert value_novelty(v, order, 1).tolist() == [[1.0, 1.0, 1.0, 1.0, 1.0]]
    # t0 = e0 recurs at t4 after three e1 copies: window 2 no longer sees it, window 0 does
    v = unit_values([E0, E1, E1, E1, E0])
    assert value_novelty(v, order, 0).tolist() == [[1.0, 1.0, 0.0, 0.0, 0.0]]
    assert value_novelty(v, order, 2).tolist() == [[1.0, 1.0, 0.0, 0.0, 1.0]]
    assert value_novelty(v, order, 9).tolist() == value_novelty(v, order, 0).tolist()  # a window over N: all


def test_mix_scores_by_hand():
    a, v = torch.tensor([[2.0, 1.0, 1.0]]), torch.tensor([[0.0, 1.0, 1.0]])
    assert mix_scores(a, v, 0.0) is a  # weight 0: attention untouched
    assert torch.allclose(mix_scores(a, v, 0.5), torch.tensor([[0.25, 0.375, 0.375]]))
    assert torch.allclose(mix_scores(a, v, 1.0), torch.tensor([[0.0, 0.5, 0.5]]))


def test_redundancy_lets_a_rare_token_replace_a_duplicate():
    vals = unit_values([E0, E0, E1, E01])
    cands = TokenSet(vals, vals, torch.arange(4)[None, None].expand(1, 3, 4).contiguous(),
                     torch.arange(4)[None], torch.zeros(1, 4))
    attention = torch.tensor([[0.4, 0.35, 0.05, 0.2]])
    plain = MemoryOptions(working_tokens=2, chunk_tokens=2, redundancy_weight=0.0)
    assert prune(cands, attention, 2, plain).serial.tolist() == [[0, 1]]  # attention alone keeps both copies
    # novelty [1, 0, 1, 1 - R]: mixed half and half -> [.418, .175, .243, .164]
    mixed = MemoryOptions(working_tokens=2, chunk_tokens=2, redundancy_weight=0.5)
    assert prune(cands, attention, 2, mixed).serial.tolist() == [[0, 2]]
    baseline = MemoryOptions(working_tokens=2, chunk_tokens=2, policy="recency", redundancy_weight=0.5)
    assert prune(cands, attention, 2, baseline).serial.tolist() == [[2, 3]]  # baselines ignore scores
    with pytest.raises(ValueError):
        MemoryOptions(working_tokens=2, chunk_tokens=2, redundancy_weight=1.5)


# ---- one working-memory step, by hand ---------------------------------------------------------------


def toy_step(budget: int, policy: str = "attention", prototypes: bool = True, chunk: int = 2,
             novelty: float = 0.0, weight: float = 1.0):
    """prefix: 1 token (logit 0); memory: serials 0, 1 (logits 1, -1); clip: serials 2..5 (logits 3, 2, -2, 0),
    frames [0, 0, 1, 1]; the proxy's own key has logit 0. Scores are proportional to exp(logit)."""
    prefix = EncodedSegment(torch.zeros(1, 1, 1, D), torch.zeros(1, 1, 1, D), torch.zeros(3, 1, dtype=torch.int64),
                            next_pos=1, max_pos=0, retrieval=None)
    mem = token_set([1.0, -1.0], [0, 1])
    state = WorkingState(mem, next_pos=3, max_pos=2, next_serial=2, next_frame=1)
    q = torch.zeros(1, 1, 1, D)
    q[..., 0] = 2.0
    clip_keys = keys_along_x([3.0, 2.0, -2.0, 0.0])
    clip = EncodedSegment(clip_keys, clip_keys + 10, torch.arange(3, 7)[None].expand(3, 4).contiguous(),
                          next_pos=7, max_pos=6, retrieval=None)
    enc = ClipEncoding(clip, torch.tensor([0, 0, 1, 1]), 2, torch.zeros(4, 8), q, keys_along_x([0.0]))
    pol = MemoryOptions(working_tokens=budget, chunk_tokens=chunk, policy=policy, prototypes=prototypes,
                       novelty_weight=weight, redundancy_weight=0.0)  # attention alone: checked by hand
    return step(prefix, state, enc, novelty, pol), state, prefix


def test_step_keeps_the_most_attended_tokens_and_frame_prototypes():
    # candidates: m0 e^1, m1 e^-1, c0 e^3, c1 e^2, c2 e^-2, c3 e^0, p0 e^3+e^2, p1 e^-2+e^0
    done, _, _ = toy_step(budget=3)
    assert done.state.tokens.serial.tolist() == [[2, -3, 3]]  # c0, p0 (anchored at c0), c1 in stream order
    assert torch.allclose(done.state.tokens.keys[0, 0, 1, 0], torch.tensor(
        (3 * math.exp(3) + 2 * math.exp(2)) / (math.exp(3) + math.exp(2))))  # attention-weighted mean
    done, _, _ = toy_step(budget=5)
    assert done.state.tokens.serial.tolist() == [[0, 2, -3, 3, -6]]  # + m0 and p1 (anchored at c3)
    assert done.chunk.serial.tolist() == [[2, -3]]  # the chunk: c0 and p0
    assert done.span == (2, 6)
    assert (done.state.next_serial, done.state.next_frame, done.state.next_pos) == (6, 3, 7)


def test_step_with_a_budget_that_holds_everything_keeps_everything_without_prototypes():
    done, state, prefix = toy_step(budget=6, chunk=4)
    assert done.state.tokens.serial.tolist() == [[0, 1, 2, 3, 4, 5]]
    assert done.chunk.serial.tolist() == [[2, 3, 4, 5]]
    ctx = context(prefix, done.state)
    assert ctx.length == 7 and ctx.next_pos == 7 and ctx.positions.shape == (1, 3, 7)


def test_step_baseline_policies_ignore_scores():
    done, _, _ = toy_step(budget=3, policy="recency")
    assert done.state.tokens.serial.tolist() == [[3, 4, 5]]
    done, _, _ = toy_step(budget=3, policy="uniform")
    assert done.state.tokens.serial.tolist() == [[0, 2, 5]]  # round(linspace(0, 5, 3)) = 0, 2, 5 of [m0 m1 c0 c1 c2 c3]


def test_novelty_raises_a_clips_share():
    done, _, _ = toy_step(budget=3, prototypes=False)
    assert done.state.tokens.serial.tolist() == [[0, 2, 3]]  # m0 (e^1) beats c3 (e^0)
    done, _, _ = toy_step(budget=3, prototypes=False, novelty=1.0, weight=2.0)
    assert done.state.tokens.serial.tolist() == [[2, 3, 5]]  # c3 x 3 > m0


def test_working_memory_of_zero_budget_stays_empty():
    done, _, prefix = toy_step(budget=0)
    assert done.state.tokens.length == 0
    assert context(prefix, done.state).length == 1


# ---- assembly ------------------------------------------------------------------------------------


def two_layer_set(serials: list[list[int]], scores: list[list[float]]) -> TokenSet:
    L, n = len(serials), len(serials[0])
    s = torch.tensor(serials, dtype=torch.int64)
    keys = s.float()[:, None, :, None].expand(L, 1, n, D).contiguous()  # a token's key is its serial
    pos = s.abs()[:, None, :].expand(L, 3, n).contiguous()
    return TokenSet(keys, keys, pos, s, torch.tensor(scores))


def test_dedupe_keeps_one_copy_and_equal_layers_by_hand():
    wm = two_layer_set([[0, 5], [0, 6]], [[0.9, 0.8], [0.9, 0.1]])
    chunk = two_layer_set([[7, 5], [8, 7]], [[0.3, 0.3], [0.5, 0.7]])
    got = dedupe([wm, chunk])
    # layer 0: {0, 5, 7}; layer 1: {0, 6, 8, 7} is one longer and drops its lowest score (serial 6)
    assert got.serial.tolist() == [[0, 5, 7], [0, 7, 8]]
    assert got.keys[:, 0, :, 0].tolist() == [[0, 5, 7], [0, 7, 8]]


def test_covered_and_answer_memory_skip_chunks_the_working_memory_holds():
    wm = two_layer_set([[10, 11, 12], [10, 11, 12]], [[1, 1, 1], [1, 1, 1]])
    assert covered(wm, (10, 13)) and not covered(wm, (10, 14))
    prefix = EncodedSegment(torch.zeros(2, 1, 1, D), torch.zeros(2, 1, 1, D), torch.zeros(3, 1, dtype=torch.int64),
                            1, 0, None)
    proto_chunk = two_layer_set([[11, -12], [11, -12]], [[1, 1], [1, 1]])  # would add only a prototype
    mem = answer_memory(prefix, wm, [(proto_chunk, (10, 13))], next_pos=20, max_pos=19)
    assert mem.length == 4 and (mem.next_pos, mem.max_pos) == (20, 19)
    mem = answer_memory(prefix, wm, [(proto_chunk, (10, 14))], next_pos=20, max_pos=19)
    assert mem.length == 5  # not covered: the prototype joins, after its anchor
    assert mem.keys[0, 0, 1:, 0].tolist() == [10, 11, -12, 12]


def test_uniform_baseline_is_uniform_over_stream_time_not_over_candidates():
    # a long stream pruned clip after clip keeps clips from all of it (not recency plus a sink)
    budget, clip, clips = 64, 16, 60
    serial = torch.zeros(1, 0, dtype=torch.int64)
    for c in range(clips):
        cand = torch.cat([serial, torch.arange(c * clip, (c + 1) * clip)[None]], dim=1)
        serial = cand.gather(1, select(torch.zeros_like(cand, dtype=torch.float32), budget, "uniform",
                                       order=arrival_key(cand)))
    held = torch.unique(serial // clip)
    assert serial.shape[1] == budget
    assert held.shape[0] > clips // 2  # clips from across the stream
    assert int((serial >= (clips - 6) * clip).sum()) < budget // 4  # not mostly the last 10 %
    # by hand: keys 0..10 step 2, three evenly spaced times 0, 5, 10 -> tokens 0, 2 (tie: older), 5
    assert select(torch.zeros(1, 6), 3, "uniform", order=torch.arange(0, 12, 2)[None]).tolist() == [[0, 2, 5]]
