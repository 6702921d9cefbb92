"""Baselines the benchmarks share."""
from __future__ import annotations

import time
from pathlib import Path

import av


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


def log(msg: str) -> None:
    """Progress on standard error (the tables go to standard output)."""
    import sys

    print(f"[bench] {msg}", file=sys.stderr, flush=True)
