"""How the model is loaded: a frozen record built once from the settings (`services.config`), torch-free so the
settings (and a command-line error about them) load without importing torch."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelOptions:
    name: str = "tiny"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    allow_download: bool = False
    cache_dir: Path = Path.home() / ".cache" / "vigil"
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112  # per frame; raise for real models (e.g. 360*420)
    compile: bool = False  # torch.compile the model's blocks (opt-in)
