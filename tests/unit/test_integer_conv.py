"""Integer convolutions (nn/integer_conv.py) and the QDQ Conv fusion (optimizer/qdq_conv_fusion.py).

QLinearConv and ConvInteger run as channels-last im2col + ``int8_gemm``; they are checked
against onnxruntime and against an exact int64 reference, on every route (int8_gemm's numpy
fallback, numba disabled, weights not constant). QLinearConv's requantization is float32
(``acc * (x_scale * w_scale / y_scale)``, rounded half to even) like onnxruntime's, so outputs
are compared exactly here; a value lying on a rounding boundary could differ by one unit on
another CPU, which the QDQ tests allow (the fused integer kernel rounds the integer sum where
the QDQ graph rounds a float sum).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt
from ort_int8 import non_saturating_int8, onnxruntime_u8s8_is_exact, onnxruntime_unfused_session
from onyxrt.providers.cpu.nn import conv as conv_kernels
from onyxrt.providers.cpu.nn import integer_conv

ort = pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(7)
F = np.float32
_TENSOR_TYPE = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}

CASES = [  # (x shape, w shape, attributes)
    ((1, 16, 14, 14), (32, 16, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((2, 24, 9, 11), (40, 24, 1, 1), {}),
    ((1, 3, 33, 31), (8, 3, 7, 7), dict(pads=[3, 3, 3, 3], strides=[2, 2])),
    ((1, 8, 10, 10), (8, 2, 3, 3), dict(pads=[1, 0, 1, 2], group=4, dilations=[2, 1])),  # thin groups: float64 route
    ((1, 16, 9, 9), (16, 8, 3, 3), dict(pads=[1, 1, 1, 1], group=2, dilations=[1, 2])),  # one GEMM per group
    ((2, 6, 12, 12), (12, 6, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    ((1, 32, 40, 40), (16, 32, 1, 1), dict(strides=[2, 2])),
    ((1, 8, 10), (6, 8, 3), dict(pads=[1, 1])),
    ((1, 24, 10, 10), (24, 1, 3, 3), dict(pads=[1, 1, 1, 1], group=24)),  # depthwise: its own kernel
    ((2, 16, 9, 9), (16, 1, 3, 3), dict(pads=[1, 0, 1, 2], strides=[2, 2], dilations=[1, 2], group=16)),
    ((1, 32, 64, 64), (32, 1, 3, 3), dict(pads=[1, 1, 1, 1], strides=[1, 2], group=32)),  # rows split over the pool
]
CASE_IDS = ["3x3", "1x1-batch2", "7x7-stride2", "grouped-dilated", "two-groups", "same-upper", "1x1-stride2", "1d",
            "depthwise", "depthwise-strided-dilated", "depthwise-banded"]


def _random(dtype, shape):
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max + 1, shape).astype(dtype)


def _qlinear_conv_model(x_shape, w, attrs, *, x_dtype, y_dtype, per_channel, bias, w_constant=True):
    m = w.shape[0]
    w_scale = (RNG.random(m) * 0.01 + 0.002).astype(F) if per_channel else np.array(0.004, F)
    w_zero = np.zeros(m, w.dtype) if per_channel else np.array(3 if w.dtype == np.uint8 else -2, w.dtype)
    x_zero = np.array(131 if x_dtype == np.uint8 else -5, x_dtype)
    y_zero = np.array(100 if y_dtype == np.uint8 else 7, y_dtype)
    inits = [numpy_helper.from_array(np.array(0.02, F), "xs"), numpy_helper.from_array(x_zero, "xz"),
             numpy_helper.from_array(w_scale, "ws"), numpy_helper.from_array(w_zero, "wz"),
             numpy_helper.from_array(np.array(0.05, F), "ys"), numpy_helper.from_array(y_zero, "yz")]
    inputs = [helper.make_tensor_value_info("x", _TENSOR_TYPE[np.dtype(x_dtype)], list(x_shape))]
    feeds = {}
    if w_constant:
        inits.append(numpy_helper.from_array(w, "w"))
    else:
        inputs.append(helper.make_tensor_value_info("w", _TENSOR_TYPE[w.dtype], list(w.shape)))
        feeds["w"] = w
    names = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
    if bias:
        inits.append(numpy_helper.from_array(RNG.integers(-20000, 20000, m).astype(np.int32), "b"))
        names.append("b")
    graph = helper.make_graph([helper.make_node("QLinearConv", names, ["y"], **attrs)], "g", inputs,
                              [helper.make_tensor_value_info("y", _TENSOR_TYPE[np.dtype(y_dtype)], None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return model.SerializeToString(), feeds


def _both(model: bytes, feeds: dict):
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = onyxrt.InferenceSession(model).run(None, feeds)[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    return got, want


@pytest.mark.parametrize("x_shape,w_shape,attrs", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("types", [(np.uint8, np.int8, np.uint8, True), (np.int8, np.int8, np.int8, False),
                                   (np.uint8, np.uint8, np.uint8, False)], ids=["u8s8-per-channel", "s8s8", "u8u8"])
def test_qlinear_conv_matches_onnxruntime(x_shape, w_shape, attrs, types):
    x_dtype, w_dtype, y_dtype, per_channel = types
    w = _random(w_dtype, w_shape)
    model, feeds = _qlinear_conv_model(x_shape, w, attrs, x_dtype=x_dtype, y_dtype=y_dtype,
                                       per_channel=per_channel, bias=True)
    feeds["x"] = _random(x_dtype, x_shape)
    if (x_dtype, w_dtype) == (np.uint8, np.int8) and not onnxruntime_u8s8_is_exact():
        # onnxruntime's u8s8 kernel saturates pair sums without VNNI: the full-range weights are
        # checked against the exact result, onnxruntime on weights whose pair sums cannot saturate
        np.testing.assert_array_equal(onyxrt.InferenceSession(model).run(None, feeds)[0],
                                      _exact_qlinear_conv(model, feeds["x"]))
        model = _with_initializer(model, "w", non_saturating_int8(w))
    got, want = _both(model, feeds)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("x_shape,w_shape,attrs", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("constant_weights", [True, False], ids=["prepacked", "weights-fed"])
def test_channels_last_qlinear_conv_gives_the_same_bytes(x_shape, w_shape, attrs, constant_weights):
    """com.microsoft QLinearConv with channels_last (what the NHWC layout pass makes) on the transposed
    input equals ONNX QLinearConv, transposed: the integer GEMM route reads and writes channels-last
    directly, the float64 route (thin groups) transposes around the same computation."""
    w = _random(np.int8, w_shape)
    x = _random(np.uint8, x_shape)
    model, feeds = _qlinear_conv_model(x_shape, w, attrs, x_dtype=np.uint8, y_dtype=np.uint8, per_channel=True,
                                       bias=True, w_constant=constant_weights)
    (want,) = onyxrt.InferenceSession(model).run(None, {**feeds, "x": x})
    proto = onnx.load_from_string(model)
    node = proto.graph.node[0]
    node.domain = "com.microsoft"
    node.attribute.append(helper.make_attribute("channels_last", 1))
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    proto.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.UINT8,
                                                                [x_shape[0], *x_shape[2:], x_shape[1]]))
    (got,) = onyxrt.InferenceSession(proto.SerializeToString()).run(None, {**feeds, "x": np.moveaxis(x, 1, -1).copy()})
    np.testing.assert_array_equal(got, np.moveaxis(want, 1, -1))


def _with_initializer(model: bytes, name: str, value: np.ndarray) -> bytes:
    proto = onnx.load_from_string(model)
    tensor = next(t for t in proto.graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(value, name))
    return proto.SerializeToString()


def _exact_qlinear_conv(model: bytes, x: np.ndarray) -> np.ndarray:
    """A one-node QLinearConv model's output from its exact integer sum, requantized as the kernels do.

    The sum is onnxruntime's float32 Conv of the zero-point-shifted integers: every partial sum
    here stays below 2**24, so float32 holds it exactly whatever the summation order.
    """
    proto = onnx.load_from_string(model)
    (node,) = proto.graph.node
    values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    w, w_zero = values["w"], values["wz"]
    channel_shape = (-1,) + (1,) * (w.ndim - 1)
    shifted_w = (w.astype(np.int64) - np.asarray(w_zero, np.int64).reshape(channel_shape)).astype(F)
    shifted_x = (x.astype(np.int64) - int(values["xz"])).astype(F)
    assert np.prod(w.shape[1:]) * np.abs(shifted_x).max() * np.abs(shifted_w).max() < 2**24
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    float_graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], **attributes)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(shifted_w, "w")])
    float_model = helper.make_model(float_graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    accumulator = ort.InferenceSession(float_model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": shifted_x})[0].astype(np.int64)
    output_channel_shape = (1, -1) + (1,) * (w.ndim - 2)
    if "b" in values:
        accumulator += values["b"].reshape(output_channel_shape)
    multiplier = ((values["xs"] * values["ws"]) / values["ys"]).astype(F).reshape(output_channel_shape)
    y_zero = values["yz"]
    info = np.iinfo(y_zero.dtype)
    return np.clip(np.rint(accumulator.astype(F) * multiplier) + int(y_zero), info.min, info.max).astype(y_zero.dtype)


def _exact_conv(x, w, x_zero, w_zero, group, strides, pads, dilations):
    """int64 direct convolution of (x - x_zero) by (w - w_zero[m]): the definition, loop by loop."""
    xi = x.astype(np.int64) - int(x_zero)
    wi = w.astype(np.int64) - np.asarray(w_zero, np.int64).reshape(-1, 1, 1, 1)
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.pad(xi, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (h + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (wd + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    y = np.zeros((n, m, oh, ow), np.int64)
    mg = m // group
    for out_channel in range(m):
        g = out_channel // mg
        for i in range(kh):
            for j in range(kw):
                window = xp[:, g * cg:(g + 1) * cg, i * dilations[0]: i * dilations[0] + strides[0] * (oh - 1) + 1: strides[0],
                            j * dilations[1]: j * dilations[1] + strides[1] * (ow - 1) + 1: strides[1]]
                y[:, out_channel] += np.einsum("nchw,c->nhw", window, wi[out_channel, :, i, j])
    return y


@pytest.mark.parametrize("dtypes", [(np.uint8, np.int8), (np.int8, np.uint8), (np.uint8, np.uint8)])
def test_conv_integer_is_exact_and_matches_onnxruntime(dtypes):
    x_dtype, w_dtype = dtypes
    x = _random(x_dtype, (2, 6, 11, 9))
    w = _random(w_dtype, (10, 3, 3, 2))
    x_zero, w_zero = np.array(17, x_dtype), np.array(5, w_dtype)
    attrs = dict(group=2, strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2])
    want = _exact_conv(x, w, x_zero, np.full(10, w_zero), 2, attrs["strides"], attrs["pads"], attrs["dilations"])
    got = conv_kernels.conv_integer(x, w, x_zero, w_zero, **attrs)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
    graph = helper.make_graph(
        [helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], **attrs)], "g",
        [helper.make_tensor_value_info("x", _TENSOR_TYPE[np.dtype(x_dtype)], list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(x_zero, "xz"), numpy_helper.from_array(w_zero, "wz")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9).SerializeToString()
    if (x_dtype, w_dtype) != (np.int8, np.uint8):  # onnxruntime's CPU ConvInteger has no int8 x uint8 kernel
        got_session, want_session = _both(model, {"x": x})
        np.testing.assert_array_equal(got_session, want_session)
    np.testing.assert_array_equal(onyxrt.InferenceSession(model).run(None, {"x": x})[0], want)


def test_qlinear_conv_per_channel_zero_points_exact_and_as_onnxruntime():
    """uint8 weights with a different zero point per output channel."""
    x = _random(np.uint8, (1, 5, 8, 8))
    w = _random(np.uint8, (7, 5, 3, 3))
    w_zero = RNG.integers(0, 256, 7).astype(np.uint8)
    acc = _exact_conv(x, w, 128, w_zero, 1, [1, 1], [1, 1, 1, 1], [1, 1])
    w_scale = (RNG.random(7) * 0.01 + 0.001).astype(F)
    got = conv_kernels.qlinear_conv(x, F(0.03), np.uint8(128), w, w_scale, w_zero, F(0.5), np.uint8(90), pads=[1, 1, 1, 1])
    multiplier = ((F(0.03) * w_scale) / F(0.5)).astype(F).reshape(1, -1, 1, 1)
    want = np.clip(np.rint(acc.astype(F) * multiplier) + 90, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(got, want)
    names = ["xs", "xz", "w", "ws", "wz", "ys", "yz"]
    values = [np.array(0.03, F), np.array(128, np.uint8), w, w_scale, w_zero, np.array(0.5, F), np.array(90, np.uint8)]
    graph = helper.make_graph(
        [helper.make_node("QLinearConv", ["x", *names], ["y"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
        [numpy_helper.from_array(v, n) for n, v in zip(names, values)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9).SerializeToString()
    got_session, want_session = _both(model, {"x": x})
    np.testing.assert_array_equal(got_session, want_session)
    np.testing.assert_array_equal(got_session, want)


@pytest.mark.parametrize("case", [0, CASE_IDS.index("depthwise")], ids=["3x3", "depthwise"])
@pytest.mark.parametrize("route", ["gemm-numpy", "numba-disabled", "weights-not-constant"])
def test_fallback_routes_give_the_same_bytes(route, case, monkeypatch):
    x_shape, w_shape, attrs = CASES[case]
    w = _random(np.int8, w_shape)
    x = _random(np.uint8, x_shape)
    model, _ = _qlinear_conv_model(x_shape, w, attrs, x_dtype=np.uint8, y_dtype=np.uint8, per_channel=True, bias=True)
    (want,) = onyxrt.InferenceSession(model).run(None, {"x": x})
    feeds = {"x": x}
    if route == "gemm-numpy":
        monkeypatch.setenv("ONYXRT_INT8_GEMM", "numpy")
    elif route == "numba-disabled":
        monkeypatch.setenv("ONYXRT_DISABLE_NUMBA", "1")
        monkeypatch.setenv("ONYXRT_INT8_GEMM", "numpy")
    else:
        proto = onnx.load_from_string(model)
        weight = next(t for t in proto.graph.initializer if t.name == "w")
        proto.graph.initializer.remove(weight)
        proto.graph.input.append(helper.make_tensor_value_info("w", TensorProto.INT8, list(w_shape)))
        model, feeds = proto.SerializeToString(), {"x": x, "w": w}
    (got,) = onyxrt.InferenceSession(model).run(None, feeds)
    np.testing.assert_array_equal(got, want)


def test_prepack_keeps_the_packed_filter():
    w = _random(np.int8, (16, 8, 3, 3))
    packed = conv_kernels._qlinear_conv_prepack([None, None, None, w, None, np.zeros(16, np.int8)], {"group": 1})
    assert isinstance(packed, integer_conv.IntegerConvWeights)
    assert packed.shape == (16, 8, 3, 3) and len(packed.packs) == 1 and packed.packs[0].shape == (72, 16)


def test_bad_input_channels_are_reported():
    w = _random(np.int8, (4, 3, 3, 3))
    x = _random(np.uint8, (1, 5, 8, 8))
    with pytest.raises(Exception, match="channels|inconsistent"):
        conv_kernels.qlinear_conv(x, F(0.1), np.uint8(0), w, F(0.1), np.int8(0), F(0.1), np.uint8(0))


# --------------------------------------------------------------------------- QDQ Conv fusion


def _qdq_conv_model(*, per_channel=True, bias_scale_factor=1.0, weight_axis=0, extra_reader=False, with_bias=True):
    """DQ(x) -> Conv(DQ(w), DQ(b)) -> Q, as onnxruntime's quantize_static writes it."""
    m, c = 12, 6
    w = _random(np.int8, (m, c, 3, 3))
    x_scale, w_scale = np.array(0.03, F), (RNG.random(m if per_channel else 1) * 0.01 + 0.002).astype(F)
    if not per_channel:
        w_scale = w_scale.reshape(())
    bias = RNG.integers(-3000, 3000, m).astype(np.int32)
    bias_scale = (x_scale * w_scale * F(bias_scale_factor)).astype(F)
    if not per_channel:
        bias_scale = np.full(m, bias_scale, F)
    inits = [numpy_helper.from_array(x_scale, "xs"), numpy_helper.from_array(np.array(120, np.uint8), "xz"),
             numpy_helper.from_array(w, "wq"), numpy_helper.from_array(w_scale, "ws"),
             numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), "wz"),
             numpy_helper.from_array(bias, "bq"), numpy_helper.from_array(bias_scale, "bs"),
             numpy_helper.from_array(np.zeros(m, np.int32), "bz"),
             numpy_helper.from_array(np.array(0.04, F), "ys"), numpy_helper.from_array(np.array(0, np.uint8), "yz")]
    nodes = [helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["x"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=weight_axis),
             helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["b"], axis=0),
             helper.make_node("Conv", ["x", "w", "b"] if with_bias else ["x", "w"], ["conv"], pads=[1, 1, 1, 1],
                              name="conv0"),
             helper.make_node("QuantizeLinear", ["conv", "ys", "yz"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.UINT8, None)]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["conv"], ["side"]))
        outputs.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("xq", TensorProto.UINT8, [1, c, 10, 10])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _run_qdq(model: onnx.ModelProto, tmp_path):
    options = onyxrt.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = onyxrt.InferenceSession(model.SerializeToString(), options)
    feeds = {"xq": _random(np.uint8, (1, 6, 10, 10))}
    got = session.run(None, feeds)
    if onnxruntime_u8s8_is_exact():
        reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    else:  # onnxruntime's u8s8 kernel saturates without VNNI: its float QDQ graph, unfused, is the reference
        reference = onnxruntime_unfused_session(model.SerializeToString())
    want = reference.run(None, feeds)
    ops = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    return session, got, want, ops, feeds


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_qdq_conv_becomes_qlinear_conv(per_channel, with_bias, tmp_path):
    model = _qdq_conv_model(per_channel=per_channel, with_bias=with_bias)
    session, got, want, ops, feeds = _run_qdq(model, tmp_path)
    assert ops == ["QLinearConv"]
    assert "qdq_conv_fusion" in session.applied_optimizations
    # the integer kernel rounds the exact integer sum, the QDQ graph a float sum: one unit at most
    diff = np.abs(got[0].astype(np.int32) - want[0].astype(np.int32))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    if not onnxruntime_u8s8_is_exact():
        # onnxruntime's u8s8 kernel saturates without VNNI: its QLinearConv runs weights whose pair sums cannot
        weights = next(t for t in model.graph.initializer if t.name == "wq")
        weights.CopyFrom(numpy_helper.from_array(non_saturating_int8(numpy_helper.to_array(weights)), "wq"))
        _, got, _, _, feeds = _run_qdq(model, tmp_path)
    # onnxruntime runs the saved fused model with the same bytes as onyxrt
    saved = ort.InferenceSession(str(tmp_path / "optimized.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_array_equal(saved[0], got[0])


@pytest.mark.parametrize("variant", ["bias-scale-differs", "weight-axis-1", "conv-output-read-elsewhere"])
def test_qdq_conv_outside_the_exact_pattern_stays(variant, tmp_path):
    model = _qdq_conv_model(bias_scale_factor=1.01 if variant == "bias-scale-differs" else 1.0,
                            weight_axis=1 if variant == "weight-axis-1" else 0,
                            per_channel=variant != "weight-axis-1",
                            extra_reader=variant == "conv-output-read-elsewhere")
    if variant == "weight-axis-1":  # per-tensor scale given per input channel: not a per-output-channel weight
        proto_ws = next(t for t in model.graph.initializer if t.name == "ws")
        proto_wz = next(t for t in model.graph.initializer if t.name == "wz")
        proto_ws.CopyFrom(numpy_helper.from_array((RNG.random(6) * 0.01 + 0.002).astype(F), "ws"))
        proto_wz.CopyFrom(numpy_helper.from_array(np.zeros(6, np.int8), "wz"))
    session, got, want, ops, _ = _run_qdq(model, tmp_path)
    assert "QLinearConv" not in ops and "Conv" in ops
    for ours, theirs in zip(got, want):
        np.testing.assert_allclose(ours.astype(np.float64), theirs.astype(np.float64), atol=1)
