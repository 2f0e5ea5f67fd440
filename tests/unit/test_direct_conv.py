"""Convolutions computed directly (nn/direct_conv.py): results against a float64 reference
for filters, strides, dilations, pads and every epilogue form, the shapes the route takes and leaves, the pool's
native task, a session against onnxruntime, and the column-matrix fallback where numba is unusable."""

import importlib.util

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt
from onyxrt.providers.cpu import jit
from onyxrt.providers.cpu.contrib.fused import mlas_activation_fn
from onyxrt.providers.cpu.nn import direct_conv
from onyxrt.providers.cpu.nn.conv_core import float_conv, pack_conv_weights
from reference_ops import CONV_ACTIVATIONS, conv_epilogue
from route_probes import asks_for_split_mode, routes_taken

needs_numba = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")
RNG = np.random.default_rng(29)


def reference(x, w, b, strides, dilations, pads):
    """The convolution in float64 (explicit [top, left, bottom, right] pads)."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    kh, kw = w.shape[2:]
    oh = (xp.shape[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (xp.shape[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    y = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for i in range(kh):
        for j in range(kw):
            r, c = i * dilations[0], j * dilations[1]
            window = xp[:, :, r:r + strides[0] * (oh - 1) + 1:strides[0], c:c + strides[1] * (ow - 1) + 1:strides[1]]
            y += np.einsum("mc,nchw->nmhw", w[:, :, i, j], window)
    return y if b is None else y + b[None, :, None, None]


def convolve(x, w, b, strides, dilations, pads, activation=None, residual=None):
    attributes = dict(group=1, strides=strides, dilations=dilations, pads=pads, kernel_shape=list(w.shape[2:]))
    packed = pack_conv_weights(w, b, attributes)
    return float_conv(x, w, b, 1, strides, dilations, pads, "NOTSET", list(w.shape[2:]), packed,
                      activation=activation, residual=residual)


# (x shape, output channels, kernel, strides, dilations, pads); output rows of 26-32 or 52-64 outputs, which tiles
# of 16 and 32 both take
CASES = [
    ((1, 3, 40, 60), 32, (3, 3), [2, 2], [1, 1], [1, 1, 1, 1]),  # a MobileNet stem
    ((2, 3, 45, 57), 20, (7, 7), [2, 2], [1, 1], [3, 3, 3, 3]),  # a ResNet stem, odd sizes, channels past a block
    ((1, 3, 64, 120), 24, (5, 5), [4, 4], [1, 1], [0, 0, 0, 0]),  # stride 4
    ((2, 1, 36, 28), 9, (3, 3), [1, 1], [1, 1], [0, 2, 1, 0]),  # one channel, asymmetric pads
    ((1, 4, 50, 86), 11, (5, 3), [1, 3], [2, 1], [2, 1, 2, 1]),  # four channels, dilation, unequal strides
    ((3, 2, 33, 54), 8, (3, 5), [2, 1], [1, 2], [4, 4, 4, 4]),  # pads wider than the filter's reach
    ((1, 40, 30, 124), 36, (3, 3), [2, 2], [1, 1], [1, 1, 1, 1]),  # a strided layer of many channels, 62 a row
    ((2, 24, 20, 28), 12, (3, 3), [1, 1], [1, 1], [1, 1, 1, 1]),  # a stride-1 layer of few output channels
    ((3, 3, 32, 32), 24, (3, 3), [2, 2], [1, 1], [1, 1, 1, 1]),  # rows of 16 outputs: two rows a tile
    ((2, 3, 25, 26), 10, (3, 3), [2, 2], [1, 1], [1, 1, 1, 1]),  # rows of 13, an odd row count: the last row alone
]
ACTIVATIONS = CONV_ACTIVATIONS + [("Tanh", [])]


@needs_numba
@pytest.mark.parametrize("shape,m,kernel,strides,dilations,pads", CASES)
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: a[0] if a else "none")
@pytest.mark.parametrize("biased", [False, True])
@pytest.mark.parametrize("summed", [False, True])
def test_matches_reference(shape, m, kernel, strides, dilations, pads, activation, biased, summed, monkeypatch):
    taken = routes_taken(monkeypatch, direct_conv, "direct_route")
    x = RNG.standard_normal(shape, np.float32)
    w = (RNG.standard_normal((m, shape[1]) + kernel) / np.sqrt(shape[1] * kernel[0] * kernel[1])).astype(np.float32)
    b = RNG.standard_normal(m).astype(np.float32) if biased else None
    want = reference(x, w, b, strides, dilations, pads)
    want, z, fn = conv_epilogue(want, summed, activation, RNG)
    y = convolve(x, w, b, strides, dilations, pads, fn, z)
    assert taken and taken[0] is not None  # the direct route ran
    assert y.shape == want.shape and y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("change", ["float64", "group", "channels", "one by one", "patchify", "negative pad", "rank"])
def test_shapes_the_route_leaves(change):
    shape, w_shape, group, strides, pads, dtype = (1, 3, 32, 32), (16, 3, 3, 3), 1, [2, 2], [1, 1, 1, 1], np.float32
    assert direct_conv.applies(shape, dtype, w_shape, group, strides, pads)
    if change == "float64":
        dtype = np.float64
    elif change == "group":
        shape, w_shape, group = (1, 4, 32, 32), (16, 2, 3, 3), 2
    elif change == "channels":  # a stride-1 layer of more than an image's channels, in and out
        shape, w_shape, strides = (1, 5, 32, 32), (direct_conv.MAX_STRIDE1_OUTPUTS + 1, 5, 3, 3), [1, 1]
    elif change == "one by one":
        w_shape, strides = (16, 3, 1, 1), [1, 1]
    elif change == "patchify":  # windows that do not overlap: the column matrix is the input rearranged
        w_shape, strides = (16, 3, 4, 4), [4, 4]
    elif change == "negative pad":
        pads = [1, -1, 1, 1]
    else:
        shape, w_shape, strides, pads = (1, 3, 32), (16, 3, 3), [2], [1, 1]
    assert not direct_conv.applies(shape, dtype, w_shape, group, strides, pads)


@needs_numba
def test_short_rows_take_the_column_matrix(monkeypatch):
    """Rows whose vectors would discard a quarter of their outputs or more stay on the column-matrix route."""
    kernels = pytest.importorskip("onyxrt.providers.cpu.nn.direct_conv_kernels")
    taken = routes_taken(monkeypatch, direct_conv, "direct_route")
    width = kernels.LANES + kernels.LANES // 2  # rounded up to two vectors: a third of the second discarded
    x = RNG.standard_normal((2, 3, width, width), np.float32)
    w = (RNG.standard_normal((8, 3, 3, 3)) / 5).astype(np.float32)
    y = convolve(x, w, None, [1, 1], [1, 1], [1, 1, 1, 1])
    assert taken == [None]
    np.testing.assert_allclose(y, reference(x, w, None, [1, 1], [1, 1], [1, 1, 1, 1]), rtol=1e-5, atol=1e-5)


@needs_numba
def test_wide_layers_of_short_rows_take_the_column_matrix(monkeypatch):
    """A strided layer of many channels whose rows fit one vector stays on the column matrix (its GEMM is deep); a
    stem of the same rows takes the direct route."""
    kernels = pytest.importorskip("onyxrt.providers.cpu.nn.direct_conv_kernels")
    taken = routes_taken(monkeypatch, direct_conv, "direct_route")
    width = 2 * (kernels.LANES - 1)  # stride 2: LANES - 1 outputs a row
    for channels in (direct_conv.MAX_CHANNELS + 4, 3):
        x = RNG.standard_normal((1, channels, 8, width), np.float32)
        w = (RNG.standard_normal((8, channels, 3, 3)) / 9).astype(np.float32)
        y = convolve(x, w, None, [2, 2], [1, 1], [1, 1, 1, 1])
        np.testing.assert_allclose(y, reference(x, w, None, [2, 2], [1, 1], [1, 1, 1, 1]), rtol=1e-5, atol=1e-5)
    assert taken[0] is None and taken[1] is not None


@needs_numba
@pytest.mark.parametrize("activation", [None, ("Relu", []), ("Sigmoid", [])], ids=lambda a: a[0] if a else "none")
@pytest.mark.parametrize("summed", [False, True])
@pytest.mark.parametrize("height, width", [(70, 60), (29, 32)])
def test_split_pool_runs_rows_as_native_tasks(activation, summed, height, width):
    """In a pool whose workers spin (split-GEMM mode) the output rows are shared out as native tasks: the same
    results as on one thread, across images and part boundaries (rows of 30 outputs; rows of 16, two a tile, 15 an
    image: parts and images starting at odd rows)."""
    from onyxrt.framework.thread_pool import ThreadPool

    x = RNG.standard_normal((3, 3, height, width), np.float32)
    w = (RNG.standard_normal((40, 3, 5, 5)) / 9).astype(np.float32)
    b = RNG.standard_normal(40).astype(np.float32)
    fn = None if activation is None else mlas_activation_fn(*activation)
    z = RNG.standard_normal((3, 40, (height + 1) // 2, width // 2)).astype(np.float32) if summed else None
    serial = convolve(x, w, b, [2, 2], [1, 1], [2, 2, 2, 2], fn, z)
    pool = ThreadPool(2).splitting_gemms()
    try:
        with pool.activate():
            assert pool.workers_spin or not pool.runs_native_tasks
            split = convolve(x, w, b, [2, 2], [1, 1], [2, 2, 2, 2], fn, z)
    finally:
        pool.shutdown()
    np.testing.assert_array_equal(split, serial)


@needs_numba
def test_large_convolutions_ask_for_the_split_mode():
    """A direct convolution of 16M multiply-adds or more tells a session learning its thread mode that the pool's
    split mode runs it faster (a DenseNet-like growth layer); a small RGB stem does not."""
    for shape, m, asks in (((8, 32, 32, 32), 8, True), ((8, 3, 32, 32), 16, False)):
        x = RNG.standard_normal(shape, np.float32)
        w = (RNG.standard_normal((m, shape[1], 3, 3)) / 9).astype(np.float32)
        assert asks_for_split_mode(lambda: convolve(x, w, None, [1, 1], [1, 1], [1, 1, 1, 1])) is asks


def test_disabled_numba_runs_the_columns(monkeypatch):
    monkeypatch.setenv("ONYXRT_DISABLE_NUMBA", "1")
    monkeypatch.setattr(jit, "_OPTIONAL_MODULES", {})
    x = RNG.standard_normal((1, 3, 40, 40), np.float32)
    w = (RNG.standard_normal((16, 3, 3, 3)) / 5).astype(np.float32)
    y = convolve(x, w, None, [2, 2], [1, 1], [1, 1, 1, 1])
    np.testing.assert_allclose(y, reference(x, w, None, [2, 2], [1, 1], [1, 1, 1, 1]), rtol=1e-5, atol=1e-5)


@needs_numba
def test_session_matches_onnxruntime():
    """A stem (Conv + Relu, fused by the optimizer into FusedConv) and the layer after it, against onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    w1 = (RNG.standard_normal((32, 3, 3, 3)) / 5).astype(np.float32)
    b1 = RNG.standard_normal(32).astype(np.float32)
    w2 = (RNG.standard_normal((16, 32, 1, 1)) / 6).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 96, 120])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
                               numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    x = RNG.standard_normal((2, 3, 96, 120), np.float32)
    got = onyxrt.InferenceSession(model).run(None, {"x": x})[0]
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
