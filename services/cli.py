"""The `vigil` command line: serve, ingest, ask, streams, demo."""
from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import grpc

DEFAULT_SERVER = "127.0.0.1:50051"
QA_COMMANDS = ("ask", "chat", "summarize")  # the commands a QA server (role qa or all) answers
RANDOM_NOTE = "NOTE: the model has random weights (--model tiny): the answer text is noise; the evidence is real."


def _settings(model: str | None = None, **overrides):
    """The process's one Settings, from the environment plus the command line's explicit flags."""
    from services.config import Settings

    s = Settings(**{k: v for k, v in overrides.items() if v is not None})
    return s.with_overrides(model=dataclasses.replace(s.model, name=model)) if model else s


def _media_time(text: str) -> float:
    """A media time for --since/--until: seconds ("90", "90.5"), mm:ss ("1:30") or hh:mm:ss ("1:02:03")."""
    parts = text.strip().split(":")
    usage = f"{text!r} is not a media time: give seconds (90), mm:ss (1:30) or hh:mm:ss (1:02:03)"
    if len(parts) > 3 or not all(p.strip() for p in parts):
        raise argparse.ArgumentTypeError(usage)
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(usage) from None
    if any(not 0 <= n < float("inf") for n in nums) or any(n >= 60 for n in nums[1:]) \
            or any(n != int(n) for n in nums[:-1]):
        raise argparse.ArgumentTypeError(usage + "; minutes and seconds after a colon are whole numbers below 60")
    return sum(n * 60 ** i for i, n in enumerate(reversed(nums)))


def _image_file(text: str) -> str:
    """An --example still: an existing JPEG or PNG file (checked by its first bytes, before anything is sent)."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path}: no such file")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not (head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG\r\n\x1a\n")):
        raise argparse.ArgumentTypeError(f"{path} is not an image: give a JPEG or PNG still (a frame of the scene "
                                         "to find)")
    return text


def _client(args):
    from services.client import Client, is_local, server_address

    args.server = server_address(args.server)  # "localhost" -> localhost:50051, as errors name it
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


def _print_answer(resp, keyframes_dir: Path | None, answer_shown: bool = False) -> None:
    if not answer_shown:  # AskStream printed it as it came
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


def _port_taken(host: str, port: int, what: str, flag: str) -> str | None:
    """Why `vigil serve` cannot have `port` (in use, or an address this host lacks), or None; checked before the
    model loads, so a busy port fails in a moment, not after it."""
    from services.http import port_free

    if port <= 0:
        return None
    try:
        if port_free(host, port):
            return None
    except OSError as exc:
        return f"cannot listen on {host}:{port} ({what}): {exc.strerror or exc}"
    return f"{what} port {port} on {host} is in use (another `vigil serve`?): pick another with {flag}"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _serve_banner(server) -> str:
    """Where `vigil serve` listens and with what: printed once both ports accept calls."""
    from streamer.redact import redact_url

    s, spec = server.settings, server.rt.adapter.spec
    tls = ("TLS, client certificates required (mutual TLS)" if s.tls.client_ca_file else "TLS") if s.tls.enabled \
        else "plaintext"
    auth = "bearer token required (VIGIL_AUTH_TOKEN)" if s.auth_token else "no auth: VIGIL_AUTH_TOKEN unset"
    if server.http is not None:
        guard = ("no auth" if not s.auth_token else "open to all: VIGIL_METRICS_OPEN" if s.metrics_open
                 else "bearer token required")
        http = f"{server.http.scheme}://{_hostport(s.host, server.http_port)}/metrics  ({guard})"
    else:
        http = "off (VIGIL_HTTP_PORT=0)"
    roles = {"all": "all: streams and questions", "ingest": "ingest: streams only (questions: a server with role qa)",
             "qa": "qa: questions only (streams are started on a server with role ingest)"}
    from encoders.loading import runtime_summary

    model = (f"{spec.name} on {runtime_summary(server.rt.adapter, s.model.compile)}"
             + (" (random weights: answers are noise)" if spec.random_weights else "")
             + f"; clips of up to {s.encode_batch} streams batched")
    if s.redis_url is not None:
        store = redact_url(s.redis_url)
    elif server.redis is not None and server.redis.persistent:
        store = f"private redis-server, data kept in {server.redis.dir} (VIGIL_REDIS_DIR)"
    else:
        store = "private redis-server, memory lasts this run (VIGIL_REDIS_DIR keeps it)"
    lines = [f"gRPC    {_hostport(s.host, server.port)}  ({tls}; {auth})", f"HTTP    {http}",
             f"role    {roles.get(s.role, s.role)}", f"model   {model}",
             f"media   {', '.join(map(str, s.media_roots))}  (VIGIL_MEDIA_ROOTS)",
             f"redis   {store}, namespace {s.namespace!r}", "ready   (Ctrl-C or SIGTERM stops it)"]
    return "\n".join(f"vigil serve: {line}" for line in lines)


def cmd_serve(args) -> int:
    s = _settings(model=args.model, host=args.host, port=args.port, role=args.role, http_port=args.http_port)
    # settings (and camera/TLS/token checks) fail above before torch is imported: a bad config answers at once
    from services.server import VigilServer

    for why in (_port_taken(s.host, s.port, "gRPC", "--port P (VIGIL_PORT)"),
                _port_taken(s.host, s.http_port, "HTTP", "--http-port P (VIGIL_HTTP_PORT; 0 turns it off)")):
        if why:
            print(f"error: {why}", file=sys.stderr)
            return 2
    print(f"vigil serve: loading model {s.model.name!r} (device {s.model.device}) ...", file=sys.stderr, flush=True)

    def ready(server) -> None:
        print(_serve_banner(server), flush=True)

    async def main() -> None:
        server = VigilServer(s)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):  # stop cleanly: streams released, private Redis shut down
            loop.add_signal_handler(sig, stop.set)
        await server.run_forever(on_ready=ready, stop=stop)

    asyncio.run(main())
    return 0


def _source_arg(source: str) -> str:
    if "://" in source:
        return source
    p = Path(source).expanduser()
    return str(p.resolve()) if p.exists() else source  # the server checks it against its media roots


def _goes_on(sid: str) -> str:
    return (f"interrupted: stream {sid} goes on on the server; `vigil watch {sid}` follows it, "
            f"`vigil stop {sid}` stops it (what it stored stays answerable)")


def _short_read(info) -> str | None:
    """A note when a finished file covered less than 95 % of the duration its header claims (it ends early)."""
    claimed, read = info.source_duration_s, info.duration_s
    if claimed <= 0 or read >= 0.95 * claimed:
        return None
    return (f"note: the file claims {claimed:.1f}s but only {read:.1f}s ({read / claimed:.0%}) could be read: "
            "it ends early (truncated or damaged?)")


def _report(args, info) -> int:
    """Print a stream's outcome: 0, or 1 when it failed (its error on stderr)."""
    from services.client import state_name

    state = state_name(info.state)
    if args.json:
        print(json.dumps(_info_dict(info)))
    else:
        print(f"stream {info.stream_id}: {state}, {info.frames} frames, {info.chunks} chunks, "
              f"{info.duration_s:.1f}s of video")
    if state == "failed":
        print(f"error: stream {info.stream_id} failed: {info.error}", file=sys.stderr)
        return 1
    if state == "finished" and (note := _short_read(info)):
        print(note, file=sys.stderr)
    return 0


def cmd_ingest(args) -> int:
    info = None
    with _client(args) as c:
        try:
            info = c.start(_source_arg(args.source), fps=args.fps or 0.0, clip_frames=args.clip_frames or 0,
                           memory=_memory_options(args))
            if args.wait:
                info = _wait(c, info, show_progress=not args.json and sys.stderr.isatty())
        except KeyboardInterrupt:
            if info is None:
                raise
            print("\n" + _goes_on(info.stream_id), file=sys.stderr)
            return 130
    return _report(args, info)


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
    if fmt == "auto" and kind not in ("mpegts", "fmp4"):
        fmt, blocks = "mpegts", mpegts_blocks(src)
        try:
            blocks = itertools.chain([next(blocks)], blocks)  # opened and set up here: a bad file fails now
        except StopIteration:
            blocks = iter(())
        except CannotRemux as exc:
            print(f"error: {exc}; convert it to MPEG-TS first (e.g. ffmpeg -i IN -c:v libx264 -f mpegts OUT.ts) "
                  "or start it with `vigil ingest` if the server can read the file", file=sys.stderr)
            return 2
        if not args.json:
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

    with _client(args) as c:
        try:
            info = c.push(guarded(), name=args.name or src.name, fmt=fmt, fps=args.fps or 0.0,
                          clip_frames=args.clip_frames or 0, live=args.live, memory=_memory_options(args))
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
    return _report(args, info)


def _event_dict(ev) -> dict:
    """A StreamEvent for `watch --json`: the stream's fields exactly as `streams --json` has them, plus the event."""
    from services.client import state_name
    from services.wire import ingest_pb2

    d = {"event": ingest_pb2.StreamEvent.Kind.Name(ev.kind).removeprefix("KIND_").lower(),
         "time_unix": round(ev.time_unix, 3), **_info_dict(ev.info)}
    if ev.kind == ingest_pb2.StreamEvent.KIND_STATE:
        d["previous_state"] = state_name(ev.previous_state)
    if ev.kind == ingest_pb2.StreamEvent.KIND_GAP:
        d["gap"] = {"start_s": round(ev.gap.start_s, 3), "end_s": round(ev.gap.end_s, 3), "reason": ev.gap.reason}
    if ev.message:
        d["message"] = ev.message
    return d


def cmd_watch(args) -> int:
    with _client(args) as c:
        for ev in c.watch(args.stream_id):
            print(json.dumps(_event_dict(ev)) if args.json else _event_line(ev), flush=True)
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
    kw = dict(top_k=args.top_k, window=window, max_new_tokens=args.max_new_tokens,
              include_keyframes=bool(args.keyframes_dir) or args.json, example_image=example, signals=args.signals)
    keyframes_dir = Path(args.keyframes_dir) if args.keyframes_dir else None
    with _client(args) as c:
        if args.json or not sys.stdout.isatty():  # one final object / block, as Ask returns it
            resp = c.ask(args.stream_id, args.question, **kw)
        else:  # a terminal: the text as the model makes it (AskStream), then the evidence
            print("Answer: ", end="", flush=True)
            try:
                resp = _streamed_answer(c.ask_stream(args.stream_id, args.question, **kw), sys.stdout)
            except KeyboardInterrupt:  # the call is cancelled: the server stops generating
                print()
                return 130
            print()
            _print_answer(resp, keyframes_dir, answer_shown=True)
            return 0
    if args.json:
        print(json.dumps(_answer_dict(resp)))
    else:
        _print_answer(resp, keyframes_dir)
    return 0


def _streamed_answer(messages, out=None):
    """AskStream's messages -> the AskResponse Ask would have returned; each text delta written to `out` (the
    first ones without their leading whitespace, as the final answer is stripped) as it arrives."""
    from services.wire import qa_pb2

    resp = qa_pb2.AskResponse()
    started = False
    for m in messages:
        kind = m.WhichOneof("msg")
        if kind == "evidence":
            e = m.evidence
            resp = qa_pb2.AskResponse(
                evidence=e.evidence, gaps=e.gaps, searched_window=e.searched_window, window_source=e.window_source,
                window_phrase=e.window_phrase, model=e.model, random_weights=e.random_weights,
                conversation_id=e.conversation_id, history_turns=e.history_turns, memory_tokens=e.memory_tokens)
        elif kind == "delta":
            text = m.delta.text if started else m.delta.text.lstrip()
            started = started or bool(text)
            if out is not None and text:
                out.write(text)
                out.flush()
        elif kind == "done":
            resp.answer, resp.latency_ms, resp.memory_tokens = m.done.answer, m.done.latency_ms, m.done.memory_tokens
    return resp


def _window_arg(args) -> tuple[float, float] | None:
    return (args.since or 0.0, args.until or 0.0) if (args.since or args.until) else None


def cmd_chat(args) -> int:
    """Questions from stdin, one a line, answered in one conversation (its id kept between them); the answers
    stream as they are made. EOF or Ctrl-C ends it."""
    interactive = sys.stdin.isatty()
    cid, noted = "", False
    with _client(args) as c:
        try:
            while True:
                if interactive:
                    print("? ", end="", flush=True, file=sys.stderr)
                line = sys.stdin.readline()
                if not line:  # EOF
                    break
                question = line.strip()
                if not question:
                    continue
                messages = c.ask_stream(args.stream_id, question, top_k=args.top_k, window=_window_arg(args),
                                        max_new_tokens=args.max_new_tokens, conversation_id=cid,
                                        new_conversation=not cid)
                if args.json:
                    resp = _streamed_answer(messages)
                    print(json.dumps({"question": question, "conversation_id": resp.conversation_id,
                                      "history_turns": resp.history_turns, **_answer_dict(resp)}), flush=True)
                else:
                    resp = _streamed_answer(messages, sys.stdout)
                    spans = ", ".join(f"{e.start_s:.1f}-{e.end_s:.1f}s" for e in resp.evidence) or "none"
                    print(f"\n  evidence: {spans}  ({resp.history_turns} earlier turns in the prompt)", flush=True)
                    if resp.random_weights and not noted:
                        print(RANDOM_NOTE, flush=True)
                        noted = True
                cid = resp.conversation_id
        except KeyboardInterrupt:  # Ctrl-C: the answer in progress is cancelled; the session ends cleanly
            print(file=sys.stderr)
    return 0


def cmd_summarize(args) -> int:
    """A time-stamped summary of a window: each segment as it is done, then the overview."""
    show_progress = not args.json and sys.stderr.isatty()
    keyframes_dir = Path(args.keyframes_dir) if args.keyframes_dir else None
    segments, done, model, random_weights = [], None, "", False
    with _client(args) as c:
        for m in c.summarize(args.stream_id, window=_window_arg(args), detail=args.detail,
                             max_new_tokens=args.max_new_tokens, include_keyframes=bool(keyframes_dir)):
            model, random_weights = m.model, m.random_weights
            kind = m.WhichOneof("msg")
            if kind == "progress" and show_progress:
                p = m.progress
                what = f"segment {p.segment} of {p.segments}" if p.stage == "segment" else "the overview"
                print(f"\rsummarising {what} ...", end="", file=sys.stderr, flush=True)
            elif kind == "segment":
                segments.append(m.segment)
                if not args.json:
                    if show_progress:
                        print("\r", end="", file=sys.stderr)
                    _print_segment(m.segment, keyframes_dir)
            elif kind == "done":
                done = m.done
    if show_progress:
        print("\r", end="", file=sys.stderr)
    if args.json:
        print(json.dumps({
            "stream_id": args.stream_id, "model": model, "random_weights": random_weights,
            "window": {"start_s": round(done.window.start_s, 3), "end_s": round(done.window.end_s, 3)},
            "overview": done.overview, "latency_ms": round(done.latency_ms, 1),
            "segments": [{"index": g.index, "start_s": round(g.start_s, 3), "end_s": round(g.end_s, 3),
                          "summary": g.summary, "on_screen_text": list(g.on_screen_text), "chunks": g.chunks,
                          "evidence": [{"chunk_id": e.chunk_id, "start_s": round(e.start_s, 3),
                                        "end_s": round(e.end_s, 3), "keyframe_s": round(e.keyframe_s, 3)}
                                       for e in g.evidence]} for g in segments],
            "gaps": [{"start_s": round(g.start_s, 3), "end_s": round(g.end_s, 3), "reason": g.reason}
                     for g in done.gaps]}))
        return 0
    print(f"Overview ({done.window.start_s:.1f}s - {done.window.end_s:.1f}s, {done.segments} segments, "
          f"{done.latency_ms / 1000:.1f} s): {done.overview}")
    for g in done.gaps:
        print(f"  no footage {g.start_s:8.2f}s - {g.end_s:8.2f}s: {g.reason}")
    if random_weights:
        print(RANDOM_NOTE)
    return 0


def _print_segment(g, keyframes_dir: Path | None) -> None:
    print(f"[{g.start_s:7.1f}s - {g.end_s:7.1f}s] {g.summary}")
    if g.on_screen_text:
        print(f"    on screen: {', '.join(repr(t) for t in g.on_screen_text)}")
    line = (f"    evidence: {g.chunks} chunks, read {', '.join(str(e.chunk_id) for e in g.evidence)} "
            f"(keyframes at {', '.join(f'{e.keyframe_s:.1f}s' for e in g.evidence)})")
    if keyframes_dir:
        keyframes_dir.mkdir(parents=True, exist_ok=True)
        for e in g.evidence:
            if e.keyframe_jpeg:
                (keyframes_dir / f"chunk-{e.chunk_id:05d}.jpg").write_bytes(e.keyframe_jpeg)
        line += f" -> {keyframes_dir}"
    print(line, flush=True)


def cmd_streams(args) -> int:
    with _client(args) as c:
        streams = c.list()
    if args.json:
        print(json.dumps([_info_dict(i) for i in streams]))
    elif not streams:
        print("no streams (start one with `vigil ingest FILE` or `vigil push FILE`)")
    else:
        rows = [_info_dict(i) for i in streams]
        w = max(len("STREAM"), *(len(d["stream_id"]) for d in rows))
        print(f"{'STREAM':<{w}}  {'STATE':<12} {'CHUNKS':>6} {'FRAMES':>7} {'VIDEO':>9} {'MEMORY':>9}  SOURCE")
        for d in rows:
            print(f"{d['stream_id']:<{w}}  {d['state']:<12} {d['chunks']:>6} {d['frames']:>7} "
                  f"{d['duration_s']:>8.1f}s {d['memory_bytes'] / 1e6:>7.2f}MB  {d['source']}")
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
    s = s.with_overrides(host="127.0.0.1", port=0, media_roots=(video.parent,), role="all", tls=type(s.tls)(),
                         http_port=0)
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


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the help says it already or there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """The parser of `vigil` and of each command (argparse builds subcommands with the parent's class)."""

    def __init__(self, *args, formatter_class=_Help, **kwargs) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


STREAM_ID_HELP = "the stream's id (`vigil streams` lists them)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vigil", description="Streaming long-video understanding service. Exit status: 0 done, "
                "1 the stream failed (ingest, push: its error is printed), 2 an error (usage, connection, a refused "
                "request), 130 interrupted.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="cmd", required=True)

    def server_opt(sp):
        sp.add_argument("--server", default=os.environ.get("VIGIL_SERVER", DEFAULT_SERVER),
                        help="the server's host:port; a host alone means port 50051 [VIGIL_SERVER]")
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
        sp.add_argument("--json", action="store_true", help="machine-readable output (JSON)")

    sp = sub.add_parser("serve", help="run the server: gRPC (streams, questions) and HTTP (/metrics)",
                        description="Run the server until Ctrl-C / SIGTERM: gRPC for streams and questions, HTTP for "
                        "/metrics. Unset options take VIGIL_* settings (docs/configuration.md). It prints where "
                        "it listens and \"ready\".")
    sp.add_argument("--host", help="address to listen on, both ports (default: VIGIL_HOST, else 127.0.0.1)")
    sp.add_argument("--port", type=int, help="gRPC port; 0: any free one (default: VIGIL_PORT, else 50051)")
    sp.add_argument("--http-port", type=int, help="HTTP port (/metrics); 0 turns it off, -1 any free one "
                    "(default: VIGIL_HTTP_PORT, else 8080)")
    sp.add_argument("--role", choices=["all", "ingest", "qa"], help="all: streams and questions; ingest: streams "
                    "only; qa: questions only (default: VIGIL_ROLE, else all)")
    sp.add_argument("--model", help='"tiny" (random weights), a local model folder or a Hugging Face id '
                    "(default: VIGIL_MODEL__NAME, else tiny)")
    sp.set_defaults(fn=cmd_serve)

    sp = sub.add_parser("ingest", help="start a stream from a file path or an rtsp:// URL")
    sp.add_argument("source", help="a video file under the server's VIGIL_MEDIA_ROOTS, or an rtsp:// URL")
    sp.add_argument("--fps", type=float, help="frames sampled per second (default: the server's VIGIL_FPS)")
    sp.add_argument("--clip-frames", type=int, help="sampled frames per chunk (default: the server's "
                    "VIGIL_CLIP_FRAMES)")
    sp.add_argument("--wait", action="store_true", help="wait for the stream to finish, with a progress bar")
    _memory_flags(sp)
    server_opt(sp)
    sp.set_defaults(fn=cmd_ingest)

    sp = sub.add_parser("push", help="send a local video file's bytes to the server as a stream",
                        description="Send a local file over PushStream (the server needs no access to it). MPEG-TS "
                        "and fragmented MP4 go as they are; any other file PyAV reads (a plain MP4, MKV, ...) is "
                        "remuxed into MPEG-TS as it is sent (packets copied, no re-encoding).")
    sp.add_argument("file", help="the video file to send")
    sp.add_argument("--format", choices=["auto", "mpegts", "mp4"], default="auto",
                    help="auto: detect, remuxing when needed; mpegts / mp4 (fragmented): send as it is")
    sp.add_argument("--name", help="shown as the stream's source, push:NAME (default: the file's name)")
    sp.add_argument("--fps", type=float, help="frames sampled per second (default: the server's VIGIL_FPS)")
    sp.add_argument("--clip-frames", type=int, help="sampled frames per chunk (default: the server's "
                    "VIGIL_CLIP_FRAMES)")
    sp.add_argument("--live", action="store_true", help="drop frames when behind instead of pacing the push")
    _memory_flags(sp)
    server_opt(sp)
    sp.set_defaults(fn=cmd_push)

    sp = sub.add_parser("watch", help="follow a stream's state changes, gaps and progress until it ends")
    sp.add_argument("stream_id", help=STREAM_ID_HELP)
    server_opt(sp)
    sp.set_defaults(fn=cmd_watch)

    sp = sub.add_parser("ask", help="ask a question about a stream")
    sp.add_argument("stream_id", help=STREAM_ID_HELP)
    sp.add_argument("question", help="the question; time words in it "
                    "(\"in the first minute\", \"at 1:30\") narrow the search")
    sp.add_argument("--top-k", type=int, default=0, help="evidence chunks to answer from (default: the server's "
                    "VIGIL_TOP_K)")
    sp.add_argument("--since", type=_media_time, help="media time window start: seconds, mm:ss or hh:mm:ss")
    sp.add_argument("--until", type=_media_time, help="media time window end: seconds, mm:ss or hh:mm:ss")
    sp.add_argument("--max-new-tokens", type=int, default=0, help="longest answer, in tokens (default: the "
                    "server's VIGIL_MAX_NEW_TOKENS)")
    sp.add_argument("--keyframes-dir", help="write evidence keyframes (JPEG) here")
    sp.add_argument("--example", type=_image_file,
                    help="search by example: a JPEG/PNG still; chunks are retrieved by similarity to it")
    sp.add_argument("--signals", type=lambda v: [x.strip() for x in v.split(",") if x.strip()], default=[],
                    help="retrieval signals to use, comma-separated: kv, ocr, labels, image, mean (default: all, fused)")
    server_opt(sp)
    sp.set_defaults(fn=cmd_ask)

    sp = sub.add_parser("chat", help="an interactive conversation about a stream: questions from stdin, one a line")
    sp.add_argument("stream_id", help=STREAM_ID_HELP)
    sp.add_argument("--top-k", type=int, default=0, help="evidence chunks to answer from (default: the server's "
                    "VIGIL_TOP_K)")
    sp.add_argument("--since", type=_media_time, help="media time window start: seconds, mm:ss or hh:mm:ss")
    sp.add_argument("--until", type=_media_time, help="media time window end: seconds, mm:ss or hh:mm:ss")
    sp.add_argument("--max-new-tokens", type=int, default=0, help="longest answer, in tokens (default: the "
                    "server's VIGIL_MAX_NEW_TOKENS)")
    server_opt(sp)
    sp.set_defaults(fn=cmd_chat)

    sp = sub.add_parser("summarize", help="a time-stamped summary of a stream's window, from its memory")
    sp.add_argument("stream_id", help=STREAM_ID_HELP)
    sp.add_argument("--since", type=_media_time, help="media time window start: seconds, mm:ss or hh:mm:ss")
    sp.add_argument("--until", type=_media_time, help="media time window end: seconds, mm:ss or hh:mm:ss")
    sp.add_argument("--detail", type=int, default=0, help="segments to aim for (default: the server's)")
    sp.add_argument("--max-new-tokens", type=int, default=0, help="per segment summary and for the overview")
    sp.add_argument("--keyframes-dir", help="write each segment's evidence keyframes (JPEG) here")
    server_opt(sp)
    sp.set_defaults(fn=cmd_summarize)

    sp = sub.add_parser("streams", help="list every stream: id, state, chunks, frames, video covered, memory")
    server_opt(sp)
    sp.set_defaults(fn=cmd_streams)

    sp = sub.add_parser("stop", help="stop a running stream; what it stored stays answerable")
    sp.add_argument("stream_id", help=STREAM_ID_HELP)
    server_opt(sp)
    sp.set_defaults(fn=cmd_stop)

    sp = sub.add_parser("delete", help="delete a stream and everything stored of it (stops it first)")
    sp.add_argument("stream_id", help=STREAM_ID_HELP)
    server_opt(sp)
    sp.set_defaults(fn=cmd_delete)

    sp = sub.add_parser("demo", help="one process: start a server, ingest a video, ask, print answer and evidence")
    sp.add_argument("--video", help="a video file (default: a generated test pattern)")
    sp.add_argument("--question", help=f"default for the generated video: {DEMO_QUESTION!r}")
    sp.add_argument("--fps", type=float, default=2.0, help="frames sampled per second")
    sp.add_argument("--model", help='"tiny" (random weights), a local model folder or a Hugging Face id '
                    "(default: VIGIL_MODEL__NAME, else tiny)")
    sp.add_argument("--keyframes-dir", help="write evidence keyframes (JPEG) here")
    sp.add_argument("--json", action="store_true", help="machine-readable output (one JSON object)")
    sp.set_defaults(fn=cmd_demo)
    return p


def _quiet_warnings() -> None:
    """No library warnings on ordinary runs: transformers' `past_key_values` FutureWarning is about the adapters'
    call style (a later change removes its cause); -v shows everything."""
    warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated", category=FutureWarning)


def _connect_hint(exc: grpc.RpcError, args) -> str | None:
    """A plain sentence for a call that reached no server (refused, no such host, TLS mismatch), else None."""
    details = exc.details() or ""
    client_side = ("failed to connect to all addresses", "DNS resolution failed", "Socket closed",
                   "Connection reset", "connections to all backends failing", "Broken pipe")
    if exc.code() != grpc.StatusCode.UNAVAILABLE or not any(s in details for s in client_side):
        return None
    addr = getattr(args, "server", DEFAULT_SERVER)
    speaks_tls = bool(getattr(args, "tls", False) or getattr(args, "tls_ca", None) or getattr(args, "tls_cert", None))
    tls = ""
    if speaks_tls:  # a refused handshake looks like a closed socket: the server may want a client certificate
        tls = ("; over TLS: the server may require a client certificate (--tls-cert/--tls-key), or --tls-ca / "
               "--tls-server-name do not match its certificate")
    elif any(w in details.lower() for w in ("ssl", "handshake", "tls")):
        tls = "; TLS: the server and --tls / --tls-ca must agree"
    cause = details.rsplit(": ", 1)[-1].strip()[:160]
    return (f"error: UNAVAILABLE: no vigil server answered at {addr}: is `vigil serve` running at {addr}? "
            f"(--server HOST:PORT or VIGIL_SERVER names another{tls}; {cause})")


def _rpc_message(exc: grpc.RpcError, args) -> str:
    code, details = exc.code(), exc.details() or ""
    if hint := _connect_hint(exc, args):
        return hint
    if code == grpc.StatusCode.UNIMPLEMENTED and details in ("Method not found!", ""):  # the service is not here
        if args.cmd in QA_COMMANDS:
            return ("error: this server does not serve questions (role ingest); ask a server with role qa or all "
                    f"(--server; this one is {args.server})")
        return f"error: this server does not serve `vigil {args.cmd}` (role qa, or an older vigil?): {details}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        given = "VIGIL_AUTH_TOKEN is not the server's token" if os.environ.get("VIGIL_AUTH_TOKEN") else \
            "set VIGIL_AUTH_TOKEN to the server's token"
        return f"error: UNAUTHENTICATED: {details} ({given})"
    return f"error: {code.name}: {details}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        _quiet_warnings()
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
        print(_rpc_message(exc, args), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `vigil ... | head` closed the pipe: nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush has nowhere to fail
        return 0
    except Exception as exc:
        from encoders.loading import ModelUnavailable
        from memory.errors import InvalidMemoryOptions

        if isinstance(exc, (ModelUnavailable, RuntimeError, FileNotFoundError, InvalidMemoryOptions)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
