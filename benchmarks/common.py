"""What the benchmarks share: the baselines they compare against (raw decode, the ingest front end) and their
reporting helpers (progress lines, percentiles, Markdown tables)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import av
import numpy as np


def raw_decode(path: Path) -> tuple[int, float]:
    """Decode every frame with PyAV (thread_type "AUTO", as FileSource sets it), touching nothing else.
    Returns (frames, seconds)."""
    t0 = time.perf_counter()
    n = 0
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for _ in c.decode(stream):
            n += 1
    return n, time.perf_counter() - t0


def front_end(path: Path, fps: float, max_side: int, clip_frames: int) -> dict:
    """The ingest front end exactly as ingest runs it: FileSource -> streamer.frontend.scored_frames
    (sample, RGB at max_side, SceneDetector.score, resume state per frame) -> ClipBuilder."""
    from streamer.frontend import scored_frames
    from streamer.keyframes import SceneDetector
    from streamer.sampling import ClipBuilder, Sampler
    from streamer.source import FileSource

    consumed = sampled = cuts = clips = 0
    t0 = time.perf_counter()
    with FileSource(path) as src:
        def counted():
            nonlocal consumed
            for f in src.frames():
                consumed += 1
                yield f
        builder = ClipBuilder(clip_frames, 1.0 / fps)
        for f in scored_frames(counted(), Sampler(fps), SceneDetector(), max_side):
            sampled += 1
            cuts += f.cut
            clips += builder.push(f) is not None
        clips += builder.flush() is not None
    return {"fps": fps, "source_frames": consumed, "sampled_frames": sampled, "cuts": cuts, "clips": clips,
            "seconds": time.perf_counter() - t0}


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def log(msg: str, tag: str = "bench", clock: bool = False) -> None:
    """Progress on standard error (the tables go to standard output): `[tag] msg`, with the time of day after the
    tag when `clock` (long runs)."""
    stamp = f" {time.strftime('%H:%M:%S')}" if clock else ""
    print(f"[{tag}{stamp}] {msg}", file=sys.stderr, flush=True)


def pct(xs, q: float) -> float:
    """The q-th percentile of `xs` with linear interpolation (numpy's default); NaN when there is none."""
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if len(xs) else float("nan")


def ms(seconds: float) -> str:
    """Seconds as whole milliseconds, for a table cell."""
    return f"{seconds * 1000:.0f}"
