"""The store past one machine: time per chunk write on a Redis Cluster vs one Redis, the cost of WAIT for a
replica, and how the fleet's coordination (claims, heartbeats, adoption scans) grows with workers and streams.

Everything calls the production store (memory.store.MemoryStore through memory.store.client.connect). The
chunks are real tiny-model chunks encoded once up front (a cheap encoder: the store is what is measured), at the
tiny model's layout; the per-chunk figures are for that layout's bytes (shown), so the ratio between the stores
is the result, not the absolute time. Both stores run here on loopback: one redis-server, and a 3-master +
3-replica cluster started by testkit/redis_cluster.py (with and without VIGIL_REDIS_WAIT_REPLICAS=1).

    .venv/bin/python benchmarks/bench_fleet.py              # about a minute
    .venv/bin/python benchmarks/bench_fleet.py --quick      # a smoke run (fewer chunks and streams)
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import log, md_table, pct  # noqa: E402


@dataclass
class Clip:
    rec: object
    payload: object
    keys: object
    working: object


def encode_clips(n: int):
    """n real chunks of the tiny model (random weights) on drifting synthetic frames: what put_chunk stores."""
    from encoders.loading import ModelOptions, load_adapter
    from memory.options import MemoryOptions
    from memory.store import ChunkRecord
    from memory.working import WorkingState, context, step

    ad = load_adapter(ModelOptions(name="tiny", device="cpu"), cache_dir=Path.home() / ".cache" / "vigil" / "vigil")
    opts = MemoryOptions()
    prefix = ad.encode_prefix()
    state, out = WorkingState.empty(prefix), []
    rs = np.random.RandomState(3)
    for i in range(n):
        frames = rs.randint(0, 255, (8, 56, 56, 3)).astype(np.uint8)
        enc = ad.ingest_clip(frames, 1.0, i * 8, (i + 1) * 8, context(prefix, state), key_rows=opts.retrieval_keys)
        done = step(prefix, state, enc, 0.0, opts)
        state = done.state
        rec = ChunkRecord(chunk_id=i, start_s=i * 8, end_s=(i + 1) * 8, frames=8, tokens=done.chunk.length,
                          keyframe_s=i * 8, span_start=done.span[0], span_end=done.span[1])
        out.append(Clip(rec, done.chunk, enc.segment.retrieval, done.state))
    return ad, prefix, out


def one_redis() -> tuple[subprocess.Popen, str, Path]:
    from testkit.redis_cluster import _free_ports

    d = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    port = _free_ports(1)[0]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(d)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    import redis

    for _ in range(200):
        try:
            redis.Redis(port=port).ping()
            break
        except redis.RedisError:
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0", d


def chunk_writes(url: str, ad, prefix, clips: list[Clip], streams: int, wait: int) -> tuple[list[float], int]:
    """Seconds per put_chunk (snapshot every 8th chunk, as a stream with VIGIL_WORKING_SNAPSHOT_CHUNKS=8), over
    `streams` streams written round-robin; and the bytes per chunk."""
    from memory.store import Checkpoint, MemoryStore, StreamRecord
    from memory.store.client import connect

    client = connect(url, socket_timeout=10)
    store = MemoryStore(client, f"bench-{uuid.uuid4().hex[:6]}", ad.spec.layout, ad.spec.fingerprint,
                        wait_replicas=wait, wait_timeout_ms=2000)
    sids = [f"s{i}" for i in range(streams)]
    fences = {}
    for sid in sids:
        store.create_stream(StreamRecord(stream_id=sid, source="bench"))
        fences[sid] = store.claim(sid, "bench", 600_000)
        store.put_prefix(sid, prefix)
    times, size = [], 0
    for c in clips:
        for sid in sids:
            ck = Checkpoint(next_clip=c.rec.chunk_id + 1, after_s=c.rec.end_s, frames_total=(c.rec.chunk_id + 1) * 8)
            t0 = time.perf_counter()
            size = store.put_chunk(sid, c.rec, c.payload, c.keys, b"\xff\xd8jpeg" * 256, (c.rec.chunk_id + 1) * 8,
                                   fence=fences[sid], working=c.working if c.rec.chunk_id % 8 == 0 else None,
                                   counters=c.working, checkpoint=ck)
            times.append(time.perf_counter() - t0)
    for sid in sids:
        store.delete_stream(sid)
    client.close()
    return times, size


def coordination(url: str, ad, workers: int, streams: int, rounds: int) -> dict[str, float]:
    """The fleet's Redis work, as services/ingest.py does it: claims of `streams` streams spread over `workers`
    (each its own client), then `rounds` heartbeats, each worker renewing its leases (and reading each stream's
    record, as the heartbeat does) and scanning for orphans (the active set read against the records, then who
    holds each lease). Returns seconds: one claim, one heartbeat round of the whole fleet, one worker's scan."""
    from memory.store import MemoryStore, StreamRecord
    from memory.store.client import connect

    ns = f"bench-{uuid.uuid4().hex[:6]}"
    stores = [MemoryStore(connect(url, socket_timeout=10), ns, ad.spec.layout, ad.spec.fingerprint)
              for _ in range(workers)]
    sids = [f"s{i:05d}" for i in range(streams)]
    owned: list[list[tuple[str, str]]] = [[] for _ in range(workers)]
    t0 = time.perf_counter()
    for i, sid in enumerate(sids):
        st = stores[i % workers]
        st.create_stream(StreamRecord(stream_id=sid, source="bench"))
        owned[i % workers].append((sid, st.claim(sid, f"w{i % workers}", 600_000)))
    claim = (time.perf_counter() - t0) / streams
    beats, scans = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for w, st in enumerate(stores):
            for sid, tok in owned[w]:
                st.renew(sid, tok, 600_000)
                st.get_stream(sid)
            s0 = time.perf_counter()
            cand = st.active_ids()
            st.holders(cand)
            scans.append(time.perf_counter() - s0)
        beats.append(time.perf_counter() - t0)
    for sid in sids:
        stores[0].delete_stream(sid)
    for st in stores:
        st.r.close()
    return {"claim": claim, "beat": float(np.median(beats)), "scan": float(np.median(scans))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=40, help="chunks per stream in the write test")
    ap.add_argument("--streams", type=int, default=4, help="streams written round-robin in the write test")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 8 chunks, 2 streams, small fleets")
    a = ap.parse_args(argv)
    from testkit.redis_cluster import LocalCluster

    chunks, streams = (8, 2) if a.quick else (a.chunks, a.streams)
    fleets = [(1, 10), (4, 100)] if a.quick else [(1, 10), (4, 100), (4, 1000), (16, 1000)]
    log(f"encoding {chunks} tiny-model chunks")
    ad, prefix, clips = encode_clips(chunks)
    proc, single, tmp = one_redis()
    cluster = LocalCluster(masters=3, replicas=1).start()
    try:
        log("chunk writes")
        rows, base = [], None
        for name, url, wait in (("one Redis", single, 0), ("cluster 3+3", cluster.url, 0),
                                ("cluster 3+3, WAIT 1 replica", cluster.url, 1)):
            chunk_writes(url, ad, prefix, clips[:2], 1, wait)  # warm: scripts loaded, connections open
            ts, size = chunk_writes(url, ad, prefix, clips, streams, wait)
            p50 = pct(ts, 50)
            base = base or p50
            rows.append([name, f"{size / 1024:.0f}", f"{p50 * 1000:.2f}", f"{pct(ts, 95) * 1000:.2f}",
                         f"{p50 / base:.2f}x"])
        print("\n### Store time per chunk (put_chunk, tiny layout; loopback)\n")
        print(md_table(["store", "KiB/chunk", "p50 ms", "p95 ms", "p50 vs one Redis"], rows))
        log("coordination")
        rows = []
        for workers, n in fleets:
            one = coordination(single, ad, workers, n, 3)
            cl = coordination(cluster.url, ad, workers, n, 3)
            rows.append([str(workers), str(n), f"{one['claim'] * 1000:.2f}", f"{cl['claim'] * 1000:.2f}",
                         f"{one['beat'] * 1000:.1f}", f"{cl['beat'] * 1000:.1f}", f"{one['scan'] * 1000:.1f}",
                         f"{cl['scan'] * 1000:.1f}"])
        print("\n### Coordination: claims, one heartbeat round of the whole fleet, one adoption scan\n")
        print(md_table(["workers", "streams", "claim ms (one)", "claim ms (cluster)", "fleet heartbeat ms (one)",
                        "fleet heartbeat ms (cluster)", "scan ms (one)", "scan ms (cluster)"], rows))
    finally:
        cluster.stop()
        proc.terminate()
        proc.wait(10)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
