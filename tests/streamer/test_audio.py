"""The audio track decoded beside the video (streamer/audio.py, issue 24): on the video's clock, 16 kHz mono
float32, bounded and never blocking; a stream without audio decodes exactly as before."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from streamer.audio import RATE, AudioBuffer, AudioChunk
from streamer.source import FileSource
from testkit import media

SAID = [(3.0, "Please send an ambulance to the parking garage.")]


@pytest.fixture(scope="module")
def spoken():
    return media.spoken_footage(SAID, 12)


def decode(path, audio=None, after_s=None):
    with FileSource(path) as src:
        return [(f.time_s, f.rgb().tobytes()) for f in src.frames(after_s=after_s, audio=audio)]


def loud_seconds(chunks) -> list[int]:
    x = np.concatenate([c.samples for c in chunks])
    start = chunks[0].start_s
    return [int(round(start + i)) for i in range(int(len(x) / RATE)) if np.abs(x[i * RATE:(i + 1) * RATE]).max() > 0.1]


def test_audio_comes_on_the_video_clock_as_16k_mono_float(spoken):
    buf = AudioBuffer(1000)
    frames = decode(spoken, buf)
    chunks = buf.take(0)
    assert buf.has_audio is True and frames[0][0] == 0.0
    assert all(c.samples.dtype == np.float32 and c.samples.ndim == 1 for c in chunks)
    assert abs(chunks[0].start_s) < 0.05 and abs(chunks[-1].end_s - 12.0) < 0.1  # the video's 12 s
    assert all(b.start_s >= a.start_s for a, b in zip(chunks, chunks[1:]))
    loud = loud_seconds(chunks)
    assert loud and loud[0] == 3 and loud[-1] <= 6  # the voice is where it was mixed in


def test_video_frames_are_the_same_with_or_without_the_audio_decoded(spoken):
    assert decode(spoken, AudioBuffer()) == decode(spoken)


def test_a_file_without_audio_says_so_and_decodes_as_before(spoken):
    silent = media.spoken_footage(SAID, 12, audio=False)
    buf = AudioBuffer()
    assert decode(silent, buf) == decode(silent) and buf.has_audio is False and buf.take(0) == []
    assert [t for t, _ in decode(silent)] == [t for t, _ in decode(spoken)]


def test_resuming_after_a_point_skips_the_audio_before_it(spoken):
    buf = AudioBuffer(1000)
    frames = decode(spoken, buf, after_s=5.0)
    chunks = buf.take(0)
    assert frames[0][0] > 5.0 and chunks[0].end_s > 5.0 and chunks[0].start_s > 4.9


def test_the_buffer_never_blocks_and_drops_its_oldest_audio():
    buf = AudioBuffer(max_s=2.0)
    t0 = time.monotonic()
    for i in range(40):  # 20 s offered, no reader
        buf.put(AudioChunk(i * 0.5, np.zeros(RATE // 2, np.float32)))
    assert time.monotonic() - t0 < 5.0
    held = buf.take(0)
    assert sum(len(c.samples) for c in held) / RATE <= 2.0 and held[-1].start_s == 19.5  # the newest kept
    assert buf.dropped_s == pytest.approx(18.0) and buf.received_s == pytest.approx(20.0)
    got = []
    reader = threading.Thread(target=lambda: got.append(buf.take(5.0)))
    reader.start()
    buf.close()  # a closed buffer wakes its reader
    reader.join(5)
    assert not reader.is_alive() and got == [[]]
