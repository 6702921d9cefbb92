"""File sources decoded with PyAV, yielding frames with media time in seconds."""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
from av.video.reformatter import VideoReformatter
import numpy as np
from PIL import Image

from streamer.audio import RATE, AudioBuffer, AudioChunk, Resampler
from streamer.errors import CorruptVideo, NotAVideo, SourceNotFound, UnsupportedCodec


@dataclass(frozen=True)
class SourceInfo:
    width: int
    height: int
    codec: str
    avg_fps: float | None
    duration_s: float | None  # None when the container does not say


_local = threading.local()


def _reformatter() -> VideoReformatter:
    if (r := getattr(_local, "reformatter", None)) is None:
        r = _local.reformatter = VideoReformatter()
    return r


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
        size = (w, h)
        if max_side and max(w, h) > max_side:
            scale = max_side / max(w, h)
            size = (max(2, round(w * scale)), max(2, round(h * scale)))
        if isinstance(self.frame, np.ndarray):
            if size == (w, h):
                return self.frame
            return np.asarray(Image.fromarray(self.frame).resize(size, Image.BILINEAR))
        # one swscale context per thread, reused across frames (building one per frame costs ~3 ms at 720p)
        fmt = _reformatter()
        return fmt.reformat(self.frame, width=size[0], height=size[1], format="rgb24").to_ndarray()


class AvSource:
    """A video container opened with PyAV (a path or a readable file-like object).

    Use as a context manager; `frames()` decodes lazily. `name` is what error messages show.
    """

    def __init__(self, target, name: str, format: str | None = None) -> None:
        self.name = name
        try:
            self._container = av.open(target, mode="r", format=format, metadata_errors="ignore")
        except (av.error.FFmpegError, OSError) as exc:
            detail = getattr(exc, "strerror", None) or exc
            raise NotAVideo(f"{name}: not a readable video ({exc.__class__.__name__}: {detail})") from exc
        if not self._container.streams.video:
            self._container.close()
            raise NotAVideo(f"{name}: the input has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        ctx = self._stream.codec_context
        if ctx is None or not ctx.codec.name:
            self._container.close()
            raise UnsupportedCodec(f"{name}: unsupported video codec (this build of FFmpeg has no decoder for it); "
                                   "re-encode it, e.g. to H.264")
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

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    @property
    def audio_stream(self):
        """The container's first audio stream with a decoder (None: no audio track)."""
        for a in self._container.streams.audio:
            if a.codec_context is not None and a.codec_context.codec.name:
                return a
        return None

    def _decode(self, audio_stream):
        """Video frames in decode order; with `audio_stream`, its audio frames interleaved as they are demuxed."""
        if audio_stream is None:
            yield from self._container.decode(self._stream)
            return
        for packet in self._container.demux(self._stream, audio_stream):
            if packet.stream is audio_stream:
                try:
                    yield from packet.decode()
                except av.error.FFmpegError:  # a damaged audio packet never stops the video
                    continue
            else:
                yield from packet.decode()

    def frames(self, after_s: float | None = None, audio: AudioBuffer | None = None) -> Iterator[DecodedFrame]:
        """Decoded frames in presentation order, media time from the first frame.

        Missing timestamps are derived from the frame rate. `after_s` skips every frame at or
        before that media time (resuming after a checkpoint): a seekable, timestamped file is
        sought to a keyframe shortly before it; anything else is decoded from the start.

        `audio`: where the audio track goes (16 kHz mono, `streamer.audio`), timed on the same clock as the
        video (audio pts minus the first video frame's pts); without one, or without an audio track, only the
        video is demuxed, exactly as before.
        """
        step = 1.0 / (self.info.avg_fps or 25.0)
        start: float | None = None
        last = -step
        astream = self.audio_stream if audio is not None else None
        if audio is not None:
            audio.set_has_audio(astream is not None)
        resample = Resampler() if astream is not None else None
        early: list = []  # audio frames demuxed before the first timed video frame fixed the clock's origin

        def hear(frame) -> None:
            if frame.time is None:
                return
            if start is None:
                if len(early) < 500:
                    early.append(frame)
                return
            for f in early + [frame]:
                t = f.time - start
                samples = resample(f)
                if after_s is not None and t + len(samples) / RATE <= after_s:
                    continue
                audio.put(AudioChunk(t, samples))
            early.clear()

        try:
            decoded = self._decode(astream)
            if after_s is not None and after_s > 2.0:
                first, heard = next(decoded, None), []
                while isinstance(first, av.AudioFrame):  # the audio demuxed before the first video frame
                    heard.append(first)
                    first = next(decoded, None)
                if first is not None and first.time is not None and self._seekable():
                    start = first.time
                    target = start + after_s - 2.0  # a margin for keyframes and reordered frames
                    self._container.seek(int(target / self._stream.time_base), stream=self._stream, backward=True)
                    decoded = self._decode(astream)
                    last = after_s  # every frame after a seek is timed; times below after_s are skipped
                elif first is not None:
                    decoded = itertools.chain(heard, [first], decoded)
            for frame in decoded:
                if isinstance(frame, av.AudioFrame):
                    hear(frame)
                    continue
                if frame.time is None:  # no timestamp: one frame period after the last one
                    t = last + step
                else:
                    if start is None:  # the first timestamp continues from any untimed frames before it
                        start = frame.time - (last + step)
                    t = frame.time - start
                    if after_s is None or t > after_s:
                        t = max(t, last + 1e-6)  # increasing
                if after_s is not None and t <= after_s:
                    continue
                last = t
                if audio is not None:
                    audio.video_at(t)
                yield DecodedFrame(t, frame)
        except (av.error.FFmpegError, OSError) as exc:
            detail = getattr(exc, "strerror", None) or exc
            raise CorruptVideo(
                f"{self.name}: decoding failed after {max(last, 0):.2f}s of video ({exc.__class__.__name__}: {detail})"
            ) from exc

    def _seekable(self) -> bool:
        return isinstance(self._container.name, str) and Path(self._container.name).is_file()


class FileSource(AvSource):
    """A video file: a path, or the ``/proc/self/fd/N`` path of a descriptor opened already (what
    ``services.paths.confine`` gives: the same inode, whatever happened to its name since).

    `name`: what error messages show (default: the path's file name)."""

    def __init__(self, path: Path | str, name: str | None = None) -> None:
        self.path = path = Path(path)
        shown = name if name is not None else str(path)
        if not path.exists():
            raise SourceNotFound(f"{shown}: no such file")
        if not path.is_file():
            raise NotAVideo(f"{shown}: not a regular file")
        super().__init__(str(path), name if name is not None else path.name)


def probe(path: Path | str, name: str | None = None) -> SourceInfo:
    """Open the file and decode its first frame, so bad input fails before a stream is created.
    `path` and `name` as for FileSource."""
    with FileSource(path, name) as src:
        for _ in src.frames():
            return src.info
    raise CorruptVideo(f"{src.name}: the video stream holds no decodable frame")
