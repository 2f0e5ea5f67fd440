"""QDQ chains of a quantized convolution net: Add/Mul fusion (optimizer/qdq_binary_fusion.py), QDQ dropped
around data movement (optimizer/drop_qdq_nodes.py) and the channels-last layout of 8-bit convolution
chains (optimizer/nhwc_transformer.py).

The net is a small residual block written by onnxruntime's own ``quantize_static`` (QDQ format),
as real quantized models are. The layout pass must not change a byte (each kernel computes the
same values channels-last); the fusions may move a value by one quantization step where the
float detour rounded differently, which is what onnxruntime's fusions do too.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt
from optimizer_checks import session_at_level
from ort_int8 import onnxruntime_unfused_session

ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")
RNG = np.random.default_rng(11)
F = np.float32


def _float_block() -> onnx.ModelProto:
    """Conv-Relu -> MaxPool -> two branches (3x3 Conv-Relu -> 1x1 Conv, 1x1 Conv) -> Add -> Relu -> Mul by a
    second branch -> GlobalAveragePool -> Flatten -> Gemm: the shapes of a residual CNN, small."""
    def weight(name, *shape):
        return numpy_helper.from_array((RNG.standard_normal(shape) * (2.0 / np.prod(shape[1:])) ** 0.5).astype(F), name)

    inits = [weight("w0", 16, 3, 3, 3), weight("w1", 16, 16, 3, 3), weight("w2", 24, 16, 1, 1),
             weight("w3", 24, 16, 1, 1), weight("w4", 24, 24, 1, 1), weight("fc", 10, 24),
             numpy_helper.from_array(RNG.standard_normal(16).astype(F) * 0.1, "b0"),
             numpy_helper.from_array(np.zeros(10, F), "fcb")]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("MaxPool", ["r0"], ["p0"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Conv", ["p0", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"]),
        helper.make_node("Conv", ["p0", "w3"], ["c3"]),
        helper.make_node("Add", ["c2", "c3"], ["s"]),
        helper.make_node("Relu", ["s"], ["r2"]),
        helper.make_node("Conv", ["r2", "w4"], ["c4"]),
        helper.make_node("Sigmoid", ["c4"], ["g"]),
        helper.make_node("Mul", ["r2", "g"], ["m"]),
        helper.make_node("GlobalAveragePool", ["m"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["y"], transB=1),
    ]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


class _Samples(quantization.CalibrationDataReader):
    def __init__(self) -> None:
        self.samples = iter([{"x": RNG.standard_normal((1, 3, 32, 32)).astype(F)} for _ in range(4)])

    def get_next(self):
        return next(self.samples, None)


@pytest.fixture(scope="module")
def qdq_block(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("qdq_block")
    float_path, qdq_path = str(folder / "float.onnx"), str(folder / "qdq.onnx")
    onnx.save(_float_block(), float_path)
    quantization.quantize_static(float_path, qdq_path, _Samples(), quant_format=quantization.QuantFormat.QDQ,
                                 per_channel=True, activation_type=quantization.QuantType.QUInt8,
                                 weight_type=quantization.QuantType.QInt8)
    return qdq_path


def _ops(path: str) -> Counter:
    return Counter((node.domain or "ai.onnx", node.op_type) for node in onnx.load(path).graph.node)


def test_quantized_block_runs_on_integers_channels_last(qdq_block, tmp_path):
    saved = str(tmp_path / "optimized.onnx")
    session = session_at_level(qdq_block, onyxrt.GraphOptimizationLevel.ORT_ENABLE_ALL, saved)
    ops = _ops(saved)
    conv_nodes = [n for n in onnx.load(saved).graph.node if n.op_type == "QLinearConv"]
    assert ops[("com.microsoft", "QLinearConv")] == 5 and ops[("ai.onnx", "QLinearConv")] == 0
    assert all(helper.get_attribute_value(a) == 1 for n in conv_nodes for a in n.attribute if a.name == "channels_last")
    assert ops[("com.microsoft", "QLinearAdd")] == 1 and ops[("com.microsoft", "QLinearMul")] == 1
    assert ops[("com.microsoft", "NhwcMaxPool")] == 1
    # the chain is entered once (the quantized image) and left once (before the float tail)
    assert ops[("ai.onnx", "Transpose")] <= 2
    assert {"nhwc_transformer", "qdq_binary_fusion", "drop_qdq_nodes"} <= set(session.applied_optimizations)

    x = RNG.standard_normal((1, 3, 32, 32)).astype(F)
    (got,) = session.run(None, {"x": x})
    # the layout changes no byte: the same fusions in NCHW give the same result
    (nchw,) = session_at_level(qdq_block, onyxrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED).run(None, {"x": x})
    np.testing.assert_array_equal(got, nchw)
    # the float QDQ graph (onnxruntime, unfused) within a few quantization steps of the logits
    (want,) = onnxruntime_unfused_session(qdq_block).run(None, {"x": x})
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
    # onnxruntime runs the saved layout (its own contrib ops) as it runs the QDQ file (where its u8s8
    # products saturate without VNNI, both saturate alike)
    (theirs,) = ort.InferenceSession(saved, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    (their_qdq,) = ort.InferenceSession(qdq_block, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.abs(theirs - their_qdq).max() <= 0.05 * np.abs(their_qdq).max()


def _single_op_model(op_type: str, *, y_scale=0.05, y_zero=128, y_type=TensorProto.UINT8, opset=17, attrs=None,
                     extra_inputs=(), extra_inits=()):
    """DQ(x) -> op -> Q, the op's data input dequantized with scale 0.05 and zero point 128."""
    zero_type = {TensorProto.UINT8: np.uint8, TensorProto.INT8: np.int8}[y_type]
    inits = [numpy_helper.from_array(np.array(0.05, F), "xs"), numpy_helper.from_array(np.array(128, np.uint8), "xz"),
             numpy_helper.from_array(np.array(y_scale, F), "ys"), numpy_helper.from_array(np.array(y_zero, zero_type), "yz"),
             *extra_inits]
    nodes = [helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["x"]),
             helper.make_node(op_type, ["x", *extra_inputs], ["r"], **(attrs or {})),
             helper.make_node("QuantizeLinear", ["r", "ys", "yz"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("xq", TensorProto.UINT8, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", y_type, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


_MOVES = {
    "MaxPool": dict(attrs=dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])),
    "Reshape": dict(extra_inputs=["shape"], extra_inits=[numpy_helper.from_array(np.array([1, 4, 36], np.int64), "shape")]),
    "Transpose": dict(attrs=dict(perm=[0, 2, 3, 1])),
    "Flatten": dict(attrs=dict(axis=1)),
}


@pytest.mark.parametrize("op_type", sorted(_MOVES))
def test_data_movement_runs_on_the_8_bit_tensor(op_type, tmp_path):
    model = _single_op_model(op_type, **_MOVES[op_type])
    saved = str(tmp_path / "optimized.onnx")
    session = session_at_level(model.SerializeToString(), onyxrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, saved)
    assert [n.op_type for n in onnx.load(saved).graph.node] == [op_type]
    feeds = {"xq": RNG.integers(0, 256, (1, 4, 6, 6)).astype(np.uint8)}
    (want,) = onnxruntime_unfused_session(model.SerializeToString()).run(None, feeds)
    (got,) = session.run(None, feeds)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("variant", ["other-scale", "other-zero-point", "int8-output", "opset-11-max-pool"])
def test_data_movement_keeps_qdq_when_the_bytes_would_change(variant, tmp_path):
    options = {"other-scale": dict(y_scale=0.1), "other-zero-point": dict(y_zero=100),
               "int8-output": dict(y_zero=0, y_type=TensorProto.INT8), "opset-11-max-pool": dict(opset=11)}[variant]
    model = _single_op_model("MaxPool", **_MOVES["MaxPool"], **options)
    saved = str(tmp_path / "optimized.onnx")
    session_at_level(model.SerializeToString(), onyxrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, saved)
    assert [n.op_type for n in onnx.load(saved).graph.node] == ["DequantizeLinear", "MaxPool", "QuantizeLinear"]


def _binary_model(op_type: str, *, b_type=TensorProto.UINT8, extra_reader=False):
    b_zero = np.array(7, np.uint8 if b_type == TensorProto.UINT8 else np.int8)
    inits = [numpy_helper.from_array(np.array(0.03, F), "as"), numpy_helper.from_array(np.array(120, np.uint8), "az"),
             numpy_helper.from_array(np.array(0.027, F), "bs"), numpy_helper.from_array(b_zero, "bz"),
             numpy_helper.from_array(np.array(0.04, F), "ys"), numpy_helper.from_array(np.array(90, np.uint8), "yz")]
    nodes = [helper.make_node("DequantizeLinear", ["aq", "as", "az"], ["a"]),
             helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["b"]),
             helper.make_node(op_type, ["a", "b"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "ys", "yz"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.UINT8, None)]
    if extra_reader:
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("aq", TensorProto.UINT8, [2, 3, 5, 5]),
                                           helper.make_tensor_value_info("bq", b_type, [1, 3, 1, 5])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("op_type", ["Add", "Mul"])
def test_qdq_add_and_mul_become_qlinear_ops(op_type, tmp_path):
    model = _binary_model(op_type)
    saved = str(tmp_path / "optimized.onnx")
    session = session_at_level(model.SerializeToString(), onyxrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, saved)
    assert [n.op_type for n in onnx.load(saved).graph.node] == [f"QLinear{op_type}"]
    feeds = {"aq": RNG.integers(0, 256, (2, 3, 5, 5)).astype(np.uint8), "bq": RNG.integers(0, 256, (1, 3, 1, 5)).astype(np.uint8)}
    (got,) = session.run(None, feeds)
    (want,) = onnxruntime_unfused_session(model.SerializeToString()).run(None, feeds)
    # rounding the scaled integers instead of the float result: one step at most, and rarely
    difference = np.abs(got.astype(np.int32) - want.astype(np.int32))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.05
    (theirs,) = ort.InferenceSession(saved, providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_array_equal(got, theirs)


@pytest.mark.parametrize("variant", ["mixed-types", "sum-read-elsewhere"])
def test_qdq_add_outside_the_pattern_stays(variant, tmp_path):
    model = _binary_model("Add", b_type=TensorProto.INT8) if variant == "mixed-types" else _binary_model("Add", extra_reader=True)
    saved = str(tmp_path / "optimized.onnx")
    session_at_level(model.SerializeToString(), onyxrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, saved)
    assert "QLinearAdd" not in [n.op_type for n in onnx.load(saved).graph.node]


def test_a_lone_convolution_keeps_its_layout_and_chain_outputs_keep_their_names(tmp_path):
    """One QLinearConv fed and read in NCHW stays ONNX's; two in a row go channels-last with the second's
    result, a graph output, transposed back under its own name."""
    def conv(name, x, y):
        return helper.make_node("QLinearConv", [x, "xs", "xz", name, "ws", "wz", "xs", "xz"], [y], pads=[1, 1, 1, 1])

    inits = [numpy_helper.from_array(np.array(0.05, F), "xs"), numpy_helper.from_array(np.array(128, np.uint8), "xz"),
             numpy_helper.from_array(np.array(0.01, F), "ws"), numpy_helper.from_array(np.array(0, np.int8), "wz"),
             numpy_helper.from_array(RNG.integers(-20, 20, (4, 4, 3, 3)).astype(np.int8), "w1"),
             numpy_helper.from_array(RNG.integers(-20, 20, (4, 4, 3, 3)).astype(np.int8), "w2")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 8, 8])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.UINT8, None)]
    lone = helper.make_model(helper.make_graph([conv("w1", "x", "y")], "g", inputs, outputs, inits),
                             opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    chain = helper.make_model(helper.make_graph([conv("w1", "x", "h"), conv("w2", "h", "y")], "g", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    feeds = {"x": RNG.integers(0, 256, (1, 4, 8, 8)).astype(np.uint8)}
    for model, expected in ((lone, [("ai.onnx", "QLinearConv")]),
                            (chain, [("ai.onnx", "Transpose"), ("com.microsoft", "QLinearConv"),
                                     ("com.microsoft", "QLinearConv"), ("ai.onnx", "Transpose")])):
        saved = str(tmp_path / "optimized.onnx")
        session = session_at_level(model.SerializeToString(), onyxrt.GraphOptimizationLevel.ORT_ENABLE_ALL, saved)
        optimized = onnx.load(saved)
        assert [(n.domain or "ai.onnx", n.op_type) for n in optimized.graph.node] == expected
        assert [o.name for o in optimized.graph.output] == ["y"]
        (want,) = session_at_level(model.SerializeToString(), onyxrt.GraphOptimizationLevel.ORT_DISABLE_ALL).run(None, feeds)
        np.testing.assert_array_equal(session.run(None, feeds)[0], want)


@pytest.mark.parametrize("same_scale", [True, False], ids=["copied", "requantized"])
def test_qdq_concat_becomes_qlinear_concat_and_follows_the_layout(same_scale, tmp_path):
    """Two 8-bit convolutions concatenated on channels then convolved: the QDQ Concat is QLinearConcat, which the
    channels-last chain takes along with its axis moved from 1 (C in NCHW) to 3 (C in NHWC)."""
    def conv(name, x, y, channels):
        return helper.make_node("QLinearConv", [x, "xs", "xz", name, "ws", "wz", "xs", "xz"], [y], pads=[1, 1, 1, 1]), \
            numpy_helper.from_array(RNG.integers(-20, 20, (channels, 4, 3, 3)).astype(np.int8), name)

    b_scale = 0.05 if same_scale else 0.07
    inits = [numpy_helper.from_array(np.array(0.05, F), "xs"), numpy_helper.from_array(np.array(128, np.uint8), "xz"),
             numpy_helper.from_array(np.array(0.01, F), "ws"), numpy_helper.from_array(np.array(0, np.int8), "wz"),
             numpy_helper.from_array(np.array(b_scale, F), "bs"), numpy_helper.from_array(np.array(0.05, F), "ys")]
    first, w1 = conv("w1", "x", "a", 4)
    second, w2 = conv("w2", "x", "b", 4)
    last = helper.make_node("QLinearConv", ["c", "xs", "xz", "w3", "ws", "wz", "xs", "xz"], ["y"], pads=[1, 1, 1, 1])
    w3 = numpy_helper.from_array(RNG.integers(-20, 20, (4, 8, 3, 3)).astype(np.int8), "w3")
    nodes = [first, second,
             helper.make_node("DequantizeLinear", ["a", "xs", "xz"], ["a_f"]),
             helper.make_node("DequantizeLinear", ["b", "bs", "xz"], ["b_f"]),
             helper.make_node("Concat", ["a_f", "b_f"], ["c_f"], axis=1),
             helper.make_node("QuantizeLinear", ["c_f", "ys", "xz"], ["c"]), last]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], [*inits, w1, w2, w3])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    saved = str(tmp_path / "optimized.onnx")
    session = session_at_level(model, onyxrt.GraphOptimizationLevel.ORT_ENABLE_ALL, saved)
    concat = [n for n in onnx.load(saved).graph.node if n.op_type == "QLinearConcat"]
    assert len(concat) == 1 and {a.name: helper.get_attribute_value(a) for a in concat[0].attribute} == {"axis": 3}
    assert [n.op_type for n in onnx.load(saved).graph.node].count("Transpose") == 2
    feeds = {"x": RNG.integers(0, 256, (1, 4, 8, 8)).astype(np.uint8)}
    (got,) = session.run(None, feeds)
    (nchw,) = session_at_level(model, onyxrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED).run(None, feeds)
    np.testing.assert_array_equal(got, nchw)
    (want,) = onnxruntime_unfused_session(model).run(None, feeds)
    difference = np.abs(got.astype(np.int32) - want.astype(np.int32))
    if same_scale:  # copied byte for byte
        np.testing.assert_array_equal(got, want)
    else:  # the requantized half rounds once through its table, the float detour twice
        assert difference.max() <= 2 and (difference > 0).mean() < 0.1


def test_the_passes_are_switched_off_by_onnxruntime_names_and_config(qdq_block, tmp_path):
    """``disabled_optimizers`` takes onnxruntime's pass names; ``session.disable_quant_qdq`` keeps the float reading."""
    saved = str(tmp_path / "optimized.onnx")
    options = onyxrt.SessionOptions()
    options.optimized_model_filepath = saved
    onyxrt.InferenceSession(qdq_block, options, disabled_optimizers=["NhwcTransformer"])
    ops = _ops(saved)
    assert ops[("ai.onnx", "QLinearConv")] == 5 and ops[("com.microsoft", "QLinearConv")] == 0
    assert ops[("ai.onnx", "Transpose")] == 0 and ops[("com.microsoft", "QLinearAdd")] == 1

    options = onyxrt.SessionOptions()
    options.optimized_model_filepath = saved
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = onyxrt.InferenceSession(qdq_block, options)
    ops = _ops(saved)
    assert not any(op.startswith("QLinear") for _, op in ops) and ops[("ai.onnx", "Conv")] == 5
    x = RNG.standard_normal((1, 3, 32, 32)).astype(F)
    (want,) = onnxruntime_unfused_session(qdq_block).run(None, {"x": x})
    np.testing.assert_allclose(session.run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
