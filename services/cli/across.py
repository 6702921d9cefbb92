"""The commands across cameras: `vigil search`, `vigil report`, and `vigil ask` over several cameras (a stream
argument of names separated by commas, "all", or "@GROUP" for a camera group of the server's config file).

Their window: --since/--until wall-clock words read by the server in its timezone ("18:00", "yesterday 22:00"),
or --when for any time words ("last night", "in the last hour"), or --media-since/--media-until in media time."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from services.cli import questions, render
from services.cli.connect import client
from services.cli.parser import comma_list
from services.client import as_json


def selector(text: str) -> tuple[list[str], str]:
    """A stream argument -> (names or ids, group)."""
    t = (text or "all").strip()
    if t == "all":
        return [], ""
    if t.startswith("@"):
        return [], t[1:]
    return comma_list(t), ""


def is_across(text: str) -> bool:
    t = text.strip()
    return t == "all" or t.startswith("@") or "," in t


def when_of(args) -> str:
    if args.since or args.until:
        if args.until and args.since:
            return f"between {args.since} and {args.until}"
        return f"since {args.since}" if args.since else f"before {args.until}"
    return args.when or ""


def media_window(args) -> tuple[float, float] | None:
    if args.media_since is None and args.media_until is None:
        return None
    return (args.media_since or 0.0, args.media_until or 0.0)


def _wall(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def moment_line(m) -> str:
    where = f"{m.camera or m.stream_id}"
    wall = f" ({_wall(m.wall_start_unix)})" if m.wall_start_unix else ""
    sig = ", ".join(f"{s.signal} #{s.rank}" for s in m.signals)
    line = (f"  #{m.rank:<2} {where:<16} {m.start_s:8.2f}s - {m.end_s:8.2f}s{wall}  score {m.score:.3f}  "
            f"found by {sig or '-'}  [stream {m.stream_id} chunk {m.chunk_id}]")
    if m.on_screen_text:
        line += f"\n        on screen: {m.on_screen_text!r}"
    return line


def cmd_search(args) -> int:
    streams, group = selector(args.cameras)
    example = Path(args.example).expanduser().read_bytes() if args.example else b""
    keyframes_dir = Path(args.keyframes_dir) if args.keyframes_dir else None
    with client(args) as c:
        resp = c.search(args.question, streams, group, window=media_window(args), when=when_of(args),
                        top_k=args.top_k, example_image=example, signals=args.signals,
                        include_keyframes=bool(keyframes_dir))
    if args.json:
        print(json.dumps(as_json(resp)))
        return 0
    searched = [s for s in resp.streams if not s.skipped]
    print(f"{len(resp.moments)} moments across {len(searched)} of {len(resp.streams)} streams "
          f"({resp.latency_ms:.0f} ms){' for ' + repr(resp.window_phrase) if resp.window_phrase else ''}:")
    for m in resp.moments:
        line = moment_line(m)
        if keyframes_dir and m.keyframe_jpeg:
            line += f"  -> {render.write_keyframe(keyframes_dir, m.chunk_id, m.keyframe_jpeg)}"
        print(line)
    for s in resp.streams:
        if s.skipped:
            print(f"  skipped {s.camera or s.stream_id}: {s.skipped}")
    return 0


def cmd_ask(args) -> int:
    """`vigil ask`: one stream as before; several cameras (a,b / all / @group) through AskAcross."""
    if not is_across(args.stream_id):
        return questions.cmd_ask(args)
    streams, group = selector(args.stream_id)
    with client(args) as c:
        resp = c.ask_across(args.question, streams, group, window=(args.since or 0.0, args.until or 0.0)
                            if (args.since or args.until) else None, top_k=args.top_k,
                            max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps(as_json(resp)))
        return 0
    print(f"Answer ({len(resp.cameras)} cameras, {resp.latency_ms:.0f} ms):")
    for cam in resp.cameras:
        print(f"  {cam.camera or cam.stream_id}: {cam.answer}")
    print("Evidence:")
    for m in resp.evidence:
        print(moment_line(m))
    if resp.random_weights:
        print(render.RANDOM_NOTE)
    return 0


def cmd_report(args) -> int:
    streams, group = selector(args.cameras)
    show_progress = not args.json and sys.stderr.isatty()
    out: dict = {"cameras": [], "segments": [], "done": None}
    random_weights = False
    with client(args) as c:
        for m in c.report(streams, group, window=media_window(args), when=when_of(args), detail=args.detail,
                          max_new_tokens=args.max_new_tokens):
            random_weights = m.random_weights
            kind = m.WhichOneof("msg")
            if kind == "progress" and show_progress:
                p = m.progress
                what = (f"{p.camera or p.stream_id} ({p.camera_index}/{p.cameras}) segment {p.segment}/{p.segments}"
                        if p.stage == "camera" else "the overview")
                print(f"\rreporting {what} ...", end="", file=sys.stderr, flush=True)
            elif kind == "segment":
                out["segments"].append(as_json(m.segment))
                if not args.json:
                    if show_progress:
                        print("\r", end="", file=sys.stderr)
                    s = m.segment
                    wall = f" {_wall(s.wall_start_unix)}" if s.wall_start_unix else ""
                    print(f"{s.camera or s.stream_id}{wall} ", end="")
                    render.print_segment(s.segment, None)
                    print(f"    activity: {', '.join(s.activity)}")
            elif kind == "camera":
                out["cameras"].append(as_json(m.camera))
                if not args.json:
                    cam = m.camera
                    print(f"== {cam.camera or cam.stream_id}: {cam.chunks} chunks, {cam.segments} segments: "
                          f"{cam.summary}", flush=True)
            elif kind == "done":
                out["done"] = as_json(m.done)
                if not args.json:
                    if show_progress:
                        print("\r", end="", file=sys.stderr)
                    print(f"Overview ({m.done.cameras} cameras, {m.done.latency_ms / 1000:.1f} s): {m.done.overview}")
    if args.json:
        out["random_weights"] = random_weights
        print(json.dumps(out))
    elif random_weights:
        print(render.RANDOM_NOTE)
    return 0
