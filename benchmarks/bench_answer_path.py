"""What a stream writes to Redis, and where one question's time goes, at the tiny model and at the real
Qwen2.5-VL-3B and -7B KV layouts, before and after the working memory moved only what changed.

    python benchmarks/bench_answer_path.py            # 10 min, 1 h, 6 h and 24 h of stored memory (~10 min)
    python benchmarks/bench_answer_path.py --quick    # 10 min and 1 h (what the tests run)

Everything goes through the service's own code on a private `redis-server` (its INFO counters count the bytes):

1. **Writes, end to end (tiny model):** a real 10-minute file ingested by an in-process server, once with the
   previous policy (`VIGIL_WORKING_SNAPSHOT_CHUNKS=1`: the whole working memory with every chunk) and once with
   the defaults; Redis bytes received / the stream's chunk bytes (write amplification).
2. **Writes at 3B and 7B:** `memory.working.step` on synthetic clips of the real shapes (1,024 candidates per
   clip: 8 frames at 448 px; a full 2,048-token working memory), then `MemoryStore.put_chunk` with what
   `memory.delta.working_write` decides, for an hour of chunks (450; 130 in --quick and with deltas): bytes per
   chunk and per stream-hour, for the previous policy, the default (a snapshot every 64 chunks) and with deltas
   on; tokens entering the working memory per clip and layer.
3. **A question's host-side time at 3B and 7B:** late-interaction search over N chunks' keys (`StreamIndex`, the
   frame-index vector too), the top-4 chunks read in one round trip (`chunk_payloads`) and decoded, the working
   memory (resident: a version check; the previous path: a whole read), assembly (`answer_memory`), gaps; index
   RAM. N = 75 (10 min), 450 (1 h), 2,700 (6 h), 10,800 (24 h) chunks of 8 s. No model weights at these sizes on
   CPU, so no prefill or decoding here.
4. **A question end to end (tiny model):** `services.qa.prepare` + `generate` on a Runtime (role all) with N
   chunks stored through `put_chunk`: the time of each stage (`Prepared.timings`), time to first answer text
   and per further token, at each N; the ratio 24 h / 10 min.
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
import torch  # noqa: E402

from benchmarks.common import log, md_table  # noqa: E402
from encoders.base import ClipEncoding, EncodedSegment  # noqa: E402
from encoders.kv_layout import KVLayout  # noqa: E402
from encoders.retrieval import BlockKeys, QueryKeys  # noqa: E402
from memory.assemble import answer_memory  # noqa: E402
from memory.codec import decode_chunk  # noqa: E402
from memory.delta import diff, working_write  # noqa: E402
from memory.index import Query, StreamIndex  # noqa: E402
from memory.options import MemoryOptions  # noqa: E402
from memory.resident import ResidentMemory  # noqa: E402
from memory.store import Checkpoint, ChunkRecord, IndexRow, MemoryStore, StreamRecord  # noqa: E402
from memory.working import WorkingState, step  # noqa: E402
from services.embedded_redis import EmbeddedRedis  # noqa: E402
from streamer.sampling import jpeg  # noqa: E402

CLIP_S = 8.0
CHUNKS_PER_HOUR = int(3600 / CLIP_S)  # 450
CANDIDATES = 1024  # clip tokens: 8 frames at 448 x 448 through Qwen2.5-VL's 14-px patches, 2x2 merge, 2-frame groups
FRAMES_PER_CLIP = 4  # temporal frame groups
LAYOUTS = {  # Qwen2.5-VL-3B / -7B language models (their published configs), bfloat16 KV
    "3B": KVLayout(num_layers=36, num_kv_heads=2, head_dim=128, position_dims=3, dtype="bfloat16", feature_dim=2048),
    "7B": KVLayout(num_layers=28, num_kv_heads=4, head_dim=128, position_dims=3, dtype="bfloat16", feature_dim=3584),
}
QUERY_HEADS = {"3B": 16, "7B": 28}
RETRIEVAL_LAYERS = 2
QUESTION_TOKENS = 12
TOP_K = 4


def redis_in(r: redis.Redis) -> int:
    return int(r.info("stats")["total_net_input_bytes"])


def redis_out(r: redis.Redis) -> int:
    return int(r.info("stats")["total_net_output_bytes"])


# ---- synthetic clips of the real shapes --------------------------------------------------------------------
def synthetic_clip(lay: KVLayout, heads: int, start_pos: int, g: torch.Generator) -> ClipEncoding:
    L, hkv, D = lay.num_layers, lay.num_kv_heads, lay.head_dim
    dt = lay.torch_dtype
    c = CANDIDATES
    keys = torch.randn(L, hkv, c, D, generator=g).to(dt)  # [L, Hkv, c, D]
    values = torch.randn(L, hkv, c, D, generator=g).to(dt)
    pos = torch.arange(start_pos, start_pos + c)[None].expand(3, -1).contiguous()  # [3, c]
    seg = EncodedSegment(keys, values, pos, start_pos + c, start_pos + c - 1, None)
    frame_ids = torch.arange(c) * FRAMES_PER_CLIP // c  # [c]
    q = torch.randn(L, heads, 8, D, generator=g).to(dt)  # [L, H, Q, D] the proxy opener's queries
    k = torch.randn(L, hkv, 8, D, generator=g).to(dt)
    return ClipEncoding(seg, frame_ids, FRAMES_PER_CLIP, torch.zeros(c, 1), q, k)


def synthetic_prefix(lay: KVLayout, g: torch.Generator, n: int = 24) -> EncodedSegment:
    L, hkv, D = lay.num_layers, lay.num_kv_heads, lay.head_dim
    return EncodedSegment(torch.randn(L, hkv, n, D, generator=g).to(lay.torch_dtype),
                          torch.randn(L, hkv, n, D, generator=g).to(lay.torch_dtype),
                          torch.arange(n)[None].expand(3, -1).contiguous(), n, n - 1, None)


def block_keys(lay: KVLayout, rs: np.random.RandomState, m: int = 64) -> BlockKeys:
    C = RETRIEVAL_LAYERS * lay.num_kv_heads
    mean = rs.randn(lay.num_kv_heads * lay.head_dim).astype(np.float32)
    return BlockKeys(rs.randn(C, m, lay.head_dim).astype(np.float16), mean / np.linalg.norm(mean))


def unit(rs, d=384) -> np.ndarray:
    v = rs.randn(d).astype(np.float32)
    return v / np.linalg.norm(v)


def steps(lay: KVLayout, heads: int, n: int, opts: MemoryOptions) -> tuple[EncodedSegment, list]:
    """n consecutive production steps from a full working memory: [(before, Step)], and tokens entering per
    clip and layer."""
    g = torch.Generator().manual_seed(0)
    prefix = synthetic_prefix(lay, g)
    state = WorkingState.empty(prefix)
    out = []
    for i in range(n + 2):  # two clips fill the 2,048-token memory
        enc = synthetic_clip(lay, heads, state.next_pos, g)
        done = step(prefix, state, enc, 0.0, opts)
        if i >= 2:
            out.append((state, done))
        state = done.state
    return prefix, out


# ---- 2. writes at the real layouts ----------------------------------------------------------------------
def bench_writes(name: str, lay: KVLayout, r: redis.Redis, n_chunks: int) -> dict:
    opts = MemoryOptions()
    t0 = time.perf_counter()
    prefix, run = steps(lay, QUERY_HEADS[name], 8, opts)
    log(f"{name}: 10 production steps in {time.perf_counter() - t0:.1f} s")
    entered = [diff(b, d.state).entered / lay.num_layers for b, d in run]
    rs = np.random.RandomState(1)
    frame = (np.linspace(0, 255, 448 * 190 * 3).reshape(190, 448, 3)).astype(np.uint8)
    out = {"entered_per_layer": statistics.mean(entered), "working_tokens": run[0][1].state.tokens.length,
           "candidates": CANDIDATES}
    for policy, every, deltas in (("previous: whole memory every chunk", 1, False),
                                  ("default: snapshot every 64 chunks", 64, False),
                                  ("snapshot every 64 + deltas", 64, True)):
        store = MemoryStore(r, f"bench-{name}-{every}-{int(deltas)}", lay, "bench")
        sid = "s"
        store.create_stream(StreamRecord(stream_id=sid, source="synthetic"))
        fence = store.claim(sid, "bench", 600_000)
        # the previous policy writes the same per chunk every time; deltas reach their steady size at once
        n = 8 if every == 1 else min(n_chunks, 130) if deltas else n_chunks
        before_in, since, chunk_bytes = redis_in(r), None, 0
        t = time.perf_counter()
        for i in range(n):
            prev, done = run[i % len(run)]
            working = working_write(prev, done.state, since, every, deltas)
            rec = ChunkRecord(i, i * CLIP_S, (i + 1) * CLIP_S, 8, done.chunk.length, i * CLIP_S)
            chunk_bytes += store.put_chunk(sid, rec, done.chunk, block_keys(lay, rs), jpeg(frame), (i + 1) * 8,
                                           fence=fence, dense={"ocr": unit(rs)}, working=working,
                                           checkpoint=Checkpoint(i + 1, (i + 1) * CLIP_S, (i + 1) * 8),
                                           counters=done.state)
            since = 0 if isinstance(working, WorkingState) else since + 1
        secs = time.perf_counter() - t
        written = redis_in(r) - before_in
        out[policy] = {"chunks": n, "redis_bytes_per_chunk": written / n, "chunk_bytes": chunk_bytes / n,
                       "per_hour_gb": written / n * CHUNKS_PER_HOUR / 1e9,
                       "chunks_per_hour_gb": chunk_bytes / n * CHUNKS_PER_HOUR / 1e9,
                       "amplification": written / chunk_bytes, "ms_per_chunk": 1000 * secs / n}
        store.delete_stream(sid)
        log(f"{name}: {policy}: {written / n / 1e6:.1f} MB per chunk")
    return out


# ---- 3. a question's host-side time at the real layouts -------------------------------------------------
def bench_question_host(name: str, lay: KVLayout, r: redis.Redis, lengths: list[int], reps: int) -> list[dict]:
    opts = MemoryOptions()
    prefix, run = steps(lay, QUERY_HEADS[name], 4, opts)
    state = run[-1][1].state
    store = MemoryStore(r, f"benchq-{name}", lay, "bench")
    sid = "q"
    store.create_stream(StreamRecord(stream_id=sid, source="synthetic"))
    fence = store.claim(sid, "bench", 600_000)
    store.put_prefix(sid, prefix)
    rs = np.random.RandomState(2)
    stored = 16  # chunks with real-shaped KV in Redis: a question reads its top-4 of them
    for i in range(stored):
        _, done = run[i % len(run)]
        store.put_chunk(sid, ChunkRecord(i, i * CLIP_S, (i + 1) * CLIP_S, 8, done.chunk.length, i * CLIP_S),
                        done.chunk, block_keys(lay, rs), b"jpeg", (i + 1) * 8, fence=fence,
                        working=state if i == stored - 1 else (state if i == 0 else None),
                        checkpoint=Checkpoint(i + 1, (i + 1) * CLIP_S, (i + 1) * 8), counters=state)
    resident = ResidentMemory(store, "cpu", 1 << 40)
    resident.publish(sid, prefix, state, stored - 1)  # role all: the ingesting worker's live copy
    C = RETRIEVAL_LAYERS * lay.num_kv_heads
    G = QUERY_HEADS[name] // lay.num_kv_heads
    out = []
    for n in lengths:
        idx = StreamIndex(RETRIEVAL_LAYERS)
        t = time.perf_counter()
        for a in range(0, n, 256):  # as ingest appends them
            rows = []
            for i in range(a, min(n, a + 256)):
                keys = block_keys(lay, rs)
                rows.append(IndexRow(ChunkRecord(i, i * CLIP_S, (i + 1) * CLIP_S, 8, 32, i * CLIP_S), keys.mean,
                                     keys.tokens, {"ocr": unit(rs)}))
            idx.add(rows)
        build_s = time.perf_counter() - t
        row: dict = {"hours": n / CHUNKS_PER_HOUR, "chunks": n, "index_mb": idx.nbytes / 1e6,
                     "index_mb_per_hour": idx.nbytes / 1e6 / (n / CHUNKS_PER_HOUR), "index_build_s": build_s,
                     "approximate": idx.keys.approximate}
        parts: dict[str, list[float]] = {}
        for _ in range(reps):
            q = Query(QueryKeys(rs.randn(C, QUESTION_TOKENS * G, lay.head_dim).astype(np.float32), unit(rs, 512)),
                      {"ocr": unit(rs)})
            t = time.perf_counter()
            idx.ranked(Query(q.keys), mode="auto")
            t_kv = time.perf_counter()
            idx.ranked(Query(None, q.dense))
            t_dense = time.perf_counter()
            hits = idx.search(q, TOP_K)
            t_fused = time.perf_counter()
            ids = sorted(h.chunk.chunk_id % stored for h in hits)
            out_before = redis_out(r)
            raw = r.pipeline(transaction=False)
            for cid in ids:
                raw.hmget(store._chunk_key(sid, cid), ["kv", "jpeg"])
            blobs = raw.execute()  # the same one round trip chunk_payloads makes, timed apart from decoding
            t_read = time.perf_counter()
            payloads = [decode_chunk(b[0], lay, "bench")[0] for b in blobs]
            t_dec = time.perf_counter()
            read_bytes = redis_out(r) - out_before
            working = resident.working(sid)  # a version check: the live copy is current
            t_wm = time.perf_counter()
            mem = answer_memory(resident.prefix(sid), working.state.tokens,
                                [(p, (0, 0)) for p in payloads], working.state.next_pos, working.state.max_pos)
            t_asm = time.perf_counter()
            store.gaps_in(sid, 0.0, float("inf"))
            t_gaps = time.perf_counter()
            for k, v in (("kv search", t_kv - t), ("frame-index search", t_dense - t_kv),
                         ("fused search", t_fused - t_dense), ("Redis read", t_read - t_fused),
                         ("decode", t_dec - t_read), ("working memory", t_wm - t_dec), ("assembly", t_asm - t_wm),
                         ("gaps", t_gaps - t_asm)):
                parts.setdefault(k, []).append(1000 * v)
            parts.setdefault("bytes read", []).append(read_bytes)
            parts.setdefault("chunk bytes", []).append(sum(len(b[0]) + len(b[1]) for b in blobs))
            parts.setdefault("memory tokens", []).append(mem.length)
        row["ms"] = {k: statistics.median(v) for k, v in parts.items()
                     if k not in ("bytes read", "chunk bytes", "memory tokens")}
        # the whole question path but the search's fused re-run (kv + frame index are what `search` runs)
        row["host_ms"] = sum(v for k, v in row["ms"].items() if k not in ("kv search", "frame-index search"))
        row["bytes_read"] = statistics.median(parts["bytes read"])
        row["chunk_bytes"] = statistics.median(parts["chunk bytes"])
        row["memory_tokens"] = int(statistics.median(parts["memory tokens"]))
        out.append(row)
        log(f"{name}: {n} chunks: host {row['host_ms']:.0f} ms, index {row['index_mb']:.0f} MB")
    # the previous path: the whole working memory read from Redis and decoded by every question
    t = time.perf_counter()
    before = redis_out(r)
    whole = store.load_working(sid)
    out.append({"previous_working_read_ms": 1000 * (time.perf_counter() - t),
                "previous_working_read_bytes": redis_out(r) - before, "working_tokens": whole.state.tokens.length})
    store.delete_stream(sid)
    return out


# ---- 1 and 4: the tiny model end to end ----------------------------------------------------------------
def bench_tiny_ingest(url: str, r: redis.Redis, video: Path, cache: Path) -> dict:
    from services.client import Client
    from services.config import Settings
    from services.server import VigilServer
    from testkit.waits import wait_done

    out = {}
    for label, every in (("previous: whole memory every chunk", 1), ("default: snapshot every 64 chunks", 64)):
        s = Settings(host="127.0.0.1", port=0, http_port=0, redis_url=url, namespace=f"tiny{every}",
                     media_roots=(str(video.parent),), cache_dir=cache, working_snapshot_chunks=every)
        srv = VigilServer(s)
        port = srv.start_in_thread()
        try:
            before = redis_in(r)
            t = time.perf_counter()
            with Client(f"127.0.0.1:{port}") as c:
                info = wait_done(c, c.start(str(video)).stream_id, timeout_s=1200)
            secs = time.perf_counter() - t
            written = redis_in(r) - before
            rec = srv.rt.store.get_stream(info.stream_id)
            out[label] = {"chunks": info.chunks, "chunk_bytes": rec.chunk_bytes_written, "redis_bytes": written,
                          "amplification": written / rec.chunk_bytes_written, "ingest_s": secs,
                          "working_bytes_written": rec.working_bytes_written}
            log(f"tiny ingest, {label}: amplification {written / rec.chunk_bytes_written:.2f}")
        finally:
            srv.stop_thread()
    return out


def bench_tiny_questions(url: str, lengths: list[int], reps: int, cache: Path) -> list[dict]:
    from encoders.loading import load_adapter
    from encoders.options import ModelOptions
    from services import qa
    from services.config import Settings
    from services.runtime import Runtime

    ad = load_adapter(ModelOptions(name="tiny", device="cpu"), cache_dir=cache)
    opts = MemoryOptions()
    frames = [np.random.RandomState(i).randint(0, 255, (8, 112, 112, 3)).astype(np.uint8) for i in range(6)]
    prefix = ad.encode_prefix()
    state = WorkingState.empty(prefix)
    from memory.working import context

    encs = []
    for i in range(40):  # a full working memory (2,048 tokens) and real chunks of the tiny model
        enc = ad.ingest_clip(frames[i % 6], 1.0, i * CLIP_S, (i + 1) * CLIP_S, context(prefix, state),
                             key_rows=opts.retrieval_keys)
        done = step(prefix, state, enc, 0.0, opts)
        encs.append((enc, done))
        state = done.state
    out = []
    for n in lengths:
        s = Settings(host="127.0.0.1", port=0, http_port=0, redis_url=url, namespace=f"tinyq{n}", cache_dir=cache)
        rt = Runtime.create(s, ad, url, describer=None)
        sid = "t"
        rt.store.create_stream(StreamRecord(stream_id=sid, source="synthetic"))
        fence = rt.store.claim(sid, "bench", 600_000)
        rt.store.put_prefix(sid, prefix)
        t = time.perf_counter()
        for i in range(n):
            enc, done = encs[i % len(encs)]
            rt.store.put_chunk(sid, ChunkRecord(i, i * CLIP_S, (i + 1) * CLIP_S, 8, done.chunk.length, i * CLIP_S),
                               done.chunk, enc.segment.retrieval, b"jpeg", (i + 1) * 8, fence=fence,
                               working=state if i in (0, n - 1) else None,
                               checkpoint=Checkpoint(i + 1, (i + 1) * CLIP_S, (i + 1) * 8), counters=state)
        rt.resident.publish(sid, prefix, state, n - 1)
        log(f"tiny: {n} chunks stored in {time.perf_counter() - t:.0f} s")
        qa.prepare(rt, sid, "warm up the index")  # the index is built once per replica, not per question
        stages: dict[str, list[float]] = {}
        ttft, per_token = [], []
        for j in range(reps):
            t0 = time.perf_counter()
            p = qa.prepare(rt, sid, f"What happened in minute {j}?", max_new_tokens=16)
            pieces = qa.generate(rt, p.memory, p.question, p.budget, p.history)
            first = next(pieces, "")
            t1 = time.perf_counter()
            rest = sum(1 for _ in pieces)
            t2 = time.perf_counter()
            ttft.append(1000 * (t1 - t0))
            per_token.append(1000 * (t2 - t1) / max(1, rest))
            for k, v in p.timings:
                stages.setdefault(k, []).append(v)
            stages.setdefault("prefill + first token", []).append(1000 * (t1 - t0) - sum(v for _, v in p.timings))
        out.append({"hours": n / CHUNKS_PER_HOUR, "chunks": n, "ttft_ms": statistics.median(ttft),
                    "per_token_ms": statistics.median(per_token),
                    "stages": {k: statistics.median(v) for k, v in stages.items()},
                    "working_bytes_read": rt.store.working_bytes_read})
        rt.store.delete_stream(sid)
    return out


# ---- report ---------------------------------------------------------------------------------------------
def stored(hours: float) -> str:
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:g} h"


def render(rep: dict) -> str:
    lines = []
    if "tiny_ingest" in rep:
        rows = [[k, str(v["chunks"]), f"{v['chunk_bytes'] / 1e6:.1f}", f"{v['redis_bytes'] / 1e6:.1f}",
                 f"{v['amplification']:.2f}", f"{v['ingest_s']:.0f}"] for k, v in rep["tiny_ingest"].items()]
        lines += ["Tiny model, a 10-minute file ingested end to end (Redis INFO bytes received):", "",
                  md_table(["policy", "chunks", "chunk MB", "Redis MB received", "write amplification",
                            "ingest s"], rows), ""]
    for name, w in rep.get("writes", {}).items():
        rows = [[k, f"{v['redis_bytes_per_chunk'] / 1e6:.2f}", f"{v['chunk_bytes'] / 1e6:.2f}",
                 f"{v['per_hour_gb']:.2f}", f"{v['amplification']:.1f}"]
                for k, v in w.items() if isinstance(v, dict)]
        lines += [f"{name} layout: {w['entered_per_layer']:.0f} of {w['candidates']} clip tokens enter the "
                  f"{w['working_tokens']}-token working memory per clip and layer (synthetic KV):", "",
                  md_table(["policy", "Redis MB per chunk", "chunk MB", "Redis GB per stream-hour",
                            "write amplification"], rows), ""]
    for name, q in rep.get("questions", {}).items():
        prev = q[-1]
        rows = [[stored(r["hours"]), str(r["chunks"]), "approx" if r["approximate"] else "exact",
                 f"{r['ms']['kv search']:.1f}", f"{r['ms']['frame-index search']:.1f}",
                 f"{r['ms']['Redis read']:.1f}", f"{r['bytes_read'] / 1e6:.1f} / {r['chunk_bytes'] / 1e6:.1f}",
                 f"{r['ms']['decode']:.1f}", f"{r['ms']['working memory']:.2f}", f"{r['ms']['assembly']:.1f}",
                 f"{r['host_ms']:.0f}", f"{r['index_mb_per_hour']:.1f}"] for r in q[:-1]]
        lines += [f"{name} layout, one question's host-side time (ms; top-{TOP_K}; {QUESTION_TOKENS}-token question):",
                  "", md_table(["stored", "chunks", "kv path", "kv search", "frame index", "Redis read",
                                "MB read / chunks' MB", "decode", "working memory", "assembly", "host total",
                                "index MB per hour"], rows),
                  "", f"Previous path: the whole working memory ({prev['working_tokens']} tokens) read from Redis "
                      f"by every question: {prev['previous_working_read_bytes'] / 1e6:.1f} MB, "
                      f"{prev['previous_working_read_ms']:.0f} ms; now 0 bytes in the ingesting process.", ""]
    if "tiny_questions" in rep:
        tq = rep["tiny_questions"]
        stages = list(tq[0]["stages"])
        rows = [[stored(r["hours"]), str(r["chunks"])] + [f"{r['stages'].get(s, 0):.1f}" for s in stages]
                + [f"{r['ttft_ms']:.0f}", f"{r['per_token_ms']:.1f}"] for r in tq]
        lines += ["Tiny model, a question end to end (ms, medians):", "",
                  md_table(["stored", "chunks"] + stages + ["first text", "per token"], rows), "",
                  f"Time to first answer text, longest / shortest: {tq[-1]['ttft_ms'] / tq[0]['ttft_ms']:.2f}x", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 min and 1 h only, fewer repeats, no 10-min ingest")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    lengths = [75, 450] if args.quick else [75, 450, 2700, 10800]
    reps = 3 if args.quick else 7
    cache = REPO / "tests" / ".cache" / "vigil"
    rep: dict = {}
    with EmbeddedRedis() as er:
        r = redis.Redis.from_url(er.url)
        if not args.quick:
            from testkit import media

            video = media.captioned_footage("bikes.mp4", [], seconds=600, fps=5, size=(320, 136))
            rep["tiny_ingest"] = bench_tiny_ingest(er.url, r, video, cache)
        rep["writes"] = {name: bench_writes(name, lay, r, CHUNKS_PER_HOUR if not args.quick else 130)
                         for name, lay in LAYOUTS.items()}
        rep["questions"] = {name: bench_question_host(name, lay, r, lengths, reps) for name, lay in LAYOUTS.items()}
        rep["tiny_questions"] = bench_tiny_questions(er.url, lengths, reps, cache)
    print(render(rep))
    if args.json:
        args.json.write_text(json.dumps(rep, indent=2, default=str))


if __name__ == "__main__":
    main()
