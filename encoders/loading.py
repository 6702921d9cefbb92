"""Resolve a model name to an adapter: "tiny", a local directory, or a Hugging Face id.

Weights come from a local path or the Hugging Face cache; nothing is downloaded unless the caller
allows it (`allow_download`), and then the hub's own conventions (HF_HOME, HF_TOKEN) apply.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from encoders.vision_prep import PatchGeometry


class ModelUnavailable(RuntimeError):
    """The model cannot be loaded; the message says how to get it."""


@dataclass(frozen=True)
class ModelOptions:
    name: str = "tiny"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    allow_download: bool = False
    cache_dir: Path = Path.home() / ".cache" / "vigil"
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112  # per frame; raise for real models (e.g. 360*420)


SUPPORTED = {"qwen2_5_vl": "Qwen2.5-VL"}


def _device(opt: str) -> torch.device:
    if opt == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(opt)


def _dtype(opt: str, device: torch.device) -> torch.dtype:
    if opt == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, opt)


def _geometry(opts: ModelOptions, preprocessor: dict | None) -> PatchGeometry:
    pp = preprocessor or {}
    return PatchGeometry(
        patch_size=int(pp.get("patch_size", 14)),
        temporal_patch_size=int(pp.get("temporal_patch_size", 2)),
        merge_size=int(pp.get("merge_size", 2)),
        min_pixels=opts.min_pixels,
        max_pixels=opts.max_pixels,
    )


def load_adapter(opts: ModelOptions):
    from encoders.qwen2_5_vl import Qwen25VLAdapter

    device = _device(opts.device)
    dtype = _dtype(opts.dtype, device)
    if opts.name == "tiny":
        from encoders.tiny import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer(opts.cache_dir)
        model = tiny_model(tok, dtype=dtype).to(device)
        return Qwen25VLAdapter(model, tok, "tiny", _geometry(opts, None), random_weights=True)

    from transformers import AutoConfig, AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    from huggingface_hub.errors import HFValidationError

    local = Path(opts.name).expanduser()
    source = str(local) if local.is_dir() else opts.name
    offline = not local.is_dir() and not opts.allow_download
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
    except (OSError, HFValidationError, ValueError) as exc:
        raise ModelUnavailable(
            f"model {opts.name!r} is not a local directory and is not in the Hugging Face cache. "
            f"Get it with `hf download {opts.name}` (or `huggingface-cli download {opts.name}`) on a machine "
            f"that reaches the hub, or pass a local directory, or allow a download with "
            f"VIGIL_MODEL__ALLOW_DOWNLOAD=true. ({exc.__class__.__name__}: {exc})"
        ) from exc
    if config.model_type not in SUPPORTED:
        raise ModelUnavailable(
            f"model {opts.name!r} is a {config.model_type!r}; supported families: {', '.join(SUPPORTED.values())}"
        )
    preprocessor = None
    try:
        from huggingface_hub import hf_hub_download

        pp_path = local / "preprocessor_config.json" if local.is_dir() else Path(
            hf_hub_download(source, "preprocessor_config.json", local_files_only=offline))
        if pp_path.exists():
            preprocessor = json.loads(pp_path.read_text())
    except (OSError, ValueError):
        preprocessor = None  # the family's defaults apply
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        source, local_files_only=offline, dtype=dtype, attn_implementation="sdpa",
    ).to(device).eval()
    tok = AutoTokenizer.from_pretrained(source, local_files_only=offline)
    return Qwen25VLAdapter(model, tok, opts.name, _geometry(opts, preprocessor), random_weights=False)
