"""The `vigil` command line: serve, ingest, ask, streams, demo."""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import grpc

DEFAULT_SERVER = "127.0.0.1:50051"
RANDOM_NOTE = "NOTE: the model has random weights (--model tiny): the answer text is noise; the evidence is real."


def _settings(model: str | None = None, **overrides):
    """The process's one Settings, from the environment plus the command line's explicit flags."""
    from services.config import Settings

    s = Settings(**{k: v for k, v in overrides.items() if v is not None})
    return s.model_copy(update={"model": s.model.model_copy(update={"name": model})}) if model else s


def _client(args):
    from services.client import Client, is_local

    token = os.environ.get("VIGIL_AUTH_TOKEN") or None
    if bool(args.tls_cert) != bool(args.tls_key):
        print("error: --tls-cert and --tls-key (VIGIL_TLS_CERT, VIGIL_TLS_KEY) go together", file=sys.stderr)
        raise SystemExit(2)
    tls = args.tls or any((args.tls_ca, args.tls_cert, args.tls_server_name))
    if token and not tls and not is_local(args.server):
        print(f"warning: sending VIGIL_AUTH_TOKEN to {args.server} over a plaintext channel: anyone on the path "
              "can read it; use TLS (--tls-ca / --tls)", file=sys.stderr)
    return Client(args.server, token=token, tls=bool(args.tls), tls_ca=args.tls_ca or None,
                  tls_cert=args.tls_cert or None, tls_key=args.tls_key or None,
                  server_name=args.tls_server_name or None)


def _info_dict(info) -> dict:
    from services.client import state_name
    from services.wire import ingest_pb2

    return {
        "stream_id": info.stream_id, "source": info.source, "state": state_name(info.state), "error": info.error,
        "frames": info.frames, "chunks": info.chunks, "duration_s": round(info.duration_s, 3),
        "source_duration_s": round(info.source_duration_s, 3), "fps": info.fps, "memory_bytes": info.memory_bytes,
        "bytes_per_hour": round(info.bytes_per_hour), "model": info.model, "random_weights": info.random_weights,
        "kind": ingest_pb2.SourceKind.Name(info.kind).removeprefix("SOURCE_KIND_").lower(),
        "dropped_frames": info.dropped_frames, "reconnects": info.reconnects, "lag_s": round(info.lag_s, 3),
        "scene_cuts": info.scene_cuts, "memory": _memory_dict(info), "chunk_bytes": info.chunk_bytes,
        "working_memory_bytes": info.working_memory_bytes, "working_memory_tokens": info.working_memory_tokens,
        "consolidated_chunks": info.consolidated_chunks, "deleted_chunks": info.deleted_chunks,
        "gaps": [{"start_s": round(g.start_s, 3), "end_s": round(g.end_s, 3), "reason": g.reason} for g in info.gaps],
    }


def _memory_dict(info) -> dict:
    """The stream's memory options, by option name (memory.options.MemoryOptions)."""
    from services import memory_wire

    return memory_wire.overrides_from_proto(info.memory)


def _memory_options(args):
    """MemoryOptions (the proto message) from the command line; unset flags leave the server's defaults."""
    from memory.options import option_names
    from services import memory_wire

    return memory_wire.overrides_to_proto(**{name: getattr(args, name, None) for name in option_names()})


DEMO_QUESTION = "When did the sign say that the truck had arrived?"
_WINDOW_SOURCES = {0: "all", 1: "all", 2: "request", 3: "question"}


def _window_dict(resp) -> dict:
    w = resp.searched_window
    return {"start_s": round(w.start_s, 3), "end_s": round(w.end_s, 3) if w.end_s > 0 else None,
            "source": _WINDOW_SOURCES.get(resp.window_source, "all"), "phrase": resp.window_phrase}


def _answer_dict(resp) -> dict:
    return {
        "answer": resp.answer, "model": resp.model, "random_weights": resp.random_weights,
        "latency_ms": round(resp.latency_ms, 1), "memory_tokens": resp.memory_tokens, "window": _window_dict(resp),
        "gaps": [{"start_s": round(g.start_s, 3), "end_s": round(g.end_s, 3), "reason": g.reason} for g in resp.gaps],
        "evidence": [{"chunk_id": e.chunk_id, "start_s": round(e.start_s, 3), "end_s": round(e.end_s, 3),
                      "rank": e.rank, "score": round(e.score, 4), "keyframe_s": round(e.keyframe_s, 3),
                      "on_screen_text": e.on_screen_text, "labels": e.labels,
                      "signals": [{"signal": x.signal, "rank": x.rank, "score": round(x.score, 4)} for x in e.signals],
                      **({"keyframe_jpeg_b64": base64.b64encode(e.keyframe_jpeg).decode()} if e.keyframe_jpeg else {})}
                     for e in resp.evidence],
    }


def _signals_line(e) -> str:
    return ", ".join(f"{x.signal} #{x.rank} ({x.score:.2f})" for x in e.signals)


def _print_answer(resp, keyframes_dir: Path | None) -> None:
    print(f"Answer: {resp.answer}")
    w = _window_dict(resp)
    searched = ("the whole stream" if w["source"] == "all" else
                f"{w['start_s']:.1f}s - {'end' if w['end_s'] is None else format(w['end_s'], '.1f') + 's'}"
                + (f" (from the question: {w['phrase']!r})" if w["source"] == "question" else " (from the request)"))
    print(f"Searched: {searched}")
    print(f"Evidence ({len(resp.evidence)} chunks in time order, {resp.memory_tokens} memory tokens, "
          f"{resp.latency_ms:.0f} ms):")
    for e in resp.evidence:
        line = (f"  #{e.rank:<2} chunk {e.chunk_id:>4}  {e.start_s:8.2f}s - {e.end_s:8.2f}s  keyframe @ {e.keyframe_s:.2f}s"
                f"  found by {_signals_line(e) or '-'}")
        if e.on_screen_text:
            line += f"\n        on screen: {e.on_screen_text!r}"
        if keyframes_dir and e.keyframe_jpeg:
            keyframes_dir.mkdir(parents=True, exist_ok=True)
            out = keyframes_dir / f"chunk-{e.chunk_id:05d}.jpg"
            out.write_bytes(e.keyframe_jpeg)
            line += f"  -> {out}"
        print(line)
    for g in resp.gaps:
        when = ""
        if g.wall_start_unix and g.wall_end_unix:
            when = (f" ({time.strftime('%H:%M:%S', time.localtime(g.wall_start_unix))} to "
                    f"{time.strftime('%H:%M:%S', time.localtime(g.wall_end_unix))})")
        print(f"  no footage {g.start_s:8.2f}s - {g.end_s:8.2f}s{when}: {g.reason}")
    if resp.random_weights:
        print(RANDOM_NOTE)


def _wait(client, info, show_progress: bool):
    """Follow the stream with WatchStream until it ends; a progress bar on a terminal."""
    from services.client import state_name

    total = int(info.source_duration_s * info.fps) or None
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="frame", desc=f"ingest {info.stream_id}", file=sys.stderr)
    for ev in client.watch(info.stream_id):
        info = ev.info
        if bar is not None:
            bar.update(info.frames - bar.n)
            bar.set_postfix(chunks=info.chunks, state=state_name(info.state))
    info = client.describe(info.stream_id)
    if bar is not None:
        bar.close()
    return info


def _event_line(ev) -> str:
    from services.client import state_name
    from services.wire import ingest_pb2

    i = ev.info
    kind = ingest_pb2.StreamEvent.Kind.Name(ev.kind).removeprefix("KIND_").lower()
    when = time.strftime("%H:%M:%S", time.localtime(ev.time_unix or time.time()))
    line = f"{when} {kind:<17} {state_name(i.state):<12} frames {i.frames:>6}  chunks {i.chunks:>5}  " \
           f"dropped {i.dropped_frames:>4}  lag {i.lag_s:5.1f}s"
    if ev.kind == ingest_pb2.StreamEvent.KIND_STATE:
        line += f"  ({state_name(ev.previous_state)} -> {state_name(i.state)})"
    if ev.kind == ingest_pb2.StreamEvent.KIND_GAP:
        g = ev.gap
        line += f"  gap {g.start_s:.1f}s-{g.end_s:.1f}s ({g.end_s - g.start_s:.1f}s: {g.reason})"
    if ev.message:
        line += f"  {ev.message}"
    return line


def cmd_serve(args) -> int:
    from services.server import VigilServer

    s = _settings(model=args.model, host=args.host, port=args.port, role=args.role)
    async def main() -> None:
        server = VigilServer(s)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        for sig in (signal.SIGTERM, signal.SIGINT):  # stop cleanly: streams stopped, private Redis shut down
            loop.add_signal_handler(sig, task.cancel)
        try:
            await server.run_forever()
        except asyncio.CancelledError:
            pass

    asyncio.run(main())
    return 0


def _source_arg(source: str) -> str:
    if "://" in source:
        return source
    p = Path(source).expanduser()
    return str(p.resolve()) if p.exists() else source  # the server checks it against its media roots


def cmd_ingest(args) -> int:
    with _client(args) as c:
        info = c.start(_source_arg(args.source), fps=args.fps or 0.0, clip_frames=args.clip_frames or 0,
                       memory=_memory_options(args))
        if args.wait:
            info = _wait(c, info, show_progress=not args.json and sys.stderr.isatty())
    from services.client import state_name

    if args.json:
        print(json.dumps(_info_dict(info)))
    else:
        print(f"stream {info.stream_id}: {state_name(info.state)}, {info.frames} frames, {info.chunks} chunks, "
              f"{info.duration_s:.1f}s of video" + (f" ({info.error})" if info.error else ""))
    return 1 if state_name(info.state) == "failed" else 0


def cmd_push(args) -> int:
    """Push a local file's bytes (MPEG-TS or fragmented MP4) over PushStream."""
    src = Path(args.file).expanduser()
    if not src.is_file():
        print(f"error: {src}: no such file", file=sys.stderr)
        return 2

    def chunks():
        with open(src, "rb") as fh:
            while block := fh.read(256 * 1024):
                yield block

    with _client(args) as c:
        info = c.push(chunks(), name=args.name or src.name, fmt=args.format, fps=args.fps or 0.0,
                      clip_frames=args.clip_frames or 0, live=args.live, memory=_memory_options(args))
    from services.client import state_name

    if args.json:
        print(json.dumps(_info_dict(info)))
    else:
        print(f"stream {info.stream_id}: {state_name(info.state)}, {info.frames} frames, {info.chunks} chunks"
              + (f" ({info.error})" if info.error else ""))
    return 1 if state_name(info.state) == "failed" else 0


def cmd_watch(args) -> int:
    with _client(args) as c:
        for ev in c.watch(args.stream_id):
            if args.json:
                from google.protobuf.json_format import MessageToDict

                print(json.dumps(MessageToDict(ev)), flush=True)
            else:
                print(_event_line(ev), flush=True)
    return 0


def cmd_ask(args) -> int:
    window = (args.since or 0.0, args.until or 0.0) if (args.since or args.until) else None
    example = b""
    if args.example:
        path = Path(args.example).expanduser()
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
        example = path.read_bytes()
    with _client(args) as c:
        resp = c.ask(args.stream_id, args.question, top_k=args.top_k, window=window,
                     max_new_tokens=args.max_new_tokens, include_keyframes=bool(args.keyframes_dir) or args.json,
                     example_image=example, signals=args.signals)
    if args.json:
        print(json.dumps(_answer_dict(resp)))
    else:
        _print_answer(resp, Path(args.keyframes_dir) if args.keyframes_dir else None)
    return 0


def cmd_streams(args) -> int:
    with _client(args) as c:
        streams = c.list()
    if args.json:
        print(json.dumps([_info_dict(i) for i in streams]))
    else:
        for i in streams:
            d = _info_dict(i)
            print(f"{d['stream_id']}  {d['state']:<9} {d['chunks']:>5} chunks  {d['duration_s']:>8.1f}s  {d['source']}")
    return 0


def cmd_stop(args) -> int:
    with _client(args) as c:
        info = c.stop(args.stream_id)
    d = _info_dict(info)
    print(json.dumps(d) if args.json else f"{d['stream_id']}  {d['state']}  {d['chunks']} chunks kept, answerable")
    return 0


def cmd_delete(args) -> int:
    with _client(args) as c:
        resp = c.delete(args.stream_id)
    if args.json:
        print(json.dumps({"stream_id": resp.stream_id, "keys_removed": resp.keys_removed}))
    else:
        print(f"{resp.stream_id}  deleted ({resp.keys_removed} keys: record, memory, chunks, keyframes, events)")
    return 0


def cmd_demo(args) -> int:
    """One process: a server in a thread, a video ingested, one question answered with evidence."""
    from services.client import Client
    from services.server import VigilServer
    from streamer.testpattern import captioned_synthetic_video

    s = _settings(model=args.model)
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
    s = s.model_copy(update={"host": "127.0.0.1", "port": 0, "media_roots": (video.parent,), "role": "all",
                             "tls": type(s.tls)()})
    print(f"loading model {s.model.name!r} and starting the server "
          f"({'private redis' if s.redis_url is None else s.redis_url}) ...", file=sys.stderr)
    server = VigilServer(s)
    port = server.start_in_thread()
    try:
        with Client(f"127.0.0.1:{port}", token=s.auth_token.get_secret_value() if s.auth_token else None) as c:
            info = c.start(str(video), fps=args.fps or 0.0)
            info = _wait(c, info, show_progress=not args.json and sys.stderr.isatty())
            resp = c.ask(info.stream_id, question, include_keyframes=True)
        best = max(resp.evidence, key=lambda e: e.score, default=None)
        truth = [c for c in captions if question and c.text.split()[0].lower() in question.lower()]
        if args.json:
            print(json.dumps({"stream": _info_dict(info), "question": question, **_answer_dict(resp),
                              "best_evidence": {"chunk_id": best.chunk_id, "start_s": best.start_s,
                                                "end_s": best.end_s} if best else None,
                              "on_screen": [{"text": c.text, "start_s": c.start_s, "end_s": c.end_s} for c in captions]}))
        else:
            print(f"ingested {info.frames} frames into {info.chunks} chunks "
                  f"({info.duration_s:.1f}s of video, {info.memory_bytes / 1e6:.2f} MB of memory)")
            print(f"Q: {question}")
            _print_answer(resp, Path(args.keyframes_dir) if args.keyframes_dir else None)
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


# older spellings of a memory flag, kept working
_MEMORY_FLAG_ALIASES = {"kv_int8": ("--int8",), "retention_mode": ("--retention",)}


def _memory_flags(sp) -> None:
    """One flag per memory option (memory.options.MemoryOptions: names, help, choices); unset: server default."""
    from dataclasses import fields

    from memory.options import MemoryOptions

    g = sp.add_argument_group("memory (unset: the server's VIGIL_MEMORY__* defaults)")
    for f in fields(MemoryOptions):
        kind, choices = type(f.default), f.metadata.get("choices")
        flags = (f"--{f.name.replace('_', '-')}", *_MEMORY_FLAG_ALIASES.get(f.name, ()))
        help = f"{f.metadata['description']} [VIGIL_MEMORY__{f.name.upper()}]".replace("%", "%%")
        if kind is bool:
            g.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help)
        elif choices:
            g.add_argument(*flags, dest=f.name, choices=list(choices), default=None, help=help)
        else:
            g.add_argument(*flags, dest=f.name, type=kind, default=None, metavar=f.name.split("_")[-1].upper(),
                           help=help)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vigil", description="Streaming long-video understanding service")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="cmd", required=True)

    def server_opt(sp):
        sp.add_argument("--server", default=os.environ.get("VIGIL_SERVER", DEFAULT_SERVER), help="host:port")
        g = sp.add_argument_group("TLS (any of these turns it on; the token is read from VIGIL_AUTH_TOKEN)")
        g.add_argument("--tls", action="store_true", help="use TLS, trusting the system's CAs")
        g.add_argument("--tls-ca", default=os.environ.get("VIGIL_TLS_CA"), metavar="PEM",
                       help="CA bundle to trust the server's certificate by [VIGIL_TLS_CA]")
        g.add_argument("--tls-cert", default=os.environ.get("VIGIL_TLS_CERT"), metavar="PEM",
                       help="client certificate, for servers that require one (mutual TLS) [VIGIL_TLS_CERT]")
        g.add_argument("--tls-key", default=os.environ.get("VIGIL_TLS_KEY"), metavar="PEM",
                       help="the client certificate's private key [VIGIL_TLS_KEY]")
        g.add_argument("--tls-server-name", default=os.environ.get("VIGIL_TLS_SERVER_NAME"), metavar="NAME",
                       help="name to check the server's certificate against (default: --server's host) "
                            "[VIGIL_TLS_SERVER_NAME]")
        sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = sub.add_parser("serve", help="run the gRPC server (ingest + QA by default)")
    sp.add_argument("--host")
    sp.add_argument("--port", type=int)
    sp.add_argument("--role", choices=["all", "ingest", "qa"])
    sp.add_argument("--model", help='"tiny", a local directory or a Hugging Face id')
    sp.set_defaults(fn=cmd_serve)

    sp = sub.add_parser("ingest", help="start a stream from a file path or an rtsp:// URL")
    sp.add_argument("source")
    sp.add_argument("--fps", type=float)
    sp.add_argument("--clip-frames", type=int)
    sp.add_argument("--wait", action="store_true", help="wait for the stream to finish, with a progress bar")
    _memory_flags(sp)
    server_opt(sp)
    sp.set_defaults(fn=cmd_ingest)

    sp = sub.add_parser("push", help="push a local MPEG-TS / fragmented MP4 file's bytes as a stream")
    sp.add_argument("file")
    sp.add_argument("--format", choices=["mpegts", "mp4"], default="mpegts")
    sp.add_argument("--name")
    sp.add_argument("--fps", type=float)
    sp.add_argument("--clip-frames", type=int)
    sp.add_argument("--live", action="store_true", help="drop frames when behind instead of pacing the push")
    _memory_flags(sp)
    server_opt(sp)
    sp.set_defaults(fn=cmd_push)

    sp = sub.add_parser("watch", help="follow a stream's state changes, gaps and progress until it ends")
    sp.add_argument("stream_id")
    server_opt(sp)
    sp.set_defaults(fn=cmd_watch)

    sp = sub.add_parser("ask", help="ask a question about a stream")
    sp.add_argument("stream_id")
    sp.add_argument("question")
    sp.add_argument("--top-k", type=int, default=0)
    sp.add_argument("--since", type=float, help="media time window start, seconds")
    sp.add_argument("--until", type=float, help="media time window end, seconds")
    sp.add_argument("--max-new-tokens", type=int, default=0)
    sp.add_argument("--keyframes-dir", help="write evidence keyframes (JPEG) here")
    sp.add_argument("--example", help="search by example: a JPEG/PNG still; chunks are retrieved by similarity to it")
    sp.add_argument("--signals", type=lambda v: [x.strip() for x in v.split(",") if x.strip()], default=[],
                    help="retrieval signals to use, comma-separated: kv, ocr, labels, image, mean (default: all, fused)")
    server_opt(sp)
    sp.set_defaults(fn=cmd_ask)

    sp = sub.add_parser("streams", help="list streams")
    server_opt(sp)
    sp.set_defaults(fn=cmd_streams)

    sp = sub.add_parser("stop", help="stop a running stream; what it stored stays answerable")
    sp.add_argument("stream_id")
    server_opt(sp)
    sp.set_defaults(fn=cmd_stop)

    sp = sub.add_parser("delete", help="delete a stream and everything stored of it (stops it first)")
    sp.add_argument("stream_id")
    server_opt(sp)
    sp.set_defaults(fn=cmd_delete)

    sp = sub.add_parser("demo", help="one process: start a server, ingest a video, ask, print answer and evidence")
    sp.add_argument("--video", help="a video file (default: a generated test pattern)")
    sp.add_argument("--question", help=f"default for the generated video: {DEMO_QUESTION!r}")
    sp.add_argument("--fps", type=float, default=2.0)
    sp.add_argument("--model", help='"tiny" (default), a local directory or a Hugging Face id')
    sp.add_argument("--keyframes-dir", help="write evidence keyframes (JPEG) here")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from services import logs

    logs.install()  # no URL's credentials in any log line (vigil's, PyAV's, grpc's)
    from pydantic import ValidationError

    try:
        return args.fn(args)
    except ValidationError as exc:  # a bad VIGIL_* setting: one line each, naming the variable, no value echoed
        for e in exc.errors(include_url=False, include_input=False):
            loc = "VIGIL_" + "__".join(str(p) for p in e["loc"]).upper() if e["loc"] else exc.title
            msg = e["msg"].removeprefix("Value error, ")
            print(f"error: {msg}" if loc in msg else f"error: {loc}: {msg}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    except Exception as exc:
        from encoders.loading import ModelUnavailable
        from memory.errors import InvalidMemoryOptions

        if isinstance(exc, (ModelUnavailable, RuntimeError, FileNotFoundError, InvalidMemoryOptions)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
