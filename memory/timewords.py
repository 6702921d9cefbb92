"""Time words in questions -> a window of media time (seconds from the stream start).

``window_from_question("what happened in the first minute?", duration_s=600)`` ->
``TimeWindow(0, 60, "in the first minute", "media")``. Pure functions: no I/O, no clock reads
except ``time.time()`` / the local zone when ``now_unix`` / ``tz`` are not given.

What is read (case-insensitive; numbers as digits, ``one``..``ninety``, ``a``/``an``,
``a couple of`` = 2, ``a few`` = 3, ``several`` = 5, ``half an hour``, ``a minute and a half``,
compounds like ``1 minute 30 seconds`` / ``1h30m``):

* ``first N`` / ``opening N`` -> ``[0, N]``; ``the first half`` -> ``[0, D/2]``;
  ``after the first N`` -> ``[N, inf)``; ``before the last N`` -> ``[0, D - N]``.
* ``last N`` / ``past N`` / ``previous N`` / ``most recent N``: files ``[D - N, D]``; live
  streams (an anchor given) the wall-clock span ``now - N .. now`` converted to media time --
  unless followed by ``of the video/recording/...``, which always means the end of the stored
  media. ``final N`` / ``closing N`` always mean the end of the stored media (``[D - N, D]``).
  ``the second/last half`` -> ``[D/2, D]``.
* instants: ``at 1:30``, ``at 01:02:03``, ``at 90 seconds``, ``at minute 3``, ``the 2 minute
  mark``, ``5 minutes in(to the video)``; a bare clock reading anywhere (``room 1:30``) counts,
  a bare duration does not (``for 5 minutes``). Media instants get ``+-15 s``
  (``INSTANT_TOL_S``). Wall instants get ``+-15 s`` for H:MM:SS, ``+-60 s`` for H:MM and
  ``+-5 min`` for a whole hour (``at 2pm``, ``at 3 o'clock``, ``at noon``).
* ``N minutes ago``: live -> wall ``now - N``, files -> ``D - N``; window ``+-max(15 s, N/10)``.
* ranges ``between A and B`` (the ends may come in either order), ``from A to/until/till/through/-
  B`` and, for clock readings only, ``A - B`` / ``A to B`` (``2:00-3:00``, ``9am-10am``); a bare
  number borrows its partner's unit (``between 2 and 3 minutes``, ``2-3pm``).
* bounds: ``after/since/from/following/starting at A`` -> ``[A, inf)``;
  ``before/until/till/up to/prior to A`` (and ``by`` + a clock reading) -> ``[0, A]``. An
  ``after`` and a ``before`` phrase in one question are intersected (the phrase then runs from
  the first to the last of them).
* ``at/near/towards the start|beginning`` -> ``[0, E]``, ``at/towards/near the end`` ->
  ``[D - E, D]``, ``in the middle`` -> ``[D/2 - E/2, D/2 + E/2]`` where ``E`` is 10 % of ``D``
  bounded to ``[30 s, 5 min]`` (and to ``D``): ``edge_span_s``. ``at the end of the hallway`` is
  not a time (only ``of the video/clip/stream/...`` may follow).

Clock readings. ``am``/``pm``/``o'clock``/``noon``/``midnight`` always mean wall clock; on a
file (no anchor) such a phrase cannot be read and is dropped (``None`` if nothing else is
there). A bare ``H:MM`` / ``H:MM:SS`` with ``H <= 23`` means wall clock on a live stream (an
anchor given) and media time (``mm:ss`` / ``h:mm:ss``) on a file; ``H > 23`` or a media hint
(``1:30 into the video``, ``the 1:30 mark``) always means media time. An un-padded wall hour
``1..12`` without am/pm is read on a 12-hour dial: the most recent past occurrence of ``H:MM``
or ``H+12:MM`` (``at 2:30`` at 15:00 -> 14:30); a zero-padded hour (``09:30``) or ``13..23``
is 24-hour. Wall times are on today's date in ``tz`` or yesterday's when that would be in
the future (or yesterday's when the question says ``yesterday``); the end of a wall range is
the first occurrence of its reading after the start (``between 11 am and 1:30`` -> 13:30).

Anchors. ``wall_anchor`` is one ``(media_s, unix_s)`` pair or a list of them (e.g. each
chunk's ``(start_s, wall_start)`` and each gap's two ends). Wall -> media is piecewise linear
through the anchors sorted by wall time, with slope 1 before the first and after the last;
pairs that go backwards in media time are dropped, so the map is monotone. The live clock in
``streamer.live`` keeps ``media span == wall span`` across gaps, so one anchor is exact up to
drift; more anchors absorb the drift.

Windows are clipped to ``[0, duration_s]`` (an open ``after``/``since`` window keeps
``end_s = inf``); an empty or inverted window -- including one that starts at or after
``duration_s`` -- is ``None``.
"""
from __future__ import annotations

import datetime as _dt
import math
import re
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

__all__ = ["TimeWindow", "window_from_question", "without_spans", "edge_span_s", "wall_to_media",
           "INSTANT_TOL_S", "EDGE_FRACTION", "EDGE_MIN_S", "EDGE_MAX_S"]

INSTANT_TOL_S = 15.0  # +- around a media instant ("at 1:30")
EDGE_FRACTION = 0.10  # "at the start" / "at the end" / "in the middle": this share of the stream ...
EDGE_MIN_S = 30.0  # ... but at least this ...
EDGE_MAX_S = 300.0  # ... and at most this
_WALL_TOL_S = {"second": 15.0, "minute": 60.0, "hour": 300.0}

Anchor = tuple[float, float]
AnchorArg = Union[Anchor, Sequence[Anchor], None]


@dataclass(frozen=True)
class TimeWindow:
    start_s: float  # media seconds from the stream start (0..)
    end_s: float  # may be math.inf ("to the end")
    phrase: str  # the words of the question that set it, e.g. "in the first minute"
    clock: str  # "media" or "wall" (what the words referred to)
    # where in the question its time words are: [start, end) each (not part of what the window is)
    spans: tuple[tuple[int, int], ...] = field(default=(), compare=False)

    def without_time_words(self, question: str) -> str:
        """`question` with the time words that set this window taken out (`without_spans`)."""
        return without_spans(question, self.spans)


def without_spans(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """`text` with the character ranges `spans` removed and the spaces and punctuation left around them tidied:
    what a question asks about once its time words are set aside ("What was on the sign between 4:45 and 5:00?"
    -> "What was on the sign?"), so a clock burned into the footage does not match the question's times."""
    out, at = [], 0
    for s, e in sorted(spans):
        if s < at:
            s = at
        out.append(text[at:s])
        out.append(" ")
        at = max(at, e)
    out.append(text[at:])
    joined = re.sub(r"\s+", " ", "".join(out))
    joined = re.sub(r"\s+([?.!,;:])", r"\1", joined)  # "the sign ?" -> "the sign?"
    joined = re.sub(r"([,;:])(?=[?.!])", "", joined)  # "the sign, ?" -> "the sign?"
    return joined.strip(" ,;:")


def edge_span_s(duration_s: float) -> float:
    """Length of the "at the start" / "at the end" / "in the middle" windows."""
    span = min(max(EDGE_FRACTION * duration_s, EDGE_MIN_S), EDGE_MAX_S)
    return max(0.0, min(span, duration_s))


# --------------------------------------------------------------------------- anchors


def _anchors(arg: AnchorArg) -> list[Anchor] | None:
    if arg is None:
        return None
    if (isinstance(arg, tuple) and len(arg) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)):
        pairs = [arg]
    else:
        pairs = list(arg)  # type: ignore[arg-type]
    out: list[Anchor] = []
    for pair in pairs:
        m, u = float(pair[0]), float(pair[1])
        if math.isfinite(m) and math.isfinite(u):
            out.append((m, u))
    if not out:
        return None
    out.sort(key=lambda p: (p[1], p[0]))
    mono: list[Anchor] = []
    for m, u in out:  # keep the map monotone: drop pairs that go back in media time
        if mono and m < mono[-1][0]:
            continue
        mono.append((m, u))
    return mono


def wall_to_media(unix_s: float, anchors: AnchorArg) -> float:
    """Media seconds at wall time ``unix_s`` (see the module docstring for the interpolation)."""
    pairs = _anchors(anchors)
    if not pairs:
        raise ValueError("no usable wall anchor")
    return _w2m(unix_s, pairs)


def _w2m(u: float, pairs: list[Anchor]) -> float:
    if u <= pairs[0][1]:
        return pairs[0][0] + (u - pairs[0][1])
    if u >= pairs[-1][1]:
        return pairs[-1][0] + (u - pairs[-1][1])
    i = bisect_right([p[1] for p in pairs], u) - 1
    (m0, u0), (m1, u1) = pairs[i], pairs[i + 1]
    if u1 <= u0:
        return m1
    return m0 + (m1 - m0) * (u - u0) / (u1 - u0)


# --------------------------------------------------------------------------- words and numbers

_DIGITS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_SMALL = {w: i + 1 for i, w in enumerate(_DIGITS)}
_SMALL.update({"ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
               "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19})
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90}
_SPECIAL = {"a": 1, "an": 1, "a couple of": 2, "couple of": 2, "a couple": 2, "a few": 3, "few": 3,
            "several": 5, "a dozen": 12, "dozen": 12}


def _alt(words) -> str:
    return "|".join(w.replace(" ", r"\s+") for w in sorted(words, key=len, reverse=True))


_NUM = (rf"(?:\d+(?:\.\d+)?|(?:(?:{_alt(_TENS)})(?:[\s-]+(?:{_alt(_DIGITS)}))?"
        rf"|{_alt(list(_SMALL) + list(_SPECIAL))})\b)")
_UNIT = r"(?:(?:hours?|hrs?|minutes?|mins?|seconds?|secs?)\b|(?<=\d)[hms](?![a-z]))"
_UNIT_WORD = r"(?:hour|minute|second)\b"
_DUR = (rf"(?<![\w.:])(?:half\s+(?:an?\s+)?(?:hour|minute)\b"
        rf"|(?:(?:an?|one)\s+)?(?:hour|minute)\s+and\s+a\s+half\b"
        rf"|{_NUM}(?:\s+and\s+a\s+half)?[\s-]*{_UNIT}(?:[\s,]*(?:and\s+)?\d+(?:\.\d+)?[\s-]*{_UNIT})*)")
_MERID = r"(?:[ap]\.m\.?|[ap]m)(?![a-z])"
_CLOCK = r"(?<![\w:.])\d{1,3}:[0-5]\d(?::[0-5]\d)?(?:\.\d+)?"
_HOURW = _alt(list(_SMALL)[:12])
_MEDIA = r"(?:video|clip|recording|footage|stream|feed|file|movie|tape)s?"
_MEDIA_HINT = rf"(?:\s+in(?:to)?\s+the\s+{_MEDIA}\b|\s+into\b)"
_CLOCK_FULL = rf"{_CLOCK}(?:\s*{_MERID}|\s*o['’]?clock\b|{_MEDIA_HINT})?(?![\w:])"
_DOT_CLOCK = rf"(?<![\w:.])\d{{1,2}}\.[0-5]\d\s*{_MERID}"  # "9.30 am" (British); never a bare "2.30"
_HOUR_MERID = rf"(?<![\w:.])(?<!\d\.)(?:\d{{1,2}}|{_HOURW})\s*{_MERID}"
_HOUR_OCLOCK = rf"(?<![\w:.])(?:\d{{1,2}}|{_HOURW})\s+o['’]?clock\b"
_NOON = r"\b(?:noon|midday|midnight)\b"
_MINUTE_N = rf"\b(?:minute|min|second|sec|hour)\s+\d+(?:\.\d+)?(?![\w:.])(?!\s*{_UNIT})"
_AGO = rf"{_DUR}\s+ago\b"
_INTO = rf"{_DUR}(?:\s+into(?:\s+the\s+{_MEDIA})?\b|\s+in\s+the\s+{_MEDIA}\b|\s+in(?=\s*(?:[,.;:?!)]|$)))"
_MARK = rf"\bthe\s+(?:{_DUR}|{_CLOCK})[\s-]*mark\b"
_T_ALONE = rf"(?:{_AGO}|{_INTO}|{_MARK}|{_CLOCK_FULL}|{_DOT_CLOCK}|{_HOUR_MERID}|{_HOUR_OCLOCK}|{_MINUTE_N})"
_T = rf"(?:{_T_ALONE}|{_NOON}|{_DUR})"
_BARE = r"(?<![\w:.])\d{1,2}(?:\.\d+)?(?![\w:.])"
_T_CLOCKISH = rf"(?:{_CLOCK_FULL}|{_DOT_CLOCK}|{_HOUR_MERID}|{_HOUR_OCLOCK})"


def _norm(text: str) -> str:
    return re.sub(r"[\s-]+", " ", text.strip().lower())


def _num_value(text: str) -> float:
    t = _norm(text)
    if re.fullmatch(r"\d+(?:\.\d+)?", t):
        return float(t)
    if t in _SPECIAL:
        return float(_SPECIAL[t])
    if t in _SMALL:
        return float(_SMALL[t])
    parts = t.split(" ")
    if parts[0] in _TENS:
        return float(_TENS[parts[0]] + (_SMALL.get(parts[1], 0) if len(parts) > 1 else 0))
    raise ValueError(text)


def _unit_value(text: str) -> float:
    return {"h": 3600.0, "m": 60.0, "s": 1.0}[text.strip().lower()[0]]


_DUR_PART = re.compile(rf"({_NUM})(\s+and\s+a\s+half)?[\s-]*({_UNIT})", re.I)


def _dur_seconds(text: str) -> tuple[float, float | None]:
    """(seconds, the unit's seconds when there is a single unit) of a _DUR match."""
    t = _norm(text)
    m = re.fullmatch(r"half (?:an? )?(hour|minute)", t)
    if m:
        return 0.5 * _unit_value(m.group(1)), None
    m = re.fullmatch(r"(?:(?:an?|one) )?(hour|minute) and a half", t)
    if m:
        return 1.5 * _unit_value(m.group(1)), None
    parts = [(_num_value(p.group(1)) + (0.5 if p.group(2) else 0.0), _unit_value(p.group(3)))
             for p in _DUR_PART.finditer(t)]
    if not parts:
        raise ValueError(text)
    return sum(n * u for n, u in parts), (parts[0][1] if len(parts) == 1 else None)


# --------------------------------------------------------------------------- time references


@dataclass(frozen=True)
class _Media:  # a media offset ("90 seconds", "minute 3", "the 1:30 mark")
    seconds: float
    unit: float | None = None  # seconds per unit for a single-unit duration (range inheritance)
    prefix_unit: bool = False  # "minute 3"


@dataclass(frozen=True)
class _Ago:
    seconds: float
    unit: float | None = None


@dataclass(frozen=True)
class _Clock:
    a: int  # hours (wall / h:mm:ss) or minutes (media mm:ss)
    b: int
    c: int | None  # seconds of H:MM:SS
    frac: float = 0.0
    meridiem: str | None = None  # "am" | "pm"
    oclock: bool = False
    hour_only: bool = False  # "2pm", "3 o'clock"
    padded: bool = False  # "09:30": 24-hour
    media_hint: bool = False
    fixed_hour: int | None = None  # noon / midnight


_Ref = Union[_Media, _Ago, _Clock]
_FULL = {name: re.compile(pat, re.I) for name, pat in {
    "ago": _AGO, "into": _INTO, "mark": _MARK, "clock": _CLOCK_FULL, "dot_clock": _DOT_CLOCK, "hour_merid": _HOUR_MERID,
    "hour_oclock": _HOUR_OCLOCK, "minute_n": _MINUTE_N, "noon": _NOON, "dur": _DUR}.items()}


def _parse_ref(text: str) -> _Ref | None:
    text = text.strip()
    kind = next((k for k, rx in _FULL.items() if rx.fullmatch(text)), None)
    low = text.lower()
    if kind == "ago":
        secs, unit = _dur_seconds(re.sub(r"\s+ago$", "", low))
        return _Ago(secs, unit)
    if kind == "into":
        dur = re.match(_DUR, low, re.I)
        secs, unit = _dur_seconds(dur.group(0))
        return _Media(secs, unit)
    if kind == "mark":
        inner = re.sub(r"^the\s+|[\s-]*mark$", "", low)
        c = re.fullmatch(r"(\d{1,3}):(\d\d)(?::(\d\d))?(\.\d+)?", inner)
        if c:
            return _Media(_media_clock(_clock_of(c)))
        return _Media(_dur_seconds(inner)[0])
    if kind == "dot_clock":
        low, kind = low.replace(".", ":", 1), "clock"
    if kind == "clock":
        c = re.match(r"(\d{1,3}):(\d\d)(?::(\d\d))?(\.\d+)?", low)
        base = _clock_of(c)
        rest = low[c.end():]
        mer = re.search(r"([ap])\.?m", rest)
        return _Clock(base.a, base.b, base.c, base.frac, meridiem=(mer.group(1) + "m") if mer else None,
                      oclock="clock" in rest, padded=base.padded,
                      media_hint=bool(re.search(r"\binto?\b", rest)))
    if kind in ("hour_merid", "hour_oclock"):
        h = re.match(rf"\d{{1,2}}|{_HOURW}", low).group(0)
        mer = re.search(r"([ap])\.?\s*m", low[len(h):])
        hour = int(_num_value(h))
        return _Clock(hour, 0, None, meridiem=(mer.group(1) + "m") if mer else None,
                      oclock=kind == "hour_oclock", hour_only=True, padded=h.startswith("0"))
    if kind == "noon":
        return _Clock(0, 0, None, hour_only=True, fixed_hour=0 if "midnight" in low else 12)
    if kind == "minute_n":
        word, num = low.split()[0], float(low.split()[-1])
        return _Media(num * _unit_value(word), _unit_value(word), prefix_unit=True)
    if kind == "dur":
        secs, unit = _dur_seconds(low)
        return _Media(secs, unit)
    return None


def _clock_of(c: re.Match) -> _Clock:
    a, b = int(c.group(1)), int(c.group(2))
    s = int(c.group(3)) if c.group(3) else None
    frac = float(c.group(4)) if c.group(4) else 0.0
    return _Clock(a, b, s, frac, padded=len(c.group(1)) == 2 and c.group(1).startswith("0"))


def _media_clock(c: _Clock) -> float:
    if c.c is None:
        return c.a * 60.0 + c.b + c.frac
    return c.a * 3600.0 + c.b * 60.0 + c.c + c.frac


def _inherit(bare: str, partner: _Ref) -> _Ref | None:
    """A bare number in a range borrows its partner's unit ("between 2 and 3 minutes")."""
    n = float(bare)
    if isinstance(partner, _Ago):
        return _Ago(n * partner.unit, partner.unit) if partner.unit else None
    if isinstance(partner, _Media):
        return _Media(n * partner.unit, partner.unit, partner.prefix_unit) if partner.unit else None
    if isinstance(partner, _Clock) and n == int(n):
        if partner.meridiem or partner.hour_only:
            return _Clock(int(n), 0, None, meridiem=partner.meridiem, oclock=partner.oclock, hour_only=True)
        return _Clock(int(n), 0, None)
    return None


# --------------------------------------------------------------------------- context


class _Ctx:
    def __init__(self, question: str, duration_s: float, anchors: list[Anchor] | None, now: float,
                 tz: _dt.tzinfo | None) -> None:
        self.q = question
        self.duration = duration_s
        self.anchors = anchors
        self.now = now
        self.tz = tz
        self.yesterday = bool(re.search(r"\byesterday\b", question, re.I))

    @property
    def live(self) -> bool:
        return self.anchors is not None

    def media(self, unix_s: float) -> float:
        return _w2m(unix_s, self.anchors)

    # -- wall clock
    def _date_of(self, unix_s: float) -> _dt.date:
        if self.tz is None:
            return _dt.datetime.fromtimestamp(unix_s).date()
        return _dt.datetime.fromtimestamp(unix_s, self.tz).date()

    def _unix(self, day: _dt.date, h: int, m: int, s: float) -> float:
        whole = int(s)
        t = _dt.time(h, m, whole, int(round((s - whole) * 1e6)) if s != whole else 0)
        if self.tz is None:
            return _dt.datetime.combine(day, t).timestamp()  # naive = local time, DST-aware
        return _dt.datetime.combine(day, t, tzinfo=self.tz).timestamp()

    def most_recent(self, hours: list[int], m: int, s: float) -> float | None:
        today = self._date_of(self.now)
        days = [today - _dt.timedelta(days=1)] if self.yesterday else [today, today - _dt.timedelta(days=1)]
        past = [u for d in days for h in hours if (u := self._unix(d, h, m, s)) <= self.now]
        return max(past) if past else None

    def next_after(self, hours: list[int], m: int, s: float, ref: float) -> float:
        day = self._date_of(ref)
        return min(u for d in (day, day + _dt.timedelta(days=1)) for h in hours
                   if (u := self._unix(d, h, m, s)) > ref)


@dataclass(frozen=True)
class _Point:
    clock: str  # "media" | "wall"
    media_s: float  # for "wall": already converted
    unix_s: float | None = None
    tol: float = INSTANT_TOL_S
    wall: tuple | None = None  # (hours, minutes, seconds) of a wall clock reading


_UNREADABLE = object()  # a time phrase that cannot be read here (am/pm on a file)


def _wall_reading(c: _Clock) -> tuple[list[int], int, float, float] | None:
    """(candidate hours, minutes, seconds, tolerance) of a wall clock reading, None if invalid."""
    if c.fixed_hour is not None:
        return [c.fixed_hour], 0, 0.0, _WALL_TOL_S["hour"]
    h = c.a
    if c.meridiem:
        if not 1 <= h <= 12:
            return None
        hours = [h % 12 + (12 if c.meridiem == "pm" else 0)]
    elif h > 23:
        return None
    elif 1 <= h <= 12 and not c.padded:
        hours = sorted({h % 12, h % 12 + 12})
    else:
        hours = [h]
    if c.hour_only:
        return hours, 0, 0.0, _WALL_TOL_S["hour"]
    if c.c is None:
        return hours, c.b, 0.0, _WALL_TOL_S["minute"]
    return hours, c.b, c.c + c.frac, _WALL_TOL_S["second"]


def _point(ref: _Ref, ctx: _Ctx, after: float | None = None):
    """Resolve a reference to a _Point, _UNREADABLE, or None (not a time after all)."""
    if isinstance(ref, _Media):
        return _Point("media", ref.seconds)
    if isinstance(ref, _Ago):
        tol = max(INSTANT_TOL_S, ref.seconds / 10.0)
        if ctx.live:
            u = ctx.now - ref.seconds
            return _Point("wall", ctx.media(u), u, tol)
        return _Point("media", ctx.duration - ref.seconds, None, tol)
    c = ref
    wall_forced = bool(c.meridiem or c.oclock or c.hour_only or c.fixed_hour is not None)
    if c.media_hint and not c.meridiem:
        return _Point("media", _media_clock(c))
    wall = _wall_reading(c)
    if ctx.live and wall is not None:
        hours, m, s, tol = wall
        u = ctx.next_after(hours, m, s, after) if after is not None else ctx.most_recent(hours, m, s)
        if u is None:
            return _UNREADABLE
        return _Point("wall", ctx.media(u), u, tol, (hours, m, s))
    if wall_forced:
        return _UNREADABLE
    return _Point("media", _media_clock(c))


# --------------------------------------------------------------------------- phrases


@dataclass(frozen=True)
class _Reading:
    start: float
    end: float
    clock: str
    kind: str = "window"  # "window" | "lower" | "upper"


_SKIP = object()  # the pattern matched words that are not a time here


def _span_seconds(text: str) -> float:
    """Seconds of a duration, or of a lone unit word ("the first minute")."""
    if re.fullmatch(_UNIT_WORD, text.strip(), re.I):
        return _unit_value(text)
    return _dur_seconds(text)[0]


def _h_first_last(m: re.Match, ctx: _Ctx):
    which = _norm(m.group("which"))
    d = _span_seconds(m.group("dur"))
    if which in ("first", "opening", "initial"):
        return _Reading(0.0, d, "media")
    if ctx.live and which in ("last", "past", "previous", "most recent", "latest") and not m.group("of"):
        return _Reading(ctx.media(ctx.now - d), ctx.media(ctx.now), "wall")
    return _Reading(ctx.duration - d, ctx.duration, "media")


def _h_after_first(m: re.Match, ctx: _Ctx):
    d = _span_seconds(m.group("dur"))
    return _Reading(d, math.inf, "media", "lower")


def _h_before_last(m: re.Match, ctx: _Ctx):
    d = _span_seconds(m.group("dur"))
    return _Reading(0.0, ctx.duration - d, "media", "upper")


def _h_half(m: re.Match, ctx: _Ctx):
    half = ctx.duration / 2.0
    if m.group("which").lower() == "first":
        return _Reading(0.0, half, "media")
    return _Reading(half, ctx.duration, "media")


def _h_edge(m: re.Match, ctx: _Ctx):
    obj = m.group("obj")
    if obj is not None and not re.fullmatch(_MEDIA + r"|day|session|shift|it|this|that", obj, re.I):
        return _SKIP
    span = edge_span_s(ctx.duration)
    w = m.group("w").lower()
    if w in ("start", "beginning", "outset"):
        return _Reading(0.0, span, "media")
    if w in ("end", "conclusion"):
        return _Reading(ctx.duration - span, ctx.duration, "media")
    mid = ctx.duration / 2.0
    return _Reading(mid - span / 2.0, mid + span / 2.0, "media")


def _instant(p: _Point) -> _Reading:
    return _Reading(p.media_s - p.tol, p.media_s + p.tol, p.clock)


def _h_at(m: re.Match, ctx: _Ctx):
    ref = _parse_ref(m.group("a"))
    if ref is None:
        return _SKIP
    p = _point(ref, ctx)
    if p is _UNREADABLE or p is None:
        return p
    return _instant(p)


def _h_lower(m: re.Match, ctx: _Ctx):
    ref = _parse_ref(m.group("a"))
    if ref is None:
        return _SKIP
    p = _point(ref, ctx)
    if p is _UNREADABLE or p is None:
        return p
    return _Reading(p.media_s, math.inf, p.clock, "lower")


def _h_upper(m: re.Match, ctx: _Ctx):
    ref = _parse_ref(m.group("a"))
    if ref is None:
        return _SKIP
    if m.group("word").lower() == "by" and not isinstance(ref, _Clock):
        return _SKIP  # "delayed by 5 minutes"
    p = _point(ref, ctx)
    if p is _UNREADABLE or p is None:
        return p
    return _Reading(0.0, p.media_s, p.clock, "upper")


def _h_range(m: re.Match, ctx: _Ctx):
    a_txt, b_txt = m.group("a"), m.group("b")
    a_bare = re.fullmatch(_BARE, a_txt.strip()) is not None
    b_bare = re.fullmatch(_BARE, b_txt.strip()) is not None
    if a_bare and b_bare:
        return _SKIP
    a = None if a_bare else _parse_ref(a_txt)
    b = None if b_bare else _parse_ref(b_txt)
    if a_bare and b is not None:
        a = _inherit(a_txt, b)
    if b_bare and a is not None:
        b = _inherit(b_txt, a)
    if a is None or b is None:
        return _SKIP
    # 12-hour inheritance: "between 11 am and 1:30" / "2-3pm"
    if isinstance(a, _Clock) and isinstance(b, _Clock):
        if a.meridiem is None and b.meridiem and a.hour_only and b.hour_only:
            a = _Clock(a.a, a.b, a.c, a.frac, meridiem=b.meridiem, hour_only=True)
    between = m.group("word").lower() == "between"
    pa = _point(a, ctx)
    if pa is _UNREADABLE or pa is None:
        return pa
    after = pa.unix_s if (pa.wall is not None and isinstance(b, _Clock)) else None
    pb = _point(b, ctx, after=after)
    if pb is _UNREADABLE or pb is None:
        return pb
    lo, hi = pa.media_s, pb.media_s
    if between and lo > hi:
        lo, hi = hi, lo
    clock = "wall" if "wall" in (pa.clock, pb.clock) else "media"
    return _Reading(lo, hi, clock)


_AT_WORDS = r"(?:at|around|about|near|approximately|roughly|circa|@)"
_APPROX = r"(?:(?:about|around|approximately|roughly|exactly|precisely|just)\s+)?"
_PATTERNS: list[tuple[str, re.Pattern, Callable]] = [
    (name, re.compile(pat, re.I), fn) for name, pat, fn in [
        ("first_last",
         rf"(?:\b(?:in|during|within|over|for|throughout|from)\s+)?(?:\bthe\s+)?(?:very\s+)?"
         rf"\b(?P<which>first|opening|initial|last|final|past|previous|closing|latest|most\s+recent)\s+"
         rf"(?P<dur>{_DUR}|{_UNIT_WORD})(?P<of>\s+of\s+(?:the\s+)?{_MEDIA}\b)?", _h_first_last),
        ("after_first", rf"\b(?:after|following|past)\s+the\s+(?:first|opening|initial)\s+(?P<dur>{_DUR}|{_UNIT_WORD})",
         _h_after_first),
        ("before_last", rf"\bbefore\s+the\s+(?:last|final|closing)\s+(?P<dur>{_DUR}|{_UNIT_WORD})", _h_before_last),
        ("half", rf"(?:\b(?:in|during|over|throughout)\s+)?\bthe\s+(?P<which>first|second|last|latter|final)\s+half\b"
         rf"(?!\s+(?:an?\s+)?(?:hour|minute))(?:\s+of\s+(?:the\s+)?{_MEDIA}\b)?", _h_half),
        ("edge", rf"\b(?:at|in|near|toward|towards|around|during|by)\s+the\s+(?:very\s+)?"
         rf"(?P<w>start|beginning|end|middle|outset|conclusion)\b(?:\s+of\s+(?:the\s+)?(?P<obj>\w+))?", _h_edge),
        ("range", rf"\b(?P<word>between)\s+{_APPROX}(?P<a>{_T}|{_BARE})\s+(?:and|&)\s+{_APPROX}(?P<b>{_T}|{_BARE})",
         _h_range),
        ("range", rf"\b(?P<word>from)\s+{_APPROX}(?P<a>{_T}|{_BARE})\s*(?:to|until|till|til|through|thru|-|–|—)\s*"
         rf"(?P<b>{_T}|{_BARE})", _h_range),
        ("range", rf"(?P<word>)(?P<a>{_T_CLOCKISH}|{_BARE})\s*(?:-|–|—|to|until|till)\s*(?P<b>{_T_CLOCKISH})",
         _h_range),
        ("lower", rf"\b(?:after|since|from|following|starting\s+(?:at|from)|beginning\s+at|later\s+than)\s+{_APPROX}"
         rf"(?P<a>{_T})(?:\s+(?:on|onwards?|forwards?))?", _h_lower),
        ("upper", rf"\b(?P<word>before|until|till|til|up\s+(?:to|until)|prior\s+to|earlier\s+than|by)\s+{_APPROX}"
         rf"(?P<a>{_T})", _h_upper),
        ("at", rf"(?:\b|(?=@)){_AT_WORDS}\s*{_APPROX}(?P<a>{_T})", _h_at),
        ("bare", rf"(?P<a>{_T_ALONE})", _h_at),
    ]
]


def window_from_question(question: str, *, duration_s: float, wall_anchor: AnchorArg = None,
                         now_unix: float | None = None, tz: _dt.tzinfo | None = None) -> TimeWindow | None:
    """The media-time window that the question's time words set, or None (see the module docstring).

    ``wall_anchor``: one ``(media_s, unix_s)`` pair or a list of them (live streams); None for
    files. ``now_unix`` defaults to ``time.time()``, ``tz`` to the local time zone.
    """
    if not question:
        return None
    duration = float(duration_s) if duration_s is not None and math.isfinite(float(duration_s)) else 0.0
    duration = max(0.0, duration)
    ctx = _Ctx(question, duration, _anchors(wall_anchor), time.time() if now_unix is None else float(now_unix), tz)

    cands: list[tuple[int, int, object]] = []  # (start, end, reading | _UNREADABLE)
    for _name, rx, fn in _PATTERNS:
        for m in rx.finditer(question):
            if m.end() <= m.start():
                continue
            try:
                out = fn(m, ctx)
            except (ValueError, KeyError, OverflowError):
                continue
            if out is _SKIP or out is None:
                continue
            cands.append((m.start(), m.end(), out))
    # longest phrase first; then the earliest; a phrase blocks any overlapping shorter one
    cands.sort(key=lambda c: (-(c[1] - c[0]), c[0]))
    chosen: list[tuple[int, int, object]] = []
    for c in cands:
        if all(c[1] <= o[0] or c[0] >= o[1] for o in chosen):
            chosen.append(c)
    chosen = sorted((c for c in chosen if isinstance(c[2], _Reading)), key=lambda c: c[0])
    if not chosen:
        return None
    lowers = [c for c in chosen if c[2].kind == "lower"]
    uppers = [c for c in chosen if c[2].kind == "upper"]
    if lowers and uppers:
        lo, up = lowers[0], uppers[0]
        clock = "wall" if "wall" in (lo[2].clock, up[2].clock) else "media"
        s, e = _with_day_word(question, min(lo[0], up[0]), max(lo[1], up[1]), clock)
        spans = (_with_day_word(question, lo[0], lo[1], clock), _with_day_word(question, up[0], up[1], clock))
        return _finish(lo[2].start, up[2].end, question[s:e].strip(), clock, duration, open_end=False, spans=spans)
    s, e, r = chosen[0]
    s, e = _with_day_word(question, s, e, r.clock)
    return _finish(r.start, r.end, question[s:e].strip(), r.clock, duration, open_end=r.kind == "lower",
                   spans=((s, e),))


def _with_day_word(question: str, s: int, e: int, clock: str) -> tuple[int, int]:
    """Widen a wall-clock phrase over an adjacent "yesterday" ("yesterday at 2pm", "at 2pm yesterday")."""
    if clock != "wall":
        return s, e
    before = re.search(r"\byesterday,?\s+$", question[:s], re.I)
    if before:
        return before.start(), e
    after = re.match(r",?\s+yesterday\b", question[e:], re.I)
    if after:
        return s, e + after.end()
    return s, e


def _finish(start: float, end: float, phrase: str, clock: str, duration: float, *, open_end: bool,
            spans: tuple[tuple[int, int], ...] = ()):
    if math.isnan(start) or math.isnan(end):
        return None
    start = max(0.0, start)
    if not (open_end and math.isinf(end)):
        end = min(end, duration)
    if min(end, duration) <= start:
        return None
    return TimeWindow(start, end, phrase, clock, tuple(spans))
