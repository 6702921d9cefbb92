"""Model work (questions) on its own threads, with a bounded wait: a flood of questions queues here, never in
the event loop's default pool that control calls (describe, list, watch, health) run on, and the excess is
refused at once instead of waiting without end."""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from services.errors import LimitExceeded

T = TypeVar("T")


class Expired(LimitExceeded):
    """A queued question whose client went away (cancelled, deadline passed) before a worker was free: not run."""


class WorkQueue:
    """`workers` threads; at most `workers + max_queued` accepted calls not yet finished (so, with every worker
    busy, at most `max_queued` waiting). `submit` past that raises LimitExceeded (RESOURCE_EXHAUSTED)."""

    def __init__(self, workers: int, max_queued: int, name: str = "vigil-questions",
                 what: str = "questions") -> None:
        if workers < 1 or max_queued < 0:
            raise ValueError(f"workers must be >= 1 and max_queued >= 0, not {workers} and {max_queued}")
        self.workers, self.max_queued, self.what = workers, max_queued, what
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._in_flight = 0  # accepted, not finished (running or waiting)
        self._closed = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return max(0, self._in_flight - self.workers)

    def submit(self, fn: Callable[..., T], *args: Any, deadline: float | None = None,
               cancelled: threading.Event | None = None, **kwargs: Any) -> concurrent.futures.Future[T]:
        """Queue `fn(*args, **kwargs)`. It is skipped (Expired) if, when a worker takes it, `cancelled` is set or
        time.monotonic() is past `deadline`."""
        with self._lock:
            if self._closed:
                raise LimitExceeded(f"the server is shutting down; no more {self.what} are taken")
            if self._in_flight >= self.workers + self.max_queued:
                raise LimitExceeded(f"{self.waiting} {self.what} are queued behind {self.workers} running "
                                    f"(limit {self.max_queued} queued); try again later")
            self._in_flight += 1
        try:
            fut = self._pool.submit(self._guarded, fn, args, kwargs, deadline, cancelled)
        except BaseException:
            self._done(None)
            raise
        fut.add_done_callback(self._done)  # also for a future cancelled before it started
        return fut

    def _done(self, _fut) -> None:
        with self._lock:
            self._in_flight -= 1

    def _guarded(self, fn, args, kwargs, deadline, cancelled):
        if cancelled is not None and cancelled.is_set():
            raise Expired("the client cancelled while the call waited in the queue; not run")
        if deadline is not None and time.monotonic() >= deadline:
            raise Expired("the call's deadline passed while it waited in the queue; not run")
        return fn(*args, **kwargs)

    async def run(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None, **kwargs: Any) -> T:
        """`await fn(*args, **kwargs)` on a worker. `timeout_s`: time the caller still has (a gRPC context's
        `time_remaining()`); past it the call is not started. Cancelling the awaiting task drops the call if it
        has not started yet (a started call runs to its end: Python threads cannot be interrupted)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        cancelled = threading.Event()
        fut = self.submit(fn, *args, deadline=deadline, cancelled=cancelled, **kwargs)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            cancelled.set()
            fut.cancel()
            raise

    def shutdown(self, wait: bool = True) -> None:
        """Refuse new calls, drop the queued ones, and (`wait`) let the running ones finish."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=True)
