"""A stream's audio track, decoded beside its video on the same stream clock, for the speech recognizer.

`Resampler` turns PyAV audio frames (any layout, rate, sample format) into 16 kHz mono float32 (what Whisper
reads). `AudioBuffer` is the bounded hand-over from the decode thread to the stream's speech thread: `put` never
blocks (a live stream's audio must never hold up its video), and when the speech side falls behind by more than
`max_s` seconds the oldest audio is dropped and counted. The decode side also reports how far its video got
(`video_at`), so the speech side can tell "this audio has not arrived yet" from "the track has none here".

No models here: this module only decodes and buffers (streamer/ never imports encoders).
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import av
import numpy as np

RATE = 16_000  # samples per second the recognizer reads


@dataclass(frozen=True)
class AudioChunk:
    """Decoded audio on the stream clock."""
    start_s: float  # media time of the first sample (the video frames' clock)
    samples: np.ndarray  # [n] float32 mono at RATE, in [-1, 1]
    wall_s: float | None = None  # unix time it was received (live sources)

    @property
    def end_s(self) -> float:
        return self.start_s + len(self.samples) / RATE


class Resampler:
    """PyAV audio frames -> [n] float32 mono 16 kHz. One per audio stream (the resampler keeps filter state)."""

    def __init__(self) -> None:
        self._r = av.AudioResampler(format="flt", layout="mono", rate=RATE)

    def __call__(self, frame: av.AudioFrame) -> np.ndarray:
        out = [f.to_ndarray().reshape(-1) for f in self._r.resample(frame)]
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros(0, np.float32)


class AudioBuffer:
    """Bounded, never-blocking queue of AudioChunks (writer: the decode thread; reader: the speech thread).

    `max_s`: seconds of audio held at most; beyond it the oldest chunks are dropped (`dropped_s` counts them)."""

    def __init__(self, max_s: float = 120.0) -> None:
        self.max_s = float(max_s)
        self._chunks: deque[AudioChunk] = deque()
        self._held_s = 0.0
        self._cond = threading.Condition()
        self.closed = False  # the source ended: nothing more will come
        self.has_audio: bool | None = None  # None: not known yet; False: the source has no audio track
        self.video_s = float("-inf")  # media time of the newest decoded video frame
        self.dropped_s = 0.0
        self.received_s = 0.0
        self._woken = False

    # ---- writer (decode thread) -----------------------------------------------------------------
    def put(self, chunk: AudioChunk) -> None:
        if len(chunk.samples) == 0:
            return
        with self._cond:
            self._chunks.append(chunk)
            dur = len(chunk.samples) / RATE
            self._held_s += dur
            self.received_s += dur
            while self._held_s > self.max_s and len(self._chunks) > 1:
                old = self._chunks.popleft()
                self._held_s -= len(old.samples) / RATE
                self.dropped_s += len(old.samples) / RATE
            self._cond.notify_all()

    def video_at(self, t: float) -> None:
        """The decoder's video reached media time t (cheap: called per decoded frame)."""
        self.video_s = t

    def set_has_audio(self, has: bool) -> None:
        with self._cond:
            self.has_audio = has
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wake(self) -> None:
        """Make a waiting `take` return now (the reader has something else to look at)."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    # ---- reader (speech thread) -----------------------------------------------------------------
    def take(self, timeout: float) -> list[AudioChunk]:
        """Every chunk held, oldest first (waits up to `timeout` s for one; [] when none came or it is closed)."""
        with self._cond:
            if not self._chunks and not self.closed and not self._woken:
                self._cond.wait(timeout)
            self._woken = False
            out = list(self._chunks)
            self._chunks.clear()
            self._held_s = 0.0
            return out
