"""The question commands: `vigil ask`, `chat`, `summarize` (a server with role qa or all answers them)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from services.cli import render
from services.cli.connect import client
from services.cli.parser import window
from services.client import as_json


def streamed_answer(messages, out=None):
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


def cmd_ask(args) -> int:
    example = b""
    if args.example:
        path = Path(args.example).expanduser()
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
        example = path.read_bytes()
    kw = dict(top_k=args.top_k, window=window(args), max_new_tokens=args.max_new_tokens,
              include_keyframes=bool(args.keyframes_dir) or args.json, example_image=example, signals=args.signals)
    keyframes_dir = Path(args.keyframes_dir) if args.keyframes_dir else None
    with client(args) as c:
        if args.json or not sys.stdout.isatty():  # one final object / block, as Ask returns it
            resp = c.ask(args.stream_id, args.question, **kw)
        else:  # a terminal: the text as the model makes it (AskStream), then the evidence
            print("Answer: ", end="", flush=True)
            try:
                resp = streamed_answer(c.ask_stream(args.stream_id, args.question, **kw), sys.stdout)
            except KeyboardInterrupt:  # the call is cancelled: the server stops generating
                print()
                return 130
            print()
            render.print_answer(resp, keyframes_dir, answer_shown=True)
            return 0
    if args.json:
        print(json.dumps(as_json(resp)))
    else:
        render.print_answer(resp, keyframes_dir)
    return 0


def cmd_chat(args) -> int:
    """Questions from stdin, one a line, answered in one conversation (its id kept between them); the answers
    stream as they are made. EOF or Ctrl-C ends it."""
    interactive = sys.stdin.isatty()
    cid, noted = "", False
    with client(args) as c:
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
                messages = c.ask_stream(args.stream_id, question, top_k=args.top_k, window=window(args),
                                        max_new_tokens=args.max_new_tokens, conversation_id=cid,
                                        new_conversation=not cid)
                if args.json:
                    resp = streamed_answer(messages)
                    print(json.dumps({"question": question, **as_json(resp)}), flush=True)
                else:
                    resp = streamed_answer(messages, sys.stdout)
                    spans = ", ".join(f"{e.start_s:.1f}-{e.end_s:.1f}s" for e in resp.evidence) or "none"
                    n = resp.history_turns
                    print(f"\n  evidence: {spans}  (conversation {resp.conversation_id}; {n} earlier "
                          f"turn{'' if n == 1 else 's'} in the prompt)", flush=True)
                    if resp.random_weights and not noted:
                        print(render.RANDOM_NOTE, flush=True)
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
    with client(args) as c:
        for m in c.summarize(args.stream_id, window=window(args), detail=args.detail,
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
                    render.print_segment(m.segment, keyframes_dir)
            elif kind == "done":
                done = m.done
    if show_progress:
        print("\r", end="", file=sys.stderr)
    if args.json:
        print(json.dumps(render.summary_json(args.stream_id, model, random_weights, segments, done)))
    else:
        render.print_overview(done, random_weights)
    return 0
