"""Image-text embeddings: a CLIP or SigLIP checkpoint from a local folder (transformers' CLIPModel /
SiglipModel), so a question can be matched against what a frame looks like.

Only a local path is accepted; nothing is downloaded. The folder holds the model (config.json +
weights), its tokenizer and, optionally, preprocessor_config.json (mean, std, resize rule). Frames are
preprocessed in numpy/PIL (no torchvision): CLIP-style checkpoints resize the short side and take the
central square, SigLIP-style ones resize the whole frame to the square input; the input side is always
the vision tower's `image_size`. Text: CLIP pads to the longest text and makes sure each text ends
with the end-of-text token (the pooled position); SigLIP pads to `max_position_embeddings` with no
attention mask, as it was trained. Vectors are the projected features, L2-normalised, float32.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from encoders.text_embed import quiet_from_pretrained

KINDS = ("clip", "siglip")
_DEFAULTS = {
    "clip": {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
             "do_center_crop": True, "resample": int(Image.BICUBIC)},
    "siglip": {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
               "do_center_crop": False, "resample": int(Image.BILINEAR)},
}


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _fingerprint(path: Path, kind: str) -> str:
    h = hashlib.sha1(kind.encode())
    for name in ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"):
        f = path / name
        if f.is_file():
            h.update(name.encode() + f.read_bytes())
    for f in sorted([*path.glob("*.safetensors"), *path.glob("*.bin")]):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 16))
            fh.seek(max(0, size - (1 << 16)))
            h.update(fh.read(1 << 16))
    return f"{kind}-{h.hexdigest()[:12]}"


class ImageTextModel:
    """`embed_images` / `embed_texts` -> unit float32 [n, dim]; no I/O or logging."""

    def __init__(self, kind: str, model: torch.nn.Module, tokenizer, prep: dict, fingerprint: str):
        self.kind = kind
        self._model = model
        self._tok = tokenizer
        cfg = model.config
        self.image_size = int(cfg.vision_config.image_size)
        self.max_tokens = int(cfg.text_config.max_position_embeddings)
        proj = getattr(cfg, "projection_dim", None)
        self.dim = int(proj if proj else cfg.text_config.hidden_size)
        self._mean = np.asarray(prep["image_mean"], dtype=np.float32)
        self._std = np.asarray(prep["image_std"], dtype=np.float32)
        self._crop = bool(prep["do_center_crop"])
        self._resample = int(prep["resample"])
        self._scale = float(prep.get("rescale_factor", 1 / 255))
        size = prep.get("size")
        self._shortest = int(size.get("shortest_edge", self.image_size)) if isinstance(size, dict) else self.image_size
        self._eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else cfg.text_config.eos_token_id
        pad = tokenizer.pad_token_id
        self._pad = pad if pad is not None else (self._eos if self._eos is not None else 0)
        self.fingerprint = fingerprint

    # -- images --------------------------------------------------------------------------------------
    def _square(self, frame: np.ndarray) -> np.ndarray:
        img = Image.fromarray(np.ascontiguousarray(frame))
        s = self.image_size
        if not self._crop:
            return np.asarray(img.resize((s, s), self._resample))
        w, h = img.size
        short = max(self._shortest, s)
        scale = short / min(w, h)
        rw, rh = max(s, round(w * scale)), max(s, round(h * scale))
        img = img.resize((rw, rh), self._resample)
        left, top = (rw - s) // 2, (rh - s) // 2
        return np.asarray(img.crop((left, top, left + s, top + s)))

    def pixels(self, frames: list[np.ndarray]) -> torch.Tensor:
        batch = np.stack([self._square(f) for f in frames]).astype(np.float32) * self._scale
        batch = (batch - self._mean) / self._std
        return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))

    def embed_images(self, frames: list[np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            feats = _features(self._model.get_image_features(pixel_values=self.pixels(frames)))
            unit = torch.nn.functional.normalize(feats.float(), dim=-1)
        return unit.numpy().astype(np.float32, copy=False)

    # -- texts ---------------------------------------------------------------------------------------
    def _token_batch(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self.kind == "siglip":
            enc = self._tok(list(texts), padding="max_length", max_length=self.max_tokens, truncation=True,
                            return_tensors="pt")
            return {"input_ids": enc["input_ids"]}
        rows = []
        for text in texts:
            ids = list(self._tok(text, truncation=True, max_length=self.max_tokens)["input_ids"])
            if self._eos is not None and (not ids or ids[-1] != self._eos):
                ids = ids[: self.max_tokens - 1] + [self._eos]
            rows.append(ids)
        n = max(len(r) for r in rows)
        ids = torch.full((len(rows), n), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            feats = _features(self._model.get_text_features(**self._token_batch(texts)))
            unit = torch.nn.functional.normalize(feats.float(), dim=-1)
        return unit.numpy().astype(np.float32, copy=False)


def load_image_text(path: str | Path) -> ImageTextModel:
    """A CLIP or SigLIP checkpoint from a local folder; ValueError naming the path when it is missing
    or not one of those."""
    from transformers import AutoConfig, AutoTokenizer, CLIPModel, SiglipModel

    folder = Path(path).expanduser()
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ValueError(f"image-text model: {str(path)!r} is not a local model folder (no config.json there)")
    config = quiet_from_pretrained(AutoConfig, str(folder))
    kind = config.model_type
    if kind not in KINDS:
        raise ValueError(f"image-text model {str(path)!r}: model_type {kind!r} is not one of {KINDS}")
    cls = CLIPModel if kind == "clip" else SiglipModel
    model = quiet_from_pretrained(cls, str(folder), dtype=torch.float32).eval()
    tok = quiet_from_pretrained(AutoTokenizer, str(folder))
    prep = dict(_DEFAULTS[kind])
    pp = folder / "preprocessor_config.json"
    if pp.is_file():
        prep.update({k: v for k, v in json.loads(pp.read_text()).items() if v is not None})
    return ImageTextModel(kind, model, tok, prep, _fingerprint(folder, kind))
