"""A deterministic test-pattern video written with PyAV, for the offline demo, tests and benchmarks."""
from __future__ import annotations

import colorsys
from fractions import Fraction
from pathlib import Path

import numpy as np


def scene_color(index: int) -> tuple[int, int, int]:
    """Deterministic, well-separated RGB base color for scene ``index``."""
    # Golden-ratio hue stepping keeps any number of scenes distinct; alternate brightness.
    hue = (index * 0.618033988749895) % 1.0
    value = 0.85 if index % 2 == 0 else 0.55
    r, g, b = colorsys.hsv_to_rgb(hue, 0.9, value)
    return int(r * 255), int(g * 255), int(b * 255)


def scene_bounds(seconds: float, fps: int = 10, scenes: int = 4) -> list[tuple[int, int]]:
    """Frame ranges ``[start, stop)`` of each scene in a ``synthetic_video`` clip."""
    n = max(1, int(round(seconds * fps)))
    scenes = max(1, min(scenes, n))
    edges = [i * n // scenes for i in range(scenes + 1)]
    return [(edges[i], edges[i + 1]) for i in range(scenes)]


def synthetic_video(
    path: Path,
    seconds: float,
    fps: int = 10,
    size: tuple[int, int] = (160, 120),
    scenes: int = 4,
    codec: str = "mpeg4",
) -> Path:
    """Write a deterministic clip of ``seconds`` at ``fps`` with ``scenes`` distinct scenes.

    Each scene has its own solid base color (``scene_color``) with a horizontal
    brightness gradient, plus a white square moving across the frame (so that
    consecutive frames differ). ``size`` is ``(width, height)``; scene frame ranges are
    given by ``scene_bounds``. The container format follows the suffix of ``path``.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = int(size[0]), int(size[1])
    if width % 2 or height % 2:
        raise ValueError(f"size must be even for yuv420p, got {size}")
    bounds = scene_bounds(seconds, fps, scenes)
    n_frames = bounds[-1][1]

    xs = np.linspace(0.6, 1.0, width, dtype=np.float32)[None, :, None]
    bases = [
        np.broadcast_to(np.array(scene_color(i), np.float32) * xs, (height, width, 3))
        .astype(np.uint8)
        for i in range(len(bounds))
    ]
    sq = max(4, min(width, height) // 5)

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        # Keep our own copy: the muxer may rewrite stream.time_base (mp4 -> 1/10240) once the
        # header is written, and frames stamped with that would collapse to duplicate pts.
        time_base = Fraction(1, fps)
        stream.time_base = time_base
        stream.codec_context.gop_size = max(1, fps)  # a keyframe every second: cheap seeks
        stream.bit_rate = max(200_000, width * height * fps * 2)
        for scene, (start, stop) in enumerate(bounds):
            for i in range(start, stop):
                img = bases[scene].copy()
                t = (i - start) / max(1, stop - start - 1)
                x = int(t * (width - sq))
                y = int((0.5 + 0.4 * np.sin(2 * np.pi * i / max(fps, 1))) * (height - sq))
                img[y:y + sq, x:x + sq] = 255
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = i
                frame.time_base = time_base
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert n_frames > 0
    return path


# ---------------------------------------------------------------------------
# On-screen captions at known times (tests, benchmarks, the demo)
# ---------------------------------------------------------------------------

import functools  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Iterator, Sequence  # noqa: E402

_FONT_PATHS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans-Bold.ttf",
)
CAPTION_BOX_RGB = (0, 0, 0)  # the opaque box behind the text
CAPTION_TEXT_RGB = (255, 255, 255)


@dataclass(frozen=True)
class Caption:
    """``text`` shown on the frames whose time is in ``[start_s, end_s)``."""

    start_s: float
    end_s: float
    text: str
    position: str = "center"  # "center" | "top" | "bottom"

    def shows_at(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


DEMO_CAPTIONS: tuple[Caption, ...] = (
    Caption(4.0, 9.0, "DOCK 4 OPEN"),
    Caption(15.0, 20.0, "TRUCK 22 ARRIVED"),
)


@functools.lru_cache(maxsize=1)
def caption_font_path() -> str | None:
    """DejaVu Sans Bold: the Debian path, else whatever ``fc-match`` names; None if neither."""
    for p in _FONT_PATHS:
        if Path(p).is_file():
            return p
    fc = shutil.which("fc-match")
    if fc:
        try:
            out = subprocess.run([fc, "-f", "%{file}", "DejaVu Sans:bold"], capture_output=True, text=True,
                                 timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and Path(out).is_file():
            return out
    return None


@functools.lru_cache(maxsize=64)
def _font(px: int):
    from PIL import ImageFont

    path = caption_font_path()
    if path:
        try:
            return ImageFont.truetype(path, px)
        except OSError:
            pass
    return ImageFont.load_default(size=px)  # Pillow >= 10.1: a scalable built-in font


@functools.lru_cache(maxsize=256)
def _caption_patch(text: str, width: int, height: int, position: str, scale: float):
    """(x0, y0, patch) of the boxed caption for a ``width`` x ``height`` frame; patch is RGB uint8."""
    from PIL import Image, ImageDraw

    if position not in ("center", "top", "bottom"):
        raise ValueError(f"position must be center, top or bottom, got {position!r}")
    if not text:
        raise ValueError("empty caption text")
    px = max(6, int(round(scale * height)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    max_w = int(width * 0.92)
    while True:
        font = _font(px)
        left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        if tw + 2 * max(2, px // 3) <= max_w or px <= 6:
            break
        px = max(6, int(px * max_w / (tw + 2 * max(2, px // 3)) * 0.97))
    pad = max(2, px // 3)
    bw, bh = min(width, tw + 2 * pad), min(height, th + 2 * pad)
    box = Image.new("RGB", (bw, bh), CAPTION_BOX_RGB)
    ImageDraw.Draw(box).text((pad - left, pad - top), text, font=font, fill=CAPTION_TEXT_RGB)
    x0 = (width - bw) // 2
    margin = max(2, height // 20)
    y0 = {"top": margin, "bottom": height - bh - margin, "center": (height - bh) // 2}[position]
    patch = np.asarray(box, dtype=np.uint8)
    patch.setflags(write=False)
    return x0, max(0, y0), patch


def caption_box(width: int, height: int, text: str, *, position: str = "center",
                scale: float = 0.12) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of the box ``render_caption`` draws on a ``width`` x ``height`` frame."""
    x0, y0, patch = _caption_patch(text, int(width), int(height), position, float(scale))
    return x0, y0, x0 + patch.shape[1], y0 + patch.shape[0]


def render_caption(frame: np.ndarray, text: str, *, position: str = "center", scale: float = 0.12) -> np.ndarray:
    """A copy of ``frame`` (H x W x 3 uint8 RGB) with ``text`` in white on an opaque black box.

    ``scale`` is the font size as a fraction of the frame height; the font shrinks until the
    box fits in 92 % of the frame width. The box is centred horizontally; ``position`` puts it
    in the middle, near the top or near the bottom (``caption_box`` gives its rectangle).
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be H x W x 3 uint8, got {frame.shape} {frame.dtype}")
    h, w = frame.shape[:2]
    x0, y0, patch = _caption_patch(text, w, h, position, float(scale))
    out = frame.copy()
    out[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]] = patch
    return out


def pattern_frames(seconds: float, fps: int = 10, size: tuple[int, int] = (160, 120),
                   scenes: int = 4) -> Iterator[np.ndarray]:
    """The RGB frames ``synthetic_video`` encodes for the same arguments (same scenes, same square)."""
    width, height = int(size[0]), int(size[1])
    bounds = scene_bounds(seconds, fps, scenes)
    xs = np.linspace(0.6, 1.0, width, dtype=np.float32)[None, :, None]
    sq = max(4, min(width, height) // 5)
    for scene, (start, stop) in enumerate(bounds):
        base = np.broadcast_to(np.array(scene_color(scene), np.float32) * xs, (height, width, 3)).astype(np.uint8)
        for i in range(start, stop):
            img = base.copy()
            t = (i - start) / max(1, stop - start - 1)
            x = int(t * (width - sq))
            y = int((0.5 + 0.4 * np.sin(2 * np.pi * i / max(fps, 1))) * (height - sq))
            img[y:y + sq, x:x + sq] = 255
            yield img


def _h264_codec() -> str:
    import av

    for name in ("libx264", "h264"):
        try:
            if av.codec.Codec(name, "w").type == "video":
                return name
        except Exception:  # noqa: BLE001  (not built into this PyAV)
            continue
    return "mpeg4"


def _decode_source(src: Path, size: tuple[int, int] | None) -> tuple[list[np.ndarray], Fraction, tuple[int, int]]:
    """All frames of ``src`` as RGB arrays (scaled to ``size``), its frame rate and frame size."""
    import av

    frames: list[np.ndarray] = []
    with av.open(str(src)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        if size is None:
            w = (stream.codec_context.width // 2) * 2
            h = (stream.codec_context.height // 2) * 2
        else:
            w, h = int(size[0]), int(size[1])
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24", width=w, height=h))
    if not frames:
        raise ValueError(f"no video frames in {src}")
    return frames, Fraction(rate).limit_denominator(1001), (w, h)


def captioned_video(
    src: Path | None,
    dst: Path,
    captions: Sequence[Caption],
    *,
    seconds: float | None = None,
    fps: float | None = None,
    size: tuple[int, int] | None = None,
    loop: int = 1,
    scale: float = 0.12,
    scenes: int = 4,
    codec: str | None = None,
    preset: str = "superfast",
    crf: int = 23,
) -> Path:
    """Write ``src`` (looped) with ``captions`` burnt in to ``dst`` (H.264, else mpeg4).

    ``src``: a video file, decoded with PyAV, or None for the ``synthetic_video`` test pattern
    (``seconds`` long, default 24 s, at ``fps`` (default 10) with ``scenes`` scenes).
    The output runs ``seconds`` if given, else ``loop`` times the source; the source repeats by
    frame index (output time ``t`` shows source frame ``floor((t mod source length) * source
    fps)``), so a one-hour file is as cheap per frame as a short one. ``fps`` (default: the
    source's) and ``size`` (``(width, height)``, even; default: the source's) let long files
    stay small, e.g. 320x180 at 5 fps. A caption is drawn on every output frame whose time
    ``i / fps`` lies in ``[start_s, end_s)``. Frames are keyed by (source frame, captions
    shown) and converted to YUV once per key, so looping costs only encoding. H.264 runs at
    ``preset`` / ``crf`` (superfast / 23: an hour at 320x180, 5 fps, takes about 15 s on two
    busy cores; "ultrafast" halves that for bigger files). A keyframe every second.
    """
    import av

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if loop < 1:
        raise ValueError(f"loop must be >= 1, got {loop}")
    if size is not None and (int(size[0]) % 2 or int(size[1]) % 2):
        raise ValueError(f"size must be even for yuv420p, got {size}")
    captions = list(captions)

    if src is None:
        pat_seconds = 24.0 if seconds is None else float(seconds)
        pat_fps = int(round(fps)) if fps is not None else 10
        if pat_fps < 1 or abs(pat_fps - (fps or pat_fps)) > 1e-9:
            raise ValueError(f"the test pattern needs a whole fps >= 1, got {fps}")
        src_size = tuple(size) if size is not None else (160, 120)
        src_frames = list(pattern_frames(pat_seconds, pat_fps, src_size, scenes))
        src_rate = Fraction(pat_fps)
        width, height = src_size
        if seconds is None:
            seconds = loop * len(src_frames) / pat_fps
    else:
        src_frames, src_rate, (width, height) = _decode_source(Path(src), size)
    out_rate = Fraction(fps).limit_denominator(1001) if fps is not None else src_rate
    if out_rate <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    n_src = len(src_frames)
    src_len = Fraction(n_src) / src_rate
    total_s = Fraction(seconds).limit_denominator(1000) if seconds is not None else loop * src_len
    n_out = int(math.floor(total_s * out_rate + Fraction(1, 10 ** 6)))
    if n_out < 1:
        raise ValueError(f"output would have no frames ({float(total_s)} s at {float(out_rate)} fps)")

    codec = codec or _h264_codec()
    time_base = Fraction(1) / out_rate  # our own copy: the muxer may rewrite stream.time_base
    cache: dict[tuple, object] = {}
    with av.open(str(dst), mode="w") as container:
        stream = container.add_stream(codec, rate=out_rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = time_base
        stream.codec_context.gop_size = max(1, int(round(float(out_rate))))  # a keyframe a second
        if codec in ("libx264", "h264"):
            stream.options = {"preset": preset, "crf": str(int(crf))}
        else:
            stream.bit_rate = max(400_000, width * height * int(math.ceil(float(out_rate))) * 2)
        for i in range(n_out):
            t_out = Fraction(i) / out_rate
            j = min(n_src - 1, int(((t_out % src_len) * src_rate) + Fraction(1, 10 ** 6)))
            t = float(t_out)
            shown = tuple(k for k, c in enumerate(captions) if c.shows_at(t))
            key = (j, shown)
            frame = cache.get(key)
            if frame is None:
                img = src_frames[j]
                for k in shown:
                    img = render_caption(img, captions[k].text, position=captions[k].position, scale=scale)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
                if len(cache) >= 4096:
                    cache.clear()
                cache[key] = frame
            frame.pts = i
            frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return dst


def captioned_synthetic_video(
    path: Path,
    seconds: float = 24,
    fps: int = 10,
    size: tuple[int, int] = (320, 240),
    scenes: int = 4,
    captions: Sequence[Caption] = DEMO_CAPTIONS,
) -> tuple[Path, list[Caption]]:
    """The demo clip: the ``synthetic_video`` test pattern with ``captions`` burnt in.

    Defaults: the 24-s, 10-fps, 4-scene pattern at 320x240 (text is legible at that size),
    with "DOCK 4 OPEN" on screen from 4 s to 9 s and "TRUCK 22 ARRIVED" from 15 s to 20 s.
    Returns the path and the captions.
    """
    captions = list(captions)
    out = captioned_video(None, Path(path), captions, seconds=seconds, fps=fps, size=size, scenes=scenes)
    return out, captions
