"""Sampling at a target fps, keyframe choice and clip building (pure functions over frames)."""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from streamer.source import DecodedFrame


@dataclass(frozen=True)
class SampledFrame:
    index: int  # sequence number among sampled frames
    time_s: float  # media time
    image: np.ndarray  # [H, W, 3] uint8


@dataclass(frozen=True)
class Clip:
    index: int
    frames: np.ndarray  # [T, H, W, 3] uint8
    times: tuple[float, ...]  # media time of each frame
    start_s: float
    end_s: float
    keyframe: int  # index into frames of the most novel frame


def sample(frames: Iterable[DecodedFrame], fps: float, max_side: int | None = None) -> Iterator[SampledFrame]:
    """Keep the first frame at or after each tick of a 1/fps clock on media time."""
    period = 1.0 / fps
    next_tick = 0.0
    n = 0
    for f in frames:
        if f.time_s + 1e-9 < next_tick:
            continue
        yield SampledFrame(n, f.time_s, f.rgb(max_side))
        n += 1
        next_tick += period * max(1, int((f.time_s - next_tick) / period) + 1)


def novelty(frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] uint8 -> [T] mean absolute grey-level change from the previous frame (first: vs. clip mean)."""
    grey = frames.astype(np.float32).mean(axis=-1)  # [T, H, W]
    prev = np.concatenate([grey.mean(axis=0, keepdims=True), grey[:-1]], axis=0)  # [T, H, W]
    return np.abs(grey - prev).mean(axis=(1, 2))  # [T]


def build_clips(frames: Iterable[SampledFrame], clip_frames: int, period: float) -> Iterator[Clip]:
    """Group sampled frames into clips of `clip_frames`; the last clip may be shorter."""
    buf: list[SampledFrame] = []
    index = 0

    def flush() -> Clip:
        stack = np.stack([f.image for f in buf])  # [T, H, W, 3]
        times = tuple(f.time_s for f in buf)
        return Clip(index, stack, times, times[0], times[-1] + period, int(novelty(stack).argmax()))

    for f in frames:
        if buf and f.image.shape != buf[0].image.shape:
            yield flush()  # resolution changed mid-stream: close the clip
            index += 1
            buf = []
        buf.append(f)
        if len(buf) == clip_frames:
            yield flush()
            index += 1
            buf = []
    if buf:
        yield flush()


def jpeg(image: np.ndarray, max_side: int = 320, quality: int = 85) -> bytes:
    """[H, W, 3] uint8 -> JPEG bytes with the long side <= max_side."""
    img = Image.fromarray(image)
    img.thumbnail((max_side, max_side))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()
