"""Time words in questions -> media-time windows (memory.timewords), table-driven."""
from __future__ import annotations

import datetime as dt
import math
import time

import pytest

from memory.timewords import EDGE_MAX_S, EDGE_MIN_S, TimeWindow, edge_span_s, wall_to_media, window_from_question

INF = math.inf
TZ = dt.timezone(dt.timedelta(hours=2), "test+02")


def unix(day: int, h: int, m: int = 0, s: int = 0) -> float:
    return dt.datetime(2024, 5, day, h, m, s, tzinfo=TZ).timestamp()


NOW = unix(6, 15)  # "now": 2024-05-06 15:00 +02:00
# a live camera recording since 09:00 today, stored up to now (6 h of media)
LIVE = dict(duration_s=6 * 3600.0, wall_anchor=(0.0, unix(6, 9)), now_unix=NOW, tz=TZ)
# a live camera recording since yesterday 09:00 (30 h)
LIVE_2DAYS = dict(duration_s=30 * 3600.0, wall_anchor=(0.0, unix(5, 9)), now_unix=NOW, tz=TZ)
# just after midnight: a camera since 22:00 yesterday
LIVE_MIDNIGHT = dict(duration_s=9000.0, wall_anchor=(0.0, unix(6, 22)), now_unix=unix(7, 0, 30), tz=TZ)
# anchors around a 5-minute hole at media 600 s (media stands still while the wall clock runs on)
GAPPY = dict(duration_s=2000.0, wall_anchor=[(1200.0, unix(6, 9, 25)), (0.0, unix(6, 9)), (600.0, unix(6, 9, 10)),
                                             (600.0, unix(6, 9, 15))], now_unix=NOW, tz=TZ)


def F(duration: float) -> dict:
    """A file: no wall anchor."""
    return dict(duration_s=duration, now_unix=NOW, tz=TZ)


# (question, context, expected (start, end, clock) or None, expected phrase or None = don't check)
ROWS = [
    # first / last / final (files)
    ("What happened in the first minute?", F(600), (0, 60, "media"), "in the first minute"),
    ("Describe the first 30 seconds.", F(600), (0, 30, "media"), "the first 30 seconds"),
    ("who spoke first 5 minutes", F(600), (0, 300, "media"), "first 5 minutes"),
    ("anything in the first hour?", F(600), (0, 600, "media"), "in the first hour"),
    ("the first twenty seconds", F(600), (0, 20, "media"), None),
    ("in the first minute and a half", F(600), (0, 90, "media"), None),
    ("during the first half an hour", F(3600), (0, 1800, "media"), None),
    ("IN THE FIRST TEN MINUTES", F(3600), (0, 600, "media"), None),
    ("what is in the last 5 minutes?", F(600), (300, 600, "media"), "in the last 5 minutes"),
    ("in the last hour", F(600), (0, 600, "media"), None),
    ("in the last 10 minutes", F(3600), (3000, 3600, "media"), None),
    ("what happens in the final minute", F(600), (540, 600, "media"), "in the final minute"),
    ("over the past 90s", F(600), (510, 600, "media"), None),
    ("the first half of the video", F(600), (0, 300, "media"), None),
    ("the second half", F(600), (300, 600, "media"), None),
    ("after the first 5 minutes", F(600), (300, INF, "media"), "after the first 5 minutes"),
    ("before the last 2 minutes", F(600), (0, 480, "media"), None),
    # instants on the media clock
    ("what is shown at 1:30?", F(600), (75, 105, "media"), "at 1:30"),
    ("AT 1:30", F(600), (75, 105, "media"), None),
    ("at 01:02:03", F(36000), (3708, 3738, "media"), None),
    ("at 90 seconds", F(600), (75, 105, "media"), "at 90 seconds"),
    ("at a minute and a half", F(600), (75, 105, "media"), None),
    ("at minute 3", F(600), (165, 195, "media"), "at minute 3"),
    ("at 0:05", F(600), (0, 20, "media"), None),
    ("at 1 minute 30 seconds", F(600), (75, 105, "media"), None),
    ("at the 2 minute mark", F(600), (105, 135, "media"), "at the 2 minute mark"),
    ("what happens 3 minutes into the video", F(600), (165, 195, "media"), None),
    ("what is on the door of room 1:30", F(600), (75, 105, "media"), "1:30"),
    ("at 75:30", F(36000), (4515, 4545, "media"), None),
    # ranges and bounds on the media clock
    ("what happened between 2:00 and 3:00?", F(600), (120, 180, "media"), "between 2:00 and 3:00"),
    ("between 3:00 and 2:00", F(600), (120, 180, "media"), None),
    ("from 1:00 to 2:30", F(600), (60, 150, "media"), "from 1:00 to 2:30"),
    ("from 3:00 to 2:00", F(600), None, None),
    ("between 2 and 3 minutes", F(600), (120, 180, "media"), None),
    ("what happens after 5:00", F(600), (300, INF, "media"), "after 5:00"),
    ("before 2:00", F(600), (0, 120, "media"), "before 2:00"),
    ("since 3:00", F(600), (180, INF, "media"), None),
    ("until 4:00", F(600), (0, 240, "media"), None),
    ("after 5:00 and before 7:00", F(600), (300, 420, "media"), "after 5:00 and before 7:00"),
    ("after 50:00", F(600), None, None),
    ("before 0:00", F(600), None, None),
    # start / end / middle: 10 % of the stream, within [30 s, 5 min]
    ("at the start", F(600), (0, 60, "media"), "at the start"),
    ("at the start", F(24), (0, 24, "media"), None),
    ("at the beginning", F(100), (0, 30, "media"), None),
    ("at the very beginning of the clip", F(36000), (0, 300, "media"), None),
    ("what happens at the end?", F(600), (540, 600, "media"), "at the end"),
    ("towards the end", F(7200), (6900, 7200, "media"), "towards the end"),
    ("in the middle", F(600), (270, 330, "media"), None),
    ("at the end", F(0), None, None),
    # "ago" on a file counts back from the end
    ("5 minutes ago", F(600), (270, 330, "media"), "5 minutes ago"),
    ("half an hour ago", F(600), None, None),
    # wall-clock words cannot be read on a file
    ("after 14:05", F(600), None, None),  # on a file 14:05 is media 845 s, past the end
    ("at 2pm", F(36000), None, None),
    ("at three o'clock", F(36000), None, None),
    ("between 9:30 am and 10:15", F(36000), None, None),
    ("around noon", F(36000), None, None),
    # not times
    ("version 2.0 of the app", F(600), None, None),
    ("are there 5 people?", F(600), None, None),
    ("What color is the car?", F(600), None, None),
    ("the person at the end of the hallway", F(600), None, None),
    ("the man in the middle of the room", F(600), None, None),
    ("did it rain for 5 minutes", F(600), None, None),
    ("was the train delayed by 5 minutes", F(600), None, None),
    ("the first place winner", F(600), None, None),
    ("what is the score, 2-1?", F(600), None, None),
    ("", F(600), None, None),
    # live streams: last / ago are wall clock, first / final / "of the video" are media
    ("what happened in the last 10 minutes?", LIVE, (21000, 21600, "wall"), "in the last 10 minutes"),
    ("in the last hour", LIVE, (18000, 21600, "wall"), None),
    ("in the last few minutes", LIVE, (21420, 21600, "wall"), None),
    ("the final minute", LIVE, (21540, 21600, "media"), None),
    ("the last 10 minutes of the video", LIVE, (21000, 21600, "media"), None),
    ("first 5 minutes", LIVE, (0, 300, "media"), None),
    ("5 minutes ago", LIVE, (21270, 21330, "wall"), None),
    ("between 10 minutes ago and 5 minutes ago", LIVE, (21000, 21300, "wall"), None),
    # live streams: wall clock readings
    ("anyone after 14:05?", LIVE, (18300, INF, "wall"), "after 14:05"),
    ("since 14:05", LIVE, (18300, INF, "wall"), None),
    ("at 2pm", LIVE, (17700, 18300, "wall"), "at 2pm"),
    ("at 2 p.m.", LIVE, (17700, 18300, "wall"), None),
    ("between 9:30 am and 10:15", LIVE, (1800, 4500, "wall"), "between 9:30 am and 10:15"),
    ("between 11 am and 1:30", LIVE, (7200, 16200, "wall"), None),
    ("2-3pm", LIVE, (18000, 21600, "wall"), None),
    ("at 1:30", LIVE, (16140, 16260, "wall"), None),  # 12-hour dial: the most recent 1:30 is 13:30
    ("at 14:05:30", LIVE, (18315, 18345, "wall"), None),
    ("at 9.30 am", LIVE, (1740, 1860, "wall"), None),
    ("before 10:00", LIVE, (0, 3600, "wall"), None),
    ("after 14:05 and before 14:30", LIVE, (18300, 19800, "wall"), None),
    ("at 02:30", LIVE, None, None),  # zero-padded: 24-hour 02:30, before the stream started
    ("at 5pm", LIVE, None, None),  # today's 17:00 is in the future -> yesterday's, before the stream
    ("at 8am", LIVE, None, None),
    ("at 75:30", LIVE, (4515, 4545, "media"), None),  # H > 23: media
    ("at 1:30 into the video", LIVE, (75, 105, "media"), None),
    ("yesterday at 2pm", LIVE_2DAYS, (17700, 18300, "wall"), "yesterday at 2pm"),
    ("what was there at 2pm yesterday?", LIVE_2DAYS, (17700, 18300, "wall"), "at 2pm yesterday"),
    ("at 2pm", LIVE_2DAYS, (104100, 104700, "wall"), None),
    ("after 23:30", LIVE_MIDNIGHT, (5400, INF, "wall"), None),  # yesterday's 23:30
    # several anchors: linear between them, slope 1 outside
    ("at 9:05", GAPPY, (240, 360, "wall"), None),
    ("at 9:12", GAPPY, (540, 660, "wall"), None),  # inside the hole: media stands at 600
    ("at 9:20", GAPPY, (840, 960, "wall"), None),
    ("at 9:30", GAPPY, (1440, 1560, "wall"), None),
]


def _ids():
    return [f"{i}:{q[:40]}" for i, (q, *_rest) in enumerate(ROWS)]


@pytest.mark.parametrize("question,ctx,expected,phrase", ROWS, ids=_ids())
def test_table(question, ctx, expected, phrase):
    got = window_from_question(question, **ctx)
    if expected is None:
        assert got is None, got
        return
    assert got is not None, question
    start, end, clock = expected
    assert got.start_s == pytest.approx(start, abs=1e-6)
    if math.isinf(end):
        assert math.isinf(got.end_s)
    else:
        assert got.end_s == pytest.approx(end, abs=1e-6)
    assert got.clock == clock
    if phrase is not None:
        assert got.phrase == phrase


def test_table_is_big_enough():
    assert len(ROWS) >= 40


@pytest.mark.parametrize("question,ctx,expected,phrase", ROWS, ids=_ids())
def test_properties(question, ctx, expected, phrase):
    got = window_from_question(question, **ctx)
    if got is None:
        return
    assert isinstance(got, TimeWindow)
    assert 0.0 <= got.start_s < got.end_s
    assert math.isinf(got.end_s) or got.end_s <= ctx["duration_s"]
    assert got.start_s < ctx["duration_s"]
    assert got.phrase and got.phrase in question
    assert got.clock in ("media", "wall")
    # the phrase alone sets the same window
    again = window_from_question(got.phrase, **ctx)
    assert again == got


def test_single_anchor_equals_a_list_of_one():
    one = window_from_question("after 14:05", **LIVE)
    listed = window_from_question("after 14:05", **{**LIVE, "wall_anchor": [LIVE["wall_anchor"]]})
    assert one == listed


def test_wall_to_media_interpolates_and_extrapolates():
    anchors = GAPPY["wall_anchor"]
    assert wall_to_media(unix(6, 9), anchors) == pytest.approx(0)
    assert wall_to_media(unix(6, 8, 59), anchors) == pytest.approx(-60)
    assert wall_to_media(unix(6, 9, 12), anchors) == pytest.approx(600)
    assert wall_to_media(unix(6, 9, 20), anchors) == pytest.approx(900)
    assert wall_to_media(unix(6, 10), anchors) == pytest.approx(1200 + 35 * 60)
    with pytest.raises(ValueError):
        wall_to_media(0.0, [])


def test_edge_span_bounds():
    assert edge_span_s(100) == EDGE_MIN_S
    assert edge_span_s(1000) == 100
    assert edge_span_s(10 ** 6) == EDGE_MAX_S
    assert edge_span_s(10) == 10


def test_defaults_use_the_clock_and_local_zone():
    started = time.time() - 3600
    got = window_from_question("in the last 10 minutes", duration_s=3600.0, wall_anchor=(0.0, started))
    assert got is not None and got.clock == "wall"
    assert got.start_s == pytest.approx(3000, abs=5) and got.end_s == pytest.approx(3600, abs=5)
    local = dt.datetime.fromtimestamp(started + 1800)  # a wall time inside the stream, local zone
    got = window_from_question(f"after {local:%H:%M:%S}", duration_s=3600.0, wall_anchor=(0.0, started))
    assert got is not None and got.start_s == pytest.approx(1800, abs=2)
