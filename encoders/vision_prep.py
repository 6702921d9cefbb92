"""Frames -> the vision tower's input, in numpy/PIL (the hub's video processors need torchvision).

Qwen-VL: patches in the family's documented flattened order (`frames_to_patches`); LLaVA-OneVision: whole
frames at the SigLIP tower's fixed square size (`frames_to_pixels`). Tests check both against the family's
own PIL image processor.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


@dataclass(frozen=True)
class PatchGeometry:
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    min_pixels: int
    max_pixels: int
    mean: tuple[float, float, float] = tuple(CLIP_MEAN.tolist())  # per-channel normalisation (the family's
    std: tuple[float, float, float] = tuple(CLIP_STD.tolist())  # preprocessor: CLIP's for Qwen2.5-VL, 0.5 for Qwen3-VL)

    def resized_hw(self, height: int, width: int) -> tuple[int, int]:
        return smart_resize(
            height, width, factor=self.patch_size * self.merge_size,
            min_pixels=self.min_pixels, max_pixels=self.max_pixels,
        )


def frames_to_patches(frames: np.ndarray, geo: PatchGeometry) -> tuple[np.ndarray, tuple[int, int, int]]:
    """frames: [T, H, W, 3] uint8 -> (patches [t*gh*gw, 3*tp*p*p] float32, grid (t, gh, gw)).

    T is padded to a multiple of the temporal patch size by repeating the last frame.
    """
    t_in, height, width, _ = frames.shape
    rh, rw = geo.resized_hw(height, width)
    resized = np.stack([
        np.asarray(Image.fromarray(f).resize((rw, rh), resample=Image.BICUBIC), dtype=np.float32)
        for f in frames
    ])  # [T, rh, rw, 3]
    pixels = (resized / 255.0 - np.float32(geo.mean)) / np.float32(geo.std)  # [T, rh, rw, 3]
    pixels = pixels.transpose(0, 3, 1, 2)  # [T, 3, rh, rw]
    tp, p, m = geo.temporal_patch_size, geo.patch_size, geo.merge_size
    pad = (-t_in) % tp
    if pad:
        pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, axis=0)], axis=0)
    gt, gh, gw = pixels.shape[0] // tp, rh // p, rw // p
    x = pixels.reshape(gt, tp, 3, gh // m, m, p, gw // m, m, p)
    # -> (gt, gh/m, gw/m, m, m, C, tp, p, p): merge groups stay contiguous, as the model expects
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    patches = np.ascontiguousarray(x.reshape(gt * gh * gw, 3 * tp * p * p), dtype=np.float32)
    return patches, (gt, gh, gw)


def frames_to_pixels(frames: np.ndarray, size: int, mean: tuple[float, float, float],
                     std: tuple[float, float, float]) -> np.ndarray:
    """frames [T, H, W, 3] uint8 -> [T, 3, size, size] float32: each frame resized to the vision tower's fixed
    square input (bicubic, aspect not kept), scaled to [0, 1] and normalised per channel, as the LLaVA-OneVision
    video processor does (SigLIP towers read one fixed size; there are no patches to lay out)."""
    resized = np.stack([
        np.asarray(Image.fromarray(f).resize((size, size), resample=Image.BICUBIC), dtype=np.float32)
        for f in frames
    ])  # [T, size, size, 3]
    pixels = (resized / 255.0 - np.float32(mean)) / np.float32(std)  # [T, size, size, 3]
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32)  # [T, 3, size, size]
