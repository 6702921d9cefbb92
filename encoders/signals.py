"""The retrieval signals: what can rank a stored chunk for a question. One name each, defined here so every layer
may use it (`encoders.describe` produces the frame-index ones, `memory` stores, indexes and fuses them, `services`
checks what a request names). A `str`: stored field names (`d:<signal>`), wire strings (`SignalScore.signal`,
`signals` of a request) and JSON are the values ("ocr")."""
from __future__ import annotations

from enum import StrEnum


class Signal(StrEnum):
    KV = "kv"  # late interaction over the model's own keys (encoders.retrieval)
    OCR = "ocr"  # the text on screen, embedded (frame index)
    LABELS = "labels"  # the top image labels, embedded (frame index)
    IMAGE = "image"  # an image-text model's image embedding (frame index)
    MEAN = "mean"  # the mean-key baseline (one key per chunk)
    SPEECH = "speech"  # what was said in the chunk (audio transcribed, encoders.speech), embedded like "ocr"

    @property
    def frame_index(self) -> bool:
        """Produced by the frame describer and stored with the chunk as `d:<signal>`."""
        return self in FRAME_INDEX


SIGNALS = tuple(Signal)  # every signal, in the order rankings are fused and listed
# stored with the chunk as `d:<signal>`: the frame describer's, in the order it makes them, then the transcript's
FRAME_INDEX = (Signal.OCR, Signal.LABELS, Signal.IMAGE, Signal.SPEECH)
