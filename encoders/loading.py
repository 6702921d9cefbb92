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


SUPPORTED = {"qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL"}  # config.json model_type -> family name
TINY_PREPROCESSOR = {  # the tiny models' patch geometry, as each family's preprocessor_config.json states it
    "qwen2_5_vl": {},
    "qwen3_vl": {"patch_size": 16, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
}


def _family_classes(family: str):
    """(adapter class, transformers model class) of a supported family."""
    if family == "qwen3_vl":
        from transformers import Qwen3VLForConditionalGeneration

        from encoders.qwen3_vl import Qwen3VLAdapter
        return Qwen3VLAdapter, Qwen3VLForConditionalGeneration
    from transformers import Qwen2_5_VLForConditionalGeneration

    from encoders.qwen2_5_vl import Qwen25VLAdapter
    return Qwen25VLAdapter, Qwen2_5_VLForConditionalGeneration


def _device(opt: str) -> torch.device:
    if opt == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(opt)
    except RuntimeError:
        raise ModelUnavailable(f"device {opt!r} (VIGIL_MODEL__DEVICE) is not a device torch knows: use auto, cpu, "
                               "cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a build without CUDA")
            raise ModelUnavailable(f"device {opt!r} (VIGIL_MODEL__DEVICE) but no CUDA GPU is usable here "
                                   f"({build}): use VIGIL_MODEL__DEVICE=auto or cpu, or install a CUDA build of "
                                   "torch on a GPU host")
        if device.index is not None and device.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise ModelUnavailable(f"device {opt!r} (VIGIL_MODEL__DEVICE): this host has {n} CUDA device(s), "
                                   f"cuda:0 to cuda:{n - 1}")
    return device


MODEL_FOLDER = ("a model folder holds a Hugging Face checkpoint of a supported family (Qwen2.5-VL, Qwen3-VL), as "
                "`hf download` writes it: config.json, the weights (*.safetensors), the tokenizer (tokenizer.json, "
                "tokenizer_config.json) and preprocessor_config.json")


def _check_folder(local: Path) -> None:
    """A local model folder's files, before transformers reads them: what is missing, in one sentence."""
    names = {p.name for p in local.iterdir()} if local.is_dir() else set()
    missing = [what for what, ok in (
        ("config.json", "config.json" in names),
        ("weights (*.safetensors or *.bin)", any(n.endswith((".safetensors", ".bin")) for n in names)),
        ("tokenizer (tokenizer.json or tokenizer_config.json)",
         bool({"tokenizer.json", "tokenizer_config.json"} & names)),
    ) if not ok]
    if missing:
        held = ("it is empty" if not names
                else f"it holds {', '.join(sorted(names)[:6])}" + (" ..." if len(names) > 6 else ""))
        raise ModelUnavailable(f"model folder {local} has no {', no '.join(missing)} ({held}); {MODEL_FOLDER}")


def _dtype(opt: str, device: torch.device) -> torch.dtype:
    if opt == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, opt)


def _geometry(opts: ModelOptions, preprocessor: dict | None) -> PatchGeometry:
    pp = preprocessor or {}
    norm = {k: tuple(float(x) for x in pp[f"image_{k}"]) for k in ("mean", "std") if f"image_{k}" in pp}
    return PatchGeometry(
        patch_size=int(pp.get("patch_size", 14)),
        temporal_patch_size=int(pp.get("temporal_patch_size", 2)),
        merge_size=int(pp.get("merge_size", 2)),
        min_pixels=opts.min_pixels,
        max_pixels=opts.max_pixels,
        **norm,
    )


def load_adapter(opts: ModelOptions):
    device = _device(opts.device)
    dtype = _dtype(opts.dtype, device)
    if opts.name == "tiny" or opts.name.startswith("tiny:"):
        from encoders.tiny import tiny_model, tiny_tokenizer

        family = opts.name.partition(":")[2] or "qwen2_5_vl"
        if family not in SUPPORTED:
            raise ModelUnavailable(f"model {opts.name!r}: no tiny model of family {family!r}; tiny models: "
                                   + ", ".join(["tiny"] + [f"tiny:{f}" for f in SUPPORTED]))
        adapter_cls, _ = _family_classes(family)
        tok = tiny_tokenizer(opts.cache_dir)
        model = tiny_model(tok, dtype=dtype, family=family).to(device)
        return adapter_cls(model, tok, opts.name, _geometry(opts, TINY_PREPROCESSOR[family]), random_weights=True)

    from transformers import AutoConfig, AutoTokenizer
    from huggingface_hub.errors import HFValidationError

    local = Path(opts.name).expanduser()
    if local.is_dir():
        _check_folder(local)
    elif local.exists() or opts.name.startswith((".", "/", "~")):  # meant as a path, not a hub id
        why = "is a file, not a folder" if local.exists() else "no such folder"
        raise ModelUnavailable(f"model {opts.name!r}: {why}; {MODEL_FOLDER}")
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
            f"model {opts.name!r} is a {config.model_type!r}; supported families: "
            + ", ".join(f"{v} ({k})" for k, v in SUPPORTED.items())
        )
    adapter_cls, model_cls = _family_classes(config.model_type)
    preprocessor = None
    try:
        from huggingface_hub import hf_hub_download

        pp_path = local / "preprocessor_config.json" if local.is_dir() else Path(
            hf_hub_download(source, "preprocessor_config.json", local_files_only=offline))
        if pp_path.exists():
            preprocessor = json.loads(pp_path.read_text())
    except (OSError, ValueError):
        preprocessor = None  # the family's defaults apply
    model = model_cls.from_pretrained(
        source, local_files_only=offline, dtype=dtype, attn_implementation="sdpa",
    ).to(device).eval()
    tok = AutoTokenizer.from_pretrained(source, local_files_only=offline)
    return adapter_cls(model, tok, opts.name, _geometry(opts, preprocessor), random_weights=False)
