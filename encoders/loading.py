"""Resolve a model name to an adapter: "tiny", a local directory, or a Hugging Face id.

Weights come from a local path or the Hugging Face cache; nothing is downloaded unless the caller
allows it (`allow_download`), and then the hub's own conventions (HF_HOME, HF_TOKEN) apply.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from encoders.errors import ModelUnavailable  # noqa: F401  (raised here; callers import it from the loader too)
from encoders.options import DEFAULT_CACHE_DIR, ModelOptions  # noqa: F401  (the loader's options, torch-free)
from encoders.vision_prep import PatchGeometry


log = logging.getLogger("vigil.model")


SUPPORTED = {  # config.json model_type -> family name
    "qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL", "llava_onevision": "LLaVA-OneVision",
}
TINY_PREPROCESSOR = {  # the tiny models' patch geometry, as each family's preprocessor_config.json states it
    "qwen2_5_vl": {},
    "qwen3_vl": {"patch_size": 16, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
    "llava_onevision": {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},  # SigLIP's; the frame size
}                                                                                     # is the tower's image_size


def _family_classes(family: str):
    """(adapter class, transformers model class) of a supported family."""
    if family == "qwen3_vl":
        from transformers import Qwen3VLForConditionalGeneration

        from encoders.qwen3_vl import Qwen3VLAdapter
        return Qwen3VLAdapter, Qwen3VLForConditionalGeneration
    if family == "llava_onevision":
        from transformers import LlavaOnevisionForConditionalGeneration

        from encoders.llava_onevision import LlavaOnevisionAdapter
        return LlavaOnevisionAdapter, LlavaOnevisionForConditionalGeneration
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


MODEL_FOLDER = ("a model folder holds a Hugging Face checkpoint of a supported family ("
                + ", ".join(SUPPORTED.values()) + "), as "
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


def load_adapter(opts: ModelOptions, cache_dir: Path = DEFAULT_CACHE_DIR):
    """The adapter of `opts.name` on its device (CUDA when there is one: bfloat16, SDPA), compiled when asked;
    logs what it runs on (`runtime_summary`). `cache_dir`: where the tiny models' tokenizer is cached."""
    device = _device(opts.device)
    dtype = _dtype(opts.dtype, device)
    adapter = _load_adapter(opts, device, dtype, Path(cache_dir))
    if opts.compile:
        _compile(adapter.model)
    log.info("model %s: %s", opts.name, runtime_summary(adapter, opts.compile))
    return adapter


def _compile(model) -> None:
    """torch.compile (opt-in, VIGIL_MODEL__COMPILE) each decoder and vision block in place: the modules keep
    their types and attributes, so the adapters and the attention probe work on them unchanged; shapes vary
    (clip and memory lengths), hence dynamic shapes. The first clips of each new shape pay the compile."""
    import torch.nn as nn

    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            for block in module:
                block.compile(dynamic=True)


def runtime_summary(adapter, compiled: bool = False) -> str:
    """Device, dtype and attention kernel, in one line (the serve banner and the start-up log)."""
    device = getattr(adapter, "device", "?")
    kernel = "SDPA"
    if str(device).startswith("cuda"):
        kernel += " (PyTorch picks its flash or memory-efficient kernel per call)"
    return (f"{device}, {str(getattr(adapter, 'dtype', '?')).removeprefix('torch.')}, attention {kernel}"
            + (", torch.compile" if compiled else ""))


def _load_adapter(opts: ModelOptions, device: torch.device, dtype: torch.dtype, cache_dir: Path):
    if opts.name == "tiny" or opts.name.startswith("tiny:"):
        from encoders.tiny import tiny_model, tiny_tokenizer

        family = opts.name.partition(":")[2] or "qwen2_5_vl"
        if family not in SUPPORTED:
            raise ModelUnavailable(f"model {opts.name!r}: no tiny model of family {family!r}; tiny models: "
                                   + ", ".join(["tiny"] + [f"tiny:{f}" for f in SUPPORTED]))
        adapter_cls, _ = _family_classes(family)
        tok = tiny_tokenizer(cache_dir, family)
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
