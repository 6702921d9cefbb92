"""A clip's transcript enters the language model's context after its visual tokens (issue 24): the KV of a clip
with a transcript equals the model's own forward on the same tokens, for every video family."""
from __future__ import annotations

from tests.encoders import family_checks as fc


def test_clip_transcript_kv_equals_forward_qwen2_5_vl(tiny_adapter):
    assert tiny_adapter.spec.family == "qwen2_5_vl"
    fc.check_clip_with_speech_kv_equals_forward(tiny_adapter)


def test_no_transcript_adds_no_tokens(tiny_adapter):
    assert tiny_adapter._speech_ids("") == [] and tiny_adapter._speech_ids("   ") == []
    long = " ".join(["word"] * 500)
    assert len(tiny_adapter._speech_ids(long)) <= tiny_adapter.speech_tokens + 8  # bounded
