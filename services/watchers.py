"""WatchStream's fan-out: one poller thread per watched stream reads its event log (a blocking XREAD, off the
shared executor) and hands each event, rendered once, to every subscriber's asyncio queue on the event loop.

A quiet stream costs one parked thread however many watch it, and no thread of the pool the control calls
(DescribeStream, ListStreams, health) use. Subscribers are capped per stream and per client address
(LimitExceeded: RESOURCE_EXHAUSTED).

Ordering: a subscriber reads the newest event id `after` first, then its snapshot, then joins with `after`; it
gets every event after `after` exactly once: those the poller had already passed on come from the poller's short
memory of recent events, later ones through its queue, and anything at or before `after` is skipped.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from services.errors import LimitExceeded

log = logging.getLogger("vigil.watch")

RECENT = 256  # events a poller remembers for subscribers joining just after it passed them on
QUEUE_MAX = 1000  # events waiting for one slow subscriber; past this it is ended (it fell behind)
BLOCK_MS = 1000  # one XREAD's wait: how soon a poller with no subscribers left notices


def event_key(eid: str) -> tuple[int, int]:
    """A Redis stream id "ms-seq" as a comparable pair."""
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class Item:
    """One event for subscribers: its id, what was rendered (None: not sent), and whether it ends the stream."""
    eid: str
    event: Any
    last: bool = False


_END = object()  # the stream ended with no further event (its state is terminal)


class Subscription:
    """One WatchStream call's place: counted against the caps from `WatchHub.join` until it is left (`with`)."""

    def __init__(self, hub: "WatchHub", sid: str, client: str) -> None:
        self.hub, self.sid, self.client = hub, sid, client
        self.after = (0, 0)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.poller: "_Poller | None" = None

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.hub._leave(self)


class _Poller:
    """One stream's reader thread; everything but `_run` runs on the event loop."""

    def __init__(self, hub: "WatchHub", sid: str, after: str) -> None:
        self.hub, self.sid = hub, sid
        self.subs: list[Subscription] = []
        self.recent: deque[Item] = deque(maxlen=RECENT)
        self.done = threading.Event()  # set on the loop when the last subscriber left
        self.failed: BaseException | None = None
        self.ended = False
        self.thread = threading.Thread(target=self._run, args=(after,), name=f"watch-{sid}", daemon=True)

    # ---- the thread ---------------------------------------------------------------------------------------
    def _run(self, after: str) -> None:
        read, render, ended = self.hub.read, self.hub.render, self.hub.ended
        try:
            while not self.done.is_set():
                events = read(self.sid, after, BLOCK_MS)
                if not events:
                    if not ended(self.sid):
                        continue
                    # ended without a final event reaching us yet: pass on whatever is left, then stop
                    events = read(self.sid, after, None)
                    self._post([Item(eid, *render(self.sid, body)) for eid, body in events] + [_END])
                    return
                after = events[-1][0]
                self._post([Item(eid, *render(self.sid, body)) for eid, body in events])
        except BaseException as exc:  # Redis down, the stream deleted: every subscriber gets the error
            self._post([exc])

    def _post(self, items: list) -> None:
        try:
            self.hub.loop.call_soon_threadsafe(self._fan_out, items)
        except RuntimeError:  # the loop closed (server shutdown)
            self.done.set()

    # ---- on the loop --------------------------------------------------------------------------------------
    def _fan_out(self, items: list) -> None:
        for item in items:
            if isinstance(item, Item):
                self.recent.append(item)
            elif isinstance(item, BaseException):
                self.failed = item
            else:
                self.ended = True
            for sub in list(self.subs):
                if isinstance(item, Item) and event_key(item.eid) <= sub.after:
                    continue
                if sub.queue.qsize() >= QUEUE_MAX:
                    self.hub._leave(sub)
                    sub.queue.put_nowait(LimitExceeded(f"this watcher fell {QUEUE_MAX} events behind its stream; "
                                                       "watch again (the snapshot says where it stands)"))
                    continue
                sub.queue.put_nowait(item)
        if self.failed is not None or self.ended:
            self.hub._retire(self)


class WatchHub:
    """The process's pollers, one per watched stream. `read(sid, after_id, block_ms)`: the store's event read;
    `render(sid, body) -> (event or None, ends the stream)`: one event as subscribers get it (run on the poller's
    thread, once per event); `ended(sid)`: whether the stream is in a terminal state."""

    def __init__(self, read: Callable, render: Callable, ended: Callable, per_stream: int, per_client: int) -> None:
        self.read, self.render, self.ended = read, render, ended
        self.per_stream, self.per_client = per_stream, per_client
        self.loop: asyncio.AbstractEventLoop | None = None
        self._pollers: dict[str, _Poller] = {}
        self._clients: dict[str, int] = {}  # client address -> open watchers
        self._streams: dict[str, int] = {}  # stream id -> open watchers

    def watchers(self, sid: str | None = None) -> int:
        """Subscribers of `sid` (None: of every stream)."""
        return self._streams.get(sid, 0) if sid is not None else sum(self._streams.values())

    def join(self, sid: str, client: str) -> Subscription:
        """Take a watcher's place on `sid` for `client` (an address), or raise LimitExceeded (on the loop)."""
        if self._clients.get(client, 0) >= self.per_client:
            raise LimitExceeded(f"{self.per_client} WatchStream calls are open from this client; the limit is "
                                f"{self.per_client} (VIGIL_MAX_WATCHERS_PER_CLIENT)")
        if self.watchers(sid) >= self.per_stream:
            raise LimitExceeded(f"{self.per_stream} WatchStream calls are open on this stream; the limit is "
                                f"{self.per_stream} (VIGIL_MAX_WATCHERS_PER_STREAM)")
        self._clients[client] = self._clients.get(client, 0) + 1
        self._streams[sid] = self._streams.get(sid, 0) + 1
        return Subscription(self, sid, client)

    async def events(self, sub: Subscription, after: str) -> AsyncIterator[Any]:
        """The rendered events of `sub`'s stream after the event id `after`, until one ends the stream (or the
        stream is found ended); raises what the poller met (a store outage, the stream deleted)."""
        self.loop = asyncio.get_running_loop()
        sub.after = event_key(after)
        p = self._pollers.get(sub.sid)
        if p is None:
            p = self._pollers[sub.sid] = _Poller(self, sub.sid, after)
            p.thread.start()
        else:  # what the poller passed on before this subscriber joined
            for item in p.recent:
                if event_key(item.eid) > sub.after:
                    sub.queue.put_nowait(item)
        p.subs.append(sub)
        sub.poller = p
        while True:
            item = await sub.queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is _END:
                return
            if item.event is not None:
                yield item.event
            if item.last:
                return

    def _leave(self, sub: Subscription) -> None:
        if sub.client is None:  # left already
            return
        for counts, key in ((self._clients, sub.client), (self._streams, sub.sid)):
            left = counts.get(key, 1) - 1
            if left:
                counts[key] = left
            else:
                counts.pop(key, None)
        sub.client = None
        p = sub.poller
        if p is not None and sub in p.subs:
            p.subs.remove(sub)
            if not p.subs:
                self._retire(p)

    def _retire(self, p: _Poller) -> None:
        """The poller takes no new subscribers (its thread ends at its next wake-up); the next one starts fresh."""
        p.done.set()
        if self._pollers.get(p.sid) is p:
            del self._pollers[p.sid]

    def close(self) -> None:
        for p in list(self._pollers.values()):
            self._retire(p)
