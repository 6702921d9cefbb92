"""One model per process, shared by every stream's ingest and every question.

* `ModelGate`: who runs on the model now. Questions (and other short, interactive model work) take it with
  priority: once a question waits, no new ingest batch starts, so a question waits for at most the batch that
  is running. It is a lock (`with gate:`, `acquire`/`release`/`locked`) for that interactive work.
* `EncodeScheduler`: ingest workers hand it their next clip (`encode`) and wait; one thread gathers the clips
  that are ready, from up to `max_batch` streams, and runs them through the adapter's `ingest_clips` as one
  batch (one vision pass, one padded prefill, one proxy pass), then hands each stream its own result. While a
  batch runs the next one gathers, so batches grow when the model is the bottleneck. A stream that just got
  its result needs a moment (its memory step, its store write) before its next clip is ready; the scheduler
  waits for the streams of the last batch to come back for at most half that batch's time (and 50 ms), then
  runs what it has: a lone stream never waits, a slow one (a live camera between clips) costs one short wait.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Iterator, Sequence

from encoders.base import ClipEncoding, ClipRequest, PreparedClip, VideoLM

log = logging.getLogger("vigil.scheduler")


class ModelGate:
    """Exclusive use of the model, questions first (see the module docstring)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held = False
        self._questions = 0  # questions waiting for the model

    # ---- the lock protocol: interactive work, with priority ------------------------------------
    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        with self._cond:
            self._questions += 1
            try:
                ok = self._cond.wait_for(lambda: not self._held,
                                         None if timeout is None or timeout < 0 else timeout) if blocking \
                    else not self._held
                if ok:
                    self._held = True
                return ok
            finally:
                self._questions -= 1
                self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            if not self._held:
                raise RuntimeError("release of a model gate that is not held")
            self._held = False
            self._cond.notify_all()

    def locked(self) -> bool:
        return self._held

    def __enter__(self) -> "ModelGate":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # ---- ingest batches: only while no question waits ------------------------------------------
    @contextmanager
    def batch(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._held and self._questions == 0)
            self._held = True
        try:
            yield
        finally:
            self.release()


class EncodeScheduler:
    """Ready clips of many streams, encoded in batches on one model (see the module docstring)."""

    MAX_GATHER_S = 0.05

    def __init__(self, adapter: VideoLM, gate: ModelGate, max_batch: int, observe=None) -> None:
        """`observe(batch_size, seconds)`: called after each batch (metrics); None: nothing."""
        self.adapter, self.gate, self.max_batch = adapter, gate, max(1, max_batch)
        self._observe = observe
        self._pending: deque[tuple[PreparedClip, Future, object]] = deque()
        self._away: set = set()  # streams of the last batch that have not sent their next clip yet
        self._last_batch_s = 0.0
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.batches = 0  # batches run (and clips in them), for tests and the log
        self.clips = 0

    def encode(self, request: ClipRequest, stream: object = None) -> ClipEncoding:
        """The clip's encoding, as `adapter.ingest_clip` gives it (within float rounding when batched with other
        streams' clips); blocks until its batch has run. Raises what encoding it raised. `stream`: who sends it
        (a stream id; None: anonymous, never waited for)."""
        clip = self.adapter.prepare_clip(request)  # host-side work, in this (the stream's) thread
        fut: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the encoder is shut down")
            self._away.discard(stream)
            self._pending.append((clip, fut, stream))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="encode-scheduler", daemon=True)
                self._thread.start()
            self._cond.notify()
        return fut.result()

    def close(self) -> None:
        """Stop taking clips; the ones waiting fail (their workers are being let go anyway)."""
        with self._cond:
            self._closed = True
            waiting = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for _, fut, _ in waiting:
            fut.set_exception(RuntimeError("the encoder is shut down"))
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _take(self) -> list[tuple[PreparedClip, Future, object]] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self._closed)
            if self._away and len(self._pending) < self.max_batch:  # the last batch's streams, nearly ready
                self._cond.wait_for(lambda: self._closed or not self._away or len(self._pending) >= self.max_batch,
                                    min(self.MAX_GATHER_S, 0.5 * self._last_batch_s))
                self._away.clear()  # who did not come back in time is not waited for again
            if self._closed:
                return None
            n = min(self.max_batch, len(self._pending))
            return [self._pending.popleft() for _ in range(n)]

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            with self.gate.batch():
                batch = [item for item in batch if item[1].set_running_or_notify_cancel()]
                t0 = time.perf_counter()
                results = self._run([r for r, _, _ in batch])
                seconds = time.perf_counter() - t0
            self.batches += 1
            self.clips += len(batch)
            if self._observe is not None:
                self._observe(len(batch), seconds)
            with self._cond:
                self._last_batch_s = seconds
                if self.max_batch > 1:
                    self._away.update(s for _, _, s in batch if s is not None)
            for (_, fut, _), res in zip(batch, results):
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    def _run(self, requests: Sequence[PreparedClip]) -> list[ClipEncoding | BaseException]:
        """One batch; if it fails, each clip alone, so one bad clip fails only its own stream."""
        if not requests:
            return []
        try:
            return list(self.adapter.ingest_clips(requests))
        except Exception as exc:
            if len(requests) == 1:
                return [exc]
            log.warning("a batch of %d clips failed (%s: %s); encoding them one by one", len(requests),
                        exc.__class__.__name__, exc)
        out: list[ClipEncoding | BaseException] = []
        for r in requests:
            try:
                out.append(self.adapter.ingest_clips([r])[0])
            except Exception as exc:
                out.append(exc)
        return out
