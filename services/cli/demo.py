"""`vigil demo`: one process starts a server, ingests a video (a generated test pattern unless given one), asks
one question and prints the answer with its evidence."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from services.cli import render
from services.cli.parser import DEMO_QUESTION
from services.cli.serve import settings
from services.cli.streams import wait
from services.client import as_json


def cmd_demo(args) -> int:
    """One process: a server in a thread, a video ingested, one question answered with evidence."""
    from services.client import Client
    from services.server import VigilServer
    from streamer.testpattern import captioned_synthetic_video

    s = settings(model=args.model)
    video = Path(args.video).expanduser().resolve() if args.video else None
    question = args.question
    captions = []
    if video is None:
        video, captions = captioned_synthetic_video(s.cache_dir / "demo" / "test-pattern-captions.mp4")
        shown = "; ".join(f"{c.text!r} at {c.start_s:g}-{c.end_s:g}s" for c in captions)
        print(f"demo video: {video} (generated test pattern: 24 s, 4 coloured scenes; on screen: {shown})",
              file=sys.stderr)
        question = question or DEMO_QUESTION
    question = question or "What happens at the start of the video?"
    # one process on a free loopback port; the video's folder is the only media root
    # (plaintext: the demo's client and server are this process; VIGIL_TLS__* are for `vigil serve`)
    s = s.with_overrides(host="127.0.0.1", port=0, media_roots=(video.parent,), role="all", tls=type(s.tls)(),
                         http_port=0)
    print(f"loading model {s.model.name!r} and starting the server "
          f"({'private redis' if s.redis_url is None else s.redis_url}) ...", file=sys.stderr)
    server = VigilServer(s)
    port = server.start_in_thread()
    try:
        with Client(f"127.0.0.1:{port}", token=s.auth_token.get_secret_value() if s.auth_token else None) as c:
            info = c.start(str(video), fps=args.fps or 0.0)
            tty = sys.stderr.isatty()
            if not tty:
                print(f"ingesting {video.name} ({info.source_duration_s:.0f} s of video at {info.fps:g} fps) ...",
                      file=sys.stderr, flush=True)
            info = wait(c, info, show_progress=not args.json and tty, lines_every_s=None if tty else 5.0)
            resp = c.ask(info.stream_id, question, include_keyframes=True)
        best = max(resp.evidence, key=lambda e: e.score, default=None)
        truth = [c for c in captions if question and c.text.split()[0].lower() in question.lower()]
        if args.json:
            print(json.dumps({"stream": as_json(info), "question": question, **as_json(resp),
                              "best_evidence": {"chunk_id": best.chunk_id, "start_s": best.start_s,
                                                "end_s": best.end_s} if best else None,
                              "on_screen": [{"text": c.text, "start_s": c.start_s, "end_s": c.end_s} for c in captions]}))
        else:
            print(f"ingested {info.frames} frames into {info.chunks} chunks "
                  f"({info.duration_s:.1f}s of video, {info.memory_bytes / 1e6:.2f} MB of memory)")
            print(f"Q: {question}")
            render.print_answer(resp, Path(args.keyframes_dir) if args.keyframes_dir else None)
            if best is None:
                print("No evidence: no retrieval signal found a matching chunk.")
            else:
                print(f"Best evidence: {best.start_s:.1f}s - {best.end_s:.1f}s"
                      + (f" (on screen: {best.on_screen_text!r})" if best.on_screen_text else ""))
            for c in truth:
                hit = best is not None and best.end_s > c.start_s and best.start_s < c.end_s
                print(f"The video showed {c.text!r} at {c.start_s:g}-{c.end_s:g}s: the best evidence "
                      + ("points at that moment." if hit else "does NOT point at that moment."))
    finally:
        server.stop_thread()
    return 0
