"""Live RTSP sources: PyAV over TCP with socket timeouts, reconnects with backoff, one stream clock.

A `LiveSource` is meant to be left running against a real camera for days. `events()` yields
decoded frames and connection events: `Connected`, `Disconnected`, `Reconnecting`, `Gap`.

Facts about PyAV 18 / its bundled FFmpeg 8 this module relies on (checked against a real
GStreamer RTSP server, see tests/streamer/test_live.py):

* The RTSP demuxer's ``timeout`` option is the socket I/O timeout in microseconds (FFmpeg >= 5;
  before that it was called ``stimeout`` and ``timeout`` meant something else). It bounds the
  TCP connect, every RTSP request and every read of the session.
* PyAV's ``timeout=(open, read)`` is an interrupt callback: ``open`` is granted to
  avformat_open_input and again to avformat_find_stream_info, ``read`` to each av_read_frame;
  when it fires the call fails with ``av.error.ExitError``. Unlike the socket timeout it also
  catches a server that keeps the socket busy (RTCP, keep-alive answers) but sends no video.
* When a server stops sending (SIGSTOP, a hung camera, a cut cable) the first timeout (either
  kind) only makes libavformat flush the H.264 parser, which hands out the access unit it was
  holding back; the second one raises. A stall is therefore reported about 2 x the timeout
  after the last byte, so we give PyAV half the read timeout, and the socket the larger of the
  open timeout and half the read timeout (during the set-up it is what bounds each RTSP answer;
  on reads it is a backstop). Consequence: a camera must send frames more often than every
  read_timeout_s / 2.
* A server that accepts the TCP connection and never answers makes ``av.open`` fail with
  ``InvalidDataError`` (not a timeout error) after the socket timeout; an unreachable
  network gives the same error at once. We tell them apart with a plain TCP connect first.
* A server that goes away (killed, closed the session) is a plain end of the packet
  iterator, not an exception: on a live source, end of stream means "disconnected".
* The first decoded frame of a connection often has ``pts = None``.

The stream clock: within a connection, media time = base + (pts - first pts) when frames have
timestamps (forced strictly increasing), else wall time since the connection's first frame.
The first connection of a new stream starts at 0. After a reconnect, base = last media time +
the wall time from the last frame to the moment the new session started (its PLAY), so the
hole in media time equals the real outage, and one `Gap` is emitted just before the first new
frame. (The PLAY time rather than the first frame's arrival: av.open() sits on the first ~1 s
of video while it probes the stream, then hands it out in one burst; anchoring on the arrival
would count that second twice and move the stream clock ~1 s ahead of the wall clock at every
reconnect.) With ``resume=(media_s, wall_s)`` the first connection continues a stream recorded
by an earlier process the same way.

This module imports neither torch nor redis nor anything from ``services``.
"""
from __future__ import annotations

import math
import random
import socket
import threading
import time
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Iterator, Union
from urllib.parse import urlsplit

import av

from streamer.audio import AudioBuffer, AudioChunk, Resampler
from streamer.errors import NotAVideo, SourceError, SourceTimeout, SourceUnavailable, UnsupportedCodec
from streamer.gap import Gap  # re-exported: the one gap type (streamer/gap.py)
from streamer.redact import redact_text, redact_url  # redact_url: re-exported (it lived here)
from streamer.source import DecodedFrame, SourceInfo

__all__ = [
    "Backoff", "LiveOptions", "Transport", "Connected", "Disconnected", "Reconnecting", "Gap", "LiveEvent",
    "is_live_url", "redact_url", "probe_live", "LiveSource",
]

_EPS = 1e-6  # smallest step of the stream clock between two frames
_MAX_PTS_JUMP_S = 10.0  # a pts step this far off the wall-clock step re-anchors the clock to the wall
_MAX_BAD_PACKETS = 250  # consecutive undecodable packets before the connection is given up
_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322}


class Transport(StrEnum):
    """How RTSP carries the media (FFmpeg's rtsp_transport)."""
    TCP = "tcp"
    UDP = "udp"
    UDP_MULTICAST = "udp_multicast"
    HTTP = "http"
    HTTPS = "https"


def _option(default, description: str, **bounds):
    """A field with its description and bounds (gt, ge, le): `_check_bounds` enforces them, pydantic reads them
    where the settings hold these options (`services.config.Settings.live`), and so do the docs."""
    return field(default=default, metadata={"description": description, **bounds})


_OPS = {"gt": (float.__gt__, ">"), "ge": (float.__ge__, ">="), "le": (float.__le__, "<=")}


def _check_bounds(obj) -> None:
    """ValueError naming the first field of `obj` outside its declared bounds (NaN is outside every bound)."""
    for f in fields(obj):
        v = getattr(obj, f.name)
        for key, (op, sign) in _OPS.items():
            if key in f.metadata and not op(float(v), float(f.metadata[key])):
                raise ValueError(f"{type(obj).__name__}.{f.name} must be {sign} {f.metadata[key]}, got {v!r}")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: initial_s * factor**(attempt-1), capped, with part of it randomised."""

    initial_s: float = _option(0.5, "first wait before reconnecting", gt=0)
    factor: float = _option(2.0, "each further wait is this many times the previous one", ge=1)
    cap_s: float = _option(30.0, "longest wait between reconnect attempts", gt=0)
    jitter: float = _option(0.5, "fraction of each wait that is randomised", ge=0, le=1)

    def __post_init__(self) -> None:
        _check_bounds(self)

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait before retry number `attempt` (>= 1); `rand` in [0, 1). Never above cap_s.

        The un-jittered delay d = min(cap_s, initial_s * factor**(attempt-1)); the result is
        d * (1 - jitter + jitter * rand), i.e. in [d * (1 - jitter), d].
        """
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        if not 0.0 <= rand <= 1.0:
            raise ValueError(f"rand must be in [0, 1), got {rand}")
        # Compare in log space: factor**attempt overflows a float long before attempts run out.
        if self.factor > 1.0 and (attempt - 1) * math.log(self.factor) >= math.log(self.cap_s / self.initial_s):
            base = self.cap_s
        else:
            base = min(self.cap_s, self.initial_s * self.factor ** (attempt - 1))
        return min(self.cap_s, base * (1.0 - self.jitter + self.jitter * rand))


def _backoff(name: str):
    """A LiveOptions field that is `Backoff.<name>`: its default, description and bounds, declared once."""
    f = Backoff.__dataclass_fields__[name]
    return field(default=f.default, metadata=f.metadata)


@dataclass(frozen=True)
class LiveOptions:
    """Live (RTSP) sources: timeouts so a hung camera never blocks, and reconnect backoff.

    Flat, so the settings hold it as it is (`VIGIL_LIVE__<FIELD>`); `backoff` is the Backoff its backoff_* fields
    make."""

    open_timeout_s: float = _option(5.0, "connect + first answer", gt=0, le=120)
    read_timeout_s: float = _option(5.0, "silence after which the camera counts as down", gt=0, le=120)
    backoff_initial_s: float = _backoff("initial_s")
    backoff_factor: float = _backoff("factor")
    backoff_cap_s: float = _backoff("cap_s")
    backoff_jitter: float = _backoff("jitter")
    give_up_after_s: float = _option(0.0, "0: retry forever; else fail after this long down", ge=0)
    transport: Transport = _option(Transport.TCP, "how RTSP carries the media; the timeouts above are tuned for tcp")

    def __post_init__(self) -> None:
        _check_bounds(self)
        try:
            object.__setattr__(self, "transport", Transport(self.transport))
        except ValueError:
            raise ValueError(f"transport must be one of {tuple(str(t) for t in Transport)}, got {self.transport!r}"
                             ) from None

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.backoff_initial_s, self.backoff_factor, self.backoff_cap_s, self.backoff_jitter)


@dataclass(frozen=True)
class Connected:
    attempt: int  # number of this try since the last connection that delivered frames (1: first try)
    info: SourceInfo
    wall_s: float


@dataclass(frozen=True)
class Disconnected:
    reason: str
    wall_s: float
    media_s: float  # stream time of the last frame (of the resume point, or 0.0, if there was none yet)


@dataclass(frozen=True)
class Reconnecting:
    attempt: int  # the number the coming try will have (see Connected.attempt)
    delay_s: float  # emitted before sleeping this long
    reason: str


LiveEvent = Union[DecodedFrame, Connected, Disconnected, Reconnecting, Gap]


def is_live_url(source: str) -> bool:
    """True for rtsp:// and rtsps:// URLs with a host."""
    if not isinstance(source, str):
        return False
    try:
        parts = urlsplit(source.strip())
        return parts.scheme.lower() in _DEFAULT_PORTS and bool(parts.hostname)
    except ValueError:
        return False


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise SourceUnavailable(f"{redact_url(url)}: invalid port in the URL") from None
    if not parts.hostname:
        raise SourceUnavailable(f"{redact_url(url)}: no host in the URL")
    return parts.hostname, port or _DEFAULT_PORTS.get(parts.scheme.lower(), 554)


def _where(url: str) -> str:
    try:
        host, port = _host_port(url)
    except SourceUnavailable:
        return redact_url(url)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ffmpeg_reason(exc: BaseException) -> str:
    """An FFmpeg error without the URL PyAV appends to it (it may hold credentials)."""
    text = getattr(exc, "strerror", None) or exc.__class__.__name__
    return redact_text(f"{exc.__class__.__name__}: {text}")


def _socket_timeout_s(opts: LiveOptions) -> float:
    # The socket timeout covers the TCP connect and every RTSP answer during the set-up, so it is
    # at least the open timeout; on reads it is only a backstop behind PyAV's read timeout.
    return max(opts.open_timeout_s, opts.read_timeout_s / 2.0)


def _pyav_read_timeout_s(opts: LiveOptions) -> float:
    # A stall is reported after about two of these (see the module docstring).
    return opts.read_timeout_s / 2.0


class _Connection:
    """One open RTSP session: the container, its video stream and what it holds."""

    def __init__(self, url: str, opts: LiveOptions) -> None:
        self.url = url
        self.where = _where(url)
        host, port = _host_port(url)
        started = time.monotonic()
        self._tcp_precheck(host, port, opts.open_timeout_s)
        open_left = max(0.5, opts.open_timeout_s - (time.monotonic() - started))
        sock_timeout = _socket_timeout_s(opts)
        options = {
            "rtsp_transport": str(opts.transport),
            "timeout": str(int(sock_timeout * 1_000_000)),  # socket I/O timeout, microseconds
        }
        t0 = time.monotonic()
        self.opened_wall = time.time()  # about when the PLAY goes out: the stream (re)starts here
        try:
            self.container = av.open(url, mode="r", options=options, timeout=(open_left, _pyav_read_timeout_s(opts)),
                                     metadata_errors="ignore")
        except av.error.HTTPNotFoundError:
            raise SourceUnavailable(
                f"{self.where}: the RTSP server has no stream at {urlsplit(url).path or '/'} (404 Not Found)") from None
        except (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError) as exc:
            raise SourceUnavailable(f"{self.where}: the RTSP server refused access ({_ffmpeg_reason(exc)}); "
                                    "check the credentials") from None
        except av.error.HTTPError as exc:
            raise SourceUnavailable(f"{self.where}: the RTSP server answered with an error ({_ffmpeg_reason(exc)})") from None
        except av.error.ConnectionRefusedError:
            raise SourceUnavailable(f"{self.where}: connection refused (nothing listens there)") from None
        except (av.error.ExitError, av.error.TimeoutError):
            raise SourceTimeout(f"{self.where}: accepted the connection but did not set up a stream "
                                f"within {open_left:.1f} s") from None
        except av.error.InvalidDataError as exc:
            if time.monotonic() - t0 >= 0.8 * min(open_left, sock_timeout):
                raise SourceTimeout(f"{self.where}: accepted the connection but sent no RTSP answer "
                                    f"within {min(open_left, sock_timeout):.1f} s") from None
            raise SourceUnavailable(f"{self.where}: the server did not answer as an RTSP server "
                                    f"({_ffmpeg_reason(exc)})") from None
        except (av.error.FFmpegError, OSError) as exc:
            raise SourceUnavailable(f"{self.where}: could not open the RTSP stream ({_ffmpeg_reason(exc)})") from None
        try:
            if not self.container.streams.video:
                raise NotAVideo(f"{self.where}: the RTSP stream has no video")
            self.stream = self.container.streams.video[0]
            self.audio = next((a for a in self.container.streams.audio
                               if a.codec_context is not None and a.codec_context.codec.name), None)
            ctx = self.stream.codec_context
            if ctx is None or not ctx.codec.name:
                raise UnsupportedCodec(f"{self.where}: no decoder for the stream's video codec")
            rate = self.stream.average_rate or self.stream.guessed_rate
            self.info = SourceInfo(width=ctx.width, height=ctx.height, codec=ctx.codec.name,
                                   avg_fps=float(rate) if rate else None, duration_s=None)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _tcp_precheck(host: str, port: int, timeout_s: float) -> None:
        """A plain TCP connect: tells refused / unreachable / unknown host apart, which FFmpeg does not."""
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                pass
        except ConnectionRefusedError:
            raise SourceUnavailable(f"{where}: connection refused (nothing listens there)") from None
        except socket.gaierror as exc:
            raise SourceUnavailable(f"{where}: cannot resolve the host name ({exc.strerror})") from None
        except (socket.timeout, TimeoutError):
            raise SourceUnavailable(f"{where}: unreachable (no answer to the TCP connect within {timeout_s:.1f} s)") from None
        except OSError as exc:
            raise SourceUnavailable(f"{where}: unreachable ({exc.strerror or exc.__class__.__name__})") from None

    def close(self) -> None:
        container, self.container = getattr(self, "container", None), None
        if container is not None:
            try:
                container.close()
            except Exception:  # closing a dead session must never hide the real problem
                pass

    def frames(self, stop: threading.Event, audio: bool = False) -> Iterator[tuple[av.VideoFrame, float]]:
        """(frame, wall time received) until stop is set; returns the reason the stream ended. With `audio` and
        an audio track, its decoded frames (av.AudioFrame) come interleaved; a bad audio packet is skipped."""
        bad = 0
        streams = (self.stream, self.audio) if audio and self.audio is not None else (self.stream,)
        try:
            for packet in self.container.demux(*streams):
                if stop.is_set():
                    return "stopped"
                if packet.stream is not self.stream:
                    try:
                        heard = packet.decode()
                    except av.error.FFmpegError:
                        continue
                    for frame in heard:
                        yield frame, time.time()
                    continue
                try:
                    decoded = self.stream.decode(packet)
                    bad = 0
                except av.error.EOFError:
                    break
                except av.error.FFmpegError as exc:  # one damaged packet: skip it, keep the session
                    bad += 1
                    if bad >= _MAX_BAD_PACKETS:
                        return f"{bad} undecodable packets in a row ({_ffmpeg_reason(exc)})"
                    continue
                for frame in decoded:
                    yield frame, time.time()
                    if stop.is_set():
                        return "stopped"
        except (av.error.ExitError, av.error.TimeoutError):
            return "read timeout: no data for too long"
        except av.error.EOFError:
            pass
        except (av.error.FFmpegError, OSError) as exc:
            return f"read error ({_ffmpeg_reason(exc)})"
        return "end of stream (the server closed the session or went away)"


def probe_live(url: str, opts: LiveOptions) -> SourceInfo:
    """Connect once, decode the first frame, close.

    Raises SourceUnavailable (refused, unreachable, unknown host, bad path, no access; the
    message names host:port, never the credentials) or SourceTimeout (the server accepted the
    connection but sent nothing within the open / read timeout).
    """
    if not is_live_url(url):
        raise SourceUnavailable(f"{redact_url(url)}: not an rtsp:// or rtsps:// URL")
    conn = _Connection(url, opts)
    try:
        frames = conn.frames(threading.Event())
        try:
            next(frames)
            return conn.info
        except StopIteration as end:
            reason = end.value or "end of stream"
        finally:
            frames.close()
        if reason.startswith("read timeout"):
            raise SourceTimeout(f"{conn.where}: the stream was set up but no frame came within "
                                f"{opts.read_timeout_s:.1f} s")
        raise SourceUnavailable(f"{conn.where}: the stream ended before its first frame ({reason})")
    finally:
        conn.close()


class LiveSource:
    """A live RTSP stream that reconnects forever (or until give_up_after_s) on one stream clock."""

    def __init__(self, url: str, opts: LiveOptions, resume: tuple[float, float] | None = None,
                 rng: random.Random | None = None, audio: AudioBuffer | None = None) -> None:
        """`audio`: where the camera's audio track goes (16 kHz mono on the stream clock; never blocks)."""
        self.audio = audio
        if not is_live_url(url):
            raise SourceUnavailable(f"{redact_url(url)}: not an rtsp:// or rtsps:// URL")
        self.url = url
        self.opts = opts
        self.where = _where(url)
        self.rng = rng or random.Random()
        self.info: SourceInfo | None = None
        # The stream clock's last frame (media time, wall time); a resume point counts as one.
        self._last_t: float | None = None
        self._last_wall: float | None = None
        self._gap_reason = "ingest was not running"
        self._frames_seen = 0
        if resume is not None:
            media_s, wall_s = float(resume[0]), float(resume[1])
            if not (math.isfinite(media_s) and math.isfinite(wall_s)):
                raise ValueError(f"resume must be finite (media_s, wall_s), got {resume}")
            self._last_t, self._last_wall = media_s, wall_s

    @property
    def last_media_s(self) -> float | None:
        return self._last_t

    def events(self, stop: threading.Event) -> Iterator[LiveEvent]:
        """Frames and connection events until `stop` is set (then the generator returns).

        Raises SourceUnavailable when give_up_after_s > 0 and that long passed without a frame
        (counted from the last frame, or from the call). Closing the generator closes the
        connection.
        """
        opts = self.opts
        attempt = 1  # number of the next try since the last connection that delivered frames
        failures = 0  # failed tries (a lost connection counts as one) since then
        reason = ""
        since = time.time()  # give-up clock: the last frame, or the start
        first_try = True
        while not stop.is_set():
            if not first_try:
                delay = opts.backoff.delay(max(1, failures), self.rng.random())
                if opts.give_up_after_s > 0:
                    left = since + opts.give_up_after_s - time.time()
                    if left <= 0:
                        raise SourceUnavailable(
                            f"{self.where}: no connection for {opts.give_up_after_s:.1f} s; last problem: {reason}")
                    delay = min(delay, left)
                yield Reconnecting(attempt=attempt, delay_s=delay, reason=reason)
                if stop.wait(delay):
                    return
            first_try = False
            try:
                conn = _Connection(self.url, opts)
            except SourceError as exc:
                reason = redact_text(str(exc))  # built from host:port; masked again all the same
                failures += 1
                attempt += 1
                if opts.give_up_after_s > 0 and time.time() - since >= opts.give_up_after_s:
                    raise SourceUnavailable(
                        f"{self.where}: no connection for {opts.give_up_after_s:.1f} s; last problem: {reason}") from None
                continue
            delivered = False
            frames = None
            try:
                self.info = conn.info
                yield Connected(attempt=attempt, info=conn.info, wall_s=time.time())
                clock = _ConnectionClock(conn.info.avg_fps)
                hearing = self.audio is not None and conn.audio is not None
                if self.audio is not None:
                    self.audio.set_has_audio(hearing)
                resample = Resampler() if hearing else None
                frames = conn.frames(stop, audio=hearing)
                while True:
                    try:
                        frame, wall = next(frames)
                    except StopIteration as end:
                        reason = end.value or "end of stream"
                        break
                    if isinstance(frame, av.AudioFrame):
                        # on the video's clock: its pts against the connection's pts origin (audio before the
                        # first timed video frame has no place on the clock yet and is dropped)
                        if frame.time is not None and clock.pts_origin is not None:
                            t = clock.base + (frame.time - clock.pts_origin)
                            if t >= clock.base - 1.0:
                                self.audio.put(AudioChunk(max(t, 0.0), resample(frame), wall))
                        continue
                    t, gap = self._stamp(clock, frame, wall, conn.opened_wall)
                    if gap is not None:
                        yield gap
                    if not delivered:
                        delivered = True
                        attempt, failures = 1, 0
                    since = wall
                    self._frames_seen += 1
                    if self.audio is not None:
                        self.audio.video_at(t)
                    yield DecodedFrame(t, frame, wall)
            finally:
                if frames is not None:
                    frames.close()
                conn.close()
            if stop.is_set():
                return
            if reason.startswith("read timeout"):
                reason = f"read timeout: no data for {opts.read_timeout_s:.1f} s"
            if self._frames_seen:  # a resume gap keeps saying why it began
                self._gap_reason = f"disconnected: {reason}"
            media = self._last_t if self._last_t is not None else 0.0
            yield Disconnected(reason=reason, wall_s=time.time(), media_s=media)
            if not delivered:
                attempt += 1
            failures += 1

    def _stamp(self, clock: "_ConnectionClock", frame: av.VideoFrame, wall: float,
               opened_wall: float) -> tuple[float, Gap | None]:
        """Media time of a frame received at `wall`, and the Gap to emit before it (first frame only).

        The stream resumes when the connection's PLAY went out (`opened_wall`), not when its first
        frame is received: av.open() holds back the first ~second of video while it probes the
        stream and hands it out in one burst. Anchoring on the receipt time would count that
        second twice (once in the gap, once in the burst's pts) and push the stream clock ahead
        of the wall clock by about a second at every reconnect.
        """
        gap = None
        pts_s = frame.time  # None when the frame has no timestamp
        if clock.first_wall is None:
            if self._last_t is None:
                base = 0.0
            else:
                resumed = max(min(opened_wall, wall), self._last_wall)
                base = max(self._last_t + (resumed - self._last_wall), self._last_t + _EPS)
                gap = Gap(start_s=self._last_t, end_s=base, wall_start=self._last_wall,
                          wall_end=self._last_wall + (base - self._last_t), reason=self._gap_reason)
            clock.start(base, wall, pts_s)
            t = base
        else:
            t = clock.time(pts_s, wall, self._last_t, self._last_wall)
            t = max(t, self._last_t + _EPS)
        self._last_t, self._last_wall = t, wall
        return t, gap


class _ConnectionClock:
    """Media time within one connection: base + (pts - pts origin), or wall time when there is no pts."""

    def __init__(self, avg_fps: float | None) -> None:
        self.step = 1.0 / avg_fps if avg_fps and avg_fps > 0 else None
        self.base = 0.0
        self.first_wall: float | None = None
        self.pts_origin: float | None = None

    def start(self, base: float, wall: float, pts_s: float | None) -> None:
        self.base, self.first_wall = base, wall
        if pts_s is not None:
            self.pts_origin = pts_s

    def time(self, pts_s: float | None, wall: float, last_t: float, last_wall: float) -> float:
        if pts_s is None:
            if self.pts_origin is None:  # no timestamps on this connection (yet): the wall clock
                return self.base + (wall - self.first_wall)
            return last_t + (self.step or max(wall - last_wall, _EPS))  # a hole in otherwise timed frames
        if self.pts_origin is None:
            # The first timestamp continues from the untimed frames before it.
            self.pts_origin = pts_s - (max(self.base + (wall - self.first_wall), last_t + _EPS) - self.base)
        t = self.base + (pts_s - self.pts_origin)
        wall_step = wall - last_wall
        if t - last_t > wall_step + _MAX_PTS_JUMP_S or t < last_t - _MAX_PTS_JUMP_S:
            # The camera's clock jumped (reset, wrap the demuxer did not undo): follow the wall.
            t = last_t + max(self.step or wall_step, _EPS)
            self.pts_origin = pts_s - (t - self.base)
        return t
