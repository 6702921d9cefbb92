"""One JSON rendering of the API's messages (`services.client.as_json`): what `vigil ... --json` prints and the HTTP
API serves. Its rules, on messages built by hand (tests/http/test_api.py checks the two agree on a real server)."""
from __future__ import annotations

import base64

from services.client import as_json
from services.wire import common_pb2, ingest_pb2, qa_pb2


def test_enums_numbers_and_unset_fields():
    info = ingest_pb2.StreamInfo(stream_id="s", state=ingest_pb2.STREAM_STATE_FINISHED,
                                 kind=ingest_pb2.SOURCE_KIND_PUSH, frames=2**40, chunks=3)
    d = as_json(info)
    assert d["state"] == "finished" and d["kind"] == "push"  # the value's name, no prefix, lower case
    assert d["frames"] == 2**40 and type(d["frames"]) is int  # 64-bit integers stay numbers
    assert d["error"] == "" and d["gaps"] == [] and d["memory"] is None  # defaults; an unset message: null
    assert set(d) == {f.name for f in ingest_pb2.StreamInfo.DESCRIPTOR.fields}  # every field, by its .proto name
    ev = as_json(ingest_pb2.StreamEvent(kind=ingest_pb2.StreamEvent.KIND_SNAPSHOT, info=info))
    assert ev["kind"] == "snapshot" and ev["info"] == d and ev["gap"] is None and ev["alert"] is None
    alert = as_json(ingest_pb2.Alert(id="a"))
    assert alert["chunk_id"] is None  # an `optional` field not set: null, not 0
    assert as_json(ingest_pb2.Alert(id="a", chunk_id=0))["chunk_id"] == 0


def test_floats_times_windows_and_bytes():
    gap = as_json(common_pb2.Gap(start_s=1.5, end_s=float("inf"), wall_start_unix=1.7e9, reason="feed down"))
    assert gap == {"start_s": 1.5, "end_s": None, "wall_start_unix": 1.7e9, "wall_end_unix": None,
                   "reason": "feed down"}  # an open gap's end and an unknown wall time: null
    e = qa_pb2.Evidence(chunk_id=4, score=0.8, keyframe_jpeg=b"\xff\xd8\xff",
                        signals=[qa_pb2.SignalScore(signal="kv", rank=1, score=2.5892367362976074)])
    d = as_json(e)
    assert d["score"] == 0.8 and d["signals"][0]["score"] == 2.5892367  # a float32's own digits
    assert base64.b64decode(d["keyframe_jpeg_b64"]) == b"\xff\xd8\xff" and "keyframe_jpeg" not in d
    assert "keyframe_jpeg_b64" not in as_json(qa_pb2.Evidence(chunk_id=4))  # no bytes, no field
    resp = as_json(qa_pb2.AskResponse(answer="x", searched_window=qa_pb2.TimeWindow(start_s=6),
                                      window_source=qa_pb2.WINDOW_SOURCE_QUESTION, window_phrase="after 0:06"))
    assert resp["searched_window"] == {"start_s": 6.0, "end_s": None, "source": "question", "phrase": "after 0:06"}
    assert "window_source" not in resp and "window_phrase" not in resp


def test_a_oneof_renders_its_set_member_only():
    assert as_json(qa_pb2.AskStreamResponse(delta=qa_pb2.AnswerDelta(text="hi"))) == {"delta": {"text": "hi"}}
    d = as_json(qa_pb2.SummarizeResponse(progress=qa_pb2.SummaryProgress(segment=1, segments=2, stage="segment"),
                                         model="tiny", random_weights=True))
    assert d == {"progress": {"segment": 1, "segments": 2, "stage": "segment"}, "model": "tiny",
                 "random_weights": True}


def test_memory_options_by_option_name():
    from memory.options import MemoryOptions, option_names
    from services import memory_wire

    d = as_json(ingest_pb2.StreamInfo(memory=memory_wire.to_proto(MemoryOptions())))["memory"]
    assert set(d) == set(option_names()) and d["retention_mode"] == MemoryOptions().retention_mode
