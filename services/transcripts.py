"""One stream's speech thread: audio from the decode thread (`streamer.audio.AudioBuffer`) transcribed in windows
(`encoders.speech`) while the video path decodes and encodes, and each clip's transcript handed over when the
clip is stored (`until`). Glue only: the windowing and the recognizer live in encoders/speech.py.

The recognizer never takes the model's lock and never blocks the decoder (the buffer drops its oldest audio
when this thread falls behind). A clip asks for the transcript up to its end: a file's clip waits until that
audio is transcribed (speech paces a file like any stage); a live clip waits at most `max_wait_s`, then what
came later goes to the next clip.
"""
from __future__ import annotations

import logging
import math
import threading
import time

from encoders.speech import SpeechOptions, SpeechSegment, SpeechWindow, Transcriber
from streamer.audio import AudioBuffer

log = logging.getLogger("vigil.speech")
_LATE_S = 1.0  # audio more than this behind the decoded video is taken as not coming (no track there)


class SpeechFeed:
    def __init__(self, transcriber: Transcriber, buffer: AudioBuffer, opts: SpeechOptions, live: bool,
                 name: str) -> None:
        self.t, self.buffer, self.opts, self.live, self.name = transcriber, buffer, opts, live, name
        self._cond = threading.Condition()
        self._segments: list[SpeechSegment] = []  # transcribed, not handed to a clip yet (time order)
        self._done_s = -math.inf  # the transcript is complete up to this media time
        self._want_s = -math.inf  # a clip waits for the transcript up to here
        self._stop = threading.Event()
        self.seconds_heard = 0.0  # audio transcribed (what the cost is counted against)
        self.busy_s = 0.0  # time spent in the recognizer
        self.failed: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"speech-{name}", daemon=True)

    def start(self) -> "SpeechFeed":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(10)

    # ---- the encode side ------------------------------------------------------------------------
    def until(self, t: float, ending: threading.Event) -> tuple[SpeechSegment, ...]:
        """The segments not handed out yet whose middle lies before media time t (a segment belongs to the chunk
        that holds most of it; Whisper's word times run a little early), waiting for them (see the module doc)."""
        deadline = time.monotonic() + (self.opts.max_wait_s if self.live else 3600.0)
        with self._cond:
            self._want_s = max(self._want_s, t)
        self.buffer.wake()  # the speech thread looks at the new request now, not at its next poll
        with self._cond:
            while (self._done_s < t and not self._stop.is_set() and not ending.is_set()
                   and self._thread.is_alive() and time.monotonic() < deadline):
                self._cond.wait(0.1)
            out = [s for s in self._segments if (s.start_s + s.end_s) / 2 < t]
            self._segments = [s for s in self._segments if (s.start_s + s.end_s) / 2 >= t]
            return tuple(out)

    # ---- the speech thread ----------------------------------------------------------------------
    def _done(self, t: float, segments=()) -> None:
        with self._cond:
            self._segments.extend(segments)
            self._done_s = max(self._done_s, t)
            self._cond.notify_all()

    def _run(self) -> None:
        win = SpeechWindow()
        heard_to = -math.inf  # the window's end when it was last transcribed (a held-back tail waits for more)
        try:
            while not self._stop.is_set():
                video_s = self.buffer.video_s  # read before taking: audio up to about here has been handed over
                got = self.buffer.take(0.2)
                if self.buffer.has_audio is False:
                    self._done(math.inf)
                    return
                for c in got:
                    if not win.fits(c.start_s):  # a long hole: what is held is complete
                        heard_to = self._transcribe(win, final=True)
                    win.add(c.start_s, c.samples)
                closed = self.buffer.closed and not got
                want = self._want_s
                # a clip waits for audio that has arrived: transcribe now (else gather a whole window)
                audio_in = win.n and self._done_s < want and (win.end_s >= want or video_s >= want + _LATE_S)
                ready = win.n and (win.duration_s >= self.opts.window_s or audio_in or closed
                                   or win.duration_s >= self.opts.max_window_s)
                if ready and (closed or win.end_s >= heard_to + 1.0 or win.duration_s >= self.opts.max_window_s):
                    heard_to = self._transcribe(win, final=closed or win.duration_s >= self.opts.max_window_s)
                if closed and not win.n:
                    self._done(math.inf)
                    return
                if not got and not win.n and video_s - _LATE_S > self._done_s:
                    self._done(video_s - _LATE_S)  # nothing held, nothing came: no audio is missing up to there
        except Exception as exc:  # a recognizer failure must not take the stream down: its clips go on without
            self.failed = f"{exc.__class__.__name__}: {exc}"
            log.exception("stream %s: speech recognition failed; the stream goes on without transcripts", self.name)
            self._done(math.inf)

    def _transcribe(self, win: SpeechWindow, final: bool) -> float:
        """Transcribe what the window holds; returns the window's end as it was."""
        if not win.n:
            return -math.inf
        end = win.end_s
        t0 = time.perf_counter()
        segs, done = self.t.transcribe(win.samples(), win.start_s, final=final)
        self.busy_s += time.perf_counter() - t0
        self.seconds_heard += max(0.0, done - win.start_s)
        win.drop_before(done)
        self._done(done, segs)
        return end
