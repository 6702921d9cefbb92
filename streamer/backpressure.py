"""The bounded hand-over between a stream's decoder and its encoder.

A file is paced: `put` waits for room, so nothing is ever dropped. A live source must never
block its decoder (the camera will not wait): it keeps one frame in `stride` (counted over all
frames offered), doubling the stride and thinning the queue to it whenever the queue is full,
and halving it once the queue has drained to a quarter. So the frames that survive stay evenly
spaced in time, whatever the encoder's speed, and every drop is counted.
Control items (anything that is not a frame: connects, disconnects, gaps, the end) are never
dropped and do not count against the capacity.
"""
from __future__ import annotations

import threading
from collections import deque
from queue import Empty
from typing import Any, Callable


def thin_to_stride(items: list, seqs: list[int | None], stride: int) -> tuple[list, list, int]:
    """Keep control items (seq None) and frames whose sequence number is a multiple of `stride`.
    Returns (kept items, their seqs, frames dropped)."""
    kept, kept_seqs, dropped = [], [], 0
    for it, n in zip(items, seqs):
        if n is not None and n % stride:
            dropped += 1
            continue
        kept.append(it)
        kept_seqs.append(n)
    return kept, kept_seqs, dropped


class FrameQueue:
    def __init__(self, max_frames: int, live: bool, is_frame: Callable[[Any], bool]) -> None:
        if max_frames < 2:
            raise ValueError("max_frames must be at least 2")
        self.max_frames = max_frames
        self.live = live
        self._is_frame = is_frame
        self._items: deque = deque()
        self._seqs: deque = deque()  # per item: the frame's sequence number among frames offered, None for controls
        self._frames = 0
        self._offered = 0
        self.stride = 1  # live: keep one frame in `stride`
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, item, stop: threading.Event, poll_s: float = 0.2) -> bool:
        """Queue an item. Paced: wait for room (False if `stop` is set first). Live: never waits."""
        frame = self._is_frame(item)
        with self._cond:
            seq = None
            if frame:
                seq, self._offered = self._offered, self._offered + 1
            if frame and self.live:
                if self._frames >= self.max_frames:
                    self.stride *= 2
                    kept, seqs, dropped = thin_to_stride(list(self._items), list(self._seqs), self.stride)
                    self._items, self._seqs = deque(kept), deque(seqs)
                    self._frames -= dropped
                    self.dropped += dropped
                if seq % self.stride:
                    self.dropped += 1
                    return True
            elif frame and self._frames >= self.max_frames:
                while self._frames >= self.max_frames:
                    if stop.is_set():
                        return False
                    self._cond.wait(poll_s)
            self._items.append(item)
            self._seqs.append(seq)
            self._frames += frame
            self._cond.notify_all()
        return True

    def get(self, timeout: float):
        """The oldest item; raises queue.Empty after `timeout` seconds with nothing queued."""
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: bool(self._items), timeout):
                raise Empty
            item = self._items.popleft()
            self._seqs.popleft()
            self._frames -= self._is_frame(item)
            if self.live and self.stride > 1 and self._frames <= self.max_frames // 4:
                self.stride //= 2  # caught up: keep more again
            self._cond.notify_all()
            return item

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
