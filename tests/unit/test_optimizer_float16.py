"""Float16ToFloat32: float16/bfloat16 nodes compute in float32, with casts only where low precision enters or leaves."""

from __future__ import annotations

from collections import Counter

import ml_dtypes
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt as ort
from optimizer_checks import optimized_ir

F16, BF16, F32 = TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.FLOAT
RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, initializers=(), opset=21) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(array, name) for name, array in dict(initializers).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _session(model: onnx.ModelProto, tmp_path, level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, onnx.load(str(tmp_path / "optimized.onnx"))


def _onnxruntime(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _chain_model(elem: int, dtype) -> tuple[onnx.ModelProto, dict, np.ndarray, np.ndarray]:
    """x (low precision) + b -> Relu -> MatMul W -> y (low precision), and its weights."""
    b = (RNG.standard_normal(8) * 0.5).astype(dtype)
    w = (RNG.standard_normal((8, 4)) * 0.3).astype(dtype)
    nodes = [helper.make_node("Add", ["x", "b"], ["s"]), helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", elem, [3, 8])],
                   [helper.make_tensor_value_info("y", elem, [3, 4])], {"b": b, "w": w})
    return model, {"x": RNG.standard_normal((3, 8)).astype(dtype)}, b, w


@pytest.mark.parametrize("elem, dtype", [(F16, np.float16), (BF16, ml_dtypes.bfloat16)], ids=["float16", "bfloat16"])
def test_chain_computes_in_float32_between_casts(elem, dtype, tmp_path):
    model, feeds, b, w = _chain_model(elem, dtype)
    session, optimized = _session(model, tmp_path)
    ops = Counter(node.op_type for node in optimized.graph.node)
    assert ops == {"Cast": 2, "Add": 1, "Relu": 1, "MatMul": 1}
    assert [o.name for o in optimized.graph.output] == ["y"]
    assert optimized.graph.output[0].type.tensor_type.elem_type == elem
    used = {name for node in optimized.graph.node if node.op_type != "Cast" for name in node.input}
    assert all(init.data_type == F32 for init in optimized.graph.initializer if init.name in used)
    (y,) = session.run(None, feeds)
    assert y.dtype == np.dtype(dtype)
    x32 = feeds["x"].astype(np.float32)
    expected = (np.maximum(x32 + b.astype(np.float32), 0) @ w.astype(np.float32)).astype(dtype)
    np.testing.assert_allclose(y.astype(np.float32), expected.astype(np.float32), rtol=1e-2, atol=1e-2)
    if dtype == np.float16:  # onnxruntime computes the same in float32
        np.testing.assert_allclose(y.astype(np.float32), _onnxruntime(model, feeds)[0].astype(np.float32), rtol=2e-3, atol=1e-3)


def test_disabled_optimizer_keeps_low_precision_nodes(tmp_path):
    model, feeds, _, _ = _chain_model(F16, np.float16)
    session, optimized = _session(model, tmp_path, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert Counter(node.op_type for node in optimized.graph.node) == {"Add": 1, "Relu": 1, "MatMul": 1}
    assert session.run(None, feeds)[0].dtype == np.float16


def test_float32_io_casts_become_float32():
    """keep_io_types' Casts (float32 -> float16 in, float16 -> float32 out): no rounding to float16 remains."""
    nodes = [helper.make_node("Cast", ["x"], ["x16"], to=F16), helper.make_node("Mul", ["x16", "k"], ["m"]),
             helper.make_node("Cast", ["m"], ["y"], to=F32)]
    model = _model(nodes, [helper.make_tensor_value_info("x", F32, [4])], [helper.make_tensor_value_info("y", F32, [4])],
                   {"k": np.array([3.0], np.float16)})
    optimized, report = optimized_ir(onnx.shape_inference.infer_shapes(model))
    assert report.counts.get("Float16ToFloat32") == 2  # the Mul and the first Cast
    assert all(v.dtype != onnx.TensorProto.FLOAT16 for node in optimized.graph for v in node.outputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([1.0001, 2.0002, -3.0003, 65519.0], np.float32)
    # float32 throughout: 1.0001 is not rounded to float16 (1.0), nor is 65519 * 3 (inf in float16)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x * np.float32(3.0))


def test_readers_outside_the_region_get_low_precision_back():
    """A converted value read by an op kept in float16 (QuantizeLinear) and by a graph output: both see float16."""
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]),
             helper.make_node("QuantizeLinear", ["sq", "scale", "zero"], ["q"]),
             helper.make_node("Neg", ["sq"], ["n"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", F16, [5])],
                   [helper.make_tensor_value_info("sq", F16, [5]), helper.make_tensor_value_info("q", TensorProto.UINT8, [5]),
                    helper.make_tensor_value_info("n", F16, [5])],
                   {"scale": np.array(0.05, np.float16), "zero": np.array(10, np.uint8)})
    optimized, _ = optimized_ir(onnx.shape_inference.infer_shapes(model))
    quantize = next(node for node in optimized.graph if node.op_type == "QuantizeLinear")
    assert quantize.inputs[0].dtype == onnx.TensorProto.FLOAT16 and quantize.inputs[1].dtype == onnx.TensorProto.FLOAT16
    assert [(v.name, v.dtype) for v in optimized.graph.outputs] == [("sq", F16), ("q", TensorProto.UINT8), ("n", F16)]
    x = np.array([0.5, -1.25, 2.0, 3.5, -0.75], np.float16)
    ours = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for got, expected in zip(ours, _onnxruntime(model, {"x": x})):
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


def test_subgraph_reading_a_converted_value_gets_low_precision():
    """An If branch reading an outer float16 value the pass made float32 reads float16 still."""
    branch = helper.make_graph([helper.make_node("Identity", ["s"], ["out"])], "then", [],
                               [helper.make_tensor_value_info("out", F16, [3])])
    other = helper.make_graph([helper.make_node("Neg", ["s"], ["out"])], "else", [],
                              [helper.make_tensor_value_info("out", F16, [3])])
    nodes = [helper.make_node("Add", ["x", "x"], ["s"]),
             helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=other)]
    model = _model(nodes, [helper.make_tensor_value_info("x", F16, [3]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                   [helper.make_tensor_value_info("y", F16, [3])])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([1.5, -2.0, 0.25], np.float16)
    for c in (True, False):
        (y,) = session.run(None, {"x": x, "c": np.array(c)})
        assert y.dtype == np.float16
        np.testing.assert_array_equal(y, (x + x) * (1 if c else -1))


def test_values_of_unknown_type_leave_nodes_alone():
    """Without inferred types the Mul (a float16 constant times a value of unknown type) is not converted."""
    nodes = [helper.make_node("Cast", ["x"], ["x16"], to=F16), helper.make_node("Mul", ["x16", "k"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", F32, [4])], [helper.make_tensor_value_info("y", F16, [4])],
                   {"k": np.array([3.0], np.float16)})
    _, report = optimized_ir(model)
    assert "Float16ToFloat32" not in report.counts


def test_constants_and_constant_of_shape_become_float32():
    value = numpy_helper.from_array(np.array([1.5], np.float16), "v")
    nodes = [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([2.0, 4.0], np.float16))),
             helper.make_node("ConstantOfShape", ["shape"], ["ones"], value=value),
             helper.make_node("Mul", ["x", "k"], ["m"]), helper.make_node("Add", ["m", "ones"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", F16, [2])], [helper.make_tensor_value_info("y", F16, [2])],
                   {"shape": np.array([2], np.int64)})
    x = np.array([0.5, 0.25], np.float16)
    (y,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, np.array([2.5, 2.5], np.float16))


def test_gelu_of_float16_constants_fuses(tmp_path):
    """GELU spelled with float16 constants (sqrt(2) rounded to 1.4140625) still becomes one node."""
    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["p"]), helper.make_node("Mul", ["x", "p"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", F16, [2, 16])], [helper.make_tensor_value_info("y", F16, [2, 16])],
                   {"sqrt2": np.array(np.sqrt(2), np.float16), "one": np.array(1, np.float16), "half": np.array(0.5, np.float16)})
    session, optimized = _session(model, tmp_path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    assert Counter(node.op_type for node in optimized.graph.node) == {"Cast": 2, "Gelu": 1}
    x = (RNG.standard_normal((2, 16)) * 2).astype(np.float16)
    np.testing.assert_allclose(session.run(None, {"x": x})[0].astype(np.float32),
                               _onnxruntime(model, {"x": x})[0].astype(np.float32), rtol=2e-3, atol=2e-3)


def test_cast_to_float16_read_inside_and_outside_the_region():
    """A Cast to float16 of a converted value, read by a converted Neg and a QuantizeLinear kept in float16, and
    a Shape of the converted value: every node sees consistent types, results as onnxruntime's."""
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Cast", ["sq"], ["c"], to=F16),
             helper.make_node("Neg", ["c"], ["n"]), helper.make_node("QuantizeLinear", ["c", "scale", "zero"], ["q"]),
             helper.make_node("Shape", ["sq"], ["shape"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", F16, ["n"])],  # a dynamic size: the Shape stays
                   [helper.make_tensor_value_info("n", F16, ["n"]), helper.make_tensor_value_info("q", TensorProto.UINT8, ["n"]),
                    helper.make_tensor_value_info("shape", TensorProto.INT64, [1])],
                   {"scale": np.array(0.05, np.float16), "zero": np.array(10, np.uint8)})
    optimized, _ = optimized_ir(onnx.shape_inference.infer_shapes(model))
    for node in optimized.graph:
        if node.op_type in ("Neg", "Mul"):
            assert {v.dtype for v in (*node.inputs, *node.outputs)} == {onnx.TensorProto.FLOAT}
    shape = next(node for node in optimized.graph if node.op_type == "Shape")
    assert shape.inputs[0].producer().op_type == "Mul"  # the float32 product itself, no Cast between
    x = np.array([0.5, -1.25, 2.0, 3.5, -0.75], np.float16)
    ours = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for got, expected in zip(ours, _onnxruntime(model, {"x": x})):
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
