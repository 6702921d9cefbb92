"""QA latency and memory bytes of the fixed-size working memory vs full KV, as the stream grows (tiny model, CPU).

    python benchmarks/bench_memory.py                  # 60, 300, 900, 1800, 3600 s of 1 fps footage (~1 min, 2 cores)
    python benchmarks/bench_memory.py --quick          # 60 and 300 s only (~10 s)
    python benchmarks/bench_memory.py --json out.json  # also write every number (raw latencies included)

Method. One synthetic stream (deterministic numpy frames, 112x112 RGB, scenes of 10-60 s: a blocky
colour background with a square moving over it, plus pixel noise) is sampled at 1 fps and cut into
clips of 8 frames (one hour = 450 clips). Each clip's novelty is the largest
`streamer.keyframes.SceneDetector` novelty of its frames. Three memory policies ingest the same
clips in lockstep (their order rotates from clip to clip so background load hits them alike); each
policy has its own `memory.working` state, because the working memory decides what later clips are
prefilled behind:

    context(prefix, state) -> adapter.ingest_clip(...) -> memory.working.step(...) -> (state, chunk)

* (c) "attention": the query-agnostic memory with the service's defaults (proxy-query attention scores
  mixed with value novelty at `redundancy_weight` 0.25, frame prototypes):
  a working memory of `--working` tokens per layer, and one chunk of `--chunk` tokens per layer
  stored per clip.
* (b) "recency" and "uniform": the same structure and budgets, pruned by recency or evenly spaced.
* (a) full KV (ReKV-style): every clip's complete KV kept, i.e. the `enc.segment` of every clip of
  the (c) run. It needs no ingest pass of its own; its answers run on prefix + all clips
  (`memory.layout.concat_segments`).

At each checkpoint (the stream lengths in `--lengths`, rounded up to whole clips) every policy answers
the same questions (`--repeats` rounds, policy order rotating), greedy, `--max-new-tokens` tokens:

* (a): `adapter.answer_ids` on the full KV, which is joined once per checkpoint beforehand. The join
  is not counted (reported as "join ms"), which favours (a).
* (b), (c): question keys + late-interaction search (`memory.index.StreamIndex`) over the policy's own clips
  (top `--top-k`) + `memory.assemble.answer_memory` (prefix + working memory + retrieved chunks) +
  `answer_ids`, all counted.

Latency is the median over questions x repeats; "vs (a)" divides it by (a)'s median at the same
checkpoint of the same run. Ingest is timed per clip and policy (context join, `ingest_clip`, `step`);
on a sample of clips `encode_clip` (the clip's KV alone: no proxy pass, no memory step) runs behind
the same context as the reference.

Bytes come from `memory.layout.KVLayout` only: `segment_bytes` for full-KV segments and the prefix,
`token_set_bytes` for the working memory and the chunks (retrieval vectors are not counted). They are
given for the tiny model's layout and for Qwen2.5-VL-7B's (28 layers, 4 KV heads, head dim 128,
bfloat16) with the same token counts, next to ReKV's reported 18.8 GB of KV per hour (7B model).

Threads: one torch thread by default. The tiny model's tensors are small, and on a shared 2-core
machine two OpenMP threads made every timing 5-10x slower and far noisier whenever other work ran
(load average 5: 2-thread QA medians of 100-1000 ms vs 20-160 ms with one thread). `--threads 0`
keeps torch's own choice.

The tiny model's weights are seeded random numbers: its answers are noise. This measures time and
bytes only, not answer quality.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from anywhere: the repository's packages, not an installed copy

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import log, md_table  # noqa: E402
from encoders.loading import ModelOptions, load_adapter  # noqa: E402
from memory.assemble import answer_memory  # noqa: E402
from memory.index import Query, StreamIndex  # noqa: E402
from memory.layout import KVLayout, concat_segments  # noqa: E402
from memory.options import MemoryOptions, Policy  # noqa: E402
from memory.store import ChunkRecord, IndexRow  # noqa: E402
from memory.working import WorkingState, context, step  # noqa: E402
from streamer.keyframes import SceneDetector  # noqa: E402

FPS = 1.0
CLIP_FRAMES = 8
FRAME_HW = (112, 112)
STREAM_SEED = 20240
POLICIES = tuple(Policy)  # attention, recency, uniform
QUESTIONS = [
    "What is happening in the video?",
    "What color is the moving square?",
    "Did the scene change recently?",
]
REKV_GB_PER_HOUR = 18.8  # ReKV's reported KV size for one hour of video with a 7B model
# Qwen2.5-VL-7B's KV layout (28 layers, 4 KV heads, head dim 128, bf16; hidden size 3584); byte sizes via KVLayout only
QWEN7B = KVLayout(num_layers=28, num_kv_heads=4, head_dim=128, position_dims=3, dtype="bfloat16", feature_dim=3584)


# ---- helpers ----------------------------------------------------------------------------------------
def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt_ms(s: float) -> str:
    if math.isnan(s):
        return "-"
    return f"{s * 1000:.1f}" if s < 0.1 else f"{s * 1000:.0f}"


def fmt_bytes(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e3:.1f} kB"


def loadavg() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "-"


# ---- footage --------------------------------------------------------------------------------------------
class SyntheticStream:
    """Deterministic 1 fps footage: scenes of 10-60 s, each a 4x4 grid of colour blocks with a square
    moving (and bouncing) over it, plus +-8 grey levels of per-frame noise. Frame t depends only on
    (seed, t), so every policy sees identical pixels."""

    def __init__(self, seed: int, seconds: float, hw: tuple[int, int] = FRAME_HW) -> None:
        self.seed, self.hw = seed, hw
        rng = np.random.default_rng(seed)
        bounds = [0]
        while bounds[-1] <= seconds:
            bounds.append(bounds[-1] + int(rng.integers(10, 61)))
        self.bounds = np.asarray(bounds)  # scene k covers [bounds[k], bounds[k+1]) seconds
        self._scenes: dict[int, tuple] = {}

    def _scene(self, k: int) -> tuple:
        if k not in self._scenes:
            h, w = self.hw
            rng = np.random.default_rng([self.seed, k])
            blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            bg = np.repeat(np.repeat(blocks, -(-h // 4), axis=0), -(-w // 4), axis=1)[:h, :w]  # [h, w, 3]
            side = int(rng.integers(16, 41))
            colour = rng.integers(0, 256, 3, dtype=np.uint8)
            start = rng.uniform(0, [h - side, w - side])
            vel = rng.uniform(-12, 12, 2)  # pixels per second
            self._scenes[k] = (bg.astype(np.int16), side, colour, start, vel)
        return self._scenes[k]

    def frame(self, t: int) -> np.ndarray:
        """The frame at second t: [h, w, 3] uint8."""
        h, w = self.hw
        k = int(np.searchsorted(self.bounds, t, side="right") - 1)
        bg, side, colour, start, vel = self._scene(k)
        span = np.array([h - side, w - side], dtype=np.float64)
        p = start + vel * (t - self.bounds[k])
        p = span - np.abs(span - np.mod(p, 2 * span))  # bounce off the edges
        y, x = (int(v) for v in p)
        img = bg.copy()
        img[y:y + side, x:x + side] = colour
        img += np.random.default_rng([self.seed, 1_000_000 + t]).integers(-8, 9, img.shape, dtype=np.int16)
        return np.clip(img, 0, 255).astype(np.uint8)

    def clip(self, c: int) -> np.ndarray:
        """Clip c: frames of seconds 8c .. 8c+7 -> [8, h, w, 3] uint8."""
        t0 = c * CLIP_FRAMES
        return np.stack([self.frame(t0 + i) for i in range(CLIP_FRAMES)])


# ---- one memory policy's run ----------------------------------------------------------------------------
@dataclass
class PolicyRun:
    name: str
    policy: MemoryOptions
    state: WorkingState
    chunks: list = field(default_factory=list)  # [(TokenSet, span)] one per clip
    index: StreamIndex | None = None  # every clip's retrieval keys (this run's KV), as the service indexes them
    chunk_tokens: int = 0  # sum of chunk lengths (tokens per layer)
    context_s: list = field(default_factory=list)  # per clip
    ingest_s: list = field(default_factory=list)
    step_s: list = field(default_factory=list)

    def ingest(self, ad, prefix, frames: np.ndarray, start_s: float, end_s: float, novelty: float):
        t0 = time.perf_counter()
        ctx = context(prefix, self.state)
        t1 = time.perf_counter()
        enc = ad.ingest_clip(frames, FPS, start_s, end_s, ctx)
        t2 = time.perf_counter()
        r = step(prefix, self.state, enc, novelty, self.policy)
        t3 = time.perf_counter()
        self.state = r.state
        self.chunks.append((r.chunk, r.span))
        if self.index is None:
            self.index = StreamIndex(len(ad.spec.retrieval_layers))
        keys = enc.segment.retrieval
        i = len(self.chunks) - 1
        self.index.add([IndexRow(ChunkRecord(i, start_s, end_s, len(frames), r.chunk.length, start_s),
                                 keys.mean, keys.tokens, {})])
        self.chunk_tokens += r.chunk.length
        self.context_s.append(t1 - t0)
        self.ingest_s.append(t2 - t1)
        self.step_s.append(t3 - t2)
        return ctx, enc

    def total_s(self, i: int) -> float:
        return self.context_s[i] + self.ingest_s[i] + self.step_s[i]


def timed_answer(ad, memory, question: str, max_new: int) -> tuple[float, float, int]:
    """(seconds to the first token, seconds in all, tokens generated) of one greedy answer."""
    t0 = time.perf_counter()
    gen = ad.answer_ids(memory, question, max_new)
    next(gen)
    first = time.perf_counter() - t0
    n = 1 + sum(1 for _ in gen)
    return first, time.perf_counter() - t0, n


def answer_with_memory(ad, prefix, run: PolicyRun, question: str, top_k: int, max_new: int) -> dict:
    """Question keys, search (the service's StreamIndex), assembly and answer, each timed."""
    t0 = time.perf_counter()
    qk = ad.question_keys(question)
    t1 = time.perf_counter()
    top = sorted(h.chunk.chunk_id for h in run.index.search(Query(qk), top_k))  # time order
    t2 = time.perf_counter()
    st = run.state
    mem = answer_memory(prefix, st.tokens, [run.chunks[i] for i in top], st.next_pos, st.max_pos)
    t3 = time.perf_counter()
    first, answer_s, n = timed_answer(ad, mem, question, max_new)
    return {"total_s": t3 - t0 + answer_s, "question_vector_s": t1 - t0, "search_s": t2 - t1,
            "assemble_s": t3 - t2, "first_token_s": first, "answer_s": answer_s, "new_tokens": n,
            "memory_tokens": mem.length, "retrieved": [int(i) for i in top]}


def measure_qa(ad, prefix, runs: dict[str, PolicyRun], full_segments: list, questions: list[str],
               repeats: int, top_k: int, max_new: int) -> dict:
    t0 = time.perf_counter()
    full = concat_segments([prefix, *full_segments])
    join_s = time.perf_counter() - t0
    # untimed warm-up at this size: one answer per policy
    timed_answer(ad, full, questions[0], 2)
    for name, run in runs.items():
        answer_with_memory(ad, prefix, run, questions[0], top_k, 2)
    order = ["full"] + list(runs)
    samples: dict[str, list[dict]] = {k: [] for k in order}
    turn = 0
    for _ in range(repeats):
        for q in questions:
            for name in order[turn % len(order):] + order[:turn % len(order)]:  # rotate who goes first
                if name == "full":
                    first, total, n = timed_answer(ad, full, q, max_new)
                    samples[name].append({"total_s": total, "first_token_s": first, "answer_s": total,
                                          "new_tokens": n, "memory_tokens": full.length})
                else:
                    samples[name].append(answer_with_memory(ad, prefix, runs[name], q, top_k, max_new))
            turn += 1
    out = {"join_full_s": join_s, "policies": {}}
    base = med([s["total_s"] for s in samples["full"]])
    for name, ss in samples.items():
        lat = [s["total_s"] for s in ss]
        summary = {
            "median_s": med(lat), "min_s": min(lat), "max_s": max(lat),
            "first_token_s": med([s["first_token_s"] for s in ss]),
            "answer_s": med([s["answer_s"] for s in ss]),
            "new_tokens": sorted({s["new_tokens"] for s in ss}),
            "memory_tokens": sorted({s["memory_tokens"] for s in ss}),
            "ratio_vs_full": med(lat) / base,
            "ratio_min_vs_full": min(lat) / min(x["total_s"] for x in samples["full"]),
            "samples": ss,
        }
        if name != "full":
            summary["retrieve_assemble_s"] = med([s["question_vector_s"] + s["search_s"] + s["assemble_s"]
                                                  for s in ss])
        out["policies"][name] = summary
    return out


def memory_bytes(layout: KVLayout, prefix_tokens: int, full_tokens: int, runs: dict[str, PolicyRun]) -> dict:
    """Stored bytes now: (a) the prefix and every clip's KV; (b)/(c) prefix + working memory + every chunk."""
    out = {"full": {"tokens": full_tokens, "bytes": layout.segment_bytes(full_tokens)}}
    for name, run in runs.items():
        w = run.state.tokens.length
        out[name] = {"tokens": prefix_tokens + w + run.chunk_tokens, "working_tokens": w,
                     "chunk_tokens": run.chunk_tokens,
                     "bytes": layout.segment_bytes(prefix_tokens) + layout.token_set_bytes(w)
                     + layout.token_set_bytes(run.chunk_tokens)}
    return out


def working_span(run: PolicyRun, n_clips: int) -> dict:
    """Which clips the working memory still holds tokens of (prototypes count for their anchor's clip)."""
    starts = np.asarray([span[0] for _, span in run.chunks])  # first serial of each clip
    serial = run.state.tokens.serial  # [L, n]
    anchor = torch.where(serial >= 0, serial, -1 - serial).numpy()
    clip_of = np.searchsorted(starts, anchor, side="right") - 1  # [L, n]
    recent = clip_of >= n_clips - max(1, n_clips // 10)
    return {
        "tokens_per_layer": int(serial.shape[1]),
        "clips_held": int(np.unique(clip_of).size),
        "oldest_clip_s": float(np.median(clip_of.min(axis=1)) * CLIP_FRAMES / FPS) if clip_of.size else None,
        "median_clip_s": float(np.median(clip_of) * CLIP_FRAMES / FPS) if clip_of.size else None,
        "share_last_10pct": float(recent.mean()) if clip_of.size else None,
    }


def per_hour(layout: KVLayout, tokens: int, seconds: float) -> int:
    return layout.segment_bytes(round(tokens * 3600 / seconds))


# ---- main -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="stream lengths 60 and 300 s only")
    ap.add_argument("--lengths", help="stream lengths in seconds, comma separated (default 60,300,900,1800,3600)")
    ap.add_argument("--working", type=int, default=512, help="working memory tokens per layer (default 512)")
    ap.add_argument("--chunk", type=int, default=32, help="tokens per layer of each stored chunk (default 32)")
    ap.add_argument("--top-k", type=int, default=4, help="chunks retrieved per question (default 4)")
    ap.add_argument("--repeats", type=int, help="rounds of the questions per checkpoint (default 5, quick 3)")
    ap.add_argument("--max-new-tokens", type=int, default=8, help="greedy answer budget (default 8)")
    ap.add_argument("--encode-samples", type=int, default=30,
                    help="clips on which encode_clip is timed as the ingest reference (default 30)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1; 0 = torch's own choice, see the module docstring)")
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    lengths = sorted(float(x) for x in args.lengths.split(",")) if args.lengths else (
        [60.0, 300.0] if args.quick else [60.0, 300.0, 900.0, 1800.0, 3600.0])
    checkpoints = sorted({math.ceil(L * FPS / CLIP_FRAMES) for L in lengths})  # clips at each checkpoint
    n_clips = checkpoints[-1]
    sample_every = max(1, n_clips // max(1, args.encode_samples))
    t_all = time.perf_counter()
    load_before = loadavg()

    log("loading the tiny model")
    ad = load_adapter(ModelOptions(name="tiny", device="cpu"))
    layout = ad.spec.layout
    prefix = ad.encode_prefix()
    stream = SyntheticStream(STREAM_SEED, n_clips * CLIP_FRAMES / FPS)
    detector = SceneDetector()

    # warm-up: first-call costs of every adapter entry point, on a throwaway state
    warm_frames = stream.clip(n_clips + 1)
    warm = WorkingState.empty(prefix)
    enc = ad.ingest_clip(warm_frames, FPS, 0.0, CLIP_FRAMES / FPS, context(prefix, warm))
    step(prefix, warm, enc, 0.0, MemoryOptions(args.working, args.chunk))
    ad.encode_clip(warm_frames, FPS, 0.0, CLIP_FRAMES / FPS, context(prefix, warm))
    ad.question_keys(QUESTIONS[0])
    list(ad.answer_ids(concat_segments([prefix, enc.segment]), QUESTIONS[0], 2))

    runs = {name: PolicyRun(name, MemoryOptions(args.working, args.chunk, name), WorkingState.empty(prefix))
            for name in POLICIES}
    full_segments: list = []
    clip_tokens: list[int] = []
    novelty: list[float] = []
    cuts = 0
    frames_s = detect_s = 0.0
    encode_ref: dict[int, float] = {}  # clip -> encode_clip seconds behind the attention run's context
    report: dict = {
        "env": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(), "model": "tiny", "random_weights": ad.spec.random_weights,
                "device": "cpu", "fps": FPS, "clip_frames": CLIP_FRAMES, "frame_hw": list(FRAME_HW),
                "working_tokens": args.working, "chunk_tokens": args.chunk, "top_k": args.top_k,
                "questions": QUESTIONS, "repeats": repeats, "max_new_tokens": args.max_new_tokens,
                "prefix_tokens": prefix.length, "bytes_per_token": layout.bytes_per_token,
                "bytes_per_token_7b": QWEN7B.bytes_per_token, "load_before": load_before},
        "checkpoints": [],
    }
    prev = 0
    for c in range(n_clips):
        t0 = time.perf_counter()
        frames = stream.clip(c)
        t1 = time.perf_counter()
        scores = [detector.score(f) for f in frames]
        t2 = time.perf_counter()
        frames_s += t1 - t0
        detect_s += t2 - t1
        nov = max(s.novelty for s in scores)
        cuts += sum(s.cut for s in scores)
        novelty.append(nov)
        start_s, end_s = c * CLIP_FRAMES / FPS, (c + 1) * CLIP_FRAMES / FPS
        names = list(POLICIES[c % 3:] + POLICIES[:c % 3])  # rotate the order
        for name in names:
            ctx, enc = runs[name].ingest(ad, prefix, frames, start_s, end_s, nov)
            if name == "attention":
                full_segments.append(enc.segment)  # (a): the clip's whole KV
                clip_tokens.append(enc.segment.length)
                if c % sample_every == sample_every // 2:
                    t0 = time.perf_counter()
                    ad.encode_clip(frames, FPS, start_s, end_s, ctx)
                    encode_ref[c] = time.perf_counter() - t0
        if c + 1 in checkpoints:
            n = c + 1
            seconds = n * CLIP_FRAMES / FPS
            log(f"checkpoint {seconds:g} s ({n} clips, full KV {prefix.length + sum(clip_tokens)} tokens): QA")
            qa = measure_qa(ad, prefix, runs, full_segments, QUESTIONS, repeats, args.top_k,
                            args.max_new_tokens)
            full_tokens = prefix.length + sum(clip_tokens)
            ingest = {}
            for name, run in runs.items():
                idx = range(prev, n)
                sampled = [i for i in idx if i in encode_ref]
                ingest[name] = {
                    "context_s": med([run.context_s[i] for i in idx]),
                    "ingest_clip_s": med([run.ingest_s[i] for i in idx]),
                    "step_s": med([run.step_s[i] for i in idx]),
                    "total_s": med([run.total_s(i) for i in idx]),
                    "ratio_vs_encode_clip": med([run.total_s(i) / encode_ref[i] for i in sampled]),
                    "encode_samples": len(sampled),
                }
            ingest["encode_clip_s"] = med([encode_ref[i] for i in range(prev, n) if i in encode_ref])
            report["checkpoints"].append({
                "nominal_s": [L for L in lengths if math.ceil(L * FPS / CLIP_FRAMES) == n],
                "seconds": seconds, "clips": n, "clips_range": [prev, n],
                "qa": qa, "ingest": ingest,
                "bytes": memory_bytes(layout, prefix.length, full_tokens, runs),
                "bytes_7b": memory_bytes(QWEN7B, prefix.length, full_tokens, runs),
                "working_span": {name: working_span(run, n) for name, run in runs.items()},
            })
            prev = n

    seconds = n_clips * CLIP_FRAMES / FPS
    hour: dict = {}
    for lay, key in ((layout, "tiny"), (QWEN7B, "qwen2.5-vl-7b")):
        rows = {"full": {"tokens_per_hour": round(sum(clip_tokens) * 3600 / seconds),
                         "bytes_per_hour": per_hour(lay, sum(clip_tokens), seconds), "working_bytes": 0}}
        for name, run in runs.items():
            rows[name] = {"tokens_per_hour": round(run.chunk_tokens * 3600 / seconds),
                          "chunks_per_hour": round(len(run.chunks) * 3600 / seconds),
                          "bytes_per_hour": lay.token_set_bytes(round(run.chunk_tokens * 3600 / seconds)),
                          "working_bytes": lay.token_set_bytes(run.state.tokens.length)}
        hour[key] = rows
    report["per_hour"] = {"from_seconds": seconds, "layouts": hour, "rekv_gb_per_hour": REKV_GB_PER_HOUR}
    report["stream"] = {"clips": n_clips, "seconds": seconds, "scenes": int(np.searchsorted(stream.bounds, seconds)),
                        "cuts": cuts, "clip_novelty_mean": float(np.mean(novelty)),
                        "clip_tokens": sorted(set(clip_tokens)), "frames_s": frames_s, "detector_s": detect_s}
    report["encode_clip_samples"] = len(encode_ref)
    report["env"]["load_after"] = loadavg()
    report["total_s"] = time.perf_counter() - t_all

    print(render(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        log(f"wrote {args.json}")
    return 0


LABEL = {"full": "(a) full KV", "attention": "(c) attention", "recency": "(b) recency", "uniform": "(b) uniform"}


def render(r: dict) -> str:
    e, s = r["env"], r["stream"]
    parts = [
        f"vigil memory benchmark: tiny Qwen2.5-VL on CPU ({e['cpu_count']} cores, torch {e['torch']}, "
        f"{e['torch_threads']} threads), {e['fps']:g} fps x {e['clip_frames']} frames/clip, frames "
        f"{e['frame_hw'][0]}x{e['frame_hw'][1]} ({'/'.join(map(str, s['clip_tokens']))} tokens per clip), "
        f"working {e['working_tokens']} + top-{e['top_k']} chunks of {e['chunk_tokens']} tokens per layer, "
        f"{len(e['questions'])} questions x {e['repeats']} repeats, max_new_tokens {e['max_new_tokens']}, "
        f"load average {e['load_before']} -> {e['load_after']}, total {r['total_s']:.0f} s",
        "",
        "The tiny model's weights are seeded random numbers: its answers are noise. This measures time and "
        "bytes only.",
        "",
        f"Stream: synthetic, {s['seconds']:g} s, {s['clips']} clips, {s['scenes']} scenes, {s['cuts']} cuts found by "
        f"SceneDetector, mean clip novelty {s['clip_novelty_mean']:.2f} (making frames {s['frames_s']:.1f} s, "
        f"scoring {s['detector_s']:.1f} s, not in any timing below)",
        "",
        "**QA latency and stored memory** (ms, median over questions x repeats; (b)/(c) include question "
        "vector + search + assembly; vs (a) = latency / (a)'s latency at the same length, of medians and of minimums (the minimum is the least disturbed by other load); stored = what the "
        "policy keeps for the whole stream)",
        "",
    ]
    rows = []
    for ck in r["checkpoints"]:
        qa = ck["qa"]
        for name in ("full", *POLICIES):
            p, b, b7 = qa["policies"][name], ck["bytes"][name], ck["bytes_7b"][name]
            mem_tok = "/".join(map(str, p["memory_tokens"]))
            rows.append([
                f"{ck['seconds']:g} s", str(ck["clips"]), LABEL[name], mem_tok, fmt_ms(p["median_s"]),
                f"{fmt_ms(p['min_s'])}-{fmt_ms(p['max_s'])}", fmt_ms(p["first_token_s"]),
                fmt_ms(p.get("retrieve_assemble_s", float("nan"))) if name != "full"
                else f"join {fmt_ms(qa['join_full_s'])} (not counted)",
                f"{p['ratio_vs_full']:.2f}", f"{p['ratio_min_vs_full']:.2f}", str(b["tokens"]), fmt_bytes(b["bytes"]), fmt_bytes(b7["bytes"]),
            ])
    parts += [md_table(["stream", "clips", "policy", "answer memory tok", "QA ms", "min-max ms", "first token ms",
                        "retrieve+assemble ms", "vs (a)", "vs (a), min", "stored tok", "stored bytes (tiny)",
                        "stored bytes (7B layout)"], rows), ""]

    tok = sorted({t for ck in r["checkpoints"] for p in ck["qa"]["policies"].values() for t in p["new_tokens"]})
    parts += [f"Tokens generated per answer: {'/'.join(map(str, tok))}. First token = building the cache from the "
              "memory + prefill of the question + the first greedy step.", ""]

    parts += ["**Ingest per clip** (ms, median over the clips since the previous checkpoint; context = "
              "joining prefix + working memory, ingest_clip = the clip's prefill + proxy pass, step = the "
              "memory update; vs encode_clip = median over sampled clips of total / encode_clip on the same "
              "clip behind the same context; (a) keeps the (c) run's clip KV and has no ingest pass of its own)",
              ""]
    rows = []
    for ck in r["checkpoints"]:
        ing = ck["ingest"]
        a, b = ck["clips_range"]
        for name in POLICIES:
            g = ing[name]
            ratio = f"{g['ratio_vs_encode_clip']:.2f} ({g['encode_samples']})" if g["encode_samples"] else "-"
            rows.append([f"{a + 1}-{b}", LABEL[name], fmt_ms(g["context_s"]), fmt_ms(g["ingest_clip_s"]),
                         fmt_ms(g["step_s"]), fmt_ms(g["total_s"]), fmt_ms(ing["encode_clip_s"]), ratio])
    parts += [md_table(["clips", "policy", "context", "ingest_clip", "step", "total", "encode_clip",
                        "vs encode_clip (samples)"], rows), ""]

    h = r["per_hour"]
    parts += [f"**Bytes per hour of video** (1 fps; from the {h['from_seconds']:g} s stream, scaled to 3600 s; "
              "(a) = every clip's KV, (b)/(c) = the chunks stored per hour plus the fixed working memory; "
              "the 7B layout uses the same token counts with Qwen2.5-VL-7B's KV: 28 layers x 4 KV heads x "
              "128 dims x bf16; retrieval vectors not counted)", ""]
    rows = []
    tiny, big = h["layouts"]["tiny"], h["layouts"]["qwen2.5-vl-7b"]
    for name in ("full", *POLICIES):
        t, g = tiny[name], big[name]
        rows.append([
            LABEL[name], str(t.get("chunks_per_hour", "-")), str(t["tokens_per_hour"]),
            fmt_bytes(t["bytes_per_hour"]), fmt_bytes(t["working_bytes"]) if t["working_bytes"] else "-",
            fmt_bytes(g["bytes_per_hour"]), fmt_bytes(g["working_bytes"]) if g["working_bytes"] else "-",
            f"{g['bytes_per_hour'] / 1e9:.3f}", f"{g['bytes_per_hour'] / 1e9 / h['rekv_gb_per_hour']:.3f}",
        ])
    rate = tiny["full"]["tokens_per_hour"] / 3600
    rows.append(["ReKV (reported, 7B model)", "-", "-", "-", "-", f"{h['rekv_gb_per_hour']} GB", "-",
                 f"{h['rekv_gb_per_hour']:.3f}", "1.000"])
    parts += [md_table(["policy", "chunks/hour", "stored tok/hour (per layer)", "bytes/hour (tiny)",
                        "+ working memory (tiny)", "bytes/hour (7B layout)", "+ working memory (7B layout)",
                        "GB/hour (7B layout)", "vs ReKV 18.8 GB/h"], rows), "",
              f"Full KV here is {rate:.1f} tokens per second of video (1 fps, {r['env']['frame_hw'][0]}x"
              f"{r['env']['frame_hw'][1]} frames under the tiny model's max_pixels, plus each clip's text header); "
              "the 7B-layout rows change bytes per token only, not tokens per frame, so the ratio to ReKV "
              "mostly reflects the token rate, not the memory design.", ""]

    last = r["checkpoints"][-1]
    parts += [f"**What the working memory holds at {last['seconds']:g} s** (clips of {CLIP_FRAMES} s; oldest = "
              "median over layers of the oldest clip still held; share = tokens from the last 10 % of the stream)",
              ""]
    rows = []
    for name in POLICIES:
        w = last["working_span"][name]
        rows.append([LABEL[name], str(w["tokens_per_layer"]), f"{w['clips_held']} of {last['clips']}",
                     f"{w['oldest_clip_s']:g} s" if w["oldest_clip_s"] is not None else "-",
                     f"{w['median_clip_s']:g} s" if w["median_clip_s"] is not None else "-",
                     f"{w['share_last_10pct'] * 100:.0f} %" if w["share_last_10pct"] is not None else "-"])
    parts += [md_table(["policy", "tokens per layer", "clips held (any layer)", "oldest clip start",
                        "median token's clip start", "share from last 10 %"], rows), "",
              "recency keeps the newest tokens; uniform keeps the tokens nearest to evenly spaced times over "
              "the whole stream (memory.compress.select with stream order); attention keeps what the proxy "
              "query attends to, whenever it was seen."]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
