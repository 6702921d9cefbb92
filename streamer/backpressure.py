"""The bounded hand-over between a stream's decoder and its encoder.

A file is paced: `put` waits for room, so nothing is ever dropped. A live source must never
block its decoder (the camera will not wait): when the queue is full, every other queued frame
is dropped, so what survives stays spread evenly over time, and the drops are counted.
Control items (anything that is not a frame: connects, disconnects, gaps, the end) are never
dropped and do not count against the capacity.
"""
from __future__ import annotations

import threading
from collections import deque
from queue import Empty
from typing import Any, Callable


def thin_evenly(items: list, is_frame: Callable[[Any], bool]) -> tuple[list, int]:
    """Drop every second frame (the 2nd, 4th, ...), keep every control item. Returns (kept, dropped)."""
    kept, seen, dropped = [], 0, 0
    for it in items:
        if is_frame(it):
            seen += 1
            if seen % 2 == 0:
                dropped += 1
                continue
        kept.append(it)
    return kept, dropped


class FrameQueue:
    def __init__(self, max_frames: int, live: bool, is_frame: Callable[[Any], bool]) -> None:
        if max_frames < 2:
            raise ValueError("max_frames must be at least 2")
        self.max_frames = max_frames
        self.live = live
        self._is_frame = is_frame
        self._items: deque = deque()
        self._frames = 0
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, item, stop: threading.Event, poll_s: float = 0.2) -> bool:
        """Queue an item. Paced: wait for room (False if `stop` is set first). Live: never waits."""
        frame = self._is_frame(item)
        with self._cond:
            if frame and self._frames >= self.max_frames:
                if self.live:
                    kept, dropped = thin_evenly(list(self._items), self._is_frame)
                    self._items = deque(kept)
                    self._frames -= dropped
                    self.dropped += dropped
                else:
                    while self._frames >= self.max_frames:
                        if stop.is_set():
                            return False
                        self._cond.wait(poll_s)
            self._items.append(item)
            self._frames += frame
            self._cond.notify_all()
        return True

    def get(self, timeout: float):
        """The oldest item; raises queue.Empty after `timeout` seconds with nothing queued."""
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: bool(self._items), timeout):
                raise Empty
            item = self._items.popleft()
            self._frames -= self._is_frame(item)
            self._cond.notify_all()
            return item

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
