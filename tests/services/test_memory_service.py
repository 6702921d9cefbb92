"""The memory through the real gRPC service: needle retrieval, chunk formats, retention, bad options."""
from __future__ import annotations

import io

import av
import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from memory.store import StreamRecord
from services.wire import ingest_pb2
from services.client import Client, state_name
from tests.conftest import wait_done

FPS = 1.0
CLIP = 4
SECONDS = 64
NEEDLES = {12: "red disc", 36: "green stripes", 52: "yellow checks"}  # start second -> content; 4 s each


def needle_frame(kind: str, seed: int) -> np.ndarray:
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:96, 0:128]
    img = np.zeros((96, 128, 3), np.float32)
    if kind == "red disc":
        img[:] = (20, 20, 160)
        img[(yy - 48) ** 2 + (xx - 64) ** 2 < 30 ** 2] = (230, 30, 30)
    elif kind == "green stripes":
        img[:] = (240, 240, 240)
        img[(xx // 8) % 2 == 0] = (20, 200, 40)
    else:
        img[:] = np.where((((yy // 12) + (xx // 12)) % 2 == 0)[..., None], (250, 230, 20), (30, 30, 30))
    return np.clip(img + rs.randint(-6, 6, img.shape), 0, 255).astype(np.uint8)


def background_frame(second: int, seed: int) -> np.ndarray:
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:96, 0:128]
    g = 110 + 30 * np.sin(xx / 17.0 + second * 0.3) * np.cos(yy / 13.0)
    return np.clip(g[..., None] + rs.randint(-25, 25, (96, 128, 3)), 0, 255).astype(np.uint8)


def needle_at(second: int) -> str | None:
    for start, kind in NEEDLES.items():
        if start <= second < start + 4:
            return kind
    return None


@pytest.fixture(scope="module")
def needle_video(tmp_path_factory):
    """A real MPEG-4 file (2 fps): textured grey footage with three 4-second needle scenes."""
    path = tmp_path_factory.mktemp("needles") / "needles.mp4"
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=2)
        s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
        s.bit_rate = 2_000_000
        for i in range(SECONDS * 2):
            second = i // 2
            kind = needle_at(second)
            img = needle_frame(kind, i) if kind else background_frame(second, i)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return path


def jpeg_of(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_needles_are_retrieved_by_their_own_content(make_server, needle_video):
    """A still of each needle (rendered afresh, not a stored frame) retrieves the needle's chunk in the top 3,
    out of 16+ chunks of similar-looking background. (The tiny model's text questions cannot carry visual
    meaning: its weights are random; an example image lives in the clips' own key space.)"""
    _, addr = make_server(media_roots=(needle_video.parent,))
    with Client(addr) as c:
        info = wait_done(c, c.start(str(needle_video), fps=FPS, clip_frames=CLIP).stream_id)
        assert info.chunks >= 16
        for start, kind in NEEDLES.items():
            resp = c.ask(info.stream_id, "When did this appear?", top_k=3,
                         example_image=jpeg_of(needle_frame(kind, seed=999)))
            spans = [(e.start_s, e.end_s) for e in resp.evidence]
            assert any(a < start + 4 and b > start for a, b in spans), (kind, spans)
        with pytest.raises(grpc.RpcError) as err:
            c.ask(info.stream_id, "When?", example_image=b"GIF89a not really")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def memory(**kw) -> ingest_pb2.MemoryOptions:
    return ingest_pb2.MemoryOptions(**kw)


def test_chunk_formats_answer_and_cost_what_the_layout_says(make_server, needle_video):
    srv, addr = make_server(media_roots=(needle_video.parent,))
    layout = srv.rt.store.layout
    infos = {}
    with Client(addr) as c:
        for name, opts in {"kv": memory(chunk_tokens=16),
                           "int8": memory(chunk_tokens=16, kv_int8=True),
                           "features": memory(chunk_tokens=16, chunk_format=ingest_pb2.CHUNK_FORMAT_FEATURES)}.items():
            info = wait_done(c, c.start(str(needle_video), fps=FPS, clip_frames=CLIP, memory=opts).stream_id)
            assert state_name(info.state) == "finished", info.error
            resp = c.ask(info.stream_id, "What happened?", top_k=3, max_new_tokens=4)
            assert len(resp.evidence) == 3
            infos[name] = info
    assert infos["int8"].memory.kv_int8 and infos["features"].memory.chunk_format == ingest_pb2.CHUNK_FORMAT_FEATURES
    store = srv.rt.store
    payload = {"kv": layout.token_set_bytes(16), "int8": layout.token_set_bytes(16, int8=True),
               "features": layout.feature_bytes(16)}
    blobs = {}
    for k, info in infos.items():
        sizes = {store.r.hstrlen(store._chunk_key(info.stream_id, c), "kv") for c in store.chunk_ids(info.stream_id)}
        assert len(sizes) == 1  # every chunk the same size
        blobs[k] = sizes.pop()
        assert payload[k] < blobs[k] < payload[k] + 2048, (k, blobs[k], payload[k])  # + the JSON header
    assert blobs["features"] < blobs["int8"] < blobs["kv"]


def test_retention_keeps_a_stream_under_its_byte_limit_by_consolidating(make_server, needle_video):
    srv, addr = make_server(media_roots=(needle_video.parent,))
    with Client(addr) as c:
        probe = wait_done(c, c.start(str(needle_video), fps=FPS, clip_frames=CLIP,
                                     memory=memory(chunk_tokens=16)).stream_id)
        one = probe.chunk_bytes // probe.chunks
        limit = 6 * one
        info = wait_done(c, c.start(str(needle_video), fps=FPS, clip_frames=CLIP,
                                    memory=memory(chunk_tokens=16, max_bytes=limit)).stream_id)
        assert info.chunk_bytes <= limit < probe.chunk_bytes
        assert info.consolidated_chunks > 0 and info.memory.max_bytes == limit
        assert info.bytes_per_hour == pytest.approx(probe.bytes_per_hour, rel=0.02)  # written, not kept
        resp = c.ask(info.stream_id, "What happened first?", top_k=8, max_new_tokens=4)
        assert resp.evidence[0].start_s == 0.0  # the oldest footage survives, coarser
        assert resp.evidence[0].end_s - resp.evidence[0].start_s > 2 * CLIP
        deleting = wait_done(c, c.start(str(needle_video), fps=FPS, clip_frames=CLIP, memory=memory(
            chunk_tokens=16, max_bytes=limit, retention=ingest_pb2.RETENTION_MODE_DELETE)).stream_id)
        assert deleting.deleted_chunks > 0 and deleting.consolidated_chunks == 0
        assert c.ask(deleting.stream_id, "What happened?", top_k=8).evidence[0].start_s > 0.0


@pytest.mark.parametrize("opts,needle", [
    (memory(chunk_tokens=0), "chunk_tokens"),
    (memory(kv_int8=True, chunk_format=ingest_pb2.CHUNK_FORMAT_FEATURES), "kv_int8"),
    (memory(working_tokens=1 << 21), "working_tokens"),
])
def test_bad_memory_options_are_refused_before_a_stream_exists(make_server, needle_video, opts, needle):
    _, addr = make_server(media_roots=(needle_video.parent,))
    with Client(addr) as c:
        with pytest.raises(grpc.RpcError) as err:
            c.start(str(needle_video), fps=FPS, clip_frames=CLIP, memory=opts)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details()
        assert c.list() == []


def test_redundancy_weight_reaches_the_working_memory_through_the_service(make_server, needle_video):
    """VIGIL_MEMORY__REDUNDANCY_WEIGHT is a server setting: the same footage through a server with it and one
    without gives working memories of the same budget that keep different tokens."""
    from memory.options import MemoryOptions

    kept = {}
    for weight in (0.0, 0.5):
        srv, addr = make_server(media_roots=(needle_video.parent,),
                                memory=MemoryOptions(working_tokens=64, redundancy_weight=weight))
        with Client(addr) as c:
            info = wait_done(c, c.start(str(needle_video), fps=FPS, clip_frames=CLIP).stream_id)
            assert state_name(info.state) == "finished", info.error
            assert info.memory.working_tokens == 64 and info.working_memory_tokens == 64
            assert info.memory.redundancy_weight == weight and info.memory.HasField("redundancy_window")
            assert c.ask(info.stream_id, "What happened?", top_k=2, max_new_tokens=2).evidence
        kept[weight] = srv.rt.store.get_working(info.stream_id).tokens.serial
        rec = srv.rt.store.get_stream(info.stream_id)
        # the stream keeps the scoring it started with, whatever the server that resumes it is set to
        assert (rec.memory.redundancy_weight, rec.memory.redundancy_window) == (weight, 256)
    assert kept[0.0].shape == kept[0.5].shape and not torch.equal(kept[0.0], kept[0.5])


def test_a_record_from_before_the_scoring_fields_keeps_attention_alone():
    """Streams stored before redundancy existed resume with the scoring they were started with."""
    import json

    # the flat memory fields a record had before the scoring fields (and before `memory` was one field)
    flat = {"policy": "attention", "working_tokens": 64, "chunk_tokens": 8, "chunk_format": "kv", "kv_int8": False,
            "max_bytes": 0, "max_age_s": 0.0, "retention_mode": "consolidate"}
    new = StreamRecord(stream_id="old1", source="x.mp4").to_hash()
    h = {k.encode(): v.encode() for k, v in {**new, **{k: json.dumps(v) for k, v in flat.items()}}.items()
         if k != "memory"}
    pol = StreamRecord.from_hash(h).memory
    assert (pol.working_tokens, pol.chunk_tokens) == (64, 8)
    assert (pol.redundancy_weight, pol.prototypes, pol.novelty_weight) == (0.0, True, 1.0)
