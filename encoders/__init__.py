"""Model adapters: frames -> visual tokens -> language-model KV; question -> answer tokens.

One file per model family. `load_adapter` is the only entry point the services use.
"""
from encoders.base import EncodedSegment, ModelSpec, VideoLM
from encoders.loading import ModelUnavailable, load_adapter

__all__ = ["EncodedSegment", "ModelSpec", "VideoLM", "ModelUnavailable", "load_adapter"]
