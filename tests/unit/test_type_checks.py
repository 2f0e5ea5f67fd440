"""Load-time type checks against ONNX schemas (issue 7, defect 5): models onnxruntime refuses
for their types fail at load here too, with its error class; the others still load."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onyxrt
from onyxrt.errors import Fail, InvalidGraph
from onyxrt.graph.type_checks import check_types

ort = pytest.importorskip("onnxruntime")

F, I32, I64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64


def _model(nodes, inputs, outputs, value_info=(), opsets=(("", 20),)) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, value_info=list(value_info))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def _value(name: str, elem_type: int = F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, [3])


def _onnxruntime_error(model: onnx.ModelProto) -> str | None:
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - the class name is what is compared
        return type(exc).__name__
    return None


def _assert_refused_like_onnxruntime(model: onnx.ModelProto, error: type[Exception], message: str) -> None:
    assert _onnxruntime_error(model) == error.__name__
    with pytest.raises(error, match=message):
        onyxrt.InferenceSession(model.SerializeToString())


def test_relu_on_int32_declared_float_is_refused_at_load():
    # Ran and returned int32 before (defect 5).
    model = _model([helper.make_node("Relu", ["X"], ["Y"], name="relu")], [_value("X", I32)], [_value("Y")])
    _assert_refused_like_onnxruntime(
        model,
        Fail,
        r"Type \(tensor\(float\)\) of output arg \(Y\) of node 0 \('relu', Relu\) does not match expected "
        r"type \(tensor\(int32\)\)",
    )


def test_input_type_outside_the_schema_constraint_is_invalid_graph():
    model = _model([helper.make_node("Acos", ["X"], ["Y"], name="acos")], [_value("X", I32)], [_value("Y", I32)])
    _assert_refused_like_onnxruntime(
        model, InvalidGraph, r"Type 'tensor\(int32\)' of input parameter \(X\) of operator \(Acos\) in node 0 \('acos'"
    )


def test_type_parameter_bound_to_two_types_is_refused():
    model = _model([helper.make_node("Add", ["A", "B"], ["Y"])], [_value("A"), _value("B", I64)], [_value("Y")])
    message = r"Type parameter \(T\) of Optype \(Add\) bound to different types \(tensor\(float\) and tensor\(int64\)\)"
    _assert_refused_like_onnxruntime(model, Fail, message)


def test_declared_value_info_is_checked_too():
    nodes = [helper.make_node("Neg", ["X"], ["T"]), helper.make_node("Identity", ["T"], ["Y"])]
    model = _model(nodes, [_value("X")], [_value("Y")], value_info=[_value("T", I64)])
    _assert_refused_like_onnxruntime(model, Fail, r"output arg \(T\) of node 0 \('', Neg\)")


def test_output_typed_by_an_attribute_is_checked():
    # EyeLike's output type is its dtype attribute: no input binds it.
    node = helper.make_node("EyeLike", ["X"], ["Y"], dtype=TensorProto.DOUBLE)
    x = helper.make_tensor_value_info("X", F, [3, 3])
    model = _model([node], [x], [helper.make_tensor_value_info("Y", F, [3, 3])])
    _assert_refused_like_onnxruntime(model, Fail, r"output arg \(Y\).*expected type \(tensor\(double\)\)")


def _if_model(then_input: str, then_op: str = "Relu") -> onnx.ModelProto:
    then_branch = helper.make_graph([helper.make_node(then_op, [then_input], ["a"])], "then", [], [_value("a")])
    else_branch = helper.make_graph([helper.make_node("Identity", ["X"], ["b"])], "else", [], [_value("b")])
    node = helper.make_node("If", ["C"], ["Y"], name="if", then_branch=then_branch, else_branch=else_branch)
    inputs = [_value("X"), _value("N", I32), helper.make_tensor_value_info("C", TensorProto.BOOL, [])]
    return _model([node], inputs, [_value("Y")])


def test_type_error_inside_a_subgraph_is_fail_at_the_node_that_owns_it():
    model = _if_model("N")  # Relu(int32) declared float inside then_branch
    message = r"node 0 \('if', If\) \[TypeInferenceError\] Graph attribute inferencing failed: .*output arg \(a\)"
    _assert_refused_like_onnxruntime(model, Fail, message)


def test_subgraph_input_constraint_violation_is_fail_not_invalid_graph():
    model = _if_model("N", then_op="Acos")
    _assert_refused_like_onnxruntime(model, Fail, r"input parameter \(N\) of operator \(Acos\)")


def test_loop_body_declaring_another_state_type_is_refused():
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("Identity", ["s"], ["s_out"])],
        "body",
        [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         _value("s", I64)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _value("s_out", I64)],
    )
    node = helper.make_node("Loop", ["M", "", "S"], ["Y"], name="loop", body=body)
    model = _model([node], [helper.make_tensor_value_info("M", I64, []), _value("S")], [_value("Y", I64)])
    message = r"node 0 \('loop', Loop\).*'S' is tensor\(float\).*'s' as tensor\(int64\)"
    _assert_refused_like_onnxruntime(model, Fail, message)


def test_if_branches_producing_different_types_are_refused():
    then_branch = helper.make_graph([helper.make_node("Relu", ["N"], ["a"])], "then", [], [_value("a", I32)])
    else_branch = helper.make_graph([helper.make_node("Relu", ["X"], ["b"])], "else", [], [_value("b")])
    node = helper.make_node("If", ["C"], ["Y"], name="if", then_branch=then_branch, else_branch=else_branch)
    inputs = [_value("X"), _value("N", I32), helper.make_tensor_value_info("C", TensorProto.BOOL, [])]
    model = _model([node], inputs, [_value("Y", I32)])
    _assert_refused_like_onnxruntime(model, Fail, r"tensor\(int32\) in then_branch but tensor\(float\) in else_branch")


def test_initializer_of_another_type_than_its_graph_input_is_refused():
    model = _model([helper.make_node("Relu", ["X"], ["Y"])], [_value("X")], [_value("Y")])
    model.graph.initializer.append(helper.make_tensor("X", I32, [3], [1, 2, 3]))
    message = r"Data in initializer 'X' has element type tensor\(int32\) but usage .* expects tensor\(float\)"
    _assert_refused_like_onnxruntime(model, Fail, message)


def _model_reading_initializer(reader: str, raw: bytes, data_type: int = F, dims=(3,)) -> onnx.ModelProto:
    weight = onnx.TensorProto(name="W", data_type=data_type, dims=dims, raw_data=raw)  # make_tensor checks sizes
    output = helper.make_tensor_value_info("Y", data_type if reader == "Relu" else I64, None)
    model = _model([helper.make_node(reader, ["W"], ["Y"])], [], [output])
    model.graph.initializer.append(weight)
    return model


def test_initializer_whose_raw_data_does_not_fit_its_shape_is_refused():
    message = r"Tensor 'W': its data does not match its type FLOAT and dims \[3\]"
    _assert_refused_like_onnxruntime(_model_reading_initializer("Relu", b"\0" * 8), Fail, message)


def test_initializer_only_shape_reads_is_not_size_checked():
    # onnxruntime folds the Shape without reading the data (here; it is not consistent about it)
    model = _model_reading_initializer("Shape", b"\0" * 240, TensorProto.UINT8, dims=(3, 4, 5))
    assert _onnxruntime_error(model) is None
    assert onyxrt.InferenceSession(model.SerializeToString()).run(None, {})[0].tolist() == [3, 4, 5]


def test_well_typed_subgraph_loads_and_runs():
    model = _if_model("X")
    session = onyxrt.InferenceSession(model.SerializeToString())
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    feeds = {"X": x, "N": np.zeros(3, np.int32), "C": np.array(True)}
    np.testing.assert_array_equal(session.run(None, feeds)[0], np.maximum(x, 0))


def test_contrib_op_output_feeds_checked_ops_and_loads():
    nodes = [helper.make_node("Gelu", ["X"], ["G"], domain="com.microsoft"), helper.make_node("Relu", ["G"], ["Y"])]
    model = _model(nodes, [_value("X")], [_value("Y")], opsets=(("", 20), ("com.microsoft", 1)))
    assert _onnxruntime_error(model) is None
    session = onyxrt.InferenceSession(model.SerializeToString())
    assert session.run(None, {"X": np.ones(3, np.float32)})[0].dtype == np.float32


def test_ops_of_unknown_domains_are_not_checked():
    nodes = [helper.make_node("Anything", ["X"], ["T"], domain="my.domain"), helper.make_node("Neg", ["T"], ["Y"])]
    model = _model(nodes, [_value("X", I32)], [_value("Y")], opsets=(("", 20), ("my.domain", 1)))
    check_types(model, onnx.shape_inference.infer_shapes(model))  # no error: nothing says what Anything gives


def test_ml_domain_op_with_matching_types_loads():
    node = helper.make_node("Normalizer", ["X"], ["Y"], domain="ai.onnx.ml", norm="L2")
    x, y = helper.make_tensor_value_info("X", F, [2, 3]), helper.make_tensor_value_info("Y", F, [2, 3])
    model = _model([node], [x], [y], opsets=(("", 20), ("ai.onnx.ml", 1)))
    assert _onnxruntime_error(model) is None
    onyxrt.InferenceSession(model.SerializeToString())
