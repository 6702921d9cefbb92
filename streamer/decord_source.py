"""Random-access file reader on decord: decodes and returns only the frames the sampler keeps.

An optional alternative to the PyAV ``FileSource`` for files (``reader = "decord"``). ``decord`` is
imported lazily, so ``streamer`` works without it; constructing a ``DecordSource`` without it raises
an ``ImportError`` that says ``pip install decord``.

What it promises: for a file both readers accept, ``frames(fps)`` yields exactly the frames that
``sample(FileSource(path).frames(), fps)`` keeps, with the same media times (bit for bit) and the same
picture (rotation metadata undone, as FileSource ignores it). To keep that promise, PyAV (already a
dependency of ``streamer.source``) is used for what decord does badly:

* the header and error checks, so errors are FileSource's classes with readable messages (decord
  only raises ``RuntimeError("Error reading <path>...")`` and logs the reason to stderr);
* the time index. decord's ``get_frame_timestamp`` is float32 seconds (~1e-7 relative error), which
  moves frames that sit exactly on a sampling tick (25 fps sampled at 5 fps: frame 1.4 s comes back as
  1.39999998 s and the tick picks 1.44 s instead). The exact times come from one demux-only pass with
  PyAV over the packets' integer pts, computed as PyAV's ``frame.time`` computes them; decord's own
  timestamps must agree with them (same count, within float32 error), or the file is refused;
* the first decoded frame, which gives the display rotation decord applies (and FileSource does not),
  and checks the first frame decodes and is the earliest one (else decord's frame numbers would be off).

Files refused with ``UnsupportedCodec`` (use the PyAV reader for them): packets without timestamps
(e.g. Xvid AVI with B-frames, where decord's older FFmpeg indexes garbage times), demuxers that
disagree (edit lists handled differently by decord's FFmpeg 4.1 and PyAV's), codecs decord's FFmpeg
cannot open, several video streams where FFmpeg's "best" is not the first. ``CorruptVideo`` where
FileSource may differ: decord reads every packet when it opens, so a truncated file whose index comes
first (faststart mp4) is refused at open, where FileSource decodes the part that is there.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, Iterator

import av
import numpy as np

from streamer.errors import CorruptVideo, NotAVideo, SourceNotFound, UnsupportedCodec
from streamer.sampling import sample
from streamer.source import DecodedFrame, SourceInfo

_INSTALL_HINT = 'DecordSource needs the optional package decord: pip install decord (or use reader = "pyav")'
_PLACEHOLDER = np.zeros((1, 1, 3), np.uint8)  # stands in for pixels when replaying sample() over the time index
_DECORD_LOG_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")
_AVERROR_CODE = re.compile(r"(?:failed with|\() ?(-?\d{6,})")  # FFmpeg error numbers in decord's messages


def available() -> bool:
    """True when decord is installed (checked without importing it)."""
    try:
        return importlib.util.find_spec("decord") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["decord"] is None
        return False


def _import_decord() -> Any:
    try:
        import decord
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return decord


def _decord_reason(exc: BaseException) -> str:
    """decord's error text without its log prefixes and C++ stack trace: one readable line, with FFmpeg's
    error numbers spelled out (decord prints AVERROR_INVALIDDATA as 1094995529)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    text = _DECORD_LOG_PREFIX.sub("", text).strip()
    match = _AVERROR_CODE.search(text)
    if match:
        try:
            av.error.err_check(-abs(int(match.group(1))))
        except av.error.FFmpegError as err:
            text += f" [{err.strerror}]"
    return text


def _av_reason(exc: av.error.FFmpegError) -> str:
    return f"{exc.__class__.__name__}: {exc.strerror or exc}"


class DecordSource:
    """A video file read with decord. Use as a context manager; `frames()` decodes only what it yields.

    Memory: a batch of RGB frames is ``batch * width * height * 3`` bytes (16 frames of 1080p: 100 MB) and
    exists about twice at the peak (decord's buffer while it is copied to numpy, then the numpy batch and the
    per-frame copies handed out), plus the time indexes (ours 8 bytes a frame, decord's ~100). Not thread-safe: use one instance from one
    thread at a time (decord's calls release the GIL, so sources in several threads decode in parallel).
    """

    def __init__(self, path: Path | str, *, threads: int = 0, name: str | None = None) -> None:
        """`threads`: decoder threads for decord (0: FFmpeg's automatic choice). `path` may be the
        ``/proc/self/fd/N`` path of a descriptor opened already (``services.paths.confine``): PyAV's index
        pass and decord both open that same inode. `name`: what error messages show (default: the path's
        file name)."""
        self.path = path = Path(path)
        self.name = name if name is not None else path.name
        shown = name if name is not None else str(path)
        if not path.exists():
            raise SourceNotFound(f"{shown}: no such file")
        if not path.is_file():
            raise NotAVideo(f"{shown}: not a regular file")
        decord = _import_decord()  # before any work: a missing package is a configuration error
        self.info, pts_seconds, rotation, first_time = self._index_with_pyav(path)
        self._vr: Any = None
        try:
            self._vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
        except Exception as exc:  # decord raises RuntimeError, DECORDError or AssertionError (0 frames)
            reason = _decord_reason(exc).replace(str(path), self.name)  # never the /proc/self/fd path
            if "av_read_frame" in reason:  # decord indexes every packet at open: damage anywhere fails here
                raise CorruptVideo(f"{self.name}: the file is truncated or damaged; decord could not read "
                                   f"all of it ({reason})") from exc
            raise UnsupportedCodec(f"{self.name}: decord cannot open this video ({reason}); "
                                   'use reader = "pyav"') from exc
        self._rot90 = rotation
        self._times = self._media_times(pts_seconds, first_time)
        self._check_decord_index()

    # ---- opening ---------------------------------------------------------------------------------

    def _index_with_pyav(self, path: Path) -> tuple[SourceInfo, list[float], int, float]:
        """Info as FileSource gives it, the sorted presentation times of all packets in seconds (computed as
        PyAV's frame.time is), decord's rotation in quarter turns, and the first decoded frame's time."""
        try:
            container = av.open(str(path), mode="r", metadata_errors="ignore")
        except av.error.FFmpegError as exc:
            raise NotAVideo(f"{self.name}: not a readable video ({_av_reason(exc)})") from exc
        with container:
            if not container.streams.video:
                raise NotAVideo(f"{self.name}: the file has no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            if ctx is None or not ctx.codec.name:
                raise UnsupportedCodec(f"{self.name}: no decoder for this video codec")
            if len(container.streams.video) > 1:
                best = container.streams.best("video")
                if best is not None and best.index != stream.index:
                    raise UnsupportedCodec(
                        f"{self.name}: {len(container.streams.video)} video streams and decord would read "
                        f"stream #{best.index}, not #{stream.index}; use reader = \"pyav\"")
            tb = stream.time_base
            duration = None
            if stream.duration is not None and tb is not None:
                duration = float(stream.duration * tb)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            rate = stream.average_rate
            info = SourceInfo(width=ctx.width, height=ctx.height, codec=ctx.codec.name,
                              avg_fps=float(rate) if rate else None, duration_s=duration)
            if tb is None or not tb.numerator:
                raise UnsupportedCodec(f"{self.name}: the video stream has no time base; use reader = \"pyav\"")

            pts: list[int] = []
            untimed = 0
            discarded = 0
            first = None  # first decoded frame
            try:
                for packet in container.demux(stream):
                    if packet.size == 0:  # the flush packet PyAV adds at the end
                        continue
                    if packet.pts is None:
                        untimed += 1
                    else:
                        pts.append(packet.pts)
                    discarded += packet.is_discard
                    if first is None:
                        frames = stream.decode(packet)
                        first = frames[0] if frames else None
                if first is None and pts:
                    frames = stream.decode(None)  # drain: short clips may hold their frames in the decoder
                    first = frames[0] if frames else None
            except av.error.FFmpegError as exc:
                raise CorruptVideo(f"{self.name}: reading failed after {len(pts)} frames "
                                   f"({_av_reason(exc)})") from exc
        if untimed:
            raise UnsupportedCodec(f"{self.name}: {untimed} video packets carry no timestamp, so decord cannot "
                                   'index them; use reader = "pyav"')
        if discarded:
            raise UnsupportedCodec(f"{self.name}: {discarded} video packets are marked to be discarded (edit list), "
                                   'which decord does not honour; use reader = "pyav"')
        if not pts:
            raise CorruptVideo(f"{self.name}: the video stream holds no frames")
        if first is None:
            raise CorruptVideo(f"{self.name}: the video stream holds no decodable frame")
        if first.time is None:
            raise UnsupportedCodec(f"{self.name}: decoded frames carry no timestamp; use reader = \"pyav\"")
        num, den = tb.numerator, tb.denominator
        seconds = [float(p) * num / den for p in sorted(pts)]  # exactly as av.VideoFrame.time
        first_time = first.time  # FileSource's clock starts here
        if first_time != seconds[0]:
            raise UnsupportedCodec(f"{self.name}: the first decodable frame ({first_time:.3f}s) is not the earliest "
                                   f"one ({seconds[0]:.3f}s), so decord's frame numbers would be off; "
                                   'use reader = "pyav"')
        rotation = int(getattr(first, "rotation", 0) or 0)
        if rotation % 90:
            raise UnsupportedCodec(f"{self.name}: display rotation {rotation} degrees is not a quarter turn")
        return info, seconds, (rotation // 90) % 4, first_time

    def _media_times(self, seconds: list[float], first_time: float) -> np.ndarray:
        """FileSource's media times: seconds from the first frame, forced to increase by at least 1 us."""
        out = np.empty(len(seconds), np.float64)
        last = -1.0 / (self.info.avg_fps or 25.0)
        for i, s in enumerate(seconds):
            t = max(s - first_time, last + 1e-6)
            out[i] = last = t
        out.flags.writeable = False
        return out

    def _check_decord_index(self) -> None:
        """decord's frame i must be our frame i: same count, and its float32 times agree with the exact ones."""
        n = len(self._vr)
        if n != len(self._times):
            self.close()
            raise UnsupportedCodec(f"{self.name}: decord indexes {n} frames and PyAV {len(self._times)}; "
                                   'use reader = "pyav"')
        # Ask with an index array: decord 0.6's get_frame_timestamp(slice) decodes the whole video first.
        theirs = self._vr.get_frame_timestamp(np.arange(n))[:, 0].astype(np.float64)
        untimed = int(np.count_nonzero(theirs < -1e9))  # packets without pts come out as AV_NOPTS_VALUE * time base
        if untimed:
            self.close()
            raise UnsupportedCodec(f"{self.name}: decord's FFmpeg finds no timestamp on {untimed} of {n} "
                                   "frames (typical of AVI with B-frames), so its frame index is unusable; "
                                   'use reader = "pyav"')
        theirs -= theirs[0]
        tol = 1e-6 + 4e-7 * np.abs(self._times)  # float32 keeps ~6e-8 relative; decord rebases differently
        bad = np.flatnonzero(~(np.abs(theirs - self._times) <= tol))
        if bad.size:
            i = int(bad[0])
            self.close()
            raise UnsupportedCodec(f"{self.name}: decord's timestamps disagree with PyAV's "
                                   f"({bad.size} frames, first #{i}: {theirs[i]:.6f}s vs {self._times[i]:.6f}s); "
                                   'use reader = "pyav"')

    # ---- public ----------------------------------------------------------------------------------

    @property
    def frame_times(self) -> np.ndarray:
        """Media time of every frame in presentation order (read-only float64, FileSource's values)."""
        return self._times

    def __enter__(self) -> "DecordSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Free the decoder and the file (decord has no close: dropping the reader frees it)."""
        self._vr = None

    def indices(self, fps: float | None = None, after_s: float | None = None) -> list[int]:
        """Frame numbers `frames(fps, after_s)` yields: those `sample()` keeps over the uninterrupted run, then
        those after `after_s`. Reads no pixels."""
        times = self._times
        if fps is None:
            idx = list(range(len(times)))
        else:
            if not fps > 0:
                raise ValueError(f"fps must be > 0, got {fps}")
            # Replay sample() itself over the time index, so its choice (ticks, tolerance, catching up after
            # gaps) is reproduced exactly. Times strictly increase, so each kept time names one frame.
            kept = [s.time_s for s in sample((DecodedFrame(float(t), _PLACEHOLDER) for t in times), fps)]
            idx = np.searchsorted(times, kept).tolist()
            if any(times[i] != t for i, t in zip(idx, kept)):  # cannot happen while times strictly increase
                raise RuntimeError(f"{self.name}: sampled times do not map back to frames")
        if after_s is not None:
            idx = [i for i in idx if times[i] > after_s]
        return idx

    def frames(self, fps: float | None = None, after_s: float | None = None,
               batch: int = 16) -> Iterator[DecodedFrame]:
        """Frames in presentation order: every frame (`fps=None`) or only those `sample(..., fps)` would keep;
        with `after_s`, only those whose media time is > after_s, seeking to the keyframe before the first.

        Frames are fetched `batch` at a time with decord's get_batch; each DecodedFrame holds its own
        [H, W, 3] uint8 RGB array (not a view of the batch)."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if self._vr is None:
            raise ValueError(f"{self.name}: the source is closed")
        return self._fetch(self.indices(fps, after_s), batch)

    def _fetch(self, idx: list[int], batch: int) -> Iterator[DecodedFrame]:
        times = self._times
        for start in range(0, len(idx), batch):
            chunk = idx[start:start + batch]
            if self._vr is None:
                raise ValueError(f"{self.name}: the source is closed")
            try:
                arr = self._vr.get_batch(chunk).asnumpy()  # [B, H, W, 3] uint8
            except Exception as exc:  # DECORDError from decord's decoder thread
                raise CorruptVideo(
                    f"{self.name}: decoding failed between {times[chunk[0]]:.2f}s and {times[chunk[-1]]:.2f}s "
                    f"of video (decord: {_decord_reason(exc).replace(str(self.path), self.name)})"
                ) from exc
            if self._rot90:  # decord applied the display rotation; FileSource does not
                arr = np.rot90(arr, -self._rot90, axes=(1, 2))
            if arr.shape[1:3] != (self.info.height, self.info.width):
                raise UnsupportedCodec(
                    f"{self.name}: decord returned {arr.shape[2]}x{arr.shape[1]} frames for a "
                    f"{self.info.width}x{self.info.height} video; use reader = \"pyav\"")
            for j, i in enumerate(chunk):
                yield DecodedFrame(float(times[i]), np.ascontiguousarray(arr[j]) if self._rot90 else arr[j].copy())
