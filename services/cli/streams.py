"""The stream commands: `vigil ingest`, `push`, `watch`, `streams`, `stop`, `delete`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import grpc

from services.cli import render
from services.cli.connect import client
from services.cli.parser import memory_options
from services.client import as_json, state_name


def source_arg(source: str) -> str:
    if "://" in source:
        return source
    p = Path(source).expanduser()
    return str(p.resolve()) if p.exists() else source  # the server checks it against its media roots


def goes_on(sid: str) -> str:
    return (f"interrupted: stream {sid} goes on on the server; `vigil watch {sid}` follows it, "
            f"`vigil stop {sid}` stops it (what it stored stays answerable)")


def short_read(info) -> str | None:
    """A note when a finished file covered less than 95 % of the duration its header claims (it ends early)."""
    claimed, read = info.source_duration_s, info.duration_s
    if claimed <= 0 or read >= 0.95 * claimed:
        return None
    return (f"note: the file claims {claimed:.1f}s but only {read:.1f}s ({read / claimed:.0%}) could be read: "
            "it ends early (truncated or damaged?)")


def wait(c, info, show_progress: bool, lines_every_s: float | None = None):
    """Follow the stream with WatchStream until it ends; a progress bar on a terminal, else (`lines_every_s`) a
    plain progress line on stderr at most that often (a log or a pipe has no use for a bar)."""
    import time

    total = int(info.source_duration_s * info.fps) or None
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="frame", desc=f"ingest {info.stream_id}", file=sys.stderr)
    last = time.monotonic()
    for ev in c.watch(info.stream_id):
        info = ev.info
        if bar is not None:
            bar.update(info.frames - bar.n)
            bar.set_postfix(chunks=info.chunks, state=state_name(info.state))
        elif lines_every_s is not None and time.monotonic() - last >= lines_every_s:
            last = time.monotonic()
            print(progress_line(info), file=sys.stderr, flush=True)
    info = c.describe(info.stream_id)
    if bar is not None:
        bar.close()
    return info


def progress_line(info) -> str:
    """`ingest <id>: 1:30 of 6:00 (25%), 180 frames, 22 chunks`: where a stream is, in one line."""
    def mmss(s: float) -> str:
        return f"{int(s) // 60}:{int(s) % 60:02d}"

    of = (f" of {mmss(info.source_duration_s)} ({min(1.0, info.duration_s / info.source_duration_s):.0%})"
          if info.source_duration_s > 0 else "")
    return f"ingest {info.stream_id}: {mmss(info.duration_s)}{of}, {info.frames} frames, {info.chunks} chunks"


def report(args, info) -> int:
    """Print a stream's outcome: 0, or 1 when it failed (its error on stderr)."""
    state = state_name(info.state)
    if args.json:
        print(json.dumps(as_json(info)))
    else:
        print(f"stream {info.stream_id}: {state}, {info.frames} frames, {info.chunks} chunks, "
              f"{info.duration_s:.1f}s of video")
    if state == "failed":
        print(f"error: stream {info.stream_id} failed: {info.error}", file=sys.stderr)
        return 1
    if state == "finished" and (note := short_read(info)):
        print(note, file=sys.stderr)
    return 0


def cmd_ingest(args) -> int:
    info = None
    with client(args) as c:
        try:
            info = c.start(source_arg(args.source), fps=args.fps or 0.0, clip_frames=args.clip_frames or 0,
                           memory=memory_options(args))
            if args.wait:
                info = wait(c, info, show_progress=not args.json and sys.stderr.isatty())
        except KeyboardInterrupt:
            if info is None:
                raise
            print("\n" + goes_on(info.stream_id), file=sys.stderr)
            return 130
    return report(args, info)


def cmd_push(args) -> int:
    """Push a local file over PushStream: MPEG-TS and fragmented MP4 as they are, anything else PyAV reads (a plain
    MP4, MKV, ...) remuxed into MPEG-TS on the fly."""
    import itertools

    from streamer.remux import CannotRemux, file_blocks, mpegts_blocks, sniff

    src = Path(args.file).expanduser()
    if not src.is_file():
        print(f"error: {src}: no such file", file=sys.stderr)
        return 2
    kind, fmt = sniff(src), args.format
    if fmt == "mp4" and kind != "fmp4":
        print(f"error: {src} is not a fragmented MP4 (its index is in one moov box, which a pushed stream reaches "
              "only at the end): leave out --format and vigil remuxes it into MPEG-TS as it sends", file=sys.stderr)
        return 2
    if fmt == "mpegts" and kind != "mpegts":
        print(f"error: {src} is not MPEG-TS: leave out --format and vigil remuxes it into MPEG-TS as it sends",
              file=sys.stderr)
        return 2
    realtime = getattr(args, "realtime", False)
    if realtime and fmt != "auto":
        print("error: --realtime remuxes the file into MPEG-TS to pace it: leave out --format", file=sys.stderr)
        return 2
    if realtime or (fmt == "auto" and kind not in ("mpegts", "fmp4")):
        from streamer.push import RealtimePacer

        fmt, blocks = "mpegts", mpegts_blocks(src, pace=RealtimePacer() if realtime else None)
        try:
            blocks = itertools.chain([next(blocks)], blocks)  # opened and set up here: a bad file fails now
        except StopIteration:
            blocks = iter(())
        except CannotRemux as exc:
            print(f"error: {exc}; convert it to MPEG-TS first (e.g. ffmpeg -i IN -c:v libx264 -f mpegts OUT.ts) "
                  "or start it with `vigil ingest` if the server can read the file", file=sys.stderr)
            return 2
        if not args.json and realtime:
            print(f"{src.name}: sent at its own frame rate (--realtime), as a camera would: it takes as long as "
                  "the video runs", file=sys.stderr)
        elif not args.json:
            print(f"{src.name}: not MPEG-TS or fragmented MP4 ({kind}): remuxing into MPEG-TS as it is sent "
                  "(packets copied)", file=sys.stderr)
    else:
        fmt, blocks = ("mp4" if kind == "fmp4" else "mpegts") if fmt == "auto" else fmt, file_blocks(src)
    failed: list[Exception] = []

    def guarded():
        try:
            yield from blocks
        except Exception as exc:  # grpc only says "Exception iterating requests": keep the reason
            failed.append(exc)
            raise

    with client(args) as c:
        try:
            info = c.push(guarded(), name=args.name or src.name, fmt=fmt, fps=args.fps or 0.0,
                          clip_frames=args.clip_frames or 0, live=args.live, memory=memory_options(args))
        except KeyboardInterrupt:
            print("\ninterrupted: the push was cancelled; the server ends its stream as failed (truncated), and what "
                  "it stored stays answerable (`vigil streams`)", file=sys.stderr)
            return 130
        except grpc.RpcError:
            if failed:
                print(f"error: sending {src} stopped: {failed[0]}; the server ends its stream as failed (truncated)",
                      file=sys.stderr)
                return 2
            raise
    return report(args, info)


def cmd_watch(args) -> int:
    with client(args) as c:
        for ev in c.watch(args.stream_id):
            print(json.dumps(render.event_json(ev)) if args.json else render.event_line(ev), flush=True)
    return 0


def cmd_streams(args) -> int:
    with client(args) as c:
        streams = c.list()
    if args.json:
        print(json.dumps([as_json(i) for i in streams]))
    elif not streams:
        print("no streams (start one with `vigil ingest FILE` or `vigil push FILE`)")
    else:
        print("\n".join(render.streams_table(streams)))
    return 0


def cmd_stop(args) -> int:
    with client(args) as c:
        info = c.stop(args.stream_id)
    print(json.dumps(as_json(info)) if args.json
          else f"{info.stream_id}  {state_name(info.state)}  {info.chunks} chunks kept, answerable")
    return 0


def cmd_delete(args) -> int:
    with client(args) as c:
        resp = c.delete(args.stream_id)
    if args.json:
        print(json.dumps(as_json(resp)))
    else:
        print(f"{resp.stream_id}  deleted ({resp.keys_removed} keys: record, memory, chunks, keyframes, events)")
    return 0
