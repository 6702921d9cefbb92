"""Qwen3-VL adapter on the seeded tiny model (`tiny:qwen3_vl`, transformers' own Qwen3VLForConditionalGeneration
with the real SmolLM2 tokenizer): the family checks (`family_checks`: exactness against the model's own `generate`,
retrieved memory against its own masked forward, the clip's KV and its deepstack features, the fixed budget through
a real Redis, blobs refused across families, the needle), loading by family, and the demo."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest

from encoders.loading import ModelOptions, ModelUnavailable, load_adapter
from tests.encoders import family_checks as fc


@pytest.fixture(scope="module")
def q3(cache_dir):
    return load_adapter(ModelOptions(name="tiny:qwen3_vl", device="cpu"), cache_dir=cache_dir / "vigil")


@pytest.fixture
def store(redis_url, namespace, q3):
    return fc.make_store(redis_url, namespace, q3)


def test_spec_is_its_own_family(q3, tiny_adapter):
    s = q3.spec
    assert s.family == "qwen3_vl" and s.layout.position_dims == 3 and s.random_weights
    assert s.fingerprint != tiny_adapter.spec.fingerprint
    cfg = q3.model.config
    assert s.layout.feature_dim == cfg.text_config.hidden_size * (1 + len(cfg.vision_config.deepstack_visual_indexes))


def test_answer_from_redis_memory_equals_generate(q3, store):
    """Exactness: nothing compressed (the working memory holds every token), every chunk retrieved ->
    the model's own greedy `generate` on the same frames and question, with no FutureWarning raised."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        fc.check_answer_equals_generate(q3, store, "q3exact")


def test_retrieved_memory_equals_the_models_forward_with_the_clip_masked(q3, store):
    fc.check_retrieved_memory_equals_masked_forward(q3, store, "q3masked")


def test_clip_kv_equals_the_models_own_forward_and_features_prefill_back(q3):
    """Deepstack and all: the stored input embeddings (visual + deepstack features) prefill back to the same KV."""
    fc.check_clip_kv_equals_forward(q3)


def test_clip_with_a_transcript_kv_equals_the_models_own_forward(q3):
    """What was said during the clip follows its visual tokens as text tokens (issue 24)."""
    fc.check_clip_with_speech_kv_equals_forward(q3)


def test_fixed_budget_stream_keeps_its_invariants(q3, store):
    fc.check_fixed_budget(q3, store, "q3budget")


def test_blobs_of_one_family_are_refused_by_the_other(q3, tiny_adapter):
    """Same KV dims and position rows (the two tiny models share them), different family: the fingerprint refuses
    the blob."""
    a, b = q3.spec.layout, tiny_adapter.spec.layout
    assert (a.kv_shape(1), a.position_dims, a.dtype) == (b.kv_shape(1), b.position_dims, b.dtype)
    fc.check_blobs_refused(q3, tiny_adapter)


def test_needles_are_found_by_their_own_content(q3, store):
    fc.check_needles_found_by_example(q3, store, "q3needle")


def test_local_folder_picks_family_and_names_the_supported_ones(tmp_path, cache_dir):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelUnavailable, match=r"Qwen2\.5-VL.*Qwen3-VL"):
        load_adapter(ModelOptions(name=str(tmp_path), device="cpu"), cache_dir=cache_dir / "vigil")
    with pytest.raises(ModelUnavailable, match="tiny:qwen3_vl"):
        load_adapter(ModelOptions(name="tiny:nope", device="cpu"), cache_dir=cache_dir / "vigil")


def test_demo_runs_with_tiny_qwen3_vl(cache_dir):
    vigil = shutil.which("vigil", path=os.path.dirname(sys.executable)) or shutil.which("vigil")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(VIGIL_CACHE_DIR=str(cache_dir / "vigil"), VIGIL_HTTP_PORT="0")
    proc = subprocess.run([vigil, "demo", "--model", "tiny:qwen3_vl"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "tiny:qwen3_vl" in proc.stdout + proc.stderr
