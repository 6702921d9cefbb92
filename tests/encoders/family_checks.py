"""Checks every model family's adapter must pass, on its seeded tiny model (real transformers classes, real
tokenizer, real Redis): each family's test module calls them with its own adapter.

* exactness: nothing compressed, every chunk retrieved from Redis -> the model's own greedy `generate`;
* retrieval: some chunks retrieved -> the model's own forward over the whole stream with the unretrieved clip
  hidden from the question (a 4-D attention mask; the clips after it still saw it, as they did at ingest);
* the clip's KV equals the model's own forward, and its stored input embeddings prefill back to it;
* a fixed-budget stream keeps its invariants; blobs of one family are refused by another;
* the needle: a still of a rare scene, rendered afresh, retrieves that scene's chunk.
"""
from __future__ import annotations

from encoders.base import check_segment
import numpy as np
import pytest
import redis
import torch
from transformers import DynamicCache

from memory.assemble import answer_memory
from memory.codec import decode_tokens, encode_tokens
from memory.errors import IncompatibleBlob
from memory.index import IndexRegistry, Query
from memory.layout import TokenSet
from memory.options import MemoryOptions
from memory.store import ChunkRecord, MemoryStore, StreamRecord
from memory.working import WorkingState, context, step

FPS = 2.0
CLIP_S = 2.0


def clips(n: int, seed: int = 0, frames: int = 4) -> list[np.ndarray]:
    """n clips [T, H, W, 3] uint8: a textured scene drifting, a new colour every 3 clips."""
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:64, 0:80]
    scene = rs.randint(0, 255, 3)
    out = []
    for i in range(n):
        if i % 3 == 0:
            scene = rs.randint(0, 255, 3)
        wave = [(np.sin(xx / 6.0 + 0.3 * (i * frames + t)) * 60)[..., None] for t in range(frames)]
        out.append(np.stack([np.clip(scene + w + rs.randint(-10, 10, (64, 80, 3)), 0, 255).astype(np.uint8)
                             for w in wave]))
    return out


# ---- the model's own inputs for a stream of clips (the one family-specific part) --------------------------

def stream_inputs(ad, video: list[np.ndarray]):
    """prefix + every clip as the stream lays them out: (token ids, kwargs(x) -> the model's own vision inputs
    for ids x [1, N] that hold these clips)."""
    ids = ad.prefix_ids()
    if ad.spec.family == "llava_onevision":
        pvs = []
        for i, frames in enumerate(video):
            pvs.append(ad.video_inputs(frames))  # [1, T, 3, size, size]
            ids += ad.clip_ids(ad.n_video_tokens(frames.shape[0]), i * CLIP_S, (i + 1) * CLIP_S)
        return ids, lambda x: dict(pixel_values_videos=torch.cat(pvs))
    pvs, grids = [], []
    for i, frames in enumerate(video):
        pv, grid, _ = ad.video_inputs(frames, FPS)
        ids += ad.clip_ids_for(grid, i * CLIP_S, (i + 1) * CLIP_S)
        pvs.append(pv), grids.append(grid)
    return ids, lambda x: dict(pixel_values_videos=torch.cat(pvs), video_grid_thw=torch.cat(grids),
                               mm_token_type_ids=(x == ad.model.config.video_token_id).int() * 2)


def model_positions(ad, pos: torch.Tensor) -> torch.Tensor:
    """[P, N] stream positions -> the model's own position_ids: [3, 1, N] (multimodal RoPE) or [1, N] (1-D)."""
    return pos.view(1, -1) if ad.spec.layout.position_dims == 1 else pos[:, None]


# ---- a stream through the adapter and the store, as ingest writes it ----------------------------------

def make_store(redis_url: str, namespace: str, ad) -> MemoryStore:
    return MemoryStore(redis.Redis.from_url(redis_url), namespace, ad.spec.layout, ad.spec.fingerprint)


def ingest(ad, store: MemoryStore, sid: str, video, policy: MemoryOptions, fps: float = FPS, clip_s: float = CLIP_S):
    """Each clip through the adapter and the working memory, written to Redis as ingest writes it:
    (final state, chunk blob sizes, working-memory lengths, the clips' own segments)."""
    store.create_stream(StreamRecord(stream_id=sid, source="synthetic", memory=policy))
    fence = store.claim(sid, "test", 600_000)
    prefix = ad.encode_prefix()
    store.put_prefix(sid, prefix)
    state = WorkingState.empty(prefix)
    sizes, lengths, segments = [], [], []
    for i, frames in enumerate(video):
        enc = ad.ingest_clip(frames, fps, i * clip_s, (i + 1) * clip_s, context(prefix, state))
        assert enc.n_frames == frames.shape[0] // ad.clip_frames()
        assert enc.embeds.shape == (enc.segment.length, ad.spec.layout.feature_dim)
        check_segment(ad.spec.layout, enc.segment)
        done = step(prefix, state, enc, 0.0, policy)
        state = done.state
        chunk = ChunkRecord(chunk_id=i, start_s=i * clip_s, end_s=(i + 1) * clip_s, frames=frames.shape[0],
                            tokens=done.chunk.length, keyframe_s=i * clip_s, span_start=done.span[0],
                            span_end=done.span[1])
        sizes.append(store.put_chunk(sid, chunk, done.chunk, enc.segment.retrieval, b"jpeg", (i + 1) * clip_s,
                                     fence=fence, working=state))
        lengths.append(state.tokens.length)
        segments.append(enc.segment)
    return state, sizes, lengths, segments


def retrieved_memory(store: MemoryStore, sid: str, chunk_ids: list[int], working: bool):
    """The answer memory the QA path assembles from Redis: prefix (+ working memory) + these chunks."""
    rows = {r.chunk_id: r for r in store.chunk_records(sid)}
    payloads = store.chunk_payloads(sid, chunk_ids)
    rec = store.get_stream(sid)
    return answer_memory(store.get_prefix(sid), store.get_working(sid).tokens if working else None,
                         [(p, (rows[c].span_start, rows[c].span_end)) for p, c in zip(payloads, chunk_ids)],
                         rec.next_pos, rec.max_pos)


# ---- the checks -------------------------------------------------------------------------------------

QUESTION = "Which colours appear, in order?"


def check_answer_equals_generate(ad, store: MemoryStore, sid: str, max_new_tokens: int = 24) -> None:
    video = clips(3)
    state, _, _, _ = ingest(ad, store, sid, video, MemoryOptions(working_tokens=4096, chunk_tokens=8))
    rows = store.chunk_records(sid)
    assert state.tokens.length == rows[-1].span_end  # nothing pruned
    memory = retrieved_memory(store, sid, [r.chunk_id for r in rows], working=True)
    ours = list(ad.answer_ids(memory, QUESTION, max_new_tokens))
    ids, vision = stream_inputs(ad, video)
    x = torch.tensor([ids + ad.suffix_ids(QUESTION)])
    out = ad.model.generate(input_ids=x, attention_mask=torch.ones_like(x), **vision(x),
                            max_new_tokens=max_new_tokens, do_sample=False)
    assert ours == out[0, x.shape[1]:].tolist()


def check_retrieved_memory_equals_masked_forward(ad, store: MemoryStore, sid: str, max_new_tokens: int = 6) -> None:
    """Chunks 0 and 2 of 3 retrieved (each whole; no working memory): the service's greedy answer equals greedy
    decoding on the model's own forward over prefix + all three clips + question, at the stream's positions,
    with clip 1 hidden from the question and the answer (a 4-D mask; clip 2 still saw clip 1, as at ingest)."""
    video = clips(3, seed=2)
    _, _, _, segments = ingest(ad, store, sid, video, MemoryOptions(working_tokens=4096, chunk_tokens=4096))
    memory = retrieved_memory(store, sid, [0, 2], working=False)
    prefix = store.get_prefix(sid)
    assert memory.length == prefix.length + segments[0].length + segments[2].length  # nothing compressed
    ours = list(ad.answer_ids(memory, QUESTION, max_new_tokens))

    ids, vision = stream_inputs(ad, video)
    suffix = ad.suffix_ids(QUESTION)
    P = ad.spec.layout.position_dims
    pos = torch.cat([prefix.positions] + [s.positions for s in segments]
                    + [(segments[-1].next_pos + torch.arange(len(suffix)))[None].expand(P, -1)], dim=1)  # [P, N]
    hidden_lo = prefix.length + segments[0].length
    hidden = range(hidden_lo, hidden_lo + segments[1].length)  # clip 1's tokens
    first_q = len(ids)  # the question's first token
    x = torch.tensor([ids + suffix])
    N = x.shape[1]
    allowed = torch.ones(N, N, dtype=torch.bool).tril()  # [N, N] causal
    allowed[first_q:, hidden.start:hidden.stop] = False  # the question and the answer do not see clip 1
    cache, theirs, row = DynamicCache(config=ad.model.config), [], allowed[-1]
    next_p = max(int(pos.max()), memory.max_pos) + 1  # generate's rule: max position + 1 + i
    with torch.inference_mode():
        logits = ad.model(input_ids=x, attention_mask=allowed[None, None], position_ids=model_positions(ad, pos),
                          cache=cache, use_cache=True, **vision(x)).logits  # [1, N, V]
        for _ in range(max_new_tokens):
            token = int(logits[0, -1].argmax())
            theirs.append(token)
            if token in ad.eos_ids:
                break
            row = torch.cat([row, torch.ones(1, dtype=torch.bool)])  # [K]: the new token sees what the last did
            step_pos = torch.full((P, 1), next_p, dtype=pos.dtype)  # [P, 1]
            logits = ad.model(input_ids=torch.tensor([[token]]), attention_mask=row[None, None, None],
                              position_ids=model_positions(ad, step_pos), cache=cache, use_cache=True).logits
            next_p += 1
    assert ours == theirs
    # and token by token: the question's KV read behind the retrieved memory is the masked forward's, not the
    # unmasked one's (what seeing clip 1 would have given)
    q_ids = torch.tensor(suffix)
    hd = ad.model.config.text_config.hidden_size
    embeds = ad.model.get_input_embeddings()(q_ids)  # [Q, Hd]
    embeds = torch.cat([embeds, embeds.new_zeros(len(suffix), ad.spec.layout.feature_dim - hd)], dim=1)  # [Q, F]
    q_pos = pos[:, first_q:first_q + len(suffix)]  # [P, Q]
    ours_kv = ad.prefill_embeds(embeds, q_pos, memory, memory.next_pos, memory.max_pos).keys.cpu()  # [L, Hkv, Q, D]
    masked = torch.stack([layer.keys[0, :, first_q:first_q + len(suffix)] for layer in cache.layers])
    torch.testing.assert_close(ours_kv, masked, rtol=0, atol=1e-4)
    full = DynamicCache(config=ad.model.config)
    with torch.inference_mode():
        ad.model.model(input_ids=x, position_ids=model_positions(ad, pos[:, :x.shape[1]]), cache=full, use_cache=True,
                       **vision(x))
    unmasked = torch.stack([layer.keys[0, :, first_q:] for layer in full.layers])  # [L, Hkv, Q, D]
    assert (ours_kv - unmasked).abs().max() > 100 * (ours_kv - masked).abs().max()


def check_clip_kv_equals_forward(ad) -> None:
    """The clip prefilled behind the prefix holds the KV the model's own forward makes over prefix + clip; its
    stored input embeddings prefill back to the same KV."""
    frames = clips(1)[0]
    prefix = ad.encode_prefix()
    enc = ad.ingest_clip(frames, FPS, 0.0, CLIP_S, prefix)
    ids, vision = stream_inputs(ad, [frames])
    x = torch.tensor([ids])
    cache = DynamicCache(config=ad.model.config)
    with torch.inference_mode():
        ad.model.model(input_ids=x, cache=cache, use_cache=True, **vision(x))
    full = torch.stack([layer.keys[0, :, prefix.length:] for layer in cache.layers])  # [L, Hkv, S, D]
    torch.testing.assert_close(enc.segment.keys.cpu(), full, rtol=0, atol=1e-5)
    again = ad.prefill_embeds(enc.embeds, enc.segment.positions, prefix, enc.segment.next_pos, enc.segment.max_pos)
    assert torch.equal(again.keys.cpu(), enc.segment.keys.cpu()) and torch.equal(again.values.cpu(),
                                                                                 enc.segment.values.cpu())


def check_fixed_budget(ad, store: MemoryStore, sid: str, working: int = 96, chunk: int = 12) -> None:
    video = clips(10, seed=1)
    _, sizes, lengths, _ = ingest(ad, store, sid, video, MemoryOptions(working_tokens=working, chunk_tokens=chunk))
    warm = next(i for i, n in enumerate(lengths) if n >= working)
    assert warm < len(video) - 3 and set(lengths[warm:]) == {working}  # constant once the budget fills
    assert set(sizes) == {sizes[0]}  # every chunk the same size
    assert {p.length for p in store.chunk_payloads(sid, list(range(len(video))))} == {chunk}
    q = ad.question_keys("What changed?")
    assert q.tokens.shape[0] == len(ad.spec.retrieval_layers) * ad.spec.layout.num_kv_heads
    assert isinstance("".join(ad.answer(store.get_prefix(sid), "What changed?", 4)), str)


def check_blobs_refused(ad, other) -> None:
    """A blob written by one family's model is refused by the other's layout and fingerprint, both ways."""
    enc = ad.ingest_clip(clips(1)[0], FPS, 0.0, CLIP_S, ad.encode_prefix())
    ts = TokenSet.from_segment(enc.segment, 0)
    mine, theirs = ad.spec.layout, other.spec.layout
    blob = encode_tokens(ts, mine, ad.spec.fingerprint)
    assert decode_tokens(blob, mine, ad.spec.fingerprint)[0].length == ts.length
    with pytest.raises(IncompatibleBlob):
        decode_tokens(blob, theirs, other.spec.fingerprint)
    back = encode_tokens(TokenSet.from_segment(other.encode_prefix(), 0), theirs, other.spec.fingerprint)
    with pytest.raises(IncompatibleBlob):
        decode_tokens(back, mine, ad.spec.fingerprint)


NEEDLES = {12: "red disc", 36: "green stripes", 52: "yellow checks"}  # start second -> scene; 4 s each, 64 s


def needle_frame(kind: str, seed: int) -> np.ndarray:
    """[96, 128, 3] uint8: a rare scene, lightly noised by `seed`. Its structure is coarser than any family's
    patch (slanted stripes, 24 px checks), so its tokens differ from each other and its centred keys say something."""
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:96, 0:128]
    img = np.zeros((96, 128, 3), np.float32)
    if kind == "red disc":
        img[:] = (20, 20, 160)
        img[(yy - 48) ** 2 + (xx - 64) ** 2 < 30 ** 2] = (230, 30, 30)
    elif kind == "green stripes":
        img[:] = (240, 240, 240)
        img[((xx + 2 * yy) // 12) % 2 == 0] = (20, 200, 40)  # slanted: no two patches alike
    else:
        img[:] = np.where((((yy // 24) + (xx // 24)) % 2 == 0)[..., None], (250, 230, 20), (30, 30, 30))
    return np.clip(img + rs.randint(-6, 6, img.shape), 0, 255).astype(np.uint8)


def background_frame(second: int, seed: int) -> np.ndarray:
    """[96, 128, 3] uint8 textured grey footage, slowly changing."""
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:96, 0:128]
    g = 110 + 30 * np.sin(xx / 17.0 + second * 0.3) * np.cos(yy / 13.0)
    return np.clip(g[..., None] + rs.randint(-25, 25, (96, 128, 3)), 0, 255).astype(np.uint8)


def needle_video(clip_s: int = 4) -> list[np.ndarray]:
    """64 s at 1 fps in clips of `clip_s` frames: background with the three needle scenes."""
    def frame(second: int) -> np.ndarray:
        kind = next((k for s, k in NEEDLES.items() if s <= second < s + 4), None)
        return needle_frame(kind, second) if kind else background_frame(second, second)

    return [np.stack([frame(c * clip_s + t) for t in range(clip_s)]) for c in range(64 // clip_s)]


def check_needles_found_by_example(ad, store: MemoryStore, sid: str, top_k: int = 3) -> None:
    """A still of each needle scene (rendered afresh, not a stored frame) retrieves that scene's chunk in the top
    3 of 16 chunks, through the clips' retrieval keys in Redis and the stream's index (the tiny model's text
    cannot carry visual meaning; an example image lives in the clips' own key space)."""
    ingest(ad, store, sid, needle_video(), MemoryOptions(working_tokens=96, chunk_tokens=16), fps=1.0, clip_s=4.0)
    index = IndexRegistry(store, len(ad.spec.retrieval_layers)).synced(sid)
    for start, kind in NEEDLES.items():
        hits = index.search(Query(keys=ad.example_keys(needle_frame(kind, seed=999))), top_k)
        spans = [(h.chunk.start_s, h.chunk.end_s) for h in hits]
        assert any(a < start + 4 and b > start for a, b in spans), (kind, spans)


SPOKEN = "Attention please, the white truck has arrived at dock four."


def check_clip_with_speech_kv_equals_forward(ad) -> None:
    """A clip with a transcript (`ClipRequest.speech`): its text tokens follow the clip's visual tokens in the
    block, and the block's KV equals the model's own forward over prefix + clip + "Said: <transcript>\\n"."""
    from encoders.base import ClipRequest

    frames = clips(1)[0]
    prefix = ad.encode_prefix()
    plain = ad.ingest_clip(frames, FPS, 0.0, CLIP_S, prefix)
    enc = ad.ingest_clips([ad.prepare_clip(ClipRequest(frames, FPS, 0.0, CLIP_S, prefix, speech=SPOKEN))])[0]
    said = ad._speech_ids(SPOKEN)
    assert said and enc.segment.length == plain.segment.length + len(said)  # the transcript's tokens are in it
    ids, vision = stream_inputs(ad, [frames])
    x = torch.tensor([ids + said])
    cache = DynamicCache(config=ad.model.config)
    with torch.inference_mode():
        ad.model.model(input_ids=x, cache=cache, use_cache=True, **vision(x))
    full = torch.stack([layer.keys[0, :, prefix.length:] for layer in cache.layers])  # [L, Hkv, S, D]
    torch.testing.assert_close(enc.segment.keys.cpu(), full, rtol=0, atol=1e-5)
    vals = torch.stack([layer.values[0, :, prefix.length:] for layer in cache.layers])
    torch.testing.assert_close(enc.segment.values.cpu(), vals, rtol=0, atol=1e-5)
    assert ad.tok.decode(said).strip().endswith("dock four.")
