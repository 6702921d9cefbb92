"""The decode-side front end every source shares: sample on media time, convert, score for novelty."""
from __future__ import annotations

from typing import Iterable, Iterator

from streamer.keyframes import SceneDetector
from streamer.sampling import SampledFrame, Sampler
from streamer.source import DecodedFrame


def scored_frames(items: Iterable, sampler: Sampler, detector: SceneDetector,
                  max_side: int | None) -> Iterator[SampledFrame]:
    """Sampled, RGB-converted and scored frames, each carrying the state to resume right after it.

    Items that are not decoded frames (a live source's connect/disconnect/gap events) pass
    through unchanged, in order."""
    for item in items:
        if not isinstance(item, DecodedFrame):
            yield item
            continue
        n = sampler.take(item.time_s)
        if n is None:
            continue
        image = item.rgb(max_side)  # [H, W, 3] uint8
        score = detector.score(image)
        yield SampledFrame(n, item.time_s, image, item.wall_s, score.novelty, score.cut,
                           sampler.state(detector.state()), score.redundant, score.static_fraction)
