"""The timeline page on a 1-hour stream, in a real browser: how long until the page shows the stream, and
until a question's first text and full answer arrive.

One in-process `VigilServer` (the tiny model, the server's own embedded Redis, the HTTP side on a free port)
ingests an hour of 1 fps footage (the test pattern, 8-frame clips: 450 chunks); then Debian's Chromium, driven
by Playwright, opens the page and asks through the ask box, exactly as a person would. Baseline in the same run:
the JSON API's own answer time (the SSE `POST /api/v1/streams/{id}/ask` through urllib), so the page's cost over
the API it calls shows as a ratio.

    .venv/bin/python benchmarks/bench_timeline.py            # 1 h of footage, 3 questions
    .venv/bin/python benchmarks/bench_timeline.py --quick    # 10 min of footage, 2 questions
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testkit import media  # noqa: E402

QUESTIONS = ["What is happening in the video?", "What colour is the screen in the first minute?",
             "What changed near the end?"]


def api_first_and_full(port: int, sid: str, question: str) -> tuple[float, float]:
    """Seconds to the first text event and to the final one, over the JSON API's SSE answer."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/streams/{sid}/ask", method="POST",
                                 data=json.dumps({"question": question}).encode(),
                                 headers={"Content-Type": "application/json"})
    t0, first = time.perf_counter(), None
    with urllib.request.urlopen(req, timeout=300) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if line.startswith("event:") and "delta" in line and first is None:
                first = time.perf_counter() - t0
    full = time.perf_counter() - t0
    return (first if first is not None else full), full


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 minutes of footage, 2 questions")
    ap.add_argument("--minutes", type=float, help="minutes of 1 fps footage (default 60; quick 10)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    minutes = args.minutes or (10 if args.quick else 60)
    questions = QUESTIONS[:2] if args.quick else QUESTIONS

    from playwright.sync_api import sync_playwright

    from encoders.loading import ModelOptions, load_adapter
    from services.client import Client, state_name
    from services.config import Settings
    from services.server import VigilServer

    cache = media.cache_dir()
    video = media.synthetic_video(cache / "media" / f"pattern-{int(minutes)}min-1fps.mp4", seconds=int(minutes * 60),
                                  fps=1, scenes=max(2, int(minutes)))
    s = Settings(host="127.0.0.1", port=0, http_port=-1, redis_url=None, media_roots=(str(video.parent),),
                 cache_dir=cache / "vigil", frames={"enabled": False})
    adapter = load_adapter(ModelOptions(name="tiny", device="cpu"), cache_dir=cache / "vigil")
    srv = VigilServer(s, adapter=adapter)
    addr = f"127.0.0.1:{srv.start_in_thread()}"
    out: dict = {"footage_minutes": minutes}
    try:
        t0 = time.perf_counter()
        with Client(addr) as c:
            sid = c.start(str(video), fps=1, clip_frames=8).stream_id
            while state_name((info := c.describe(sid)).state) not in ("finished", "failed", "stopped"):
                time.sleep(0.5)
        out["ingest_s"], out["chunks"] = time.perf_counter() - t0, info.chunks
        print(f"ingested {minutes:g} min of footage: {info.chunks} chunks in {out['ingest_s']:.0f} s", file=sys.stderr)
        port = srv.http_port
        api = [api_first_and_full(port, sid, q) for q in questions]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--no-first-run"])
            page = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
            page.set_default_timeout(300_000)
            t0 = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}/#stream={sid}")
            page.wait_for_selector("#stream-state.finished")
            page.wait_for_function("n => document.querySelectorAll('.thumb').length === n", arg=info.chunks)
            visible = ("() => { const tl = document.getElementById('timeline').getBoundingClientRect(); "
                       "const shown = [...document.querySelectorAll('.thumb img')].filter(i => { "
                       "const r = i.getBoundingClientRect(); return r.right > tl.left && r.left < tl.right }); "
                       "return shown.length > 0 && shown.every(i => i.complete && i.naturalWidth > 0) }")
            page.wait_for_function(visible)
            out["page_load_s"] = time.perf_counter() - t0
            page_times = []
            for q in questions:
                page.evaluate("() => { const a = document.getElementById('answer'); a.textContent = ''; "
                              "a.removeAttribute('data-done') }")
                page.fill("#question", q)
                t0 = time.perf_counter()
                page.press("#question", "Enter")
                page.wait_for_function("() => document.getElementById('answer').textContent.trim().length > 0",
                                       polling=20)
                first = time.perf_counter() - t0
                page.wait_for_selector("#answer[data-done=true]")
                page_times.append((first, time.perf_counter() - t0))
            browser.close()
    finally:
        srv.stop_thread()
    med = lambda xs: statistics.median(xs)  # noqa: E731
    out.update(api_first_s=med([a for a, _ in api]), api_full_s=med([b for _, b in api]),
               page_first_s=med([a for a, _ in page_times]), page_full_s=med([b for _, b in page_times]))
    print(f"\n| {minutes:g} min of footage ({out['chunks']} chunks) | median s |\n|---|---|")
    print(f"| page load (stream shown, every thumbnail in view decoded) | {out['page_load_s']:.2f} |")
    print(f"| first answer text, page / API | {out['page_first_s']:.2f} / {out['api_first_s']:.2f} "
          f"({out['page_first_s'] / out['api_first_s']:.2f}x) |")
    print(f"| full answer, page / API | {out['page_full_s']:.2f} / {out['api_full_s']:.2f} "
          f"({out['page_full_s'] / out['api_full_s']:.2f}x) |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
