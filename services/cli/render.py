"""What the commands print: the JSON objects (`--json`: each message as `services.client.as_json` renders it, the
rendering the HTTP API serves too, composed here where a command prints several) and the human lines and tables."""
from __future__ import annotations

import time
from pathlib import Path

from services.client import as_json, state_name

RANDOM_NOTE = "NOTE: the model has random weights (--model tiny): the answer text is noise; the evidence is real."


# ---- JSON -----------------------------------------------------------------------------------------------------

def event_json(ev) -> dict:
    """A StreamEvent for `watch --json`: {event, time_unix}, the stream's fields exactly as `streams --json` has
    them, and previous_state, gap, alert, message when the event has them."""
    d = as_json(ev)
    out = {"event": d["kind"], "time_unix": d["time_unix"], **d["info"]}
    if d["kind"] == "state":
        out["previous_state"] = d["previous_state"]
    out.update({k: d[k] for k in ("gap", "alert", "message") if d[k]})
    return out


def summary_json(stream_id: str, model: str, random_weights: bool, segments: list, done) -> dict:
    """`summarize --json`: the SummaryDone (window, overview, latency_ms, gaps) with the segments themselves in
    place of their count, each a SummarySegment."""
    return {"stream_id": stream_id, "model": model, "random_weights": random_weights, **as_json(done),
            "segments": [as_json(g) for g in segments]}


# ---- text -----------------------------------------------------------------------------------------------------

def _signals_line(e) -> str:
    return ", ".join(f"{x.signal} #{x.rank} ({x.score:.2f})" for x in e.signals)


def _searched(resp) -> str:
    """Which window an answer searched, and what set it."""
    from services.wire import qa_pb2

    if resp.window_source in (qa_pb2.WINDOW_SOURCE_UNSPECIFIED, qa_pb2.WINDOW_SOURCE_ALL):
        return "the whole stream"
    w = resp.searched_window
    end = "end" if w.end_s <= 0 else format(round(w.end_s, 3), ".1f") + "s"
    why = (f" (from the question: {resp.window_phrase!r})" if resp.window_source == qa_pb2.WINDOW_SOURCE_QUESTION
           else " (from the request)")
    return f"{round(w.start_s, 3):.1f}s - {end}{why}"


def write_keyframe(keyframes_dir: Path, chunk_id: int, jpeg: bytes) -> Path:
    keyframes_dir.mkdir(parents=True, exist_ok=True)
    out = keyframes_dir / f"chunk-{chunk_id:05d}.jpg"
    out.write_bytes(jpeg)
    return out


def print_answer(resp, keyframes_dir: Path | None, answer_shown: bool = False) -> None:
    """An AskResponse: the answer (unless AskStream printed it as it came), the window searched, each evidence
    chunk (its keyframe written to `keyframes_dir`), the gaps, and the random-weights note."""
    if not answer_shown:
        print(f"Answer: {resp.answer}")
    print(f"Searched: {_searched(resp)}")
    print(f"Evidence ({len(resp.evidence)} chunks in time order, {resp.memory_tokens} memory tokens, "
          f"{resp.latency_ms:.0f} ms):")
    for e in resp.evidence:
        line = (f"  #{e.rank:<2} chunk {e.chunk_id:>4}  {e.start_s:8.2f}s - {e.end_s:8.2f}s  keyframe @ {e.keyframe_s:.2f}s"
                f"  found by {_signals_line(e) or '-'}")
        if e.on_screen_text:
            line += f"\n        on screen: {e.on_screen_text!r}"
        for s in e.speech:
            line += f"\n        said @ {s.start_s:.1f}s: {s.text!r}"
        if keyframes_dir and e.keyframe_jpeg:
            line += f"  -> {write_keyframe(keyframes_dir, e.chunk_id, e.keyframe_jpeg)}"
        print(line)
    for g in resp.gaps:
        when = ""
        if g.wall_start_unix and g.wall_end_unix:
            when = (f" ({time.strftime('%H:%M:%S', time.localtime(g.wall_start_unix))} to "
                    f"{time.strftime('%H:%M:%S', time.localtime(g.wall_end_unix))})")
        print(f"  no footage {g.start_s:8.2f}s - {g.end_s:8.2f}s{when}: {g.reason}")
    if resp.random_weights:
        print(RANDOM_NOTE)


def event_line(ev) -> str:
    """A StreamEvent as one line of `vigil watch`."""
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


def streams_table(streams: list) -> list[str]:
    """`vigil streams`: a header row, then one row per StreamInfo."""
    w = max(len("STREAM"), *(len(i.stream_id) for i in streams))
    nw = max(len("NAME"), *(len(i.name or "-") for i in streams))
    rows = [f"{'STREAM':<{w}}  {'NAME':<{nw}}  {'STATE':<12} {'CHUNKS':>6} {'FRAMES':>7} {'VIDEO':>9} {'MEMORY':>9}  "
            "SOURCE"]
    for i in streams:
        rows.append(f"{i.stream_id:<{w}}  {i.name or '-':<{nw}}  {state_name(i.state):<12} {i.chunks:>6} {i.frames:>7} "
                    f"{round(i.duration_s, 3):>8.1f}s {i.memory_bytes / 1e6:>7.2f}MB  {i.source}")
    return rows


def print_segment(g, keyframes_dir: Path | None) -> None:
    """A SummarySegment as `vigil summarize` prints it, its keyframes written to `keyframes_dir`."""
    print(f"[{g.start_s:7.1f}s - {g.end_s:7.1f}s] {g.summary}")
    if g.on_screen_text:
        print(f"    on screen: {', '.join(repr(t) for t in g.on_screen_text)}")
    line = (f"    evidence: {g.chunks} chunks, read {', '.join(str(e.chunk_id) for e in g.evidence)} "
            f"(keyframes at {', '.join(f'{e.keyframe_s:.1f}s' for e in g.evidence)})")
    if keyframes_dir:
        keyframes_dir.mkdir(parents=True, exist_ok=True)
        for e in g.evidence:
            if e.keyframe_jpeg:
                write_keyframe(keyframes_dir, e.chunk_id, e.keyframe_jpeg)
        line += f" -> {keyframes_dir}"
    print(line, flush=True)


def print_overview(done, random_weights: bool) -> None:
    """A SummaryDone as `vigil summarize` ends: the overview, the window's gaps, the random-weights note."""
    print(f"Overview ({done.window.start_s:.1f}s - {done.window.end_s:.1f}s, {done.segments} segments, "
          f"{done.latency_ms / 1000:.1f} s): {done.overview}")
    for g in done.gaps:
        print(f"  no footage {g.start_s:8.2f}s - {g.end_s:8.2f}s: {g.reason}")
    if random_weights:
        print(RANDOM_NOTE)
