"""Retention: what to do with a stream's oldest chunks when it is over its age or byte limit.

`plan` is pure: from the chunk records (time order) it returns the deletions and merges that
bring the stream under its limits. Merging (consolidation, after VideoChat-Flash's idea of
coarser memories for older footage) joins `merge` adjacent chunks of the same level into one
chunk of the same fixed size, one level coarser; a chunk at `max_level` can only be deleted.
The age limit always deletes: footage older than it must not be kept in any form.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memory.compress import compress_tokens, in_arrival_order, select
from memory.layout import FeatureSet, TokenSet
from memory.options import MemoryOptions, RetentionMode


@dataclass(frozen=True)
class Retention:
    """A stream's limits (`max_bytes`, `max_age_s`, `mode`: its memory options', validated there; 0: unlimited)
    and how consolidation merges."""
    max_bytes: int = 0  # chunk bytes kept per stream (0: unlimited)
    max_age_s: float = 0.0  # media seconds kept behind the newest chunk (0: unlimited)
    mode: RetentionMode = RetentionMode.CONSOLIDATE  # what the byte limit does to the oldest chunks
    merge: int = 2  # chunks joined per consolidation
    max_level: int = 3  # a chunk merged this many times is deleted instead

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", RetentionMode(self.mode))  # ValueError for a name that is none
        if self.merge < 2 or self.max_level < 0:
            raise ValueError("retention: merge >= 2, max_level >= 0")

    @property
    def limited(self) -> bool:
        return self.max_bytes > 0 or self.max_age_s > 0

    @classmethod
    def of(cls, options: MemoryOptions) -> "Retention":
        """The retention limits a stream's memory options set."""
        return cls(max_bytes=options.max_bytes, max_age_s=options.max_age_s, mode=options.retention_mode)


@dataclass(frozen=True)
class Chunk:
    """What `plan` needs to know of a stored chunk."""
    chunk_id: int
    end_s: float
    bytes: int
    level: int


@dataclass(frozen=True)
class Action:
    kind: str  # delete | merge
    ids: tuple[int, ...]  # oldest first; a merge keeps the first id


def plan(chunks: list[Chunk], media_end_s: float, limits: Retention, keep_newest: int = 1) -> list[Action]:
    """Actions, in order, that bring `chunks` (oldest first) under the limits; the newest
    `keep_newest` chunks are never touched."""
    live = list(chunks)
    actions: list[Action] = []
    if limits.max_age_s > 0:
        old = [c for c in live[:max(0, len(live) - keep_newest)] if c.end_s < media_end_s - limits.max_age_s]
        if old:
            actions.append(Action("delete", tuple(c.chunk_id for c in old)))
            live = [c for c in live if c not in old]
    if limits.max_bytes <= 0:
        return actions
    total = sum(c.bytes for c in live)
    while total > limits.max_bytes and len(live) > keep_newest:
        run = _oldest_run(live[:len(live) - keep_newest], limits) if limits.mode == RetentionMode.CONSOLIDATE else None
        if run is None:
            victim = live.pop(0)
            total -= victim.bytes
            actions.append(Action("delete", (victim.chunk_id,)))
            continue
        i, group = run
        merged = Chunk(group[0].chunk_id, group[-1].end_s, max(c.bytes for c in group), group[0].level + 1)
        live[i:i + len(group)] = [merged]
        total -= sum(c.bytes for c in group) - merged.bytes
        actions.append(Action("merge", tuple(c.chunk_id for c in group)))
    return actions


def _oldest_run(chunks: list[Chunk], limits: Retention) -> tuple[int, list[Chunk]] | None:
    """The oldest `merge` adjacent chunks of one level below max_level, if any."""
    for i in range(len(chunks) - limits.merge + 1):
        group = chunks[i:i + limits.merge]
        if group[0].level < limits.max_level and all(c.level == group[0].level for c in group):
            return i, group
    return None


def merge_tokens(sets: list[TokenSet], budget: int) -> TokenSet:
    """Adjacent KV chunks -> one chunk of `budget` tokens per layer, by the scores they were kept with."""
    joined = TokenSet.cat(sets)
    return in_arrival_order(compress_tokens(joined, joined.score, budget, "attention"))


def merge_features(sets: list[FeatureSet], budget: int) -> FeatureSet:
    joined = FeatureSet.cat(sets)
    keep = select(joined.score[None], budget, "attention")[0]  # [b] ascending = stream order
    return joined.take(keep)


def merge_vectors(vecs: list[np.ndarray]) -> np.ndarray:
    """Retrieval vector of a merged chunk: the normalised mean of its parts' vectors."""
    v = np.mean(np.stack(vecs), axis=0).astype(np.float32)
    return v / max(float(np.linalg.norm(v)), 1e-12)


