"""How the model is loaded: a frozen record, torch-free so the settings (and a command-line error about them) load
without importing torch. `services.config.Settings.model` is this type (`VIGIL_MODEL__*`: one field each; the
descriptions below are what docs/configuration.md shows)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "vigil"  # the tokenizer cache (`VIGIL_CACHE_DIR`)


def _option(default, description: str):
    return field(default=default, metadata={"description": description})  # pydantic and the docs read it


@dataclass(frozen=True)
class ModelOptions:
    """The vision-language model: which weights, on which device, at what frame size."""

    name: str = _option("tiny", '"tiny" (seeded random weights), a local directory, or a Hugging Face id')
    device: str = _option("auto", "auto (the first CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N; a "
                          "CUDA device where none is usable stops the server at start")
    dtype: str = _option("auto", "auto (bfloat16 on CUDA, float32 on the CPU), float32, bfloat16 or float16")
    allow_download: bool = _option(False, "let a hub id be downloaded when it is not in the HF cache")
    min_pixels: int = _option(56 * 56, "per sampled frame: smaller frames are scaled up to this")
    max_pixels: int = _option(112 * 112, "per sampled frame, before patching; raise for real models")
    compile: bool = _option(False, "torch.compile the model's decoder and vision blocks (opt-in; the first clips of "
                            "each new shape pay the compile)")
