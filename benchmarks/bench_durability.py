"""What durable chunk writes cost: the private redis-server's append-only file fsynced before every reply
(`VIGIL_REDIS_FSYNC=always`, the default) against once a second (`everysec`, which can lose the last second or
two of acknowledged writes to a SIGKILL), at the tiny model's layout and the real Qwen2.5-VL-3B / -7B KV layouts.

    python benchmarks/bench_durability.py            # 60 chunks per layout and policy
    python benchmarks/bench_durability.py --chunks 20

Each write goes through the service's own code: `memory.working.step` on synthetic clips of the real shapes,
`memory.delta.working_write` (a snapshot every 64 chunks), `MemoryStore.put_chunk` on `EmbeddedRedis` (the
class `vigil serve` starts) with the policy under test. Reported: ms per chunk (median, p95) and the ratio
always / everysec, measured in the same run, on this machine's disk.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import redis  # noqa: E402

from benchmarks.bench_answer_path import CLIP_S, LAYOUTS, QUERY_HEADS, block_keys, steps, unit  # noqa: E402
from benchmarks.common import log, md_table  # noqa: E402
from encoders.kv_layout import KVLayout  # noqa: E402
from memory.delta import working_write  # noqa: E402
from memory.options import MemoryOptions  # noqa: E402
from memory.store import Checkpoint, ChunkRecord, MemoryStore, StreamRecord  # noqa: E402
from memory.working import WorkingState  # noqa: E402
from services.embedded_redis import EmbeddedRedis  # noqa: E402
from streamer.sampling import jpeg  # noqa: E402

TINY = KVLayout(num_layers=2, num_kv_heads=2, head_dim=32, position_dims=3, dtype="float32", feature_dim=64)


def writes(lay: KVLayout, heads: int, fsync: str, n: int) -> list[float]:
    """Seconds of each of `n` production chunk writes on a private redis-server with `fsync`."""
    prefix, run = steps(lay, heads, 8, MemoryOptions())
    rs = np.random.RandomState(1)
    frame = (np.linspace(0, 255, 448 * 190 * 3).reshape(190, 448, 3)).astype(np.uint8)
    server = EmbeddedRedis(fsync=fsync).start()
    try:
        r = redis.Redis(unix_socket_path=str(server.socket))
        store = MemoryStore(r, "durability", lay, "bench")
        store.create_stream(StreamRecord(stream_id="s", source="synthetic"))
        fence = store.claim("s", "bench", 600_000)
        since, out = None, []
        for i in range(n):
            prev, done = run[i % len(run)]
            working = working_write(prev, done.state, since, 64, False)
            rec = ChunkRecord(i, i * CLIP_S, (i + 1) * CLIP_S, 8, done.chunk.length, i * CLIP_S)
            t = time.perf_counter()
            store.put_chunk("s", rec, done.chunk, block_keys(lay, rs), jpeg(frame), (i + 1) * 8, fence=fence,
                            dense={"ocr": unit(rs)}, working=working,
                            checkpoint=Checkpoint(i + 1, (i + 1) * CLIP_S, (i + 1) * 8), counters=done.state)
            out.append(time.perf_counter() - t)
            since = 0 if isinstance(working, WorkingState) else since + 1
        return out
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=60)
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    a = ap.parse_args()
    rows, figures = [], {}
    for name, lay, heads in (("tiny", TINY, 4), ("3B", LAYOUTS["3B"], QUERY_HEADS["3B"]),
                             ("7B", LAYOUTS["7B"], QUERY_HEADS["7B"])):
        got = {}
        for fsync in ("everysec", "always"):
            secs = writes(lay, heads, fsync, a.chunks)
            got[fsync] = {"median_ms": 1000 * statistics.median(secs),
                          "p95_ms": 1000 * float(np.percentile(secs, 95))}
            log(f"{name} {fsync}: {got[fsync]['median_ms']:.1f} ms median per chunk")
        ratio = got["always"]["median_ms"] / got["everysec"]["median_ms"]
        figures[name] = {**got, "ratio_always_over_everysec": ratio}
        rows.append([name, f"{got['everysec']['median_ms']:.1f} / {got['everysec']['p95_ms']:.1f}",
                     f"{got['always']['median_ms']:.1f} / {got['always']['p95_ms']:.1f}", f"{ratio:.2f}x"])
    print(md_table(["layout", "everysec ms (median / p95)", "always ms (median / p95)", "always / everysec"], rows))
    if a.out:
        a.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
