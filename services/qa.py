"""The QA path: question -> searched window (request, or the question's time words) -> retrieval signals
(late interaction over the model's keys, the frame index) -> fused top-k -> prefix + working memory + chunks
in time order -> answer. Feature chunks are prefilled again (in time order) behind the KV memory.

`prepare` does everything before the first answer token (validation, window, retrieval, memory, the
conversation's earlier turns); `generate` yields the answer's text pieces, holding the model lock one decoding
step at a time; Ask (`ask`) joins them, AskStream (`ask_streamed`) hands each one out as it comes."""
from __future__ import annotations

import io
import logging
import math
import re
import struct
import threading
import time
import zlib
import zoneinfo
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from PIL import Image, UnidentifiedImageError

from encoders.base import EncodedSegment, Turn
from encoders.signals import SIGNALS, Signal
from memory.assemble import answer_memory
from memory.conversations import CONVERSATION_ID, ConversationStore, recent_turns
from memory.errors import ChunksGone, clipped
from memory.fusion import SearchOptions
from memory.index import Hit, Query, StreamIndex
from memory.layout import FeatureSet, TokenSet, concat_segments
from memory.store import Gap
from memory.timewords import TimeWindow, window_from_question
from services.errors import InvalidRequest, NotReady
from services.runtime import Runtime

log = logging.getLogger("vigil.qa")
_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”|'[^']{2,}'")  # quoted words are what to find, not when
MAX_SIGNALS = 8
MAX_GAPS = 64  # outages an answer lists (those overlapping its window, oldest first)


class WindowSource(StrEnum):
    """What set the searched window: nothing (all of it), the request, or the question's time words."""
    ALL = "all"
    REQUEST = "request"
    QUESTION = "question"


@dataclass(frozen=True)
class Searched:
    """The media-time window a question searched, and what set it."""
    start_s: float
    end_s: float  # inf: to the end
    source: WindowSource
    phrase: str = ""  # the question's time words (source QUESTION)
    text: str = ""  # what the text signals search: the question without its time words ("": the question)

    @property
    def bounds(self) -> tuple[float, float] | None:
        return None if self.source == WindowSource.ALL else (self.start_s, self.end_s)


@dataclass(frozen=True)
class Answer:
    text: str
    hits: list[Hit]  # time order
    ranks: list[int]  # each hit's 1-based rank in the fused ranking
    keyframes: list[bytes]
    memory_tokens: int
    latency_ms: float
    gaps: list[Gap]  # outages that overlap the searched window
    window: Searched
    conversation_id: str = ""  # the conversation this answer was added to ("": none)
    history_turns: int = 0  # its earlier turns that went into the prompt


def validate_question(question: str, max_chars: int, max_tokens: int = 0,
                      count_tokens: Callable[[str], int] | None = None) -> str:
    """The stripped question, refused when empty, over `max_chars` characters, or over `max_tokens` tokens
    of the model's own tokenizer (`count_tokens`; characters are checked first, so it never reads more
    than `max_chars`)."""
    q = question.strip()
    if not q:
        raise InvalidRequest("question is empty")
    if len(q) > max_chars:
        raise InvalidRequest(f"question is {len(q)} characters; the limit is {max_chars}")
    if max_tokens and count_tokens is not None:
        n = count_tokens(q)
        if n > max_tokens:
            raise InvalidRequest(f"question is {n} tokens ({len(q)} characters); the limit is {max_tokens} "
                                 f"tokens ({max_chars} characters)")
    return q


def check_window(lo: float, hi: float) -> tuple[float, float]:
    """A requested media-time window [lo, hi) (hi inf: to the end), refused unless 0 <= lo < hi, lo finite."""
    if math.isnan(lo) or math.isnan(hi):
        raise InvalidRequest(f"time window [{lo}, {hi}] is invalid: its bounds must be numbers, not NaN")
    if not math.isfinite(lo) or lo < 0:
        raise InvalidRequest(f"time window [{lo:g}, {hi:g}] is invalid: its start must be a finite number >= 0")
    if hi < 0:
        raise InvalidRequest(f"time window [{lo:g}, {hi:g}] is invalid: its end must be >= 0 (0: to the end)")
    if hi <= lo:
        raise InvalidRequest(f"time window [{lo:g}, {hi:g}] is empty: its end must come after its start")
    return lo, hi


def request_window(start_s: float, end_s: float) -> tuple[float, float]:
    """The window as the wire sends it (end_s 0: to the end), checked; before any work is queued."""
    if math.isnan(end_s) or end_s < 0:  # not read as "0: to the end"
        return check_window(start_s, end_s)
    return check_window(start_s, end_s if end_s > 0 else math.inf)


def searched_window(rt: Runtime, index: StreamIndex, question: str, window: tuple[float, float] | None,
                    media_end_s: float) -> Searched:
    """An explicit window wins; else the question's time words (not inside quotes: "when did the sign say
    'DEPARTS 12:30'?" searches everywhere; wall-clock words read through the stream's chunks' wall times,
    live streams only, in `VIGIL_TIMEZONE`); else everything."""
    if window is not None:
        lo, hi = check_window(*window)
    anchors = index.wall_anchors()
    unquoted = _QUOTED.sub(lambda m: " " * len(m.group()), question)  # same length: phrases stay substrings
    tz = zoneinfo.ZoneInfo(rt.settings.timezone) if rt.settings.timezone else None
    tw = window_from_question(unquoted, duration_s=media_end_s, wall_anchor=anchors or None, tz=tz)
    text = search_text(question, tw)
    if window is not None:  # the request's window wins; its time words still stay out of the text search
        return Searched(lo, hi, WindowSource.REQUEST, text=text)
    if tw is None:
        return Searched(0.0, math.inf, WindowSource.ALL, text=text)
    return Searched(tw.start_s, tw.end_s, WindowSource.QUESTION, tw.phrase, text=text)


def search_text(question: str, tw: TimeWindow | None) -> str:
    """What the text signals (on-screen text, labels, image-text embedding) and the question's keys search with: the
    question without the time words that set its window. They are for the window only: CCTV burns a clock into
    every frame, and "what was on the sign between 4:45 and 5:00?" would otherwise find the chunks whose clock
    reads 00:04:58 before the sign. The question itself when nothing with a letter or digit is left."""
    if tw is None or not tw.spans:
        return question
    rest = tw.without_time_words(question)
    return rest if any(c.isalnum() for c in rest) else question


def search_options(rt: Runtime, signals: list[str]) -> SearchOptions:
    """The server's search options, restricted to `signals` when given (each then weighs 1 unless set)."""
    opts = rt.settings.retrieval
    if not signals:
        return opts
    if len(signals) > MAX_SIGNALS:
        raise InvalidRequest(f"{len(signals)} retrieval signals named; at most {MAX_SIGNALS}")
    unknown = sorted(set(signals) - set(SIGNALS))
    if unknown:
        shown = ", ".join(clipped(u, 24) for u in unknown[:3]) + (f" and {len(unknown) - 3} more"
                                                                   if len(unknown) > 3 else "")
        raise InvalidRequest(f"unknown retrieval signal(s) {shown}; known: {[str(x) for x in SIGNALS]}")
    asked = [Signal(x) for x in signals]
    produced = set(rt.describer.signals) if rt.describer is not None else set()
    if rt.transcriber is not None and rt.transcriber.searchable:
        produced.add(Signal.SPEECH)
    missing = [x for x in asked if x.frame_index and x not in produced]
    if missing == [Signal.SPEECH]:
        raise NotReady("this server has no speech signal (speech recognition is off or its packages are missing; "
                       "see VIGIL_SPEECH__*)")
    if missing:
        raise NotReady(f"this server has no {', '.join(missing)} signal (frame index: "
                       f"{'off' if rt.describer is None else ', '.join(rt.describer.signals)}; see VIGIL_FRAMES__*)")
    return opts.restricted(asked)


@dataclass(frozen=True)
class Prepared:
    """Everything an answer is generated from, found before any answer token: what Ask and AskStream share."""
    question: str  # validated
    memory: EncodedSegment  # prefix + working memory + the retrieved chunks, time order
    budget: int  # max new tokens
    hits: list[Hit]  # time order
    ranks: list[int]
    keyframes: list[bytes]
    gaps: list[Gap]
    window: Searched
    history: tuple[Turn, ...]  # earlier turns that go into the prompt (bounded by max_conversation_tokens)
    conversation_id: str  # "": none
    t0: float  # perf_counter when the question arrived
    timings: tuple[tuple[str, float], ...] = ()  # (stage, ms) of the work before the first answer token


def shows_text_frame(h: Hit) -> bool:
    """Whether a hit's evidence shows the chunk's text frame rather than its keyframe: the on-screen text found it
    and was read in a frame the keyframe does not match (stored as the chunk's text frame)."""
    return h.chunk.text_frame_s is not None and any(x.name == Signal.OCR for x in h.signals)


def evidence_frame_s(h: Hit) -> float:
    """Media time of the frame a hit's evidence shows (`shows_text_frame`: the text frame, else the keyframe)."""
    return h.chunk.text_frame_s if shows_text_frame(h) else h.chunk.keyframe_s


def conversations(rt: Runtime) -> ConversationStore:
    return ConversationStore(rt.store.r, rt.store.ns, rt.settings.conversation_ttl_s)


def conversation_of(rt: Runtime, sid: str, conversation_id: str) -> tuple[Turn, ...]:
    """The earlier turns of a conversation that fit the prompt (max_conversation_tokens, oldest dropped first).
    Refused unless it is about stream `sid` (INVALID_ARGUMENT); unknown or expired: NOT_FOUND."""
    if not CONVERSATION_ID.match(conversation_id):
        raise InvalidRequest(f"conversation_id {clipped(conversation_id)} is not 1-64 letters, digits, '-' or '_'")
    conv = conversations(rt).get(conversation_id)
    if conv.stream_id != sid:
        raise InvalidRequest(f"conversation {clipped(conversation_id)} is about stream {clipped(conv.stream_id)}, "
                             f"not {clipped(sid)}")
    return recent_turns(conv.turns, rt.settings.max_conversation_tokens, rt.adapter.count_tokens)


def prepare(rt: Runtime, sid: str, question: str, *, top_k: int = 0, window: tuple[float, float] | None = None,
            max_new_tokens: int = 0, include_keyframes: bool = False, example_image: bytes = b"",
            signals: list[str] | None = None, conversation_id: str = "", new_conversation: bool = False) -> Prepared:
    """Validation, the searched window, retrieval and the memory the answer is generated on; no answer token."""
    t0 = time.perf_counter()
    s = rt.settings
    q = validate_question(question, s.max_question_chars, s.max_question_tokens, rt.adapter.count_tokens)
    if top_k > s.max_top_k:
        raise InvalidRequest(f"top_k {top_k} is over the limit of {s.max_top_k}")
    opts = search_options(rt, list(signals or []))
    if conversation_id and new_conversation:
        raise InvalidRequest("give conversation_id to continue a conversation, or new_conversation to start one; "
                             "not both")
    rec = rt.store.get_stream(sid)  # NOT_FOUND before any model work (an unknown conversation too)
    history = conversation_of(rt, sid, conversation_id) if conversation_id else ()
    cid = conversation_id
    index = rt.indexes.synced(sid)  # synced again only when retention changes chunks during the question
    searched = searched_window(rt, index, q, window, rec.media_end_s)
    if searched.source == WindowSource.QUESTION and not index.allowed(searched.bounds):
        # the time words point where nothing is stored: search it all
        searched = Searched(0.0, math.inf, WindowSource.ALL)
    example = (decode_example(example_image, s.max_example_bytes, s.frame_max_side, s.max_example_decoded_bytes)
               if example_image else None)
    marks = [("checks, index sync", time.perf_counter())]
    query = question_query(rt, searched.text or q, example, rec.frames_fingerprint)
    marks.append(("question keys", time.perf_counter()))
    for attempt in range(3):  # retention may merge or delete the chunks a search found: search again
        if attempt:
            index = rt.indexes.synced(sid)
        rec = rt.store.get_stream(sid)  # read after the sync: it covers every indexed chunk
        if not index.records:
            raise NotReady(f"stream {clipped(sid)} has no stored chunks yet (state: {rec.state})")
        ranked = index.search(query, top_k or s.top_k, searched.bounds, opts)
        if not index.allowed(searched.bounds):
            where = f" (from {clipped(searched.phrase)})" if searched.phrase else ""
            raise InvalidRequest(f"no chunk of stream {clipped(sid)} lies in the time window "
                                 f"[{searched.start_s:g}, {searched.end_s:g}]{where}")
        # no signal found anything (e.g. only `ocr` asked and no text on screen reaches its floor): the
        # answer comes from the working memory alone, with no evidence
        hits = sorted(ranked, key=lambda h: h.chunk.start_s)
        ids = [h.chunk.chunk_id for h in hits]
        marks.append(("search", time.perf_counter()))
        try:  # the chunks (and their keyframes) in one round trip
            text_ids = frozenset(h.chunk.chunk_id for h in hits if shows_text_frame(h))
            payloads, keyframes = rt.store.chunk_payloads(sid, ids, keyframes=True, text_ids=text_ids)
            marks.append(("chunks read and decoded", time.perf_counter()))
            break
        except ChunksGone:
            if attempt == 2:
                raise
    # the working memory after the newest stored chunk: the live copy where this process ingests the stream,
    # else this replica's resident copy brought up to date by the deltas stored since (memory/resident.py)
    working = rt.resident.working(sid)
    rank_of = {h.chunk.chunk_id: i + 1 for i, h in enumerate(ranked)}
    prefix = rt.resident.prefix(sid)
    marks.append(("working memory", time.perf_counter()))
    dev = rt.adapter.device  # the resident memory is there; chunks read from Redis join it
    kv = [(p.to(dev), (h.chunk.span_start, h.chunk.span_end)) for p, h in zip(payloads, hits)
          if isinstance(p, TokenSet)]
    if working is not None:
        state = working.state
        memory = answer_memory(prefix, state.tokens, kv, state.next_pos, state.max_pos)
    else:
        memory = answer_memory(prefix, None, kv, rec.next_pos, rec.max_pos)
    marks.append(("assembly", time.perf_counter()))
    features = [p for p in payloads if isinstance(p, FeatureSet)]
    if features:
        with rt.model_lock:
            memory = prefill_features(rt, memory, features)
        marks.append(("feature prefill", time.perf_counter()))
    budget = min(max_new_tokens or s.max_new_tokens, s.max_new_tokens_cap)
    if not include_keyframes:
        keyframes = [b""] * len(ids)
    lo, hi = searched.start_s, searched.end_s
    gaps = rt.store.gaps_in(sid, lo, hi, MAX_GAPS)
    marks.append(("gaps", time.perf_counter()))
    timings = tuple((name, (t - marks[i][1]) * 1000) for i, (name, t) in enumerate(marks[1:]))
    if new_conversation:  # once the question is known to be answerable
        cid = conversations(rt).create(sid).conversation_id
    return Prepared(q, memory, budget, hits, [rank_of[i] for i in ids], keyframes, gaps, searched, history, cid, t0,
                    (("checks, index sync", (marks[0][1] - t0) * 1000),) + timings)


def generate(rt: Runtime, memory: EncodedSegment, question: str, budget: int, history: Sequence[Turn] = (),
             stop: threading.Event | None = None) -> Iterator[str]:
    """The answer's text pieces as the model decodes them. The model lock is held for one decoding step at a
    time (the question's prefill, then each token) and released in between, so a stream's ingest (which takes
    the lock per clip) goes on while an answer is generated; each step runs on this answer's own cache, so
    interleaving changes no token. `stop` set: no further step is taken (a cancelled client)."""
    pieces = rt.adapter.answer(memory, question, budget, history)
    try:
        while stop is None or not stop.is_set():
            with rt.model_lock:
                piece = next(pieces, None)
            if piece is None:
                return
            yield piece
    finally:
        pieces.close()


def complete(rt: Runtime, p: Prepared, text: str) -> Answer:
    """The answer, recorded as the conversation's newest turn (when it has one)."""
    text = text.strip()
    if p.conversation_id:
        conversations(rt).append(p.conversation_id, Turn(p.question, text))
    return Answer(text, p.hits, p.ranks, p.keyframes, p.memory.length, (time.perf_counter() - p.t0) * 1000, p.gaps,
                  p.window, p.conversation_id, len(p.history))


def ask(rt: Runtime, sid: str, question: str, **kw) -> Answer:
    """`prepare` (keywords as there), then the whole answer."""
    p = prepare(rt, sid, question, **kw)
    return complete(rt, p, "".join(generate(rt, p.memory, p.question, p.budget, p.history)))


def ask_streamed(rt: Runtime, sid: str, question: str, *, emit: Callable[[Prepared | str | Answer], None],
                 stop: threading.Event, **kw) -> int:
    """Ask, handing out as it goes: the Prepared (evidence) first, then each text piece, then the Answer. Returns
    the pieces generated; a `stop` set meanwhile ends it after the current token, with no Answer (and no turn
    recorded)."""
    p = prepare(rt, sid, question, **kw)
    emit(p)
    parts: list[str] = []
    for piece in generate(rt, p.memory, p.question, p.budget, p.history, stop):
        parts.append(piece)
        emit(piece)
    if stop.is_set():
        log.info("answer on stream %s stopped after %d pieces: the client went away", sid, len(parts))
    else:
        emit(complete(rt, p, "".join(parts)))
    return len(parts)


def question_query(rt: Runtime, question: str, example: np.ndarray | None, frames_fingerprint: str = "") -> Query:
    """What the search runs with: the question's (or the example image's) keys for the KV signals, and its
    frame-index vectors (the question embedded as text; an example image described like a keyframe) when this
    server's describer is the one that described the stream (`frames_fingerprint`; "": take it as it is)."""
    with rt.model_lock:
        keys = rt.adapter.question_keys(question) if example is None else rt.adapter.example_keys(example)
    dense: dict[Signal, np.ndarray] = {}
    same = rt.describer is not None and frames_fingerprint in ("", rt.describer.fingerprint)
    if same:
        dense = rt.describer.embed_query(question) if example is None else dict(rt.describer.describe([example]).vectors)
    if example is None and rt.transcriber is not None:  # what was said, searched like on-screen text
        dense.update(rt.transcriber.embed_query(question))
    return Query(keys, dense)


EXAMPLE_FORMATS = ("JPEG", "MPO", "PNG")  # MPO: a JPEG with extra pictures (phone cameras); the first is read
MAX_EXAMPLE_FRAMES = 16  # of an animated PNG or an MPO; only the first is read
# PIL's own error types for undecodable bytes: plugins raise SyntaxError and struct/zlib errors, truncated data
# OSError or EOFError, bad fields ValueError (UnidentifiedImageError is an OSError)
_UNREADABLE = (OSError, EOFError, SyntaxError, ValueError, struct.error, zlib.error)


def decoded_bytes(mode: str, width: int, height: int) -> int:
    """Bytes PIL holds for a decoded `mode` image: 1 per pixel for 1/L/P, 2 for the I;16 modes, else 4 (PIL pads
    RGB to 32 bits; 16-bit RGB(A) PNGs open as 8-bit RGB(A); I and F are 32-bit)."""
    bpp = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    return width * height * bpp


def decode_example(data: bytes, max_bytes: int, max_side: int,
                   max_decoded_bytes: int = 64 * 1024 * 1024) -> np.ndarray:
    """A JPEG/PNG still -> [H, W, 3] uint8 RGB, its long side at most `max_side`. Refused from the header
    (PIL's `open` reads no pixels) when the decoded image would exceed `max_decoded_bytes` (JPEGs after PIL's
    draft mode, which decodes at 1/2, 1/4 or 1/8 scale straight away) or have too many frames; bytes PIL
    cannot decode are an InvalidRequest, never an internal error."""
    if len(data) > max_bytes:
        raise InvalidRequest(f"example image is {len(data)} bytes; the limit is {max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in EXAMPLE_FORMATS:
                raise InvalidRequest(f"example image must be JPEG or PNG, not {im.format}")
            frames = getattr(im, "n_frames", 1)  # PNG: the acTL header; MPO: its index; no decoding
            if frames > MAX_EXAMPLE_FRAMES:
                raise InvalidRequest(f"example image has {frames} frames; at most {MAX_EXAMPLE_FRAMES} "
                                     "(only the first is read)")
            if im.format != "PNG":
                im.draft("RGB", (max_side, max_side))
            w, h = im.size
            need = decoded_bytes(im.mode, w, h)
            if need > max_decoded_bytes or w * h > (Image.MAX_IMAGE_PIXELS or math.inf):
                raise InvalidRequest(f"example image is {w}x{h} {im.mode}: {need / 2**20:.1f} MiB decoded; "
                                     f"the limit is {max_decoded_bytes / 2**20:.1f} MiB")
            im.load()
            im.thumbnail((max_side, max_side))  # before converting: only the small copy is converted
            return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except Image.DecompressionBombError as exc:  # over PIL's own pixel limit, raised while reading the header
        raise InvalidRequest(f"example image is too large once decoded: {exc}") from exc
    except _UNREADABLE as exc:
        why = "its bytes match no image format PIL knows" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise InvalidRequest(f"the example is not an image PIL can read: {why[:200]}") from exc


def prefill_features(rt: Runtime, memory: EncodedSegment, chunks: list[FeatureSet]) -> EncodedSegment:
    """Each feature chunk (time order) prefilled at its stored positions behind everything before it."""
    for fs in chunks:
        seg = rt.adapter.prefill_embeds(fs.embeds, fs.positions, memory, memory.next_pos, memory.max_pos)
        memory = concat_segments([memory, seg], next_pos=memory.next_pos, max_pos=memory.max_pos)
    return memory
