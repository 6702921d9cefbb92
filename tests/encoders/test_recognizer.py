"""The recognizer (encoders/speech.py, issue 24) on real espeak-ng speech with the real Whisper tiny.en weights:
word times on the media clock, silence skipped, an utterance never cut by a window's edge, the search vector."""
from __future__ import annotations

import numpy as np
import pytest

from encoders.speech import RATE, SpeechOptions, SpeechWindow, transcript_text
from testkit import media

TEXT = "Please send an ambulance to the parking garage."


@pytest.fixture(scope="module")
def voice(tmp_path_factory) -> np.ndarray:
    """[n] float32 16 kHz: espeak-ng saying TEXT."""
    import av

    from streamer.audio import Resampler

    wav = media.espeak_wav(TEXT, tmp_path_factory.mktemp("speech") / "u.wav")
    with av.open(str(wav)) as c:
        r = Resampler()
        return np.concatenate([r(f) for f in c.decode(audio=0)])


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.RandomState(seed).randn(int(seconds * RATE)) * 0.003).astype(np.float32)


def test_words_land_on_the_media_clock(transcriber, voice):
    audio = np.concatenate([noise(2.0), voice, noise(1.0)])
    segs, done = transcriber.transcribe(audio, 100.0)
    text = transcript_text(segs).lower()
    assert "ambulance" in text and "garage" in text
    assert done == pytest.approx(100.0 + len(audio) / RATE)
    words = [w for s in segs for w in s.words]
    assert abs(words[0].start_s - 102.0) < 0.8 and words[-1].end_s <= 100.0 + len(audio) / RATE
    assert all(a.start_s <= b.start_s for a, b in zip(words, words[1:]))


def test_silence_says_nothing(transcriber):
    segs, done = transcriber.transcribe(noise(8.0), 5.0)
    assert segs == [] and done == pytest.approx(13.0)


def test_speech_running_past_the_end_waits_for_the_rest(transcriber, voice):
    half = len(voice) // 2
    head = np.concatenate([noise(2.0), voice[:half]])
    segs, done = transcriber.transcribe(head, 0.0, final=False)
    assert segs == [] and done <= 2.1  # nothing of the cut utterance is emitted; done stops before it
    rest = np.concatenate([head[int(done * RATE):], voice[half:], noise(1.0)])
    segs, _ = transcriber.transcribe(rest, done, final=False)
    assert "ambulance" in transcript_text(segs).lower() and "garage" in transcript_text(segs).lower()


def test_the_transcript_vector_meets_a_question_about_it(transcriber):
    said = transcriber.embed("Please send an ambulance to the parking garage.")
    q = transcriber.embed_query("When did someone call for an ambulance?")["speech"]
    other = transcriber.embed("The package was delivered to the front desk.")
    assert said.dtype == np.float32 and abs(float(np.linalg.norm(said)) - 1) < 1e-5
    assert float(q @ said) > float(q @ other) + 0.1
    assert transcriber.embed("") is None


def test_the_window_fills_short_holes_and_forgets_what_was_heard():
    w = SpeechWindow()
    w.add(10.0, np.ones(RATE, np.float32))
    assert w.fits(11.5) and not w.fits(14.0)
    w.add(11.5, np.ones(RATE, np.float32))  # a 0.5 s hole: silence
    assert w.duration_s == pytest.approx(2.5) and w.samples()[RATE:RATE + RATE // 2].max() == 0.0
    w.drop_before(11.0)
    assert w.start_s == pytest.approx(11.0) and w.duration_s == pytest.approx(1.5)
    w.drop_before(99.0)
    assert w.n == 0 and w.samples().size == 0


def test_options_are_bounded():
    with pytest.raises(ValueError):
        SpeechOptions(window_s=40.0)
    with pytest.raises(ValueError):
        SpeechOptions(threads=0)
