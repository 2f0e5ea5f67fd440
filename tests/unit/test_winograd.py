"""3x3 stride-1 convolutions by Winograd F(2x2, 3x3) (nn/winograd.py): results against a float64 reference with
every epilogue form, the shapes the route takes and leaves, a session against onnxruntime, and the fallback where
numba is unusable."""

import importlib.util

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt
from onyxrt.providers.cpu import jit
from onyxrt.providers.cpu.contrib.fused import mlas_activation_fn
from onyxrt.providers.cpu.nn import winograd
from onyxrt.providers.cpu.nn.conv_core import float_conv, pack_conv_weights
from reference_ops import CONV_ACTIVATIONS, conv_epilogue

needs_numba = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")
RNG = np.random.default_rng(23)


def reference(x, w, b, pads):
    """The 3x3 stride-1 convolution in float64 (explicit [top, left, bottom, right] pads)."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh, ow = xp.shape[2] - 2, xp.shape[3] - 2
    y = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for i in range(3):
        for j in range(3):
            y += np.einsum("mc,nchw->nmhw", w[:, :, i, j], xp[:, :, i:i + oh, j:j + ow])
    return y if b is None else y + b[None, :, None, None]


def convolve(x, w, b, pads, activation=None, residual=None):
    attributes = dict(group=1, strides=[1, 1], pads=pads, kernel_shape=[3, 3])
    packed = pack_conv_weights(w, b, attributes)
    y = float_conv(x, w, b, 1, [1, 1], [1, 1], pads, "NOTSET", [3, 3], packed, activation=activation,
                   residual=residual)
    return y, packed


SHAPES = [  # (x shape, output channels, pads)
    ((1, 32, 16, 16), 32, [1, 1, 1, 1]),
    ((2, 40, 11, 9), 36, [1, 1, 1, 1]),  # odd output sizes: the last tiles cropped
    ((1, 64, 13, 14), 32, [0, 1, 2, 0]),  # asymmetric pads
    ((3, 32, 8, 8), 48, [2, 2, 2, 2]),  # pads wider than the filter's reach
    ((1, 32, 14, 18), 40, [0, 0, 0, 0]),
]
ACTIVATIONS = CONV_ACTIVATIONS


@needs_numba
@pytest.mark.parametrize("shape,m,pads", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: a[0] if a else "none")
@pytest.mark.parametrize("biased", [False, True])
@pytest.mark.parametrize("summed", [False, True])
def test_matches_reference(shape, m, pads, activation, biased, summed):
    x = RNG.standard_normal(shape, np.float32)
    w = (RNG.standard_normal((m, shape[1], 3, 3)) / np.sqrt(9 * shape[1])).astype(np.float32)
    b = RNG.standard_normal(m).astype(np.float32) if biased else None
    want = reference(x, w, b, pads)
    want, z, fn = conv_epilogue(want, summed, activation, RNG)
    y, packed = convolve(x, w, b, pads, fn, z)
    assert packed.winograd is not None and packed.winograd.shape == (16, m, shape[1])
    assert y.shape == want.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@needs_numba
def test_repeated_runs_reuse_the_route():
    x = RNG.standard_normal((1, 32, 12, 12), np.float32)
    w = RNG.standard_normal((32, 32, 3, 3)).astype(np.float32)
    first, packed = convolve(x, w, None, [1, 1, 1, 1])
    transformed = packed.winograd
    again = float_conv(x, w, None, 1, [1, 1], [1, 1], [1, 1, 1, 1], "NOTSET", [3, 3], packed)
    assert packed.winograd is transformed and not transformed.flags.writeable
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("change", ["stride", "dilation", "group", "kernel", "float64", "channels", "tiles",
                                    "negative pad"])
def test_shapes_the_route_leaves(change):
    shape, w_shape, group, strides, dilations, pads, dtype = (1, 32, 16, 16), (32, 32, 3, 3), 1, [1, 1], [1, 1], \
        [1, 1, 1, 1], np.float32
    assert winograd.applies(shape, dtype, w_shape, group, strides, dilations, pads)
    if change == "stride":
        strides = [2, 2]
    elif change == "dilation":
        dilations = [2, 2]
    elif change == "group":
        group, w_shape = 2, (32, 16, 3, 3)
    elif change == "kernel":
        w_shape = (32, 32, 5, 5)
    elif change == "float64":
        dtype = np.float64
    elif change == "channels":
        shape, w_shape = (1, 8, 16, 16), (32, 8, 3, 3)
    elif change == "tiles":  # 7x7 outputs: 16 tiles
        shape = (1, 32, 7, 7)
    else:
        pads = [1, -1, 1, 1]
    assert not winograd.applies(shape, dtype, w_shape, group, strides, dilations, pads)


def test_fallback_without_numba(monkeypatch):
    """Where the transforms' module cannot load, the column-matrix route computes the same convolution."""
    monkeypatch.setattr(winograd, "optional_module", lambda name: None)
    x = RNG.standard_normal((1, 32, 9, 9), np.float32)
    w = (RNG.standard_normal((32, 32, 3, 3)) / 17).astype(np.float32)
    y, _ = convolve(x, w, None, [1, 1, 1, 1])
    np.testing.assert_allclose(y, reference(x, w, None, [1, 1, 1, 1]), rtol=1e-5, atol=1e-5)


def test_disabled_numba_runs_the_columns(monkeypatch):
    monkeypatch.setenv("ONYXRT_DISABLE_NUMBA", "1")
    monkeypatch.setattr(jit, "_OPTIONAL_MODULES", {})
    x = RNG.standard_normal((1, 32, 9, 9), np.float32)
    w = (RNG.standard_normal((32, 32, 3, 3)) / 17).astype(np.float32)
    y, _ = convolve(x, w, None, [1, 1, 1, 1])
    np.testing.assert_allclose(y, reference(x, w, None, [1, 1, 1, 1]), rtol=1e-5, atol=1e-5)


@needs_numba
def test_session_matches_onnxruntime():
    """A Conv + Relu + Conv chain (fused by the optimizer into FusedConv) against onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    w1 = (RNG.standard_normal((48, 32, 3, 3)) / 17).astype(np.float32)
    w2 = (RNG.standard_normal((32, 48, 3, 3)) / 20).astype(np.float32)
    b1 = RNG.standard_normal(48).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "winograd", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32, 14, 15])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
                               numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    x = RNG.standard_normal((2, 32, 14, 15), np.float32)
    got = onyxrt.InferenceSession(model).run(None, {"x": x})[0]
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@needs_numba
@pytest.mark.parametrize("activation", [None, ("Relu", []), ("Sigmoid", [])], ids=lambda a: a[0] if a else "none")
@pytest.mark.parametrize("summed", [False, True])
def test_split_pool_runs_the_transforms_as_native_tasks(activation, summed):
    """In a pool that owns the cores (split-GEMM mode) the transforms are shared out over its threads: the same
    results."""
    from onyxrt.framework.thread_pool import ThreadPool

    x = RNG.standard_normal((2, 48, 13, 12), np.float32)
    w = (RNG.standard_normal((40, 48, 3, 3)) / 20).astype(np.float32)
    b = RNG.standard_normal(40).astype(np.float32)
    fn = None if activation is None else mlas_activation_fn(*activation)
    z = RNG.standard_normal((2, 40, 13, 12)).astype(np.float32) if summed else None
    serial, _ = convolve(x, w, b, [1, 1, 1, 1], fn, z)
    pool = ThreadPool(2).splitting_gemms()
    try:
        with pool.activate():
            split, packed = convolve(x, w, b, [1, 1, 1, 1], fn, z)
    finally:
        pool.shutdown()
    assert packed.winograd is not None
    np.testing.assert_allclose(split, serial, rtol=1e-5, atol=1e-5 * np.abs(serial).max())


@needs_numba
@pytest.mark.parametrize("shape,m,pads", SHAPES)
@pytest.mark.parametrize("band_bytes", [1, 1 << 16, 1 << 19])
def test_bands_of_tile_rows_match_the_reference(monkeypatch, shape, m, pads, band_bytes):
    """The split mode's bands (``winograd_bands.bands_part``: each thread transforms a band of tile rows, takes the
    sixteen products and transforms them to the output, a residual and activation in the epilogue): one tile row a
    band, several, or the whole plane, over both threads; the shapes' odd sizes and pads as the whole-pass route."""
    from onyxrt.framework.thread_pool import ThreadPool
    from onyxrt.providers.cpu.gemm import own_sgemm_usable

    if not own_sgemm_usable():
        pytest.skip("the bands run onyxrt's GEMM (AVX-512)")
    monkeypatch.setattr(winograd, "BAND_BYTES", band_bytes)
    taken = []
    x = RNG.standard_normal(shape, np.float32)
    w = (RNG.standard_normal((m, shape[1], 3, 3)) / np.sqrt(9 * shape[1])).astype(np.float32)
    b = RNG.standard_normal(m).astype(np.float32)
    want = reference(x, w, b, pads)
    z = RNG.standard_normal(want.shape).astype(np.float32)
    want = np.maximum(want + z, 0).astype(np.float32)
    pool = ThreadPool(2).splitting_gemms()
    original = pool.run_native
    pool.run_native = lambda task, args, parts: taken.append(task) or original(task, args, parts)
    try:
        with pool.activate():
            y, packed = convolve(x, w, b, pads, mlas_activation_fn("Relu", []), z)
    finally:
        pool.shutdown()
    from onyxrt.providers.cpu.nn import winograd_bands

    assert taken == [winograd_bands.bands_task.address]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
