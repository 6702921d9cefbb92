"""What redundancy-aware scoring adds to the ingest-time memory step (`memory.working.step`), against the
same step with attention alone, measured in the same run.

    python benchmarks/bench_redundancy.py            # tiny and Qwen2.5-VL-7B layouts, budgets 512 / 2048 (~1 min)
    python benchmarks/bench_redundancy.py --json out.json

The step is a pure tensor function, so it is timed on seeded random tensors of each layout's exact shapes
(the values do not change its cost): a full working memory of B tokens per layer, a clip of C tokens in F
frames, a 5-token proxy. Columns: `step` with `redundancy_weight` 0 (baseline: proxy attention, prototypes,
pruning, the chunk), then with the weight and `value_novelty` over the N = B + C + F candidates of the working
memory and the C + F of the chunk, once with the default window (256: each token against the 256..511 before
it, [N, 512] cosines per layer) and once against all earlier tokens ([N, N] per layer). Median of
--repeats, CPU, float32.

For context, the language-model FLOPs of prefilling the clip itself (2 x parameters x C, attention to the
memory not counted) are printed next to the FLOPs of the novelty term with all earlier tokens
(2 x N^2 x Hkv x D per layer).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from encoders.base import ClipEncoding, EncodedSegment  # noqa: E402
from memory.layout import TokenSet  # noqa: E402
from memory.options import MemoryOptions  # noqa: E402
from memory.working import WorkingState, step  # noqa: E402

# name: (layers, query heads, KV heads, head dim, LM parameters, clip tokens, frames per clip)
LAYOUTS = {
    "tiny (vigil --model tiny)": (4, 4, 2, 16, 0, 64, 4),
    "Qwen2.5-VL-7B (8 frames at 151200 px)": (28, 28, 4, 128, 7.6e9, 768, 4),
}
PROXY = 5


def inputs(L: int, H: int, hkv: int, D: int, budget: int, clip: int, frames: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    prefix = EncodedSegment(rnd(L, hkv, 20, D), rnd(L, hkv, 20, D), torch.arange(20)[None].expand(3, 20), 20, 19, None)
    n = budget
    mem = TokenSet(rnd(L, hkv, n, D), rnd(L, hkv, n, D), torch.arange(20, 20 + n)[None, None].expand(L, 3, n).contiguous(),
                   torch.arange(n)[None].expand(L, n).contiguous(), torch.rand(L, n, generator=g))
    state = WorkingState(mem, 20 + n, 19 + n, n, n // 10)
    pos = torch.arange(20 + n, 20 + n + clip)[None].expand(3, clip).contiguous()  # [3, C]
    seg = EncodedSegment(rnd(L, hkv, clip, D), rnd(L, hkv, clip, D), pos, 20 + n + clip, 19 + n + clip, None)
    frame_ids = torch.arange(clip) * frames // clip  # [C]
    enc = ClipEncoding(seg, frame_ids, frames, rnd(clip, 8), rnd(L, H, PROXY, D), rnd(L, hkv, PROXY, D))
    return prefix, state, enc


def time_step(args, prefix, state, enc, policy: MemoryOptions) -> float:
    step(prefix, state, enc, 0.3, policy)  # warm-up
    runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step(prefix, state, enc, 0.3, policy)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", default="512,2048", help="working-memory tokens per layer")
    ap.add_argument("--weight", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name, (L, H, hkv, D, params, clip, frames) in LAYOUTS.items():
        for budget in (int(b) for b in args.budgets.split(",")):
            prefix, state, enc = inputs(L, H, hkv, D, budget, clip, frames)
            base = time_step(args, prefix, state, enc, MemoryOptions(budget, 32, redundancy_weight=0.0))
            windowed = time_step(args, prefix, state, enc, MemoryOptions(budget, 32, redundancy_weight=args.weight))
            full = time_step(args, prefix, state, enc,
                             MemoryOptions(budget, 32, redundancy_weight=args.weight, redundancy_window=0))
            n = budget + clip + frames
            nov_flops = 2 * L * hkv * D * (n * n + (clip + frames) ** 2)
            rows.append({"layout": name, "budget": budget, "clip_tokens": clip, "attention_ms": 1000 * base,
                         "window_ms": 1000 * windowed, "window_ratio": windowed / base,
                         "all_ms": 1000 * full, "all_ratio": full / base, "novelty_all_gflop": nov_flops / 1e9,
                         "clip_prefill_gflop": 2 * params * clip / 1e9 if params else None})
    print(f"memory step, CPU, {torch.get_num_threads()} torch threads, median of {args.repeats}, "
          f"redundancy weight {args.weight}\n")
    print("| layout | budget | clip tokens | step ms, attention (baseline) | + redundancy, window 256: ms, ratio "
          "| + redundancy, all earlier: ms, ratio | novelty GFLOP (all) | clip prefill GFLOP (LM only) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        pre = "-" if r["clip_prefill_gflop"] is None else f"{r['clip_prefill_gflop']:.0f}"
        print(f"| {r['layout']} | {r['budget']} | {r['clip_tokens']} | {r['attention_ms']:.1f} | "
              f"{r['window_ms']:.1f}, {r['window_ratio']:.2f} | {r['all_ms']:.1f}, {r['all_ratio']:.2f} | "
              f"{r['novelty_all_gflop']:.2f} | {pre} |")
    if args.json:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
