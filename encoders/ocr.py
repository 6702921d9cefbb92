"""On-screen text: PP-OCRv4 detection + recognition (the ONNX models inside `rapidocr-onnxruntime`).

`OcrReader.read(frame)` returns the text lines of one RGB frame in reading order, each with the
recogniser's confidence (mean character probability) and its box in frame pixels; lines under the
confidence floor, or with fewer than `min_chars` letters/digits, are dropped. `merge_lines` joins the
lines of several frames of a chunk: duplicates (same letters and digits, ignoring case, spaces and
punctuation) are kept once, at their first position, in their most confident reading.

Detection runs at the frame's own size up to `max_side` (larger frames are scaled down, smaller ones
are never scaled up: upscaling a 448-pixel frame to the library's default 736-pixel short side costs
~8x for text that is too small to read anyway). The direction classifier is skipped (video overlays
are upright). ONNX Runtime runs with `threads` intra-op threads, no inter-op pool and no spin-waiting,
so it stays out of the way of the model it runs beside.

Install: `pip install --no-deps rapidocr-onnxruntime==1.4.4` plus `onnxruntime opencv-python-headless
pyclipper shapely pyyaml six` (the wheel asks for `opencv-python`, the GUI build, which is not needed).
"""
from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass

import numpy as np

PACKAGE = "rapidocr-onnxruntime"
_ALNUM = re.compile(r"[\W_]+", re.UNICODE)


@dataclass(frozen=True)
class FrameText:
    """One line of on-screen text: what was read, the recogniser's confidence (0..1), the index of the
    frame it was read in (among the frames given to `merge_lines`) and its box (x0, y0, x1, y1)."""

    text: str
    confidence: float
    frame: int = 0
    box: tuple[int, int, int, int] = (0, 0, 0, 0)


def line_key(text: str) -> str:
    """What makes two readings the same line: letters and digits only, case-folded."""
    return _ALNUM.sub("", text.casefold())


def reading_order(lines: list[FrameText]) -> list[FrameText]:
    """Top to bottom, then left to right within a row (boxes whose vertical centres are within half a
    line height of the row's first box share the row)."""
    if len(lines) < 2:
        return list(lines)
    by_top = sorted(lines, key=lambda ln: ((ln.box[1] + ln.box[3]) / 2, ln.box[0]))
    rows: list[list[FrameText]] = []
    row_cy = row_h = 0.0
    for ln in by_top:
        cy, h = (ln.box[1] + ln.box[3]) / 2, max(1, ln.box[3] - ln.box[1])
        if rows and abs(cy - row_cy) < 0.5 * min(h, row_h):
            rows[-1].append(ln)
        else:
            rows.append([ln])
            row_cy, row_h = cy, h
    return [ln for row in rows for ln in sorted(row, key=lambda ln: ln.box[0])]


def merge_lines(per_frame: list[list[FrameText]]) -> tuple[FrameText, ...]:
    """Lines of several frames -> one de-duplicated list: frame order, reading order within a frame;
    a line seen again keeps its first position and takes the more confident reading."""
    merged: dict[str, FrameText] = {}
    for lines in per_frame:
        for ln in lines:
            key = line_key(ln.text)
            if not key:
                continue
            seen = merged.get(key)
            if seen is None:
                merged[key] = ln
            elif ln.confidence > seen.confidence:
                merged[key] = ln  # dict keeps the first insertion position
    return tuple(merged.values())


def version() -> str:
    return importlib.metadata.version(PACKAGE)


class OcrReader:
    """PP-OCRv4 det + rec on RGB uint8 frames. Load once (`load_ocr`); `read` does no I/O or logging."""

    def __init__(self, engine, *, floor: float, min_chars: int, max_side: int):
        self._engine = engine
        self.floor = float(floor)
        self.min_chars = int(min_chars)
        self.max_side = int(max_side)

    @property
    def sessions(self) -> list:
        """The ONNX Runtime sessions (det, cls, rec)."""
        return [h.session for h in _holders(self._engine)]

    def read(self, frame: np.ndarray, index: int = 0) -> list[FrameText]:
        """Text lines of one RGB frame, in reading order (`index` is recorded in each line)."""
        bgr = np.ascontiguousarray(frame[..., ::-1])  # the engine takes OpenCV's channel order
        result, _ = self._engine(bgr, use_cls=False)
        lines = []
        for box, text, score in result or ():
            text = " ".join(str(text).split())
            score = float(score)
            if score < self.floor or len(line_key(text)) < self.min_chars:
                continue
            pts = np.asarray(box, dtype=np.float32).reshape(-1, 2)
            x0, y0 = np.floor(pts.min(0)).astype(int)
            x1, y1 = np.ceil(pts.max(0)).astype(int)
            lines.append(FrameText(text, score, index, (int(x0), int(y0), int(x1), int(y1))))
        return reading_order(lines)


def _holders(engine) -> list:
    """rapidocr's session wrappers (det and cls keep theirs in `.infer`, rec in `.session`)."""
    import onnxruntime as ort

    out = []
    for part in (engine.text_det, engine.text_cls, engine.text_rec):
        for attr in ("infer", "session"):
            holder = getattr(part, attr, None)
            if isinstance(getattr(holder, "session", None), ort.InferenceSession):
                out.append(holder)
                break
    return out


def _quiet_session(old, threads: int):
    """The same ONNX model in a session with `threads` intra-op threads, sequential execution and no
    spin-waiting (rapidocr's own options only set the thread counts). Falls back to `old`."""
    import onnxruntime as ort

    path = getattr(old, "_model_path", None)
    if not path:
        return old
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.enable_cpu_mem_arena = False  # as rapidocr sets it: input sizes vary from frame to frame
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def load_ocr(*, threads: int = 1, floor: float = 0.6, min_chars: int = 2, max_side: int = 960) -> OcrReader:
    """Build the reader (raises ImportError when the packages are missing)."""
    from rapidocr_onnxruntime import RapidOCR

    threads = max(1, int(threads))
    engine = RapidOCR(
        intra_op_num_threads=threads, inter_op_num_threads=1,
        det_limit_type="max", det_limit_side_len=int(max_side),
        text_score=0.0,  # the reader applies its own floor
    )
    for holder in _holders(engine):
        holder.session = _quiet_session(holder.session, threads)
    return OcrReader(engine, floor=floor, min_chars=min_chars, max_side=max_side)
