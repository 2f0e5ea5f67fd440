"""com.microsoft NhwcFusedConv / NhwcConv (providers/cpu/contrib/nhwc_conv.py) against the channels-first FusedConv
between transposes, every route (pointwise GEMM with the epilogue in or after it, depthwise vector blocks, the
channels-first fallback); the channels-last layout transposes (tensor/channels_last.py) and ReduceMean's
channels-last image mean."""

import importlib.util

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt
from onyxrt.errors import NodeInputError
from onyxrt.framework.thread_pool import ThreadPool
from onyxrt.providers.cpu.contrib import nhwc_conv
from onyxrt.providers.cpu.math import reduction
from onyxrt.providers.cpu.tensor.shape_ops import transpose

needs_numba = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")
RNG = np.random.default_rng(21)


def _session(nodes, inputs, inits):
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    options = onyxrt.SessionOptions()
    options.graph_optimization_level = onyxrt.GraphOptimizationLevel.ORT_DISABLE_ALL
    return onyxrt.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _both(x, w, b, z, op="NhwcFusedConv", **attributes):
    """(channels-first FusedConv's output, the NHWC op's output transposed back) for NCHW x and z."""
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(b, "b")] if b is not None else [])
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)]
    feeds = {"x": x}
    if z is not None:
        inputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, z.shape))
        feeds["z"] = z
    bias = "b" if b is not None else ""
    reference = _session([helper.make_node("FusedConv", ["x", "w", bias] + (["z"] if z is not None else []), ["y"],
                                           domain="com.microsoft", **attributes)], inputs, inits)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 3, 1])]
    if z is not None:
        nodes.append(helper.make_node("Transpose", ["z"], ["zt"], perm=[0, 2, 3, 1]))
    nhwc_inputs = ["xt", "w", bias] + (["zt"] if z is not None else [])
    nodes += [helper.make_node(op, nhwc_inputs, ["yt"], domain="com.microsoft", **attributes),
              helper.make_node("Transpose", ["yt"], ["y"], perm=[0, 3, 1, 2])]
    return reference.run(None, feeds)[0], _session(nodes, inputs, inits).run(None, feeds)[0]


def _case(n, c, h, w, m, k, group):
    x = RNG.standard_normal((n, c, h, w)).astype(np.float32)
    weights = (RNG.standard_normal((m, c // group, k, k)) / np.sqrt(c // group * k * k)).astype(np.float32)
    return x, weights, RNG.standard_normal(m).astype(np.float32)


ACTIVATIONS = [(None, None), ("Relu", None), ("Clip", [0.0, 6.0]), ("HardSigmoid", [0.2, 0.5]), ("LeakyRelu", [0.1]),
               ("Sigmoid", None), ("Tanh", None), ("HardSwish", None), ("QuickGelu", [1.702])]


def _activation(name, params):
    attributes = {}
    if name:
        attributes["activation"] = name
    if params:
        attributes["activation_params"] = params
    return attributes


@pytest.mark.parametrize("activation, params", ACTIVATIONS)
@pytest.mark.parametrize("summed", [False, True])
@pytest.mark.parametrize("split", [False, True])
def test_pointwise(activation, params, summed, split):
    """A 1x1 convolution as one product with the pixels as rows: the bias per column, the sum and the activation
    in the GEMM's registers or after it, in both pool modes."""
    x, w, b = _case(2, 24, 7, 7, 40, 1, 1)
    z = RNG.standard_normal((2, 40, 7, 7)).astype(np.float32) if summed else None
    pool = ThreadPool(2).splitting_gemms() if split else ThreadPool(2)
    with pool.activate():
        want, got = _both(x, w, b, z, **_activation(activation, params))
    pool.shutdown()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@needs_numba
@pytest.mark.parametrize("activation, params", ACTIVATIONS)
@pytest.mark.parametrize("channels, size, kernel, stride, pads", [
    (32, 14, 3, 1, [1, 1, 1, 1]), (48, 16, 3, 2, [1, 1, 1, 1]), (17, 9, 5, 1, [2, 2, 2, 2]),
    (40, 11, 7, 2, [3, 3, 3, 3]), (20, 8, 3, 1, [0, 1, 2, 0]), (16, 6, 1, 1, [0, 0, 0, 0]),
])
def test_depthwise(activation, params, channels, size, kernel, stride, pads):
    """One filter per channel in the vector blocks, read and written channels-last (partial blocks of channels,
    strides, uneven pads, filters of 1 to 7)."""
    x, w, b = _case(2, channels, size, size + 1, channels, kernel, channels)
    want, got = _both(x, w, b, None, group=channels, kernel_shape=[kernel, kernel], strides=[stride, stride],
                      pads=pads, **_activation(activation, params))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@needs_numba
def test_depthwise_split_over_the_pool():
    """A large depthwise convolution shared out over a pool that splits products (blocks of channels; one block's
    rows in runs where there are fewer blocks than threads) equals the serial one."""
    for channels in (64, 7):
        x, w, b = _case(1, channels, 64, 64, channels, 3, channels)
        attributes = dict(group=channels, kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], activation="Relu")
        serial = _both(x, w, b, None, **attributes)[1]
        pool = ThreadPool(2).splitting_gemms()
        with pool.activate():
            parallel = _both(x, w, b, None, **attributes)[1]
        pool.shutdown()
        np.testing.assert_array_equal(parallel, serial)


@pytest.mark.parametrize("group, kernel, stride, dilation", [(1, 3, 2, 1), (2, 3, 1, 2), (1, 1, 2, 1)])
def test_other_convolutions_computed_channels_first(group, kernel, stride, dilation):
    """Grouped, kxk, strided 1x1 and dilated convolutions (no channels-last route) run channels-first between
    transposes, with the sum and the activation."""
    x, w, b = _case(1, 8, 12, 10, 16, kernel, group)
    pad = (kernel // 2) * dilation
    attributes = dict(group=group, kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4,
                      dilations=[dilation, dilation], activation="Relu")
    out_h = (12 + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    out_w = (10 + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    z = RNG.standard_normal((1, 16, out_h, out_w)).astype(np.float32)
    want, got = _both(x, w, b, z, **attributes)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_nhwc_conv_without_bias():
    x, w, _ = _case(1, 8, 5, 5, 12, 1, 1)
    want, got = _both(x, w, None, None, op="NhwcConv")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_errors_name_the_problem():
    x = np.zeros((1, 4, 4, 6), np.float32)
    w = np.zeros((8, 4, 1, 1), np.float32)
    with pytest.raises(NodeInputError, match="channels"):
        nhwc_conv.nhwc_fused_conv(x, w, None, kernel_shape=[1, 1])
    with pytest.raises(NodeInputError, match="4-D"):
        nhwc_conv.nhwc_fused_conv(np.zeros((4, 4, 6), np.float32), w)


@needs_numba
@pytest.mark.parametrize("shape", [(1, 32, 30, 30), (2, 13, 9, 40), (1, 1280, 7, 7), (3, 5, 17, 19), (1, 64, 64, 3)])
@pytest.mark.parametrize("split", [False, True])
def test_channel_transposes(shape, split):
    """NCHW <-> NHWC Transposes of float32 tensors (compiled 8x8 register transposes, the edges element by element,
    split over a pool that splits products) equal numpy's."""
    x = RNG.standard_normal(shape).astype(np.float32)
    pool = ThreadPool(2).splitting_gemms() if split else ThreadPool(1)
    with pool.activate():
        for perm in ([0, 2, 3, 1], [0, 3, 1, 2]):
            y = transpose(x, perm=perm)
            assert y.flags.c_contiguous
            np.testing.assert_array_equal(y, x.transpose(perm))
    pool.shutdown()


@pytest.mark.parametrize("keepdims", [True, False])
def test_reduce_mean_over_an_images_rows_and_columns(keepdims):
    x = RNG.standard_normal((3, 5, 7, 9)).astype(np.float32)
    got = reduction._mean(x, (1, 2), keepdims)
    np.testing.assert_allclose(got, x.mean(axis=(1, 2), keepdims=keepdims), rtol=1e-6, atol=1e-6)
