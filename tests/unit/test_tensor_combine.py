"""Unit tests for onyxrt.providers.cpu.tensor.combine."""

import itertools

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from onyxrt.providers.cpu.tensor import combine as cb


def test_concat():
    a = np.zeros((2, 3), np.float32)
    b = np.ones((2, 1), np.float32)
    out = cb.concat(a, b, axis=-1)
    assert out.shape == (2, 4) and out.dtype == np.float32
    assert cb.concat_1(a, b).shape == (2, 4)  # Concat-1 defaults to axis 1
    assert cb.concat(a, axis=0) is a
    e = np.zeros((0, 3), np.float32)
    assert cb.concat(e, a, axis=0) is a


def test_split_versions():
    x = np.arange(10)
    parts = cb.split_13(x, _num_outputs=2)
    assert [list(p) for p in parts] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    parts = cb.split_13(x, np.array([3, 7]), _num_outputs=2)
    assert [len(p) for p in parts] == [3, 7]
    parts = cb.split_2(x, split=[2, 8], _num_outputs=2)
    assert [len(p) for p in parts] == [2, 8]
    parts = cb.split_1(x, np.array([1, 9]), _num_outputs=2)
    assert [len(p) for p in parts] == [1, 9]
    parts = cb.split_1(x, split=[4, 6], _num_outputs=2)
    assert [len(p) for p in parts] == [4, 6]
    parts = cb.split_18(x, num_outputs=3, _num_outputs=3)
    assert [len(p) for p in parts] == [4, 4, 2]
    parts = cb.split_18(np.arange(12).reshape(2, 6), axis=-1, _num_outputs=3)
    assert [p.shape for p in parts] == [(2, 2)] * 3
    with pytest.raises(ValueError):
        cb.split_13(x, _num_outputs=3)
    with pytest.raises(ValueError):
        cb.split_13(x, np.array([3, 3]), _num_outputs=2)


def test_pad_modes():
    x = np.array([[1.0, 1.2], [2.3, 3.4], [4.5, 5.7]], np.float32)
    out = cb.pad_11(x, np.array([0, 2, 0, 0]), np.array(0.0, np.float32))
    np.testing.assert_allclose(out, [[0, 0, 1.0, 1.2], [0, 0, 2.3, 3.4], [0, 0, 4.5, 5.7]])
    out = cb.pad_11(x, np.array([0, 2, 0, 0]), mode="reflect")
    np.testing.assert_allclose(out, [[1.0, 1.2, 1.0, 1.2], [2.3, 3.4, 2.3, 3.4], [4.5, 5.7, 4.5, 5.7]])
    out = cb.pad_11(x, np.array([0, 2, 0, 0]), mode="edge")
    np.testing.assert_allclose(out, [[1.0, 1.0, 1.0, 1.2], [2.3, 2.3, 2.3, 3.4], [4.5, 4.5, 4.5, 5.7]])
    out = cb.pad_18(x, np.array([2, 1, 1, 1]), mode="wrap")
    np.testing.assert_allclose(out[0], [3.4, 2.3, 3.4, 2.3])
    assert out.shape == (6, 4)
    out = cb.pad_2(x, pads=[1, 0, 0, 0], value=7.0)
    assert out.dtype == np.float32 and out.shape == (4, 2) and (out[0] == 7).all()
    out = cb.pad_18(x, np.array([1, 1]), np.array(9.0, np.float32), np.array([-1]))
    assert out.shape == (3, 4) and out[0, 0] == 9
    # negative pads crop
    out = cb.pad_11(x, np.array([-1, 0, 0, -1]))
    np.testing.assert_array_equal(out, x[1:, :1])
    # strings and bools
    s = np.array(["a", "b"], dtype=object)
    assert list(cb.pad_11(s, np.array([1, 0]))) == ["", "a", "b"]
    assert cb.pad_11(np.array([True]), np.array([0, 1])).tolist() == [True, False]
    i = np.array([1, 2], np.int64)
    assert cb.pad_1(i, paddings=[1, 1], value=3.0).tolist() == [3, 1, 2, 3]


def _ref_resize(x, opset, roi, scales, sizes, **attrs):
    names = ["x", "roi" if roi is not None else "", "scales" if scales is not None else "",
             "sizes" if sizes is not None else ""]
    while names and names[-1] == "":
        names.pop()
    node = helper.make_node("Resize", names, ["y"], **attrs)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)]
    feed = {"x": x}
    for n, v, t in (("roi", roi, TensorProto.FLOAT), ("scales", scales, TensorProto.FLOAT),
                    ("sizes", sizes, TensorProto.INT64)):
        if v is not None:
            inputs.append(helper.make_tensor_value_info(n, t, None))
            feed[n] = v
    g = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    ref = ReferenceEvaluator(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]))
    return ref.run(None, feed)[0]


_CTMS = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "half_pixel_symmetric"]


@pytest.mark.parametrize("mode,ctm", list(itertools.product(["nearest", "linear", "cubic"], _CTMS)))
@pytest.mark.parametrize("target", [("scales", [1, 1, 2.0, 1.5]), ("scales", [1, 1, 0.6, 0.5]),
                                    ("sizes", [1, 1, 3, 7])])
def test_resize_against_reference(mode, ctm, target):
    x = np.random.default_rng(1).standard_normal((1, 1, 4, 5)).astype(np.float32)
    kind, v = target
    scales = np.array(v, np.float32) if kind == "scales" else None
    sizes = np.array(v, np.int64) if kind == "sizes" else None
    attrs = dict(mode=mode, coordinate_transformation_mode=ctm)
    got = cb.resize_18(x, None, scales, sizes, **attrs)
    exp = _ref_resize(x, 19, None, scales, sizes, **attrs)
    np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("extra", [
    dict(mode="nearest", nearest_mode="round_prefer_ceil"),
    dict(mode="nearest", nearest_mode="floor"),
    dict(mode="nearest", nearest_mode="ceil"),
    dict(mode="cubic", exclude_outside=1, cubic_coeff_a=-0.5),
    dict(mode="linear", antialias=1),
    dict(mode="cubic", antialias=1),
    dict(mode="cubic", antialias=1, exclude_outside=1),
])
def test_resize_options(extra):
    x = np.random.default_rng(2).standard_normal((1, 2, 8, 9)).astype(np.float32)
    scales = np.array([1, 1, 0.6, 0.45], np.float32)
    got = cb.resize_18(x, None, scales, None, **extra)
    exp = _ref_resize(x, 19, None, scales, None, **extra)
    np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-5)


def test_resize_tf_crop_and_resize_axes_keep_aspect():
    x = np.random.default_rng(3).standard_normal((1, 1, 4, 4)).astype(np.float32)
    roi = np.array([0.4, 0.6, 0.6, 1.2], np.float32)
    sizes = np.array([3, 3], np.int64)
    attrs = dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize", axes=[2, 3],
                 extrapolation_value=10.0)
    got = cb.resize_18(x, roi, None, sizes, **attrs)
    np.testing.assert_allclose(got, _ref_resize(x, 19, roi, None, sizes, **attrs), rtol=1e-5, atol=1e-5)
    for policy in ("not_larger", "not_smaller"):
        attrs = dict(mode="nearest", axes=[2, 3], keep_aspect_ratio_policy=policy)
        sizes = np.array([7, 5], np.int64)
        got = cb.resize_18(x, None, None, sizes, **attrs)
        np.testing.assert_allclose(got, _ref_resize(x, 19, None, None, sizes, **attrs))


def test_resize_integer_and_half_dtypes():
    x = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4) * 15
    out = cb.resize_11(x, None, np.array([1, 1, 2, 2], np.float32), mode="linear")
    assert out.dtype == np.uint8 and out.shape == (1, 1, 8, 8)
    h = x.astype(np.float16)
    out = cb.resize_11(h, None, None, np.array([1, 1, 2, 2], np.int64), mode="cubic")
    assert out.dtype == np.float16 and out.shape == (1, 1, 2, 2)


def test_upsample_and_resize_10():
    x = np.array([[[[1, 2], [3, 4]]]], np.float32)
    exp = np.array([[[[1, 1, 1, 2, 2, 2], [1, 1, 1, 2, 2, 2], [3, 3, 3, 4, 4, 4], [3, 3, 3, 4, 4, 4]]]], np.float32)
    np.testing.assert_array_equal(cb.upsample_9(x, np.array([1, 1, 2, 3], np.float32)), exp)
    np.testing.assert_array_equal(cb.upsample_7(x, scales=[1, 1, 2, 3]), exp)
    np.testing.assert_array_equal(cb.upsample_1(x, height_scale=2.0, width_scale=3.0), exp)
    np.testing.assert_array_equal(cb.resize_10(x, np.array([1, 1, 2, 3], np.float32)), exp)
    lin = cb.upsample_9(x, np.array([1, 1, 2, 2], np.float32), mode="linear")
    np.testing.assert_allclose(lin[0, 0, 0], [1, 1.5, 2, 2])
    np.testing.assert_allclose(lin[0, 0, :, 0], [1, 2, 3, 3])


def test_resize_wide_and_nan_inputs():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 2, 3, 200)).astype(np.float32)  # wide rows take the gather path
    for mode in ("linear", "cubic"):
        scales = np.array([1, 1, 2, 0.7], np.float32)
        got = cb.resize_18(x, None, scales, None, mode=mode)
        np.testing.assert_allclose(got, _ref_resize(x, 19, None, scales, None, mode=mode), rtol=1e-5, atol=1e-5)
    y = np.ones((1, 1, 2, 8), np.float32)
    y[0, 0, 0, 0] = np.nan
    out = cb.resize_18(y, None, np.array([1, 1, 1, 2], np.float32), None, mode="linear")
    assert np.isnan(out[0, 0, 0, :2]).all() and not np.isnan(out[0, 0, 0, 4:]).any()
    assert not np.isnan(out[0, 0, 1]).any()
