"""Server-streaming model work: a function run on the question WorkQueue hands out items as it makes them, and
the gRPC handler (an async generator on the event loop) forwards each one as it comes."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from services.work import WorkQueue

_END = object()


async def worker_stream(work: WorkQueue, fn: Callable[..., Any], *args: Any, timeout_s: float | None = None,
                        **kwargs: Any) -> AsyncIterator[Any]:
    """Run `fn(*args, emit=..., stop=..., **kwargs)` on `work` and yield every item it passes to `emit`, in order;
    then raise what `fn` raised, if anything. `emit` may be called from the worker thread only; items cross to
    the event loop through an asyncio.Queue (loop.call_soon_threadsafe), so the loop never waits on the model.
    When the consumer stops early (the client cancelled, its deadline passed) `stop` is set (`fn` checks it
    between steps) and a call still queued is dropped unrun. `timeout_s`: the time the caller still has; past it
    a queued call is not started."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the loop closed (server shutdown): nobody is listening any more
            stop.set()

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    fut = work.submit(fn, *args, emit=put, stop=stop, deadline=deadline, cancelled=stop, **kwargs)
    fut.add_done_callback(lambda _f: put(_END))  # after every item fn emitted (same thread, FIFO)
    try:
        while (item := await items.get()) is not _END:
            yield item
        fut.result()  # fn's own error (a domain error, or Expired when it never started)
    finally:
        stop.set()
        fut.cancel()
