"""The ingest-time context a new clip is prefilled behind.

Uncompressed for now: the stream prefix plus the most recent clips that fit `max_tokens`
(a sliding window, as ReKV encodes). With a window that holds the whole stream, the stored
chunks are exactly the KV of one long prompt. Query-agnostic compression replaces the window.
"""
from __future__ import annotations

from collections import deque

from encoders.base import EncodedSegment
from memory.layout import concat_segments


class RecentWindow:
    def __init__(self, prefix: EncodedSegment, max_tokens: int) -> None:
        self.prefix = prefix
        self.max_tokens = max_tokens
        self._clips: deque[EncodedSegment] = deque()
        self._tokens = prefix.length
        self._next_pos = prefix.next_pos
        self._max_pos = prefix.max_pos

    def push(self, seg: EncodedSegment) -> None:
        self._clips.append(seg)
        self._tokens += seg.length
        self._next_pos = seg.next_pos
        self._max_pos = max(self._max_pos, seg.max_pos)
        while self._tokens > self.max_tokens and len(self._clips) > 1:
            self._tokens -= self._clips.popleft().length

    @classmethod
    def restore(cls, prefix: EncodedSegment, max_tokens: int, clips: list[EncodedSegment],
                next_pos: int, max_pos: int) -> "RecentWindow":
        """The window as it stood after the stream's clips were pushed, from the newest ones it kept
        (oldest first, see `first_kept`) and the stream's stored positions."""
        w = cls(prefix, max_tokens)
        for seg in clips:
            w.push(seg)
        w._next_pos, w._max_pos = next_pos, max(max_pos, w._max_pos)
        return w

    @staticmethod
    def first_kept(prefix_tokens: int, clip_tokens: list[int], max_tokens: int) -> int:
        """Index of the oldest clip a window still holds after pushing clips of these sizes in order."""
        total, first = prefix_tokens, 0
        for i, n in enumerate(clip_tokens):
            total += n
            while total > max_tokens and i - first + 1 > 1:
                total -= clip_tokens[first]
                first += 1
        return first

    @property
    def tokens(self) -> int:
        return self._tokens

    def memory(self) -> EncodedSegment:
        """Prefix + window, ending where the stream's next text position is."""
        return concat_segments([self.prefix, *self._clips], next_pos=self._next_pos, max_pos=self._max_pos)
