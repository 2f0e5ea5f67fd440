"""Unit tests for onyxrt.providers.cpu.math.linalg (Det) and
onyxrt.providers.cpu.tensor.scatter_crop (Col2Im, TensorScatter, CenterCropPad)."""

import itertools

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import helper

import onyxrt.providers.cpu.kernel_modules  # noqa: F401  (registers every kernel)
from onyxrt.graph.types import onnx_elem_type
from onyxrt.providers.cpu.math.linalg import det
from onyxrt.providers.cpu.kernel_table import CPU_KERNELS
from onyxrt.providers.cpu.tensor.scatter_crop import center_crop_pad, col2im, tensor_scatter


def test_registered():
    assert CPU_KERNELS.lookup("", "Det", 11).fn is det
    assert CPU_KERNELS.lookup("", "Det", 22).fn is det
    assert CPU_KERNELS.lookup("", "Col2Im", 18).fn is col2im
    assert CPU_KERNELS.lookup("", "TensorScatter", 24).fn is tensor_scatter
    assert CPU_KERNELS.lookup("", "CenterCropPad", 18).fn is center_crop_pad


# --------------------------------------------------------------------------- Det


def test_det():
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    y = det(x)
    assert type(y) is np.ndarray and y.shape == () and y.dtype == np.float32
    np.testing.assert_allclose(y, -2.0, rtol=1e-6)
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((2, 3, 4, 4))
    np.testing.assert_allclose(det(xb), np.linalg.det(xb))
    for dt in (np.float16, ml_dtypes.bfloat16):
        y = det(x.astype(dt))
        assert y.dtype == np.dtype(dt) and float(y) == -2.0
    assert det(np.zeros((0, 3, 3), np.float32)).shape == (0,)
    with pytest.raises(ValueError):
        det(np.zeros((2, 3), np.float32))


# --------------------------------------------------------------------------- Col2Im


def _col2im_reference(x, image, block, strides, pads, dilations):
    """Direct scatter loop over every block and kernel position."""
    nd = len(image)
    n, ck, _ = x.shape
    c = ck // int(np.prod(block))
    padded = [image[i] + pads[i] + pads[i + nd] for i in range(nd)]
    counts = [(padded[i] - (dilations[i] * (block[i] - 1) + 1)) // strides[i] + 1 for i in range(nd)]
    out = np.zeros([n, c] + padded, dtype=np.float64)
    cols = x.reshape([n, c] + list(block) + counts)
    for k in itertools.product(*(range(b) for b in block)):
        for p in itertools.product(*(range(q) for q in counts)):
            pos = tuple(p[i] * strides[i] + k[i] * dilations[i] for i in range(nd))
            out[(slice(None), slice(None)) + pos] += cols[(slice(None), slice(None)) + k + p]
    return out[(slice(None), slice(None)) + tuple(slice(pads[i], pads[i] + image[i]) for i in range(nd))]


@pytest.mark.parametrize(
    "image, block, strides, pads, dilations",
    [
        ([5, 5], [1, 5], None, None, None),
        ([5, 5], [2, 2], [1, 1], [0, 0, 0, 0], [1, 1]),
        ([7, 6], [3, 2], [2, 1], [1, 0, 2, 1], [1, 1]),
        ([9, 8], [2, 3], [2, 1], [0, 0, 0, 0], [2, 3]),
        ([4, 5, 6], [2, 2, 3], [1, 2, 1], [0, 1, 0, 1, 0, 1], [1, 1, 1]),
    ],
)
def test_col2im(image, block, strides, pads, dilations):
    nd = len(image)
    s, p, d = strides or [1] * nd, pads or [0] * (2 * nd), dilations or [1] * nd
    counts = [(image[i] + p[i] + p[i + nd] - (d[i] * (block[i] - 1) + 1)) // s[i] + 1 for i in range(nd)]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3 * int(np.prod(block)), int(np.prod(counts)))).astype(np.float32)
    x.flags.writeable = False
    y = col2im(x, np.array(image, np.int64), np.array(block, np.int64), strides=strides, pads=pads,
               dilations=dilations)
    assert y.dtype == np.float32 and y.shape == (2, 3, *image)
    np.testing.assert_allclose(y, _col2im_reference(x, image, block, s, p, d), rtol=1e-5, atol=1e-5)


def test_col2im_rejects_wrong_block_count():
    with pytest.raises(ValueError):
        col2im(np.zeros((1, 4, 10), np.float32), np.array([4, 4]), np.array([2, 2]))


# --------------------------------------------------------------------------- TensorScatter


def _scatter_reference(past, update, idx, axis, circular):
    out = past.copy()
    seq = update.shape[axis]
    for prefix in np.ndindex(past.shape[:axis]):
        for s in range(seq):
            dst = idx[prefix[0]] + s
            if circular:
                dst %= past.shape[axis]
            out[prefix + (dst,)] = update[prefix + (s,)]
    return out


@pytest.mark.parametrize("axis, mode, idx", [(-2, "linear", None), (2, "linear", [1, 5]), (-2, "circular", [6, 7]),
                                              (1, "circular", [3, 0])])
def test_tensor_scatter(axis, mode, idx):
    rng = np.random.default_rng(2)
    past = rng.standard_normal((2, 3, 8, 4)).astype(np.float32)
    ax = axis % 4
    ushape = list(past.shape)
    ushape[ax] = 3
    update = rng.standard_normal(ushape).astype(np.float32)
    past.flags.writeable = False
    widx = None if idx is None else np.array(idx, np.int64)
    y = tensor_scatter(past, update, widx, axis=axis, mode=mode)
    expected = _scatter_reference(past, update, idx or [0, 0], ax, mode == "circular")
    np.testing.assert_array_equal(y, expected)


def test_tensor_scatter_errors():
    past = np.zeros((2, 5, 3), np.float32)
    with pytest.raises(ValueError):
        tensor_scatter(past, np.ones((2, 2, 3), np.float32), np.array([4, 0]), axis=1)  # overflows in linear mode
    with pytest.raises(ValueError):
        tensor_scatter(past, np.ones((2, 2, 3), np.float32), axis=0)


# --------------------------------------------------------------------------- CenterCropPad


def test_center_crop_pad():
    x = np.arange(4 * 7 * 3, dtype=np.int32).reshape(4, 7, 3)
    x.flags.writeable = False
    y = center_crop_pad(x, np.array([2, 9, 3], np.int64))
    assert y.shape == (2, 9, 3) and y.dtype == np.int32
    np.testing.assert_array_equal(y[:, 1:8], x[1:3])
    assert not y[:, 0].any() and not y[:, 8].any()
    # odd padding: the extra element goes to the end; odd crop: start rounded down
    y = center_crop_pad(x, np.array([5, 4]), axes=[-1, 0])
    assert y.shape == (4, 7, 5)
    np.testing.assert_array_equal(y[..., 1:4], x)
    y = center_crop_pad(x, np.array([6]), axes=[1])
    np.testing.assert_array_equal(y, x[:, 0:6])
    s = np.array([["a", "b"], ["c", "d"]], dtype=object)
    y = center_crop_pad(s, np.array([2, 3]))
    assert y.dtype == object and y.shape == (2, 3)


# --------------------------------------------------------------------------- against onnxruntime


def _run_pair(op, inputs, attrs, opset, initializers=()):
    ort = pytest.importorskip("onnxruntime")
    import onyxrt

    names = [f"i{k}" for k in range(len(inputs))]
    inits = [onnx.numpy_helper.from_array(inputs[k], names[k]) for k in initializers]
    node = helper.make_node(op, names, ["o"], **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, onnx_elem_type(v.dtype), v.shape)
         for k, (n, v) in enumerate(zip(names, inputs)) if k not in initializers],
        [onnx.ValueInfoProto(name="o")], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    data = model.SerializeToString()
    feeds = {n: v for k, (n, v) in enumerate(zip(names, inputs)) if k not in initializers}
    expected = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = onyxrt.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert got.dtype == expected.dtype and got.shape == expected.shape
    return expected, got


def test_matches_onnxruntime():
    rng = np.random.default_rng(4)
    e, g = _run_pair("Det", [rng.standard_normal((3, 5, 5)).astype(np.float32)], {}, 22)
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
    x = rng.standard_normal((1, 2 * 6, 3 * 3)).astype(np.float32)
    e, g = _run_pair("Col2Im", [x, np.array([5, 7], np.int64), np.array([2, 3], np.int64)],
                     {"strides": [2, 2], "pads": [1, 0, 0, 1]}, 18, initializers=(1, 2))
    np.testing.assert_allclose(g, e, rtol=1e-6)
    past = rng.standard_normal((2, 2, 6, 3)).astype(np.float32)
    upd = rng.standard_normal((2, 2, 2, 3)).astype(np.float32)
    e, g = _run_pair("TensorScatter", [past, upd, np.array([5, 1], np.int64)], {"mode": "circular"}, 24)
    np.testing.assert_array_equal(g, e)
    e, g = _run_pair("CenterCropPad", [rng.standard_normal((4, 7, 3)).astype(np.float32),
                                       np.array([6, 2], np.int64)], {"axes": [-1, 0]}, 18)
    np.testing.assert_array_equal(g, e)
