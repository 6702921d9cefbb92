"""Late-interaction search at stream scale: exact vs the approximate path (a first pass over each chunk's first
16 keys, exact rescoring of the best 10 %), recall@5 of the approximate top-5 against the exact top-5, ms per
question and the index's RAM.

    python benchmarks/bench_retrieval_index.py            # 1 h, 6 h, 24 h of 8-s chunks (~2 min)
    python benchmarks/bench_retrieval_index.py --quick    # 1 h and 6 h

Keys: the tiny model (`--model tiny`, random weights) ingests 450 real clips of the looped bikes.mp4 at
1 fps through the production path (`adapter.ingest_clip` behind the working memory, `memory.working.step`),
keeping the service's 64 representative keys per KV head and layer. Longer streams tile those 450 chunks'
keys with a small Gaussian jitter (sigma = 5 % of the keys' spread) so that no two chunks are identical:
the distribution is real, the length synthetic. Queries: 30 questions through `adapter.question_keys`.
Search: `memory.index.StreamIndex.ranked(..., mode="exact" | "approx")`, the service's own code.
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
import torch  # noqa: E402

from encoders.loading import ModelOptions, load_adapter  # noqa: E402
from memory.index import Query, StreamIndex  # noqa: E402
from memory.options import MemoryOptions  # noqa: E402
from memory.store import ChunkRecord, IndexRow  # noqa: E402
from memory.working import WorkingState, context, step  # noqa: E402
from streamer.sampling import ClipBuilder, Sampler  # noqa: E402
from streamer.source import FileSource  # noqa: E402
from streamer.frontend import scored_frames  # noqa: E402
from streamer.keyframes import SceneDetector  # noqa: E402

CLIP_S = 8.0
QUESTIONS = [f"{w} {o}?" for w in ("When did the", "Was there a", "Where was the", "Who saw the", "What did the")
             for o in ("red car stop", "cyclist turn left", "bus arrive", "dog cross the road", "truck park",
                       "man in a blue jacket wave")]


def real_keys(n_clips: int, cache: Path) -> tuple[list[np.ndarray], list[np.ndarray], object]:
    from testkit import media  # the footage cache the tests use

    ad = load_adapter(ModelOptions(name="tiny", device="cpu"), cache_dir=cache)
    opts = MemoryOptions()
    prefix = ad.encode_prefix()
    state = WorkingState.empty(prefix)
    src = media.captioned_footage("bikes.mp4", [], seconds=n_clips * CLIP_S, fps=5, size=(320, 136))
    keys, means = [], []
    builder = ClipBuilder(8, 1.0, 8)
    with FileSource(src) as fs:
        for item in scored_frames(fs.frames(), Sampler(1.0), SceneDetector(), 448):
            clip = builder.push(item)
            if clip is None:
                continue
            enc = ad.ingest_clip(clip.frames, 1.0, clip.start_s, clip.end_s, context(prefix, state),
                                 key_rows=opts.retrieval_keys)
            state = step(prefix, state, enc, 0.0, opts).state
            keys.append(enc.segment.retrieval.tokens)
            means.append(enc.segment.retrieval.mean)
            if len(keys) >= n_clips:
                break
    return keys, means, ad


def build(keys, means, n: int, rs: np.random.RandomState, n_layers: int) -> StreamIndex:
    spread = float(np.std(np.stack(keys).astype(np.float32)))
    idx = StreamIndex(n_layers)
    rows = []
    for i in range(n):
        k = keys[i % len(keys)].astype(np.float32)
        if i >= len(keys):
            k = k + rs.normal(0, 0.05 * spread, k.shape).astype(np.float32)
        rows.append(IndexRow(ChunkRecord(i, i * CLIP_S, (i + 1) * CLIP_S, 8, 32, i * CLIP_S), means[i % len(means)],
                             k.astype(np.float16), {}))
    idx.add(rows)
    return idx


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    hours = [1, 6] if args.quick else [1, 6, 24]
    t0 = time.perf_counter()
    keys, means, ad = real_keys(450, REPO / "tests" / ".cache" / "vigil")
    print(f"ingested {len(keys)} real clips in {time.perf_counter() - t0:.1f} s; keys per chunk {keys[0].shape}",
          file=sys.stderr)
    queries = [Query(ad.question_keys(q)) for q in QUESTIONS]
    rs = np.random.RandomState(0)
    rows = []
    for h in hours:
        n = int(h * 3600 / CLIP_S)
        idx = build(keys, means, n, rs, len(ad.spec.retrieval_layers))
        out = {"hours": h, "chunks": n, "keys_per_channel": n * keys[0].shape[1], "index_mb": idx.nbytes / 1e6}
        for mode in ("exact", "approx"):
            ms, tops = [], []
            for q in queries:
                t = time.perf_counter()
                tops.append([c for c, _ in idx.ranked(q, mode=mode)["kv"][:5]])
                ms.append(1000 * (time.perf_counter() - t))
            out[mode] = {"ms_p50": statistics.median(ms), "top5": tops}
        out["recall_at_5"] = statistics.mean(len(set(a) & set(b)) / 5 for a, b in
                                             zip(out["exact"]["top5"], out["approx"]["top5"]))
        rows.append(out)
        print(f"{h} h done", file=sys.stderr)
    print("| stream | chunks | keys per channel | index MB | exact ms / question | first pass + rescoring ms "
          "| recall@5 vs exact |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['hours']} h | {r['chunks']} | {r['keys_per_channel']} | {r['index_mb']:.1f} "
              f"| {r['exact']['ms_p50']:.1f} | {r['approx']['ms_p50']:.1f} | {r['recall_at_5']:.2f} |")
    print(f"\nTiny model layout: {keys[0].shape[0]} channels (retrieval layers x KV heads) x {keys[0].shape[1]} keys x "
          f"{keys[0].shape[2]} dims; {torch.get_num_threads()} threads. The service switches to the approximate path "
          "above VIGIL_RETRIEVAL__EXACT_MAX_ROWS keys per channel (65 536, about 2.3 h here).")
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items()} for r in rows], indent=2))


if __name__ == "__main__":
    main()
