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
