"""The memory against the model's own computations (tiny seeded Qwen2.5-VL, real transformers classes):
the proxy scores are the model's attention, positions of retrieved memory agree with the model's own
forward over the whole stream, feature chunks prefill back to the same KV, int8 error measured."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from encoders import attention_probe
from memory.assemble import answer_memory
from memory.compress import proxy_attention
from memory.layout import TokenSet, concat_segments
from memory.quant import dequantize_int8, quantize_int8, relative_error
from memory.options import MemoryOptions
from memory.working import WorkingState, context, step

FPS = 1.0


def clips(n: int, seed: int = 0, size=(84, 112)) -> list[np.ndarray]:
    rs = np.random.RandomState(seed)
    out = []
    for i in range(n):
        base = rs.randint(0, 255, size=(1, 1, 1, 3))
        out.append(np.clip(base + rs.randint(-40, 40, size=(4, *size, 3)), 0, 255).astype(np.uint8))
    return out


def ingest(adapter, frames_list, policy: MemoryOptions):
    prefix = adapter.encode_prefix()
    state, encs, steps = WorkingState.empty(prefix), [], []
    for i, frames in enumerate(frames_list):
        enc = adapter.ingest_clip(frames, FPS, 4.0 * i, 4.0 * i + 4, context(prefix, state))
        done = step(prefix, state, enc, 0.0, policy)
        encs.append(enc)
        steps.append(done)
        state = done.state
    return prefix, state, encs, steps


@pytest.fixture
def eager(tiny_adapter):
    tiny_adapter.model.set_attn_implementation("eager")
    try:
        yield tiny_adapter
    finally:
        attention_probe.install(tiny_adapter.model)


def test_proxy_scores_are_the_models_own_attention_rows(tiny_adapter, eager):
    ad = tiny_adapter
    prefix = ad.encode_prefix()
    frames = clips(1)[0]
    with torch.inference_mode():
        attention_probe.install(ad.model)
        enc = ad.ingest_clip(frames, FPS, 0.0, 4.0, prefix)
        ad.model.set_attn_implementation("eager")
        cache = ad._cache(concat_segments([prefix, enc.segment]))
        proxy = torch.tensor(ad.proxy_ids())
        pos, _ = ad._positions(proxy, enc.segment.next_pos)
        out = ad.model.model.language_model(input_ids=proxy[None], position_ids=pos[:, None], cache=cache,
                                            use_cache=True, output_attentions=True)
    S = prefix.length + enc.segment.length
    k_ctx = torch.cat([prefix.keys, enc.segment.keys], dim=2)
    ours = proxy_attention(enc.proxy_queries, k_ctx, enc.proxy_keys)  # [L, Hkv, S]
    for layer, att in enumerate(out.attentions):  # [1, H, Q, S + Q] from the eager kernel
        G = att.shape[1] // ours.shape[1]
        ref = att[0, :, :, :S].sum(dim=1).reshape(ours.shape[1], G, S).sum(dim=1)
        assert torch.allclose(ours[layer], ref, atol=1e-5), layer


def test_retrieved_memory_positions_agree_with_the_models_forward_over_the_whole_stream(tiny_adapter):
    """prefix + clips 0 and 2 (clip 1 not retrieved) must answer exactly like the model run on the whole
    stream [prefix, clip0, clip1, clip2, question] with the question (and answer) masked off clip 1:
    same mRoPE positions for every token, same logits, same greedy tokens."""
    ad = tiny_adapter
    frames = clips(3, seed=5)
    everything = MemoryOptions(working_tokens=10 ** 6, chunk_tokens=1 << 16)
    prefix, state, encs, steps = ingest(ad, frames, everything)
    question = "What changed between the clips?"
    chosen = [(steps[i].chunk, steps[i].span) for i in (0, 2)]
    memory = answer_memory(prefix, None, chosen, state.next_pos, state.max_pos)
    ours = list(ad.answer_ids(memory, question, 8))

    # the reference: one forward over the whole stream with the model's own position ids
    with torch.inference_mode():
        ids, pv, grids, spgs = list(ad.prefix_ids()), [], [], []
        bounds = []
        for i, f in enumerate(frames):
            p, g, s = ad.video_inputs(f, FPS)
            start = len(ids)
            ids += ad.clip_ids(ad.n_video_tokens(g), 4.0 * i, 4.0 * i + 4)
            bounds.append((start, len(ids)))
            pv.append(p), grids.append(g), spgs.append(s)
        q_start = len(ids)
        ids += ad.suffix_ids(question)
        ids_t = torch.tensor(ids)[None]
        grid = torch.cat(grids)
        spg = torch.cat(spgs)
        mm = (ids_t == ad.video_token_id).int() * 2
        pos, _ = ad.model.model.get_rope_index(ids_t, mm_token_type_ids=mm, video_grid_thw=grid,
                                               second_per_grid_ts=spg)  # [3, 1, N]
        # our stored positions are the whole stream's positions
        for (a, b), enc in zip(bounds, encs):
            assert torch.equal(pos[:, 0, a:b], enc.segment.positions)
        N = ids_t.shape[1]
        hidden = torch.zeros(N + 8, N + 8, dtype=torch.bool)
        hidden[q_start:, bounds[1][0]:bounds[1][1]] = True  # question rows do not see clip 1
        allowed = torch.ones(N + 8, N + 8, dtype=torch.bool).tril() & ~hidden

        def mask(rows: slice, cols: int):
            m = torch.zeros(rows.stop - rows.start, cols)
            return m.masked_fill(~allowed[rows, :cols], float("-inf"))[None, None]

        cache = DynamicCache(config=ad.model.config)
        logits = ad.model(input_ids=ids_t, pixel_values_videos=torch.cat(pv), video_grid_thw=grid,
                          second_per_grid_ts=spg, position_ids=pos, attention_mask=mask(slice(0, N), N),
                          cache=cache, use_cache=True).logits
        ref, step_pos = [], int(pos.max()) + 1
        for i in range(8):
            token = int(logits[0, -1].argmax())
            ref.append(token)
            if token in ad.eos_ids:
                break
            p = torch.full((3, 1, 1), step_pos + i, dtype=torch.long)
            allowed[N + i, :N + i + 1] = ~hidden[q_start, :N + i + 1]  # the answer sees what the question sees
            logits = ad.model(input_ids=torch.tensor([[token]]), position_ids=p,
                              attention_mask=mask(slice(N + i, N + i + 1), N + i + 1), cache=cache,
                              use_cache=True).logits
    assert ours == ref


def test_feature_chunk_prefills_back_to_the_clips_kv(tiny_adapter):
    ad = tiny_adapter
    pol = MemoryOptions(working_tokens=10 ** 6, chunk_tokens=1 << 16, chunk_format="features")
    prefix, state, encs, steps = ingest(ad, clips(2, seed=9), pol)
    fs = steps[1].chunk
    assert fs.length == encs[1].segment.length  # kept everything: the budget holds the clip
    past = context(prefix, steps[0].state)
    seg = ad.prefill_embeds(fs.embeds, fs.positions, past, encs[1].segment.next_pos, encs[1].segment.max_pos)
    assert torch.allclose(seg.keys, encs[1].segment.keys, atol=1e-5)
    assert torch.allclose(seg.values, encs[1].segment.values, atol=1e-5)
    # compressed: the most attended tokens, one selection for all layers, a fraction of the KV bytes
    small = MemoryOptions(working_tokens=64, chunk_tokens=8, chunk_format="features")
    _, _, _, steps = ingest(ad, clips(2, seed=9), small)
    assert [s.chunk.length for s in steps] == [8, 8]
    assert steps[1].chunk.serial.tolist() == sorted(steps[1].chunk.serial.tolist())


def test_int8_kv_error_on_real_clip_kv_and_the_answer_it_gives(tiny_adapter):
    ad = tiny_adapter
    prefix, state, encs, steps = ingest(ad, clips(3, seed=2), MemoryOptions(working_tokens=0, chunk_tokens=1 << 16))
    errs = []
    chunks8 = []
    for s in steps:
        t = s.chunk
        (kq, ks), (vq, vs) = quantize_int8(t.keys), quantize_int8(t.values)
        t8 = TokenSet(dequantize_int8(kq, ks, t.keys.dtype), dequantize_int8(vq, vs, t.values.dtype), t.positions,
                      t.serial, t.score)
        errs.append(max(relative_error(t.keys, t8.keys), relative_error(t.values, t8.values)))
        chunks8.append((t8, s.span))
    assert max(errs) < 0.01
    full = answer_memory(prefix, None, [(s.chunk, s.span) for s in steps], state.next_pos, state.max_pos)
    q8 = answer_memory(prefix, None, chunks8, state.next_pos, state.max_pos)
    with torch.inference_mode():
        a = ad.model(input_ids=torch.tensor([ad.suffix_ids("what?")]), cache=ad._cache(full),
                     position_ids=ad._positions(torch.tensor(ad.suffix_ids("what?")), full.next_pos)[0][:, None]).logits
        b = ad.model(input_ids=torch.tensor([ad.suffix_ids("what?")]), cache=ad._cache(q8),
                     position_ids=ad._positions(torch.tensor(ad.suffix_ids("what?")), q8.next_pos)[0][:, None]).logits
    assert relative_error(a[0, -1], b[0, -1]) < 0.01  # next-token logits barely move
