"""Convolutions whose windows tile the input (nn/patch_conv.py): results against a float64 reference for patch
sizes, channel counts past a vector, sizes the windows do not divide and every epilogue form, the shapes the route
takes and leaves, the pool's native task, a session against onnxruntime, and the column routes where numba is
unusable."""

import importlib.util

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt
from onyxrt.providers.cpu import jit
from onyxrt.providers.cpu.contrib.fused import mlas_activation_fn
from onyxrt.providers.cpu.nn import direct_conv, patch_conv
from onyxrt.providers.cpu.nn.conv_core import float_conv, pack_conv_weights
from reference_ops import CONV_ACTIVATIONS, conv_epilogue
from route_probes import asks_for_split_mode, routes_taken

needs_numba = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")
RNG = np.random.default_rng(31)


def reference(x, w, b):
    """The convolution in float64 with strides = kernel, no padding (rows and columns past the last window unread)."""
    kh, kw = w.shape[2:]
    oh, ow = x.shape[2] // kh, x.shape[3] // kw
    windows = x[:, :, :oh * kh, :ow * kw].astype(np.float64).reshape(x.shape[0], x.shape[1], oh, kh, ow, kw)
    y = np.einsum("mcij,ncpiqj->nmpq", w.astype(np.float64), windows)
    return y if b is None else y + b[None, :, None, None]


def convolve(x, w, b, activation=None, residual=None):
    kernel = list(w.shape[2:])
    attributes = dict(group=1, strides=kernel, dilations=[1, 1], pads=[0, 0, 0, 0], kernel_shape=kernel)
    packed = pack_conv_weights(w, b, attributes)
    return float_conv(x, w, b, 1, kernel, [1, 1], [0, 0, 0, 0], "NOTSET", kernel, packed, activation=activation,
                      residual=residual)


# (x shape, output channels, kernel)
CASES = [
    ((2, 3, 32, 32), 16, (4, 4)),  # a ConvNeXt-like stem
    ((3, 16, 8, 8), 32, (2, 2)),  # its downsampling: four pixels a row, tiles across rows
    ((1, 3, 35, 30), 20, (4, 4)),  # sizes the windows do not divide; channels past a vector of 16 (and of 8)
    ((2, 5, 24, 40), 7, (8, 8)),  # a patch embedding of few channels
    ((1, 2, 9, 14), 3, (3, 2)),  # unequal kernel sides, one output pixel a tile's remainder
    ((1, 1, 6, 6), 1, (1, 2)),  # one channel in and out
]
ACTIVATIONS = CONV_ACTIVATIONS


@needs_numba
@pytest.mark.parametrize("shape,m,kernel", CASES)
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: a[0] if a else "none")
@pytest.mark.parametrize("biased", [False, True])
@pytest.mark.parametrize("summed", [False, True])
def test_matches_reference(shape, m, kernel, activation, biased, summed, monkeypatch):
    taken = routes_taken(monkeypatch, patch_conv, "patch_route")
    x = RNG.standard_normal(shape, np.float32)
    w = (RNG.standard_normal((m, shape[1]) + kernel) / np.sqrt(shape[1] * kernel[0] * kernel[1])).astype(np.float32)
    b = RNG.standard_normal(m).astype(np.float32) if biased else None
    want = reference(x, w, b)
    want, z, fn = conv_epilogue(want, summed, activation, RNG)
    y = convolve(x, w, b, fn, z)
    assert taken and taken[0] is not None  # the patch route ran
    assert y.shape == want.shape and y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("change", ["float64", "group", "overlap", "pads", "dilation", "one by one", "wide", "rank"])
def test_shapes_the_route_leaves(change):
    shape, w_shape, group, strides, dilations, pads, dtype = (1, 3, 32, 32), (16, 3, 4, 4), 1, [4, 4], [1, 1], \
        [0, 0, 0, 0], np.float32
    assert patch_conv.applies(shape, dtype, w_shape, group, strides, dilations, pads)
    if change == "float64":
        dtype = np.float64
    elif change == "group":
        shape, w_shape, group = (1, 4, 32, 32), (16, 2, 4, 4), 2
    elif change == "overlap":  # windows wider than the strides: direct_conv's or the column matrix's
        strides = [2, 2]
    elif change == "pads":
        pads = [1, 1, 1, 1]
    elif change == "dilation":
        dilations = [2, 2]
    elif change == "one by one":  # a pointwise convolution: a GEMM
        w_shape, strides = (16, 3, 1, 1), [1, 1]
    elif change == "wide":  # a ViT-B/16 embedding's weights: a GEMM reuses them
        shape, w_shape, strides = (1, 3, 224, 224), (768, 3, 16, 16), [16, 16]
    else:
        shape, w_shape, strides, dilations, pads = (1, 3, 32), (16, 3, 4), [4], [1], [0, 0]
    assert not patch_conv.applies(shape, dtype, w_shape, group, strides, dilations, pads)


@needs_numba
@pytest.mark.parametrize("activation", [None, ("Relu", []), ("Sigmoid", [])], ids=lambda a: a[0] if a else "none")
@pytest.mark.parametrize("summed", [False, True])
def test_split_pool_runs_tiles_as_native_tasks(activation, summed):
    """In a pool whose workers spin (split-GEMM mode) the pixel tiles are shared out as native tasks: the same
    results as on one thread, across images and part boundaries (an image of 63 pixels: tiles of 8 and one of 7)."""
    from onyxrt.framework.thread_pool import ThreadPool

    x = RNG.standard_normal((3, 4, 28, 36), np.float32)
    w = (RNG.standard_normal((48, 4, 4, 4)) / 8).astype(np.float32)
    assert 3 * 63 * 64 * 48 >= direct_conv.SPLIT_MACS_SPINNING  # (multiply-adds: shared out where workers spin)
    b = RNG.standard_normal(48).astype(np.float32)
    fn = None if activation is None else mlas_activation_fn(*activation)
    z = RNG.standard_normal((3, 48, 7, 9)).astype(np.float32) if summed else None
    serial = convolve(x, w, b, fn, z)
    pool = ThreadPool(2).splitting_gemms()
    try:
        with pool.activate():
            assert pool.workers_spin or not pool.runs_native_tasks
            split = convolve(x, w, b, fn, z)
    finally:
        pool.shutdown()
    np.testing.assert_array_equal(split, serial)


@needs_numba
def test_large_convolutions_ask_for_the_split_mode():
    """A patch convolution of 16M multiply-adds or more tells a session learning its thread mode that the pool's
    split mode runs it faster (a ConvNeXt stem at 224x224 with 128 channels); a small stem does not."""
    for shape, m, asks in (((1, 3, 224, 224), 128, True), ((8, 3, 32, 32), 16, False)):
        x = RNG.standard_normal(shape, np.float32)
        w = (RNG.standard_normal((m, 3, 4, 4)) / 7).astype(np.float32)
        assert asks_for_split_mode(lambda: convolve(x, w, None)) is asks


def test_disabled_numba_runs_the_columns(monkeypatch):
    monkeypatch.setenv("ONYXRT_DISABLE_NUMBA", "1")
    monkeypatch.setattr(jit, "_OPTIONAL_MODULES", {})
    x = RNG.standard_normal((2, 3, 32, 32), np.float32)
    w = (RNG.standard_normal((16, 3, 4, 4)) / 7).astype(np.float32)
    np.testing.assert_allclose(convolve(x, w, None), reference(x, w, None), rtol=1e-5, atol=1e-5)


@needs_numba
def test_session_matches_onnxruntime():
    """A ConvNeXt-like stem and downsampling (each 4x4/4 and 2x2/2 Conv with a bias, the second after a Relu the
    optimizer fuses into the first), against onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    w1 = (RNG.standard_normal((24, 3, 4, 4)) / 7).astype(np.float32)
    b1 = RNG.standard_normal(24).astype(np.float32)
    w2 = (RNG.standard_normal((48, 24, 2, 2)) / 10).astype(np.float32)
    b2 = RNG.standard_normal(48).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[4, 4], strides=[4, 4]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    graph = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 64, 72])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
                               numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    x = RNG.standard_normal((2, 3, 64, 72), np.float32)
    got = onyxrt.InferenceSession(model).run(None, {"x": x})[0]
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
