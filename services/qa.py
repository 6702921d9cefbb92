"""The QA path: question -> retrieval vector -> top-k chunks -> prefix + working memory + chunks in
time order -> answer. Feature chunks are prefilled again (in time order) behind the KV memory."""
from __future__ import annotations

import io
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from encoders.base import EncodedSegment
from memory.assemble import answer_memory
from memory.errors import ChunksGone
from memory.index import Hit
from memory.layout import FeatureSet, TokenSet, concat_segments
from services.errors import InvalidRequest, NotReady
from services.runtime import Runtime


@dataclass(frozen=True)
class Answer:
    text: str
    hits: list[Hit]  # time order
    keyframes: list[bytes]
    memory_tokens: int
    latency_ms: float
    gaps: list[dict]  # outages that overlap the searched window


def validate_question(question: str, max_chars: int) -> str:
    q = question.strip()
    if not q:
        raise InvalidRequest("question is empty")
    if len(q) > max_chars:
        raise InvalidRequest(f"question is {len(q)} characters; the limit is {max_chars}")
    return q


def ask(rt: Runtime, sid: str, question: str, *, top_k: int = 0, window: tuple[float, float] | None = None,
        max_new_tokens: int = 0, include_keyframes: bool = False, example_image: bytes = b"") -> Answer:
    t0 = time.perf_counter()
    s = rt.settings
    q = validate_question(question, s.max_question_chars)
    if top_k > s.max_top_k:
        raise InvalidRequest(f"top_k {top_k} is over the limit of {s.max_top_k}")
    if window is not None and window[1] <= window[0]:
        raise InvalidRequest(f"time window [{window[0]}, {window[1]}] is empty")
    rt.store.get_stream(sid)  # NOT_FOUND before any model work
    example = decode_example(example_image, s.max_example_bytes, s.frame_max_side) if example_image else None
    with rt.model_lock:
        qvec = rt.adapter.question_vector(q) if example is None else rt.adapter.example_vector(example)
    for attempt in range(3):  # retention may merge or delete the chunks a search found: search again
        index = rt.indexes.synced(sid)
        rec = rt.store.get_stream(sid)  # read after the sync: it covers every indexed chunk
        if not index.records:
            raise NotReady(f"stream {sid!r} has no stored chunks yet (state: {rec.state})")
        hits = index.search(qvec, top_k or s.top_k, window)
        if not hits:
            raise InvalidRequest(f"no chunk of stream {sid!r} lies in the time window {window}")
        hits.sort(key=lambda h: h.chunk.start_s)
        ids = [h.chunk.chunk_id for h in hits]
        try:
            payloads = rt.store.chunk_payloads(sid, ids)
            working = rt.store.get_working(sid)
            break
        except ChunksGone:
            if attempt == 2:
                raise
    prefix = rt.store.get_prefix(sid)
    kv = [(p, (h.chunk.span_start, h.chunk.span_end)) for p, h in zip(payloads, hits) if isinstance(p, TokenSet)]
    memory = answer_memory(prefix, working.tokens if working else None, kv, rec.next_pos, rec.max_pos)
    features = [p for p in payloads if isinstance(p, FeatureSet)]
    if features:
        with rt.model_lock:
            memory = prefill_features(rt, memory, features)
    budget = min(max_new_tokens or s.max_new_tokens, s.max_new_tokens_cap)
    with rt.model_lock:
        text = "".join(rt.adapter.answer(memory, q, budget))
    keyframes = rt.store.keyframes(sid, ids) if include_keyframes else [b""] * len(ids)
    lo, hi = window or (0.0, float("inf"))
    gaps = [g for g in rt.store.gaps(sid) if g["end_s"] > lo and g["start_s"] < hi]
    return Answer(text.strip(), hits, keyframes, memory.length, (time.perf_counter() - t0) * 1000, gaps)


def decode_example(data: bytes, max_bytes: int, max_side: int) -> np.ndarray:
    """A JPEG/PNG still -> [H, W, 3] uint8 RGB, its long side at most `max_side`."""
    if len(data) > max_bytes:
        raise InvalidRequest(f"example image is {len(data)} bytes; the limit is {max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in ("JPEG", "PNG"):
                raise InvalidRequest(f"example image must be JPEG or PNG, not {im.format}")
            if im.width * im.height > 64_000_000:
                raise InvalidRequest(f"example image is {im.width}x{im.height}; too many pixels")
            im.thumbnail((max_side, max_side))
            return np.asarray(im.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as exc:
        raise InvalidRequest(f"example image cannot be read: {exc}") from exc


def prefill_features(rt: Runtime, memory: EncodedSegment, chunks: list[FeatureSet]) -> EncodedSegment:
    """Each feature chunk (time order) prefilled at its stored positions behind everything before it."""
    for fs in chunks:
        seg = rt.adapter.prefill_embeds(fs.embeds, fs.positions, memory, memory.next_pos, memory.max_pos)
        memory = concat_segments([memory, seg], next_pos=memory.next_pos, max_pos=memory.max_pos)
    return memory
