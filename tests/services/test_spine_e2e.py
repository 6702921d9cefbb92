"""End to end on real parts: a video ingested over gRPC, questions answered from Redis + FAISS."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from services.client import Client, state_name
from streamer.frontend import scored_frames
from streamer.keyframes import SceneDetector
from streamer.sampling import Sampler, build_clips
from streamer.source import FileSource
from tests.conftest import wait_done

FPS = 2.0
CLIP = 4


def reference_clips(video, frame_max_side: int):
    """The clips ingest builds: sampled at FPS, scored, CLIP frames at most, cut-aligned."""
    with FileSource(video) as src:
        frames = scored_frames(src.frames(), Sampler(FPS), SceneDetector(), frame_max_side)
        return list(build_clips(frames, CLIP, 1.0 / FPS))


def reference_generate(adapter, video, question: str, max_new_tokens: int, frame_max_side: int) -> list[int]:
    """The model's own `generate` on every sampled frame of `video` and the question (greedy)."""
    clips = reference_clips(video, frame_max_side)
    ids = adapter.prefix_ids()
    pvs, grids, spgs = [], [], []
    for c in clips:
        pv, grid, spg = adapter.video_inputs(c.frames, FPS)
        ids += adapter.clip_ids(adapter.n_video_tokens(grid), c.start_s, c.end_s)
        pvs.append(pv), grids.append(grid), spgs.append(spg)
    ids += adapter.suffix_ids(question)
    input_ids = torch.tensor([ids])
    model = adapter.model
    out = model.generate(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values_videos=torch.cat(pvs),
        video_grid_thw=torch.cat(grids), second_per_grid_ts=torch.cat(spgs),
        mm_token_type_ids=(input_ids == model.config.video_token_id).int() * 2,
        max_new_tokens=max_new_tokens, do_sample=False,
    )
    return out[0, input_ids.shape[1]:].tolist()


def test_answer_over_grpc_equals_model_generate_on_real_footage(make_server, tiny_adapter, bikes):
    """Exactness: every chunk retrieved, nothing compressed -> the model's own greedy answer."""
    srv, addr = make_server()
    question = "What is happening on the road?"
    with Client(addr) as c:
        info = wait_done(c, c.start(str(bikes), fps=FPS, clip_frames=CLIP).stream_id)
        assert state_name(info.state) == "finished", info.error
        # 10 s of footage at 2 fps, at most 4 frames a clip, clips closed early at the scene cuts
        n_clips = len(reference_clips(bikes, srv.settings.frame_max_side))
        assert info.chunks == n_clips >= 5 and info.frames == 20
        resp = c.ask(info.stream_id, question, top_k=info.chunks, max_new_tokens=24)
    ref = reference_generate(tiny_adapter, bikes, question, 24, srv.settings.frame_max_side)
    eos = tiny_adapter.eos_ids
    ref_text = tiny_adapter.tok.decode([t for t in ref if t not in eos], skip_special_tokens=True).strip()
    assert resp.answer == ref_text
    assert len(resp.answer) > 0
    assert [e.chunk_id for e in resp.evidence] == list(range(n_clips))  # time order
    assert resp.random_weights is True


def test_token_ids_from_redis_memory_equal_generate(make_server, tiny_adapter, pattern_video):
    """Same check at token level, assembling the memory from the store the server wrote: the default
    working memory holds every token of this short stream, so prefix + working memory + chunks
    (copies removed) is the one long prompt."""
    from memory.assemble import answer_memory

    srv, addr = make_server()
    with Client(addr) as c:
        info = wait_done(c, c.start(str(pattern_video), fps=FPS, clip_frames=CLIP).stream_id)
    store = srv.rt.store
    rec = store.get_stream(info.stream_id)
    ids = store.chunk_ids(info.stream_id)
    assert ids == list(range(len(reference_clips(pattern_video, srv.settings.frame_max_side))))
    rows = store.chunk_records(info.stream_id)
    chunks = list(zip(store.chunk_payloads(info.stream_id, ids), [(r.span_start, r.span_end) for r in rows]))
    working = store.get_working(info.stream_id)
    assert working.tokens.length == rows[-1].span_end  # nothing pruned
    memory = answer_memory(store.get_prefix(info.stream_id), working.tokens, chunks, rec.next_pos, rec.max_pos)
    question = "Which colours appear, in order?"
    ours = list(tiny_adapter.answer_ids(memory, question, 32))
    ref = reference_generate(tiny_adapter, pattern_video, question, 32, srv.settings.frame_max_side)
    assert ours == ref


def test_subset_retrieval_keeps_time_order_and_window(make_server, pattern_video):
    _, addr = make_server()
    with Client(addr) as c:
        sid = wait_done(c, c.start(str(pattern_video), fps=FPS, clip_frames=CLIP).stream_id).stream_id
        resp = c.ask(sid, "What is in the middle?", top_k=3, include_keyframes=True)
        starts = [e.start_s for e in resp.evidence]
        assert len(starts) == 3 and starts == sorted(starts)
        assert all(e.keyframe_jpeg[:2] == b"\xff\xd8" for e in resp.evidence)  # JPEG magic
        assert all(e.start_s <= e.keyframe_s < e.end_s for e in resp.evidence)
        windowed = c.ask(sid, "What is in the middle?", top_k=6, window=(4.0, 8.0))
        assert windowed.evidence and all(e.end_s > 4.0 and e.start_s < 8.0 for e in windowed.evidence)
        assert len(windowed.evidence) == 2  # clips [4,6) and [6,8)


def test_faiss_rebuilt_from_redis_after_restart_gives_same_topk(make_server, pattern_video):
    srv, addr = make_server()
    questions = ["red scene", "Where is the square at the end?", "blue"]
    with Client(addr) as c:
        sid = wait_done(c, c.start(str(pattern_video), fps=FPS, clip_frames=CLIP).stream_id).stream_id
        before = [[(e.chunk_id, round(e.score, 5)) for e in c.ask(sid, q, top_k=3).evidence] for q in questions]
    srv.stop_thread()
    _, addr2 = make_server()  # a new process state: empty FAISS, same Redis
    with Client(addr2) as c:
        assert state_name(c.describe(sid).state) == "finished"
        after = [[(e.chunk_id, round(e.score, 5)) for e in c.ask(sid, q, top_k=3).evidence] for q in questions]
    assert after == before
    assert all(len(b) == 3 for b in before)


def test_health_and_reflection(make_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    _, addr = make_server()
    with grpc.insecure_channel(addr) as ch:
        h = health_pb2_grpc.HealthStub(ch)
        for name in ("", "vigil.v1.IngestService", "vigil.v1.QAService"):
            assert h.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
        r = reflection_pb2_grpc.ServerReflectionStub(ch)
        reply = next(iter(r.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))))
        names = {s.name for s in reply.list_services_response.service}
    assert {"vigil.v1.IngestService", "vigil.v1.QAService", "grpc.health.v1.Health"} <= names


def test_auth_token_required_when_configured(make_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    _, addr = make_server(auth_token="s3cret-0123456789abcdef")
    with Client(addr) as anon:
        with pytest.raises(grpc.RpcError) as err:
            anon.list()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with Client(addr, token="wrong") as bad:
        with pytest.raises(grpc.RpcError) as err:
            bad.list()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with Client(addr, token="s3cret-0123456789abcdef") as ok:
        assert ok.list() == []
    with grpc.insecure_channel(addr) as ch:
        assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest()).status == 1


def test_describe_reports_bytes_per_hour(make_server, pattern_video):
    srv, addr = make_server()
    with Client(addr) as c:
        info = wait_done(c, c.start(str(pattern_video), fps=FPS, clip_frames=CLIP).stream_id)
    store, sid = srv.rt.store, info.stream_id
    r = store.r
    # the accounting matches what Redis actually holds
    chunk_sizes = [sum(r.hstrlen(store._chunk_key(sid, c), f) for f in r.hkeys(store._chunk_key(sid, c)) if f != b"meta")
                   for c in store.chunk_ids(sid)]
    assert info.chunk_bytes == sum(chunk_sizes)
    assert info.working_memory_bytes == r.strlen(store._k(sid, "wm")) > 0
    assert info.memory_bytes == info.chunk_bytes + info.working_memory_bytes + r.strlen(store._k(sid, "prefix"))
    assert info.bytes_per_hour == pytest.approx(info.chunk_bytes / info.duration_s * 3600)  # nothing retired
    assert np.isclose(info.duration_s, 12.0)
    m = info.memory  # the defaults the stream runs with are echoed
    assert (m.working_tokens, m.chunk_tokens, m.kv_int8) == (2048, 32, False)


def test_stop_mid_ingest_keeps_chunks_and_leaves_no_thread(make_server, media_dir):
    """StopStream on a running file: state stopped, what was stored stays, the decode thread ends."""
    import threading
    import time

    from testkit import media

    long_video = media.shared_synthetic_video(media_dir / "pattern-90s.mp4", seconds=90, fps=10, scenes=6)
    _, addr = make_server()
    with Client(addr) as c:
        sid = c.start(str(long_video), fps=10, clip_frames=4).stream_id  # 225 clips: seconds of work
        deadline = time.monotonic() + 60
        while c.describe(sid).chunks < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        info = c.stop(sid)
        assert state_name(info.state) == "stopped"
        assert 2 <= info.chunks < 225
        assert len(c.ask(sid, "what was seen before the stop?", top_k=2).evidence) == 2
        time.sleep(0.5)  # the decoder notices the stop within one 0.2 s put timeout
        left = [t.name for t in threading.enumerate() if t.name in (f"decode-{sid}", f"ingest-{sid}")]
        assert left == []
        assert c.describe(sid).chunks == info.chunks  # nothing written after the stop
