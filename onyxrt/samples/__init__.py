"""The sample model shipped with onyxrt: a small CNN that reads 8x8 handwritten digits.

``digits.onnx`` was trained by ``tools/train_sample_model.py`` on scikit-learn's
``load_digits``. Its input ``image`` is float32 ``[N, 1, 8, 8]`` with pixel
intensities 0..16; its output ``probabilities`` is float32 ``[N, 10]`` over the
digits 0..9. ``digits_samples.npz`` holds a few held-out test images with their
true labels and the probabilities onnxruntime computed for each, so a run can be
checked against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CLASS_NAMES", "INPUT_NAME", "OUTPUT_NAME", "Sample", "load_samples", "model_path", "render"]

CLASS_NAMES: tuple[str, ...] = tuple(str(digit) for digit in range(10))
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"

_HERE = Path(__file__).resolve().parent
_MODEL_FILE = "digits.onnx"
_SAMPLES_FILE = "digits_samples.npz"
_PIXEL_MAX = 16.0  # load_digits intensities run 0..16
_SHADES = " .:-=+*#%@"


@dataclass(frozen=True)
class Sample:
    """One held-out test image: feeds for the model, its true digit and onnxruntime's output for it."""

    name: str
    feeds: dict[str, np.ndarray]
    label: int
    expected_probabilities: np.ndarray


def model_path() -> Path:
    """Path of the bundled digit classifier ``digits.onnx``."""
    path = _HERE / _MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"onyxrt's sample model is missing: {path} (package installed without its data?)")
    return path


def load_samples() -> list[Sample]:
    """The bundled test images, each as a batch of one ready for ``session.run(None, sample.feeds)``."""
    path = _HERE / _SAMPLES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"onyxrt's sample inputs are missing: {path} (package installed without its data?)")
    with np.load(path, allow_pickle=False) as data:
        names, images, labels, probabilities = data["names"], data["images"], data["labels"], data["probabilities"]
    return [
        Sample(
            name=str(name),
            feeds={INPUT_NAME: np.ascontiguousarray(image[None], dtype=np.float32)},
            label=int(label),
            expected_probabilities=np.asarray(row, dtype=np.float32),
        )
        for name, image, label, row in zip(names, images, labels, probabilities)
    ]


def render(image: np.ndarray) -> str:
    """An 8x8 digit image (any shape that squeezes to two dimensions) as lines of ASCII shades.

    Intensities are read on load_digits' 0..16 scale (brighter images are scaled
    to their own maximum); each pixel is two characters wide so the digit keeps
    its aspect ratio in a terminal. Every line has the same width, so the result
    can be laid out beside other text.
    """
    pixels = np.asarray(image, dtype=np.float64)
    pixels = pixels.reshape([d for d in pixels.shape if d != 1] or [1])
    if pixels.ndim != 2:
        raise ValueError(f"render needs a 2-D image (extra axes of size 1 are allowed); got shape {np.shape(image)}")
    top = max(_PIXEL_MAX, float(np.nanmax(pixels)) if pixels.size else 0.0)
    levels = np.clip(np.nan_to_num(pixels / top) * (len(_SHADES) - 1) + 0.5, 0, len(_SHADES) - 1).astype(int)
    return "\n".join("".join(_SHADES[level] * 2 for level in row) for row in levels)
