"""Qwen3-VL adapter on the seeded tiny model (`tiny:qwen3_vl`, transformers' own Qwen3VLForConditionalGeneration
with the real SmolLM2 tokenizer): exactness against the model's own `generate`, the fixed budget through a real
Redis, blobs refused across families, loading by family, and the demo."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import redis
import torch

from encoders.loading import ModelOptions, ModelUnavailable, load_adapter
from memory.assemble import answer_memory
from memory.codec import decode_tokens, encode_tokens
from memory.errors import IncompatibleBlob
from memory.layout import KVLayout
from memory.options import MemoryOptions
from memory.store import ChunkRecord, MemoryStore, StreamRecord
from memory.working import WorkingState, context, step

FPS = 2.0


@pytest.fixture(scope="module")
def q3(cache_dir):
    return load_adapter(ModelOptions(name="tiny:qwen3_vl", device="cpu", cache_dir=cache_dir / "vigil"))


def clips(n: int, seed: int = 0, frames: int = 4):
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


def reference_generate(ad, video: list[np.ndarray], question: str, max_new_tokens: int) -> list[int]:
    """The model's own `generate` on every clip's frames, laid out as the stream lays them out (greedy)."""
    ids = ad.prefix_ids()
    pvs, grids = [], []
    for i, frames in enumerate(video):
        pv, grid, _ = ad.video_inputs(frames, FPS)
        ids += ad.clip_ids_for(grid, i * 2.0, (i + 1) * 2.0)
        pvs.append(pv), grids.append(grid)
    ids += ad.suffix_ids(question)
    x = torch.tensor([ids])
    model = ad.model
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), pixel_values_videos=torch.cat(pvs),
                         video_grid_thw=torch.cat(grids), mm_token_type_ids=(x == model.config.video_token_id).int() * 2,
                         max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, x.shape[1]:].tolist()


@pytest.fixture
def make_store(redis_url, namespace):
    r = redis.Redis.from_url(redis_url)
    return lambda ad: MemoryStore(r, namespace, KVLayout.from_spec(ad.spec), ad.spec.fingerprint)


def ingest(ad, store, sid: str, video, policy: MemoryOptions):
    """Each clip through the adapter and the working memory, written as ingest writes it."""
    rec = StreamRecord(stream_id=sid, source="synthetic", memory=policy)
    store.create_stream(rec)
    fence = store.claim(sid, "test", 600_000)
    prefix = ad.encode_prefix()
    store.put_prefix(sid, prefix)
    state = WorkingState.empty(prefix)
    sizes, lengths = [], []
    for i, frames in enumerate(video):
        enc = ad.ingest_clip(frames, FPS, i * 2.0, (i + 1) * 2.0, context(prefix, state))
        assert enc.n_frames == frames.shape[0] // 2 and enc.embeds.shape[1] == ad.spec.feature_dim
        done = step(prefix, state, enc, 0.0, policy)
        state = done.state
        chunk = ChunkRecord(chunk_id=i, start_s=i * 2.0, end_s=(i + 1) * 2.0, frames=frames.shape[0],
                            tokens=done.chunk.length, keyframe_s=i * 2.0, span_start=done.span[0], span_end=done.span[1])
        sizes.append(store.put_chunk(sid, chunk, done.chunk, enc.segment.retrieval, b"jpeg", (i + 1) * 2.0,
                                     fence=fence, working=state))
        lengths.append(state.tokens.length)
    return state, sizes, lengths


def test_spec_is_its_own_family(q3, tiny_adapter):
    s = q3.spec
    assert s.family == "qwen3_vl" and s.position_dims == 3 and s.random_weights
    assert s.fingerprint != tiny_adapter.spec.fingerprint
    cfg = q3.model.config
    assert s.feature_dim == cfg.text_config.hidden_size * (1 + len(cfg.vision_config.deepstack_visual_indexes))


def test_answer_from_redis_memory_equals_generate(q3, make_store):
    """Exactness: nothing compressed (the working memory holds every token), every chunk retrieved ->
    the model's own greedy `generate` on the same frames and question, with no FutureWarning raised."""
    video = clips(3)
    store = make_store(q3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        state, _, _ = ingest(q3, store, "q3exact", video, MemoryOptions(working_tokens=4096, chunk_tokens=8))
        rows = store.chunk_records("q3exact")
        payloads = store.chunk_payloads("q3exact", [r.chunk_id for r in rows])
        rec = store.get_stream("q3exact")
        memory = answer_memory(store.get_prefix("q3exact"), store.get_working("q3exact").tokens,
                               list(zip(payloads, [(r.span_start, r.span_end) for r in rows])), rec.next_pos, rec.max_pos)
        question = "Which colours appear, in order?"
        ours = list(q3.answer_ids(memory, question, 24))
    assert state.tokens.length == rows[-1].span_end  # nothing pruned
    assert ours == reference_generate(q3, video, question, 24)


def test_clip_kv_equals_the_models_own_forward_and_features_prefill_back(q3):
    """The clip prefilled behind the prefix holds the KV the model's own forward (deepstack and all) makes over
    prefix + clip; its stored input embeddings (visual + deepstack features) prefill back to the same KV."""
    from transformers import DynamicCache

    frames = clips(1)[0]
    prefix = q3.encode_prefix()
    enc = q3.ingest_clip(frames, FPS, 0.0, 2.0, prefix)
    pv, grid, _ = q3.video_inputs(frames, FPS)
    x = torch.tensor([q3.prefix_ids() + q3.clip_ids_for(grid, 0.0, 2.0)])
    cache = DynamicCache(config=q3.model.config)
    with torch.inference_mode():
        q3.model.model(input_ids=x, pixel_values_videos=pv, video_grid_thw=grid, cache=cache, use_cache=True,
                       mm_token_type_ids=(x == q3.video_token_id).int() * 2)
    full = torch.stack([layer.keys[0, :, prefix.length:] for layer in cache.layers])  # [L, Hkv, S, D]
    torch.testing.assert_close(enc.segment.keys, full, rtol=0, atol=1e-5)
    again = q3.prefill_embeds(enc.embeds, enc.segment.positions, prefix, enc.segment.next_pos, enc.segment.max_pos)
    assert torch.equal(again.keys, enc.segment.keys) and torch.equal(again.values, enc.segment.values)


def test_fixed_budget_stream_keeps_its_invariants(q3, make_store):
    working, chunk = 96, 12
    store = make_store(q3)
    video = clips(10, seed=1)
    state, sizes, lengths = ingest(q3, store, "q3budget", video, MemoryOptions(working_tokens=working,
                                                                                chunk_tokens=chunk))
    warm = next(i for i, n in enumerate(lengths) if n >= working)
    assert warm < len(video) - 3 and set(lengths[warm:]) == {working}  # constant once the budget fills
    assert set(sizes) == {sizes[0]}  # every chunk the same size
    payloads = store.chunk_payloads("q3budget", list(range(len(video))))
    assert {p.length for p in payloads} == {chunk}
    q = q3.question_keys("What changed?")
    assert q.tokens.shape[0] == len(q3.spec.retrieval_layers) * q3.spec.num_kv_heads
    text = "".join(q3.answer(store.get_prefix("q3budget"), "What changed?", 4))
    assert isinstance(text, str)


def test_blobs_of_one_family_are_refused_by_the_other(q3, tiny_adapter):
    """Same KV dims (the two tiny models share them), different family: the fingerprint refuses the blob."""
    enc = q3.ingest_clip(clips(1)[0], FPS, 0.0, 2.0, q3.encode_prefix())
    from memory.layout import TokenSet

    ts = TokenSet.from_segment(enc.segment, 0)
    lay3, lay25 = KVLayout.from_spec(q3.spec), KVLayout.from_spec(tiny_adapter.spec)
    blob = encode_tokens(ts, lay3, q3.spec.fingerprint)
    assert decode_tokens(blob, lay3, q3.spec.fingerprint)[0].length == ts.length
    with pytest.raises(IncompatibleBlob):
        decode_tokens(blob, lay25, tiny_adapter.spec.fingerprint)
    other = encode_tokens(TokenSet.from_segment(tiny_adapter.encode_prefix(), 0), lay25, tiny_adapter.spec.fingerprint)
    with pytest.raises(IncompatibleBlob):
        decode_tokens(other, lay3, q3.spec.fingerprint)


def test_local_folder_picks_family_and_names_the_supported_ones(tmp_path, cache_dir):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelUnavailable, match=r"Qwen2\.5-VL.*Qwen3-VL"):
        load_adapter(ModelOptions(name=str(tmp_path), device="cpu", cache_dir=cache_dir / "vigil"))
    with pytest.raises(ModelUnavailable, match="tiny:qwen3_vl"):
        load_adapter(ModelOptions(name="tiny:nope", device="cpu", cache_dir=cache_dir / "vigil"))


def test_demo_runs_with_tiny_qwen3_vl(cache_dir):
    vigil = shutil.which("vigil", path=os.path.dirname(sys.executable)) or shutil.which("vigil")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(VIGIL_CACHE_DIR=str(cache_dir / "vigil"), VIGIL_HTTP_PORT="0")
    proc = subprocess.run([vigil, "demo", "--model", "tiny:qwen3_vl"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "tiny:qwen3_vl" in proc.stdout + proc.stderr
