"""Sampling at a target fps, clip building aligned to scene cuts, and keyframe thumbnails.

Everything here is a pure function or a small state machine over frames; the state of both
(`Sampler.state`, `ClipBuilder.next_index`) is what a checkpoint needs to continue exactly.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from streamer.source import DecodedFrame


@dataclass(frozen=True)
class DecodeState:
    """Where the decode side stands right after a frame: enough to continue exactly after a restart."""
    next_tick: float
    next_index: int
    detector: bytes = b""  # the keyframe detector's state


@dataclass(frozen=True)
class SampledFrame:
    index: int  # sequence number among sampled frames
    time_s: float  # media time on the stream clock
    image: np.ndarray  # [H, W, 3] uint8
    wall_s: float | None = None  # unix time the frame was received (live sources)
    novelty: float | None = None  # [0, 1] from the keyframe detector; None when not scored
    cut: bool = False  # a scene starts at this frame
    checkpoint: DecodeState | None = None  # the decode side's state right after this frame
    redundant: bool = False  # a near-duplicate of the previous sampled frame
    static: float = 0.0  # fraction of patches unchanged from the previous sampled frame


@dataclass(frozen=True)
class Clip:
    index: int
    frames: np.ndarray  # [T, H, W, 3] uint8
    times: tuple[float, ...]  # media time of each frame
    start_s: float
    end_s: float
    keyframe: int  # index into frames of the most novel frame
    novelty: tuple[float, ...] = ()  # per frame, from the detector (empty when not scored)
    cuts: int = 0  # scene cuts that start at a frame of this clip
    wall_start: float | None = None
    wall_end: float | None = None
    checkpoint: DecodeState | None = None  # the decode side's state right after the clip's last frame
    redundant: int = 0  # near-duplicate frames in the clip
    static: float = 0.0  # mean fraction of static patches


class Sampler:
    """Keep the first frame at or after each tick of a 1/fps clock on media time."""

    def __init__(self, fps: float, next_tick: float = 0.0, index: int = 0) -> None:
        self.period = 1.0 / fps
        self.next_tick = next_tick
        self.index = index

    def state(self, detector: bytes = b"") -> DecodeState:
        return DecodeState(self.next_tick, self.index, detector)

    def take(self, time_s: float) -> int | None:
        """The sampled index of a frame at `time_s`, or None when the frame is skipped."""
        if time_s + 1e-9 < self.next_tick:
            return None
        n = self.index
        self.index += 1
        # the next tick after this frame; a jump in time (a gap) skips the ticks it covered
        self.next_tick += self.period * max(1, int((time_s - self.next_tick) / self.period) + 1)
        return n


def sample(frames: Iterable[DecodedFrame], fps: float, max_side: int | None = None,
           sampler: Sampler | None = None) -> Iterator[SampledFrame]:
    """Sampled frames (converted to RGB, long side <= max_side) from decoded ones."""
    sampler = sampler or Sampler(fps)
    for f in frames:
        n = sampler.take(f.time_s)
        if n is not None:
            yield SampledFrame(n, f.time_s, f.rgb(max_side), f.wall_s)


def novelty(frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] uint8 -> [T] mean absolute grey-level change from the previous frame (first: vs. clip mean).

    The fallback keyframe score for frames the detector did not score."""
    grey = frames.astype(np.float32).mean(axis=-1)  # [T, H, W]
    prev = np.concatenate([grey.mean(axis=0, keepdims=True), grey[:-1]], axis=0)  # [T, H, W]
    return np.abs(grey - prev).mean(axis=(1, 2))  # [T]


def make_clip(index: int, frames: list[SampledFrame], period: float) -> Clip:
    stack = np.stack([f.image for f in frames])  # [T, H, W, 3]
    times = tuple(f.time_s for f in frames)
    scored = all(f.novelty is not None for f in frames)
    scores = tuple(float(f.novelty) for f in frames) if scored else ()
    key = int(np.argmax(scores)) if scored else int(novelty(stack).argmax())
    walls = [f.wall_s for f in frames if f.wall_s is not None]
    return Clip(index, stack, times, times[0], times[-1] + period, key, scores, sum(f.cut for f in frames),
                walls[0] if walls else None, walls[-1] if walls else None, frames[-1].checkpoint,
                sum(f.redundant for f in frames), float(np.mean([f.static for f in frames])))


class ClipBuilder:
    """Groups sampled frames into clips of at most `clip_frames`.

    A clip closes early at a scene cut (the cut frame starts the next clip) once it holds
    `min_frames`, when the resolution changes, and when `flush` is called (end of source, a
    disconnect): so a clip never spans two scenes it could have split, nor an outage.
    """

    def __init__(self, clip_frames: int, period: float, min_frames: int = 2, next_index: int = 0) -> None:
        self.clip_frames = clip_frames
        self.period = period
        self.min_frames = min_frames
        self.next_index = next_index
        self._buf: list[SampledFrame] = []

    def push(self, f: SampledFrame) -> Clip | None:
        out = None
        if self._buf and (f.image.shape != self._buf[0].image.shape or (f.cut and len(self._buf) >= self.min_frames)):
            out = self.flush()
        self._buf.append(f)
        if len(self._buf) >= self.clip_frames:
            assert out is None  # clip_frames >= 2, so one push closes at most one clip
            out = self.flush()
        return out

    def flush(self) -> Clip | None:
        if not self._buf:
            return None
        clip = make_clip(self.next_index, self._buf, self.period)
        self.next_index += 1
        self._buf = []
        return clip

    @property
    def pending(self) -> int:
        return len(self._buf)


def build_clips(frames: Iterable[SampledFrame], clip_frames: int, period: float, min_frames: int = 2) -> Iterator[Clip]:
    """All clips of a finite frame sequence (the last clip may be shorter)."""
    builder = ClipBuilder(clip_frames, period, min_frames)
    for f in frames:
        if (clip := builder.push(f)) is not None:
            yield clip
    if (clip := builder.flush()) is not None:
        yield clip


def jpeg(image: np.ndarray, max_side: int = 320, quality: int = 85) -> bytes:
    """[H, W, 3] uint8 -> JPEG bytes with the long side <= max_side."""
    img = Image.fromarray(image)
    img.thumbnail((max_side, max_side))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()
