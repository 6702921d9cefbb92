"""Fusing the retrieval signals' rankings into one (weighted reciprocal rank fusion). Pure functions.

Each signal ranks the chunks it can score: `kv` (late interaction over the model's own keys), `ocr` (the
text on screen, embedded), `labels` (image labels, embedded), `image` (an image-text model), `mean` (the
mean-key baseline, weight 0 by default). A text signal lists only chunks whose cosine with the question
reaches its floor and `relative_floor` x the best cosine of that signal, so a chunk with some unrelated text
on screen is not promoted. A chunk's fused score is the sum over signals of weight / (rrf_k + rank); the
signals it was found by travel with it. Defaults chosen by benchmarks/bench_footage_needles.py (README).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from encoders.signals import FRAME_INDEX, SIGNALS, Signal


@dataclass(frozen=True)
class SignalScore:
    name: Signal
    rank: int  # 1-based rank within the signal's own list
    score: float  # the signal's own score (kv: standard deviations above the typical chunk; others: cosine)


@dataclass(frozen=True)
class SearchOptions:
    """How questions search (query time; `VIGIL_RETRIEVAL__*`): the fused ranking's weights and floors, and
    where late interaction turns approximate."""

    kv_weight: float = 1.0  # weight of late interaction over the model's own keys in the fused ranking
    ocr_weight: float = 2.0  # weight of the on-screen text
    labels_weight: float = 0.5  # weight of the image labels
    image_weight: float = 1.0  # weight of the image-text embedding (with frames.image_text_model)
    mean_weight: float = 0.0  # weight of the mean-key baseline (ReKV's one key per chunk)
    speech_weight: float = 2.0  # weight of what was said (the audio track transcribed), as on-screen text
    speech_floor: float = 0.3  # cosine a chunk's transcript needs with the question to count
    ocr_floor: float = 0.3  # cosine a chunk's on-screen text needs with the question to count
    labels_floor: float = 0.3  # cosine a chunk's image labels need with the question to count
    image_floor: float = 0.2  # cosine a chunk's image embedding needs with the question to count
    relative_floor: float = 0.75  # a text signal also drops rows under this share of its best cosine
    rrf_k: int = 10  # the fusion constant: a chunk gets weight / (rrf_k + rank) from each signal
    depth: int = 50  # ranks of each signal that count
    exact_max_rows: int = 1 << 16  # keys per channel searched exactly; above it a first pass picks chunks to rescore

    def __post_init__(self) -> None:
        for name in SIGNALS:
            if not 0.0 <= self.weight(name) <= 100.0:
                raise ValueError(f"retrieval weight of {name} must be in [0, 100], got {self.weight(name)}")
        if self.rrf_k < 0 or self.depth < 1 or self.exact_max_rows < 1:
            raise ValueError("rrf_k must be >= 0, depth and exact_max_rows >= 1")
        for name in FRAME_INDEX:
            if not -1.0 <= self.floor(name) <= 1.0:  # also refuses NaN
                raise ValueError(f"retrieval floor of {name} must be a cosine in [-1, 1], got {self.floor(name)}")
        if not 0.0 <= self.relative_floor <= 1.0:
            raise ValueError(f"relative_floor must be in [0, 1], got {self.relative_floor}")

    def weight(self, signal: Signal) -> float:
        return float(getattr(self, f"{signal}_weight"))

    def floor(self, signal: Signal) -> float:
        return float(getattr(self, f"{signal}_floor", float("-inf")))

    def floored(self, signal: Signal) -> bool:
        """A cosine signal with a floor (the frame index's), not a ranking-only one (kv, mean)."""
        return hasattr(self, f"{signal}_floor")

    def restricted(self, signals) -> "SearchOptions":
        """The same options with every signal but `signals` weighing 0 (each of those 1 if it weighed 0)."""
        return replace(self, **{f"{s}_weight": (self.weight(s) or 1.0) if s in signals else 0.0 for s in SIGNALS})

    def only(self, signal: Signal) -> "SearchOptions":
        """One signal measured alone."""
        return self.restricted((signal,))


Ranked = dict[Signal, list[tuple[int, float]]]  # signal -> [(chunk id, score)] best first


def fuse(ranked: Ranked, opts: SearchOptions) -> list[tuple[int, float, tuple[SignalScore, ...]]]:
    """Per-signal rankings -> [(chunk id, fused score, the signals that found it)] best first. Ties keep
    the order of the first signal that listed them."""
    fused: dict[int, float] = {}
    found: dict[int, list[SignalScore]] = {}
    for name, rows in ranked.items():
        w = opts.weight(name)
        floor = opts.floor(name)
        if opts.floored(name) and rows:
            floor = max(floor, opts.relative_floor * max(s for _, s in rows))
        kept = [(cid, s) for cid, s in rows if s >= floor][:opts.depth]
        for rank, (cid, score) in enumerate(kept, start=1):
            found.setdefault(cid, []).append(SignalScore(Signal(name), rank, float(score)))
            if w > 0:
                fused[cid] = fused.get(cid, 0.0) + w / (opts.rrf_k + rank)
    order = sorted(fused, key=lambda c: -fused[c])
    return [(cid, fused[cid], tuple(found[cid])) for cid in order]
