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
