"""LLaVA-OneVision adapter on the seeded tiny model (`tiny:llava_onevision`: transformers' own
LlavaOnevisionForConditionalGeneration, a SigLIP tower and a Qwen2 language model, with the real SmolLM2 tokenizer):
the family checks (`family_checks`), its frame preprocessing against the family's own image processor, its token
layout (pooled frame tokens, one newline), loading from a model folder, and the demo."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from encoders.loading import ModelOptions, ModelUnavailable, load_adapter
from encoders.vision_prep import frames_to_pixels
from tests.encoders import family_checks as fc


@pytest.fixture(scope="module")
def ov(cache_dir):
    return load_adapter(ModelOptions(name="tiny:llava_onevision", device="cpu"), cache_dir=cache_dir / "vigil")


@pytest.fixture
def store(redis_url, namespace, ov):
    return fc.make_store(redis_url, namespace, ov)


def test_spec_layout_is_one_dimensional_and_its_own(ov, tiny_adapter):
    s = ov.spec
    assert s.family == "llava_onevision" and s.random_weights and s.fingerprint != tiny_adapter.spec.fingerprint
    cfg = ov.model.config
    assert s.layout.position_dims == 1 and s.layout.feature_dim == cfg.text_config.hidden_size
    assert (s.layout.num_layers, s.layout.num_kv_heads) == (cfg.text_config.num_hidden_layers,
                                                             cfg.text_config.num_key_value_heads)
    assert ov.clip_frames() == 1


def test_clip_tokens_are_pooled_frames_then_one_newline(ov):
    """T frames -> T * p * p `<video>` tokens (the tower's n x n patches pooled to p = ceil(n / 2)) and the
    newline, frame-major: frame ids 0..T-1 over the pooled tokens, -1 for text and the newline, which the
    retrieval keys leave out; positions are 1-D and contiguous from the memory's next position."""
    vcfg = ov.model.config.vision_config
    p = -(-(vcfg.image_size // vcfg.patch_size) // 2)
    frames = fc.clips(1, frames=3)[0]
    prefix = ov.encode_prefix()
    enc = ov.ingest_clip(frames, fc.FPS, 0.0, 1.5, prefix, key_rows=0)
    ids = torch.tensor(ov.clip_ids(ov.n_video_tokens(3), 0.0, 1.5))
    is_video = ids == ov.video_token_id
    assert int(is_video.sum()) == 3 * p * p + 1 and enc.n_frames == 3
    assert enc.frame_ids[is_video].tolist() == sum([[f] * p * p for f in range(3)], []) + [-1]
    assert (enc.frame_ids[~is_video] == -1).all()
    assert enc.segment.retrieval.tokens.shape[1] == 3 * p * p  # every frame token, not the newline
    assert enc.segment.positions.tolist() == [list(range(prefix.next_pos, prefix.next_pos + ids.shape[0]))]
    assert enc.segment.next_pos == enc.segment.max_pos + 1


def test_frames_match_the_familys_image_processor():
    """The frame preprocessing equals LLaVA-OneVision's own PIL image processor's whole-image view (its first
    patch: the image resized to the tower's square size and normalised)."""
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil)

    rs = np.random.RandomState(0)
    frame = rs.randint(0, 256, (90, 120, 3)).astype(np.uint8)
    proc = LlavaOnevisionImageProcessorPil(size={"height": 48, "width": 48}, image_mean=[0.5] * 3,
                                           image_std=[0.5] * 3, image_grid_pinpoints=[[48, 48], [48, 96]])
    ref = np.asarray(proc(images=[frame], return_tensors="np")["pixel_values"])[0, 0]  # [3, 48, 48]
    ours = frames_to_pixels(frame[None], 48, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))[0]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_answer_from_redis_memory_equals_generate(ov, store):
    fc.check_answer_equals_generate(ov, store, "ovexact")


def test_retrieved_memory_equals_the_models_forward_with_the_clip_masked(ov, store):
    fc.check_retrieved_memory_equals_masked_forward(ov, store, "ovmasked")


def test_clip_kv_equals_the_models_own_forward_and_features_prefill_back(ov):
    fc.check_clip_kv_equals_forward(ov)


def test_clip_with_a_transcript_kv_equals_the_models_own_forward(ov):
    """What was said during the clip follows its visual tokens as text tokens (issue 24)."""
    fc.check_clip_with_speech_kv_equals_forward(ov)


def test_fixed_budget_stream_keeps_its_invariants(ov, store):
    fc.check_fixed_budget(ov, store, "ovbudget")


def test_blobs_of_one_family_are_refused_by_another(ov, tiny_adapter):
    """Different position rows (1 vs 3) as well as a different fingerprint: refused both ways."""
    assert ov.spec.layout != tiny_adapter.spec.layout
    fc.check_blobs_refused(ov, tiny_adapter)


def test_needles_are_found_by_their_own_content(ov, store):
    fc.check_needles_found_by_example(ov, store, "ovneedle")


def test_a_model_folder_of_this_family_loads_as_it(ov, tmp_path, cache_dir):
    """A checkpoint folder (config.json model_type llava_onevision, safetensors, tokenizer, preprocessor) loads as
    this family, and its model is the same: the same prefix KV."""
    ov.model.save_pretrained(tmp_path)
    ov.tok.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llava_onevision"
    ad = load_adapter(ModelOptions(name=str(tmp_path), device="cpu"), cache_dir=cache_dir / "vigil")
    assert type(ad) is type(ov) and ad.spec.family == "llava_onevision" and not ad.spec.random_weights
    assert ad.spec.layout == ov.spec.layout
    torch.testing.assert_close(ad.encode_prefix().keys, ov.encode_prefix().keys, rtol=0, atol=0)


def test_an_unsupported_family_names_the_supported_ones(tmp_path, cache_dir):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelUnavailable, match=r"Qwen2\.5-VL.*Qwen3-VL.*LLaVA-OneVision \(llava_onevision\)"):
        load_adapter(ModelOptions(name=str(tmp_path), device="cpu"), cache_dir=cache_dir / "vigil")
    with pytest.raises(ModelUnavailable, match="tiny:llava_onevision"):
        load_adapter(ModelOptions(name="tiny:nope", device="cpu"), cache_dir=cache_dir / "vigil")


def test_demo_runs_with_tiny_llava_onevision(cache_dir):
    vigil = shutil.which("vigil", path=os.path.dirname(sys.executable)) or shutil.which("vigil")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(VIGIL_CACHE_DIR=str(cache_dir / "vigil"), VIGIL_HTTP_PORT="0")
    proc = subprocess.run([vigil, "demo", "--model", "tiny:llava_onevision"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "tiny:llava_onevision" in proc.stdout + proc.stderr
