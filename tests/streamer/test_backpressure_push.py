"""The decode -> encode hand-over (pacing, even drops) and the pushed-bytes feed, with real threads and PyAV."""
from __future__ import annotations

import threading
import time
from queue import Empty

import numpy as np
import pytest

from streamer.backpressure import FrameQueue, thin_to_stride
from streamer.push import ByteFeed, FeedClosed
from streamer.source import AvSource, FileSource


def is_frame(x) -> bool:
    return isinstance(x, int)


def test_thin_to_stride_keeps_multiples_and_controls():
    items = ["a", "b", "gap", "c", "d", "e"]
    kept, seqs, dropped = thin_to_stride(items, [4, 6, None, 8, 10, 12], 4)
    assert kept == ["a", "gap", "c", "e"] and seqs == [4, None, 8, 12] and dropped == 2


def test_live_queue_never_blocks_and_keeps_frames_spread_evenly():
    q = FrameQueue(8, live=True, is_frame=is_frame)
    stop = threading.Event()
    t0 = time.monotonic()
    for i in range(1000):
        assert q.put(i, stop)
    q.put("end", stop)  # control items are never dropped
    assert time.monotonic() - t0 < 1.0  # nothing waited
    stride = q.stride
    items = []
    while True:
        try:
            items.append(q.get(timeout=0.01))
        except Empty:
            break
    frames = [x for x in items if is_frame(x)]
    assert items[-1] == "end"
    assert q.dropped == 1000 - len(frames)
    assert len(frames) <= 9
    # evenly: the survivors are equally spaced (one in `stride`) and reach the newest stride
    assert stride >= 1000 // 8
    assert set(np.diff(frames)) == {stride}
    assert frames[-1] >= 1000 - stride


def test_live_queue_keeps_everything_when_the_consumer_keeps_up_and_recovers_after_a_stall():
    q = FrameQueue(8, live=True, is_frame=is_frame)
    stop = threading.Event()
    for i in range(100):  # consumer keeps up: nothing dropped
        q.put(i, stop)
        assert q.get(timeout=1) == i
    assert q.dropped == 0
    for i in range(100, 140):  # a stall: the stride grows
        q.put(i, stop)
    assert q.stride > 1 and q.dropped > 0
    while True:
        try:
            q.get(timeout=0.01)
        except Empty:
            break
    assert q.stride < 4  # drained: it keeps more again
    before = q.dropped
    for i in range(140, 160):
        q.put(i, stop)
        q.get(timeout=1)
    assert q.dropped - before <= 10


def test_paced_queue_waits_for_the_consumer_and_drops_nothing():
    q = FrameQueue(4, live=False, is_frame=is_frame)
    stop = threading.Event()
    got = []

    def consume():
        for _ in range(50):
            got.append(q.get(timeout=5))
            time.sleep(0.002)

    t = threading.Thread(target=consume)
    t.start()
    for i in range(50):
        assert q.put(i, stop)
        assert len(q) <= 4
    t.join(10)
    assert got == list(range(50)) and q.dropped == 0


def test_paced_put_gives_up_when_stopped():
    q = FrameQueue(2, live=False, is_frame=is_frame)
    stop = threading.Event()
    q.put(0, stop), q.put(1, stop)
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    assert q.put(2, stop) is False
    assert time.monotonic() - t0 < 2


def test_feed_round_trip_and_backpressure():
    feed = ByteFeed(max_bytes=100)
    data = bytes(range(256)) * 10
    out = bytearray()

    def reader():
        while block := feed.read(37):
            out.extend(block)
            time.sleep(0.001)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(0, len(data), 50):
        feed.write(data[i:i + 50])
        assert feed._size <= 150  # a writer waits once the buffer is full
    feed.close()
    t.join(10)
    assert bytes(out) == data and feed.received == len(data)


def test_feed_abort_fails_the_reader_and_reader_done_refuses_the_writer():
    feed = ByteFeed()
    feed.write(b"abc")
    feed.abort("client went away")
    assert feed.read(10) == b"abc"
    with pytest.raises(OSError, match="client went away"):
        feed.read(10)
    feed2 = ByteFeed(max_bytes=10)
    feed2.reader_done()
    with pytest.raises(FeedClosed):
        feed2.write(b"x")


@pytest.mark.parametrize("fmt, muxer_args", [
    ("mpegts", ["-f", "mpegts"]),
    ("mp4", ["-movflags", "frag_keyframe+empty_moov+default_base_moof", "-f", "mp4"]),  # fragmented MP4
])
def test_pyav_decodes_a_pushed_container_from_a_feed_like_the_file(tmp_path, bikes, fmt, muxer_args):
    import subprocess

    ts = tmp_path / f"bikes.{fmt}"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(bikes), "-c", "copy", "-an", *muxer_args, str(ts)], check=True)
    with FileSource(ts) as src:
        expected = [(round(f.time_s, 4), int(f.frame.to_ndarray(format="gray").sum())) for f in src.frames()]
    feed = ByteFeed(max_bytes=64 * 1024)

    def writer():
        blob = ts.read_bytes()
        for i in range(0, len(blob), 10_000):
            feed.write(blob[i:i + 10_000])
        feed.close()

    threading.Thread(target=writer, daemon=True).start()
    with AvSource(feed, "push:test", format=fmt) as src:
        got = [(round(f.time_s, 4), int(f.frame.to_ndarray(format="gray").sum())) for f in src.frames()]
    assert got == expected and len(got) == 250
