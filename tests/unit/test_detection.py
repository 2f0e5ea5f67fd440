"""NonMaxSuppression and RoiAlign kernels."""

from __future__ import annotations

import numpy as np
import pytest

from onyxrt.providers.cpu.nn.detection import non_max_suppression, roi_align, roi_align_10
from onyxrt.providers.cpu.kernel_table import CPU_KERNELS
from reference_ops import reference_output


def test_registered_versions():
    for opset in (10, 11, 22):
        assert CPU_KERNELS.lookup("", "NonMaxSuppression", opset).fn is non_max_suppression
    assert CPU_KERNELS.lookup("", "RoiAlign", 10).fn is roi_align_10
    for opset in (16, 21, 22):
        assert CPU_KERNELS.lookup("", "RoiAlign", opset).fn is roi_align


# --------------------------------------------------------------------------- NonMaxSuppression

_SPEC_BOXES = np.array(
    [[[0.0, 0.0, 1.0, 1.0], [0.0, 0.1, 1.0, 1.1], [0.0, -0.1, 1.0, 0.9],
      [0.0, 10.0, 1.0, 11.0], [0.0, 10.1, 1.0, 11.1], [0.0, 100.0, 1.0, 101.0]]],
    dtype=np.float32,
)  # fmt: skip
_SPEC_SCORES = np.array([[[0.9, 0.75, 0.6, 0.95, 0.5, 0.3]]], dtype=np.float32)


def _i64(v):
    return np.array([v], dtype=np.int64)


def _f32(v):
    return np.array([v], dtype=np.float32)


def test_nms_spec_example():
    out = non_max_suppression(_SPEC_BOXES, _SPEC_SCORES, _i64(3), _f32(0.5), _f32(0.0))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [[0, 0, 3], [0, 0, 0], [0, 0, 5]])
    # score threshold drops box 5 (0.3); limit to 2 boxes
    np.testing.assert_array_equal(
        non_max_suppression(_SPEC_BOXES, _SPEC_SCORES, _i64(2), _f32(0.5), _f32(0.4)), [[0, 0, 3], [0, 0, 0]]
    )


def test_nms_center_point_and_flipped_boxes():
    yx = _SPEC_BOXES[0]
    centre = np.stack(
        [(yx[:, 1] + yx[:, 3]) / 2, (yx[:, 0] + yx[:, 2]) / 2, yx[:, 3] - yx[:, 1], yx[:, 2] - yx[:, 0]], axis=1
    )
    out = non_max_suppression(centre[None], _SPEC_SCORES, _i64(3), _f32(0.5), center_point_box=1)
    np.testing.assert_array_equal(out, [[0, 0, 3], [0, 0, 0], [0, 0, 5]])
    flipped = _SPEC_BOXES[:, :, [2, 3, 0, 1]]
    np.testing.assert_array_equal(non_max_suppression(flipped, _SPEC_SCORES, _i64(3), _f32(0.5)), out)


def test_nms_defaults_empty_and_batches():
    assert non_max_suppression(_SPEC_BOXES, _SPEC_SCORES).shape == (0, 3)
    assert non_max_suppression(_SPEC_BOXES, _SPEC_SCORES, _i64(0)).shape == (0, 3)
    boxes = np.concatenate([_SPEC_BOXES, _SPEC_BOXES])
    scores = np.concatenate([_SPEC_SCORES, _SPEC_SCORES[:, :, ::-1]])
    scores = np.concatenate([scores, scores], axis=1)  # 2 batches x 2 classes
    out = non_max_suppression(boxes, scores, _i64(2), _f32(0.5))
    assert out.shape == (8, 3)
    np.testing.assert_array_equal(out[:, :2], [[0, 0], [0, 0], [0, 1], [0, 1], [1, 0], [1, 0], [1, 1], [1, 1]])
    with pytest.raises(ValueError, match="iou_threshold"):
        non_max_suppression(_SPEC_BOXES, _SPEC_SCORES, _i64(1), _f32(1.5))


def test_nms_ties_and_threshold_boundary():
    boxes = np.array([[[0, 0, 1, 1]] * 4], dtype=np.float32)
    scores = np.full((1, 1, 4), 0.5, dtype=np.float32)
    # identical scores: lowest index first; identical boxes (IoU 1) suppress each other
    np.testing.assert_array_equal(non_max_suppression(boxes, scores, _i64(4), _f32(0.5)), [[0, 0, 0]])
    # IoU exactly 1 is not strictly above threshold 1: everything is kept, by index
    np.testing.assert_array_equal(non_max_suppression(boxes, scores, _i64(4), _f32(1.0))[:, 2], [0, 1, 2, 3])
    # IoU of these two boxes is exactly 0.5
    pair = np.array([[[0, 0, 1, 1], [0, 0, 1, 0.5]]], dtype=np.float32)
    two = np.array([[[0.9, 0.8]]], dtype=np.float32)
    assert non_max_suppression(pair, two, _i64(2), _f32(0.5)).shape == (2, 3)
    assert non_max_suppression(pair, two, _i64(2), _f32(0.49)).shape == (1, 3)


def _naive_nms(boxes, scores, max_out, iou_thr, score_thr):
    out = []
    for b in range(scores.shape[0]):
        y1 = np.minimum(boxes[b, :, 0], boxes[b, :, 2])
        x1 = np.minimum(boxes[b, :, 1], boxes[b, :, 3])
        y2 = np.maximum(boxes[b, :, 0], boxes[b, :, 2])
        x2 = np.maximum(boxes[b, :, 1], boxes[b, :, 3])
        area = (y2 - y1) * (x2 - x1)
        for c in range(scores.shape[1]):
            s = scores[b, c]
            order = sorted((i for i in range(s.size) if s[i] > score_thr), key=lambda i: (-s[i], i))
            kept = []
            for i in order:
                if len(kept) == max_out:
                    break
                ok = True
                for j in kept:
                    iw = min(x2[i], x2[j]) - max(x1[i], x1[j])
                    ih = min(y2[i], y2[j]) - max(y1[i], y1[j])
                    if iw <= 0 or ih <= 0:
                        continue
                    inter = iw * ih
                    union = area[i] + area[j] - inter
                    if area[i] > 0 and area[j] > 0 and union > 0 and inter / union > iou_thr:
                        ok = False
                        break
                if ok:
                    kept.append(i)
            out.extend([b, c, k] for k in kept)
    return np.array(out, dtype=np.int64).reshape(-1, 3)


@pytest.mark.parametrize("seed", range(6))
def test_nms_matches_naive_greedy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 700))  # large n with small max_out exercises the partial sort
    corner = rng.uniform(0, rng.choice([15.0, 60.0, 300.0]), (2, n, 2))
    boxes = np.round(np.concatenate([corner, corner + rng.uniform(1, 20, (2, n, 2))], -1)).astype(np.float32)
    scores = np.round(rng.uniform(0, 1, (2, 2, n)), 2).astype(np.float32)
    max_out = int(rng.choice([1, 3, 10, 1000]))
    iou, thr = float(rng.choice([0.0, 0.3, 0.6])), float(rng.choice([0.0, 0.4]))
    got = non_max_suppression(boxes, scores, _i64(max_out), _f32(iou), _f32(thr))
    np.testing.assert_array_equal(got, _naive_nms(boxes, scores, max_out, np.float32(iou), np.float32(thr)))


# --------------------------------------------------------------------------- RoiAlign


def test_roi_align_linear_ramp():
    # bilinear sampling of a ramp is exact, so every bin averages its sample positions
    x = np.tile(np.arange(8, dtype=np.float32), (1, 1, 6, 1))  # value = column index
    rois = np.array([[1.0, 1.0, 5.0, 4.0]], dtype=np.float32)
    y = roi_align(x, rois, np.array([0]), output_height=1, output_width=2, sampling_ratio=2)
    # half_pixel: roi x from 0.5 to 4.5, bins of width 2, samples at 1.0, 2.0 | 3.0, 4.0
    np.testing.assert_allclose(y.ravel(), [1.5, 3.5])
    y10 = roi_align_10(x, rois, np.array([0]), output_height=1, output_width=2, sampling_ratio=2)
    np.testing.assert_allclose(y10.ravel(), [2.0, 4.0])  # no half-pixel shift: samples 1.5, 2.5 | 3.5, 4.5


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("ctm", [None, "half_pixel", "output_half_pixel"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_matchesreference_output(mode, ctm, sampling_ratio):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
    rois = np.array([[0, 0, 6, 5], [1.3, 0.2, 4.1, 5.9], [-2, -1, 3, 2], [5, 4, 9, 8], [2, 2, 2, 2]], dtype=np.float32)
    batch = np.array([0, 1, 1, 0, 1], dtype=np.int64)
    attrs = dict(mode=mode, output_height=3, output_width=2, sampling_ratio=sampling_ratio, spatial_scale=0.9)
    if ctm is None:
        # RoiAlign-10 has no half-pixel shift (as onnxruntime; onnx's reference shifts it like 16's default)
        got = roi_align_10(x, rois, batch, **attrs)
        expected = reference_output(
            "RoiAlign", [x, rois, batch], 16, coordinate_transformation_mode="output_half_pixel", **attrs
        )
    else:
        got = roi_align(x, rois, batch, coordinate_transformation_mode=ctm, **attrs)
        expected = reference_output("RoiAlign", [x, rois, batch], 16, coordinate_transformation_mode=ctm, **attrs)
    assert got.shape == (5, 3, 3, 2) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_roi_align_dtypes_and_errors():
    x = np.ones((1, 2, 4, 4), dtype=np.float16)
    y = roi_align(x, np.array([[0, 0, 3, 3]], np.float16), np.array([0]), output_height=2, output_width=2)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y, 1.0)
    assert roi_align(x, np.zeros((0, 4), np.float16), np.zeros(0, np.int64)).shape == (0, 2, 1, 1)
    with pytest.raises(ValueError, match="batch_indices"):
        roi_align(x, np.array([[0, 0, 1, 1]], np.float16), np.array([3]))
    with pytest.raises(ValueError, match="mode"):
        roi_align(x, np.array([[0, 0, 1, 1]], np.float16), np.array([0]), mode="sum")
