"""File sources decoded with PyAV, yielding frames with media time in seconds."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from PIL import Image

from streamer.errors import CorruptVideo, NotAVideo, SourceNotFound, UnsupportedCodec


@dataclass(frozen=True)
class SourceInfo:
    width: int
    height: int
    codec: str
    avg_fps: float | None
    duration_s: float | None  # None when the container does not say


@dataclass(frozen=True)
class DecodedFrame:
    time_s: float  # media time of the frame on the stream's clock (monotonic within a stream)
    frame: av.VideoFrame | np.ndarray  # as the decoder gave it (ndarray: [H, W, 3] uint8 RGB); converted only if sampled
    wall_s: float | None = None  # unix time the frame was received (live sources only)

    def rgb(self, max_side: int | None = None) -> np.ndarray:
        """[H, W, 3] uint8, optionally downscaled so the long side <= max_side."""
        if isinstance(self.frame, np.ndarray):
            h, w = self.frame.shape[:2]
        else:
            w, h = self.frame.width, self.frame.height
        if not (max_side and max(w, h) > max_side):
            return self.frame if isinstance(self.frame, np.ndarray) else self.frame.to_ndarray(format="rgb24")
        scale = max_side / max(w, h)
        size = (max(2, round(w * scale)), max(2, round(h * scale)))
        if isinstance(self.frame, np.ndarray):
            return np.asarray(Image.fromarray(self.frame).resize(size, Image.BILINEAR))
        return self.frame.to_ndarray(format="rgb24", width=size[0], height=size[1])


class FileSource:
    """A video file opened with PyAV. Use as a context manager; `frames()` decodes lazily."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            raise SourceNotFound(f"{path}: no such file")
        if not path.is_file():
            raise NotAVideo(f"{path}: not a regular file")
        try:
            self._container = av.open(str(path), mode="r", metadata_errors="ignore")
        except av.error.FFmpegError as exc:
            raise NotAVideo(f"{path.name}: not a readable video ({exc.__class__.__name__}: {exc.strerror or exc})") from exc
        if not self._container.streams.video:
            self._container.close()
            raise NotAVideo(f"{path.name}: the file has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        ctx = self._stream.codec_context
        if ctx is None or not ctx.codec.name:
            self._container.close()
            raise UnsupportedCodec(f"{path.name}: no decoder for this video codec")
        tb = self._stream.time_base
        duration = None
        if self._stream.duration is not None and tb is not None:
            duration = float(self._stream.duration * tb)
        elif self._container.duration is not None:
            duration = self._container.duration / av.time_base
        rate = self._stream.average_rate
        self.info = SourceInfo(
            width=ctx.width, height=ctx.height, codec=ctx.codec.name,
            avg_fps=float(rate) if rate else None, duration_s=duration,
        )

    def __enter__(self) -> "FileSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def frames(self) -> Iterator[DecodedFrame]:
        """Decoded frames in presentation order. Missing timestamps are derived from the frame rate."""
        step = 1.0 / (self.info.avg_fps or 25.0)
        start: float | None = None
        last = -step
        try:
            for frame in self._container.decode(self._stream):
                if frame.time is None:  # no timestamp: one frame period after the last one
                    t = last + step
                else:
                    if start is None:  # the first timestamp continues from any untimed frames before it
                        start = frame.time - (last + step)
                    t = max(frame.time - start, last + 1e-6)  # media time from the first frame, increasing
                last = t
                yield DecodedFrame(t, frame)
        except av.error.FFmpegError as exc:
            raise CorruptVideo(
                f"{self.path.name}: decoding failed after {max(last, 0):.2f}s of video "
                f"({exc.__class__.__name__}: {exc.strerror or exc})"
            ) from exc


def probe(path: Path) -> SourceInfo:
    """Open the file and decode its first frame, so bad input fails before a stream is created."""
    with FileSource(path) as src:
        for _ in src.frames():
            return src.info
    raise CorruptVideo(f"{path.name}: the video stream holds no decodable frame")
