"""Alert rules as typed records, and their evaluation: pure functions over a rule, its state and the facts of
one new chunk (or one feed change). No I/O, no clocks: what fires is decided by the inputs alone.

Kinds (`Rule.kind`, a `RuleKind`):

* ``on_screen_text``: the chunk's OCR text contains `text`, tolerating OCR slips: both are normalised
  (case-folded, accents, spaces and punctuation dropped, so "TRUCK22 | ARRlVED" meets "truck 22 arrived") and
  the needle's best approximate occurrence in the text (the edit distance to its closest substring, Sellers'
  algorithm) must reach `min_similarity` = 1 - distance / len(needle).
* ``query``: the query's frame-index vectors (embedded once, `encoders.describe.FrameDescriber.embed_query`)
  against the chunk's (`d:ocr`, `d:labels`, `d:image`): the best cosine over the signals both have must reach
  `min_score`.
* ``spoken``: what was said in the chunk (its transcript, `encoders.speech`) contains `text`, with the same
  tolerance as ``on_screen_text`` (recognition slips: "dock for" meets "dock four" at 0.89).
* ``cuts``: scene cuts per minute over a sliding window of media time (`window_s`, the chunks whose end lies
  within the last `window_s` seconds; the rate is cuts / window minutes, so a stream's first minute is not
  inflated) reaches `cuts_per_minute`.
* ``feed``: the live source went ``down`` (connection lost) or came back ``up`` (after being down).

Episodes (exactly once per firing): a chunk rule fires on a matching chunk when armed, then is disarmed; it
re-arms after `rearm_chunks` consecutive chunks without a match, and never fires again within `cooldown_s`
media seconds of its last firing (0: no cooldown). A feed rule fires once per transition.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Mapping

import numpy as np

from encoders.signals import Signal


class RuleKind(StrEnum):
    """What a rule watches (a `str`: stored and sent as its value, the alert payload's "kind")."""
    ON_SCREEN_TEXT = "on_screen_text"
    QUERY = "query"
    CUTS = "cuts"
    FEED = "feed"
    SPOKEN = "spoken"

    @property
    def frame_index(self) -> bool:
        """Reads the chunks' frame index (their on-screen text, their vectors)."""
        return self in (RuleKind.ON_SCREEN_TEXT, RuleKind.QUERY)


class FeedChange(StrEnum):
    """What a feed rule fires on: the live source went down, or came back up."""
    DOWN = "down"
    UP = "up"


# defaults: one place (services/cameras.py's schema leaves unset fields to these)
MIN_SIMILARITY = 0.8
MIN_SCORE = 0.5
WINDOW_S = 60.0
REARM_CHUNKS = 2
COOLDOWN_S = 0.0


@dataclass(frozen=True)
class Rule:
    """One standing rule of a camera. `kind` says which condition fields apply (see the module docstring)."""
    name: str
    kind: RuleKind
    text: str = ""  # on_screen_text, spoken
    min_similarity: float = MIN_SIMILARITY
    query: str = ""  # query
    min_score: float = MIN_SCORE
    cuts_per_minute: float = 0.0  # cuts
    window_s: float = WINDOW_S
    feed: FeedChange | None = None  # feed
    rearm_chunks: int = REARM_CHUNKS
    cooldown_s: float = COOLDOWN_S
    webhook: str | None = None  # POST the alert here too (besides the global webhook, if any)

    def __post_init__(self) -> None:
        if self.kind not in tuple(RuleKind):
            raise ValueError(f"rule {self.name!r}: unknown kind {self.kind!r}; known: {', '.join(RuleKind)}")
        object.__setattr__(self, "kind", RuleKind(self.kind))
        if self.kind in (RuleKind.ON_SCREEN_TEXT, RuleKind.SPOKEN) and not normalise(self.text):
            raise ValueError(f"rule {self.name!r}: {self.kind} has no letters or digits")
        if self.kind == RuleKind.FEED:
            if self.feed not in tuple(FeedChange):
                raise ValueError(f"rule {self.name!r}: feed must be 'down' or 'up'")
            object.__setattr__(self, "feed", FeedChange(self.feed))
        if self.rearm_chunks < 1:
            raise ValueError(f"rule {self.name!r}: rearm_chunks must be >= 1")


@dataclass(frozen=True)
class ChunkFacts:
    """What rules see of one stored chunk."""
    chunk_id: int
    start_s: float
    end_s: float
    keyframe_s: float
    text: str = ""  # OCR, lines joined with " | "
    cuts: int = 0
    wall_start: float | None = None
    wall_end: float | None = None
    vectors: Mapping[Signal, np.ndarray] = field(default_factory=dict)  # frame-index signal -> unit vector
    speech: str = ""  # what was said (the transcript), segments joined with " | "


@dataclass(frozen=True)
class FeedFacts:
    """A live source's connection changed."""
    up: bool
    media_s: float  # stream time of the last frame before (down) / the resume point (up)
    wall_s: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class RuleState:
    armed: bool = True
    misses: int = 0  # consecutive chunks without a match since the last match
    last_fired_s: float | None = None  # media time (chunk end) of the last firing
    window: tuple[tuple[float, int], ...] = ()  # cuts: (chunk end_s, cuts) inside the window
    down: bool = False  # feed: the source is down


@dataclass(frozen=True)
class Firing:
    """A rule fired. `matched`: the text read (on_screen_text), the text the query met (query), the cut count
    (cuts), or "down: <reason>" / "up" (feed). `score`: similarity, cosine, cuts per minute; 1.0 for feed."""
    rule: Rule
    start_s: float
    end_s: float
    matched: str
    score: float
    chunk_id: int | None = None
    keyframe_s: float | None = None
    wall_start: float | None = None
    wall_end: float | None = None
    signal: Signal | None = None  # query: which frame-index signal scored best

    @property
    def dedupe_id(self) -> str:
        """The same for every delivery of this firing, unique per firing of the stream's rule (chunk rules: the
        chunk; feed: when the transition was seen)."""
        if self.chunk_id is not None:
            where = f"c{self.chunk_id}"
        else:  # two outages with no chunk between share a media time, never a wall-clock time
            where = f"w{self.wall_start:.3f}" if self.wall_start is not None else f"t{self.start_s:.3f}"
        return f"{self.rule.name}:{where}"


# ---- text matching --------------------------------------------------------------------------
_DROP = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """Case-folded letters and digits only (accents removed): what OCR reads reliably, minus spacing."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return _DROP.sub("", "".join(c for c in decomposed if not unicodedata.combining(c)))


def substring_distance(needle: str, hay: str) -> int:
    """Edit distance (insert, delete, substitute) from `needle` to its closest substring of `hay` (Sellers)."""
    if not needle:
        return 0
    prev = [0] * (len(hay) + 1)  # a match may start anywhere in hay: row 0 costs nothing
    for i, a in enumerate(needle, 1):
        cur = [i] + [0] * len(hay)
        for j, b in enumerate(hay, 1):
            cur[j] = min(prev[j - 1] + (a != b), prev[j] + 1, cur[j - 1] + 1)
        prev = cur
    return min(prev)


def text_similarity(needle: str, text: str) -> float:
    """1 - substring_distance / len(needle) over the normalised strings: 1.0 when `needle` appears as is."""
    n, h = normalise(needle), normalise(text)
    if not n:
        return 0.0
    return max(0.0, 1.0 - substring_distance(n, h) / len(n))


# ---- query scoring ----------------------------------------------------------------------------
def query_score(query: Mapping[Signal, np.ndarray], chunk: Mapping[Signal, np.ndarray]) -> tuple[float, Signal | None]:
    """The best cosine between the query's and the chunk's unit vectors over the signals both have, and that
    signal ((0.0, None) when they share none). A chunk merged by retention may hold several rows per signal."""
    best, which = 0.0, None
    for signal, q in query.items():
        c = chunk.get(signal)
        if c is None:
            continue
        score = float(np.max(np.atleast_2d(np.asarray(c, np.float32)) @ np.asarray(q, np.float32).reshape(-1)))
        if score > best or which is None:
            best, which = score, Signal(signal)
    return best, which


# ---- evaluation -------------------------------------------------------------------------------
def _episode(rule: Rule, state: RuleState, facts: ChunkFacts, hit: bool) -> tuple[RuleState, bool]:
    """The episode logic shared by chunk rules: (new state, fire?)."""
    if not hit:
        misses = state.misses + 1
        return replace(state, misses=misses, armed=state.armed or misses >= rule.rearm_chunks), False
    cooling = (rule.cooldown_s > 0 and state.last_fired_s is not None
               and facts.end_s - state.last_fired_s < rule.cooldown_s)
    if state.armed and not cooling:
        return replace(state, armed=False, misses=0, last_fired_s=facts.end_s), True
    return replace(state, misses=0), False


def evaluate_chunk(rule: Rule, state: RuleState, facts: ChunkFacts,
                   query_vectors: Mapping[Signal, np.ndarray] | None = None) -> tuple[RuleState, Firing | None]:
    """One chunk rule against one new chunk. Feed rules pass through unchanged. `query_vectors`: the query's
    embedding (query rules; without it a query rule never matches)."""
    if rule.kind == RuleKind.FEED:
        return state, None
    signal = None
    if rule.kind == RuleKind.ON_SCREEN_TEXT:
        score = text_similarity(rule.text, facts.text) if facts.text else 0.0
        hit, matched = score >= rule.min_similarity, facts.text
    elif rule.kind == RuleKind.SPOKEN:
        score = text_similarity(rule.text, facts.speech) if facts.speech else 0.0
        hit, matched, signal = score >= rule.min_similarity, facts.speech, Signal.SPEECH
    elif rule.kind == RuleKind.QUERY:
        score, signal = query_score(query_vectors or {}, facts.vectors)
        hit = signal is not None and score >= rule.min_score
        matched = facts.text if signal == Signal.OCR else facts.speech if signal == Signal.SPEECH else rule.query
    else:  # cuts
        lo = facts.end_s - rule.window_s
        window = tuple(w for w in state.window if w[0] > lo) + ((facts.end_s, int(facts.cuts)),)
        state = replace(state, window=window)
        cuts = sum(c for _, c in window)
        score = cuts / (rule.window_s / 60.0)
        hit, matched = cuts > 0 and score >= rule.cuts_per_minute, f"{cuts} cuts in {rule.window_s:g} s"
    state, fire = _episode(rule, state, facts, hit)
    if not fire:
        return state, None
    return state, Firing(rule=rule, start_s=facts.start_s, end_s=facts.end_s, matched=matched, score=round(score, 4),
                         chunk_id=facts.chunk_id, keyframe_s=facts.keyframe_s, wall_start=facts.wall_start,
                         wall_end=facts.wall_end, signal=signal)


def evaluate_feed(rule: Rule, state: RuleState, facts: FeedFacts) -> tuple[RuleState, Firing | None]:
    """One feed rule against a connection change: `down` fires when a connected source drops, `up` when a
    dropped one is back (the first connection is not a comeback). Chunk rules pass through unchanged."""
    if rule.kind != RuleKind.FEED:
        return state, None
    was_down = state.down
    state = replace(state, down=not facts.up)
    fire = ((rule.feed == FeedChange.DOWN and not facts.up and not was_down)
            or (rule.feed == FeedChange.UP and facts.up and was_down))
    if not fire:
        return state, None
    down = str(FeedChange.DOWN)
    matched = str(FeedChange.UP) if facts.up else f"{down}: {facts.reason}" if facts.reason else down
    return state, Firing(rule=rule, start_s=facts.media_s, end_s=facts.media_s, matched=matched, score=1.0,
                         wall_start=facts.wall_s, wall_end=facts.wall_s)


def evaluate(rules: tuple[Rule, ...], states: tuple[RuleState, ...], facts: ChunkFacts | FeedFacts,
             query_vectors: Mapping[str, Mapping[Signal, np.ndarray]] | None = None
             ) -> tuple[tuple[RuleState, ...], list[Firing]]:
    """Every rule against one new chunk or feed change: the new states (same order) and what fired.
    `query_vectors`: rule name -> the query's embedding."""
    out, fired = [], []
    for rule, st in zip(rules, states):
        if isinstance(facts, FeedFacts):
            st, f = evaluate_feed(rule, st, facts)
        else:
            st, f = evaluate_chunk(rule, st, facts, (query_vectors or {}).get(rule.name))
        out.append(st)
        if f is not None:
            fired.append(f)
    return tuple(out), fired
