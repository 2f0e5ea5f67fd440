"""nudenet (a YOLOv8 detector in the wheel, pre- and post-processing with OpenCV) runs unchanged on onyxrt.

The scenes are blurred ellipses drawn with Pillow from fixed seeds: shapes the detector scores
above its 0.2 threshold, so both the single-image and the batched path produce boxes to compare.
"""

import pytest
from drop_in import run_snippet

pytest.importorskip("nudenet")
pytest.importorskip("PIL")

SNIPPET = """
import json
import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from nudenet import NudeDetector

def scene(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (400, 300), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        cx, cy = int(rng.integers(40, 360)), int(rng.integers(40, 260))
        rx, ry = int(rng.integers(30, 90)), int(rng.integers(30, 90))
        tone = float(rng.uniform(0.6, 1.0))
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=(int(230 * tone), int(180 * tone), int(150 * tone)))
        draw.ellipse([cx - 9, cy - 9, cx + 9, cy + 9], fill=(int(150 * tone), int(90 * tone), int(80 * tone)))
    # BGR, as cv2.imread would give
    return np.asarray(image.filter(ImageFilter.GaussianBlur(3)))[:, :, ::-1].copy()

detector = NudeDetector()
scenes = [scene(seed) for seed in range(6)]
single = [detector.detect(image) for image in scenes]
batched = detector.detect_batch(scenes, batch_size=3)
print(json.dumps({"single": single, "batched": batched}))
"""


def assert_detections_match(ours, reference):
    assert len(ours) == len(reference)
    for got_image, want_image in zip(ours, reference):
        assert [d["class"] for d in got_image] == [d["class"] for d in want_image]
        for got, want in zip(got_image, want_image):
            assert got["score"] == pytest.approx(want["score"], abs=1e-4)
            # boxes are ints truncated from float coordinates: allow one pixel either way
            assert got["box"] == pytest.approx(want["box"], abs=1)


def test_nudenet_detections_match_onnxruntime():
    ours = run_snippet(SNIPPET, use_onyxrt=True)
    reference = run_snippet(SNIPPET, use_onyxrt=False)
    assert sum(len(found) for found in reference["single"]) >= 5, "the scenes should give the detector boxes"
    assert_detections_match(ours["single"], reference["single"])
    assert_detections_match(ours["batched"], reference["batched"])
