"""Bytes pushed by a client (MPEG-TS or fragmented MP4), read by PyAV as a non-seekable file.

The writer (a gRPC handler) and the reader (the decoder thread) meet in a bounded buffer:
a writer that gets ahead of decoding waits, which is what paces a pushed file; closing ends
the stream cleanly, aborting makes the reader fail with the given reason.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable


class FeedClosed(Exception):
    """The reader side is gone (the stream stopped or failed); further bytes are not wanted."""


class ByteFeed:
    def __init__(self, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._error: str | None = None
        self._reader_gone = False
        self._cond = threading.Condition()
        self.received = 0

    # ---- writer side ----------------------------------------------------------------------
    def write(self, data: bytes, stop: threading.Event | None = None) -> None:
        """Append bytes, waiting while the buffer is full. Raises FeedClosed when the reader is gone."""
        with self._cond:
            while self._size >= self.max_bytes and not self._reader_gone:
                if stop is not None and stop.is_set():
                    raise FeedClosed("the stream was stopped")
                self._cond.wait(0.2)
            if self._reader_gone:
                raise FeedClosed("the stream is no longer reading")
            if self._eof:  # closed (the end message, or StopStream): nothing more is read
                raise FeedClosed("the feed is closed")
            if data:
                self._chunks.append(bytes(data))
                self._size += len(data)
                self.received += len(data)
                self._cond.notify_all()

    def close(self) -> None:
        """No more bytes: the reader sees end of stream once the buffer drains."""
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def abort(self, reason: str) -> None:
        """The sender failed: the reader raises OSError(reason) instead of seeing a clean end."""
        with self._cond:
            self._error = reason
            self._eof = True
            self._cond.notify_all()

    @property
    def error(self) -> str | None:
        """Why the sender side aborted (None: it did not)."""
        with self._cond:
            return self._error

    # ---- reader side (PyAV calls read) ----------------------------------------------------
    def read(self, n: int = -1) -> bytes:
        with self._cond:
            while not self._chunks and not self._eof:
                self._cond.wait(0.5)
            if not self._chunks:
                if self._error:
                    raise OSError(self._error)
                return b""
            out = bytearray()
            while self._chunks and (n < 0 or len(out) < n):
                head = self._chunks.popleft()
                take = len(head) if n < 0 else min(len(head), n - len(out))
                out += head[:take]
                if take < len(head):
                    self._chunks.appendleft(head[take:])
            self._size -= len(out)
            self._cond.notify_all()
            return bytes(out)

    def reader_done(self) -> None:
        """The reader stopped (finished, failed or stopped): wake and refuse the writer."""
        with self._cond:
            self._reader_gone = True
            self._cond.notify_all()


class RealtimePacer:
    """Plays media times at their own rate, as a camera sends them: `__call__(media_s)` waits until `media_s` minus
    the first media time seen has passed on `clock` since that first call (`vigil push --realtime`; the remuxer
    calls it before each packet). Times that go back (a new segment) never wait; a sender that fell behind is not
    made to catch up by skipping, it just does not wait."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 max_wait_s: float = 10.0) -> None:
        self.clock, self.sleep, self.max_wait_s = clock, sleep, max_wait_s
        self._t0: float | None = None  # (wall, media) of the first packet
        self._m0 = 0.0
        self.waited_s = 0.0

    def __call__(self, media_s: float) -> None:
        now = self.clock()
        if self._t0 is None:
            self._t0, self._m0 = now, media_s
            return
        due = self._t0 + (media_s - self._m0)
        wait = due - now
        if wait > self.max_wait_s:  # a jump in the file's timestamps: carry on from here rather than stall
            self._t0, self._m0 = now, media_s
            return
        if wait > 0:
            self.sleep(wait)
            self.waited_s += wait
