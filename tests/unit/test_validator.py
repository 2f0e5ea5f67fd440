"""Load-time structural validation (issue 7, defects 1, 6 and 7): bad graphs fail at load, typed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onyxrt as ort
from onyxrt.errors import Fail, InvalidArgument, InvalidGraph, OnyxRuntimeError
from onyxrt.graph.validator import validate_model


def _model(nodes, inputs, outputs, initializers=(), opset=20) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _value(name: str, elem_type: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, [3])


def _load(model: onnx.ModelProto | bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model if isinstance(model, bytes) else model.SerializeToString())


def _if_model(then_nodes, then_outputs) -> onnx.ModelProto:
    then_branch = helper.make_graph(then_nodes, "then", [], then_outputs)
    else_branch = helper.make_graph([helper.make_node("Identity", ["X"], ["b"])], "else", [], [_value("b")])
    node = helper.make_node("If", ["C"], ["Y"], then_branch=then_branch, else_branch=else_branch)
    return _model([node], [_value("X"), helper.make_tensor_value_info("C", TensorProto.BOOL, [])], [_value("Y")])


def test_undefined_node_input_is_rejected_before_shape_inference():
    # onnx shape inference segfaulted on this model (defect 1).
    node = helper.make_node("RegexFullMatch", ["missing"], ["Y"], pattern="a", name="match")
    model = _model([node], [], [_value("Y", TensorProto.BOOL)])
    with pytest.raises(InvalidArgument, match=r"'missing' of node 0 \('match', RegexFullMatch\)"):  # as onnxruntime
        _load(model)


def test_undefined_input_inside_a_subgraph_is_rejected():
    model = _if_model([helper.make_node("Identity", ["nowhere"], ["a"])], [_value("a")])
    with pytest.raises(InvalidGraph, match="'nowhere'.*graph 'then'"):
        _load(model)


def test_subgraph_may_capture_an_outer_value_defined_by_a_later_node():
    model = _if_model([helper.make_node("Identity", ["L"], ["a"])], [_value("a")])
    model.graph.node.append(helper.make_node("Neg", ["X"], ["L"]))
    session = _load(model)
    x = np.array([1.0, -2.0, 3.0], np.float32)
    (y,) = session.run(None, {"X": x, "C": np.array(True)})
    np.testing.assert_array_equal(y, -x)


def test_subgraph_output_that_is_not_defined_is_rejected():
    model = _if_model([], [_value("nowhere")])
    with pytest.raises(Fail, match=r"Graph output \(nowhere\) does not exist in the graph 'then'"):
        _load(model)


def test_graph_output_that_no_node_produces_is_rejected():
    model = _model([helper.make_node("Abs", ["X"], ["Y"])], [_value("X")], [_value("Z")])
    with pytest.raises(Fail, match=r"Graph output \(Z\)"):
        _load(model)


def test_graph_output_may_be_a_graph_input():
    (y,) = _load(_model([], [_value("X")], [_value("X")])).run(None, {"X": np.ones(3, np.float32)})
    np.testing.assert_array_equal(y, np.ones(3, np.float32))


@pytest.mark.parametrize(
    "nodes, inputs",
    [
        ([helper.make_node("Abs", ["X"], ["Y"]), helper.make_node("Neg", ["X"], ["Y"], name="again")], ["X"]),
        ([helper.make_node("Abs", ["X"], ["X"], name="again")], ["X"]),
    ],
    ids=["two nodes", "node redefines a graph input"],
)
def test_value_defined_twice_is_rejected(nodes, inputs):
    model = _model(nodes, [_value(i) for i in inputs], [_value(nodes[0].output[0])])
    with pytest.raises(Fail, match=r"Duplicate definition of name .*'again'"):
        _load(model)


def test_graph_input_listed_twice_is_rejected():
    model = _model([helper.make_node("Abs", ["X"], ["Y"])], [_value("X"), _value("X")], [_value("Y")])
    with pytest.raises(Fail, match=r"Duplicate definition-site for \(X\)"):
        _load(model)


def test_initializer_may_share_its_name_with_a_graph_input():
    weight = helper.make_tensor("W", TensorProto.FLOAT, [3], [1, 2, 3])
    model = _model([helper.make_node("Add", ["X", "W"], ["Y"])], [_value("X"), _value("W")], [_value("Y")], [weight])
    (y,) = _load(model).run(None, {"X": np.zeros(3, np.float32)})
    np.testing.assert_array_equal(y, [1, 2, 3])


def test_empty_name_for_a_required_input_is_rejected_at_load():
    # Defect 6: this loaded and failed at run with an AttributeError in the message.
    model = _model([helper.make_node("Abs", [""], ["Y"], name="abs")], [_value("X")], [_value("Y")])
    with pytest.raises(InvalidGraph, match=r"node 0 \('abs', Abs\)'s input 0 is required but has an empty name"):
        _load(model)


def test_empty_name_for_a_required_output_is_rejected_at_load():
    model = _model([helper.make_node("Abs", ["X"], [""])], [_value("X")], [_value("X")])
    with pytest.raises(InvalidGraph, match="output 0 is required"):
        _load(model)


@pytest.mark.parametrize(
    "node, message",
    [
        (helper.make_node("Identity", [], ["Y"]), r"input size 0 not in range \[min=1, max=1\].*Identity, opset 20"),
        (helper.make_node("Abs", ["X", "X"], ["Y"]), r"input size 2 not in range \[min=1, max=1\]"),
        (helper.make_node("Abs", ["X"], ["Y", "Z"]), r"output size 2 not in range \[min=1, max=1\]"),
    ],
    ids=["Identity without inputs", "too many inputs", "too many outputs"],
)
def test_input_and_output_counts_are_checked_against_the_schema(node, message):
    # Identity without inputs raised IndexError in identity elimination (defect 7).
    with pytest.raises(InvalidGraph, match=message):
        _load(_model([node], [_value("X")], [_value("Y")]))


def test_trailing_empty_optional_inputs_are_accepted():
    model = _model([helper.make_node("Clip", ["X", "", ""], ["Y"])], [_value("X")], [_value("Y")])
    (y,) = _load(model).run(None, {"X": np.array([-1, 0, 1], np.float32)})
    np.testing.assert_array_equal(y, [-1, 0, 1])


def test_variadic_inputs_are_accepted():
    model = _model([helper.make_node("Sum", ["X", "X", "X"], ["Y"])], [_value("X")], [_value("Y")])
    (y,) = _load(model).run(None, {"X": np.ones(3, np.float32)})
    np.testing.assert_array_equal(y, [3, 3, 3])


def test_ops_without_an_onnx_schema_are_not_count_checked():
    node = helper.make_node("MyOp", ["X", "", "X"], ["Y", ""], domain="my.domain")
    model = _model([node], [_value("X")], [_value("Y")])
    model.opset_import.append(helper.make_opsetid("my.domain", 1))
    validate_model(model)


def test_initializer_with_an_unknown_data_type_is_a_typed_error():
    # Defect 7: a KeyError surfaced from deserialization.
    weight = helper.make_tensor("W", TensorProto.FLOAT, [3], [1, 2, 3])
    model = _model([helper.make_node("Add", ["X", "W"], ["Y"])], [_value("X")], [_value("Y")], [weight])
    model.graph.initializer[0].data_type = 99
    with pytest.raises(Fail, match="initializer 'W' has an invalid tensor data type 99"):
        _load(model)


def test_tensor_attribute_with_an_unknown_data_type_names_the_node():
    value = helper.make_tensor("v", TensorProto.FLOAT, [3], [1, 2, 3])
    model = _model([helper.make_node("Constant", [], ["Y"], value=value, name="const")], [], [_value("Y")])
    model.graph.node[0].attribute[0].t.data_type = 99
    with pytest.raises(Fail, match=r"attribute 'value' of node 0 \('const', Constant\) has an invalid tensor data type 99"):
        _load(model)


@pytest.mark.parametrize("where", ["input", "output"])
def test_declared_element_type_that_is_unknown_is_a_typed_error(where):
    # Defect 7: protobuf raised a ValueError for the graph input.
    model = _model([helper.make_node("Abs", ["X"], ["Y"])], [_value("X")], [_value("Y")])
    info = model.graph.input[0] if where == "input" else model.graph.output[0]
    info.type.tensor_type.elem_type = 99
    with pytest.raises(InvalidArgument, match=f"Invalid tensor data type 99 declared for value '{info.name}'"):
        _load(model)


def test_op_type_that_is_not_utf8_is_a_typed_error():
    # Defect 7: a pybind TypeError surfaced from the schema lookup.
    model = _model([helper.make_node("Abs", ["X"], ["Y"], name="abs")], [_value("X")], [_value("Y")])
    data = model.SerializeToString()
    assert data.count(b"Abs") == 1
    with pytest.raises(InvalidGraph, match=r"op_type or domain of node 0 \('abs', b'A\\xffs'\) is not valid UTF-8"):
        _load(data.replace(b"Abs", b"A\xffs"))


def test_input_name_that_is_not_utf8_is_a_typed_error():
    model = _model([helper.make_node("Abs", ["Xq"], ["Y"], name="abs")], [_value("Xq")], [_value("Y")])
    data = model.SerializeToString()
    with pytest.raises(InvalidGraph, match="not valid UTF-8"):
        _load(data.replace(b"Xq", b"X\xff"))


def test_attribute_name_that_is_not_utf8_names_the_node():
    node = helper.make_node("Transpose", ["X"], ["Y"], name="transpose", perm=[0])
    data = _model([node], [_value("X")], [_value("Y")]).SerializeToString()
    assert data.count(b"perm") == 1
    with pytest.raises(InvalidGraph, match=r"attribute name of node 0 \('transpose', Transpose\) is not valid UTF-8"):
        _load(data.replace(b"perm", b"pe\xffm"))


def test_bodies_of_model_local_functions_are_validated():
    body = [helper.make_node("Abs", [""], ["b"], name="inner")]
    function = helper.make_function("local", "F", ["a"], ["b"], body, [helper.make_opsetid("", 20)])
    graph = helper.make_graph([helper.make_node("F", ["X"], ["Y"], domain="local")], "g", [_value("X")], [_value("Y")])
    opsets = [helper.make_opsetid("", 20), helper.make_opsetid("local", 1)]
    model = helper.make_model(graph, opset_imports=opsets, functions=[function])
    with pytest.raises(InvalidGraph, match="input 0 is required but has an empty name"):
        _load(model)


@pytest.mark.parametrize("version", [2**40, -5])
def test_opset_version_out_of_range_is_a_typed_error(version):
    model = _model([helper.make_node("Abs", ["X"], ["Y"])], [_value("X")], [_value("Y")], opset=version)
    with pytest.raises(InvalidGraph, match=f"Opset version {version} of domain '' is out of range"):
        _load(model)


def test_faults_are_reported_in_onnxruntimes_order():
    # An unproduced graph output (FAIL) is found before an undefined input, which is found
    # before a schema violation, as onnxruntime orders them.
    nodes = [helper.make_node("Abs", ["nowhere", "X"], ["Y"])]
    with pytest.raises(Fail, match=r"Graph output \(Z\)"):
        _load(_model(nodes, [_value("X")], [_value("Z")]))
    with pytest.raises(InvalidArgument, match="Node input 'nowhere'"):
        _load(_model(nodes, [_value("X")], [_value("Y")]))


def test_ai_onnx_domain_spelling_is_schema_checked():
    model = _model([helper.make_node("Abs", [""], ["Y"], domain="ai.onnx")], [_value("X")], [_value("Y")])
    with pytest.raises(InvalidGraph, match="input 0 is required"):
        validate_model(model)


@pytest.mark.parametrize(
    "attributes, message",
    [
        ({}, "required attribute 'to' is missing"),
        ({"to": "float"}, "mismatched attribute type in 'to'. Expected: 'INT', actual: 'STRING'"),
        ({"to": 1, "unknown": 3}, "unrecognized attribute 'unknown' for operator Cast"),
    ],
)
def test_attributes_are_checked_against_the_schema_at_load(attributes, message):
    # A kernel called without its required keyword failed at run with a TypeError (fuzz cases).
    node = helper.make_node("Cast", ["X"], ["Y"], name="cast", **attributes)
    model = _model([node], [_value("X")], [_value("Y")])
    with pytest.raises(InvalidGraph, match=rf"node 0 \('cast', Cast\): {message}"):  # as onnxruntime
        _load(model)


def test_attribute_without_a_type_is_rejected_at_load():
    node = helper.make_node("Cast", ["X"], ["Y"], to=TensorProto.FLOAT)
    node.attribute[0].type = onnx.AttributeProto.UNDEFINED
    with pytest.raises(InvalidGraph, match="Attribute 'to' of node 0 .* has no type"):
        _load(_model([node], [_value("X")], [_value("Y")]))


def test_contrib_op_attributes_are_left_to_the_kernel():
    node = helper.make_node("Gelu", ["X"], ["Y"], domain="com.microsoft")
    model = helper.make_model(
        helper.make_graph([node], "g", [_value("X")], [_value("Y")]),
        opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)],
    )
    assert _load(model).run(None, {"X": np.zeros(3, np.float32)})[0].shape == (3,)


@pytest.mark.parametrize("corrupt", ["dims", "raw_data"])
def test_initializer_data_that_does_not_fit_its_dims_is_a_typed_load_error(corrupt):
    weight = onnx.numpy_helper.from_array(np.ones(3, np.float32), "W")
    if corrupt == "dims":
        weight.dims[0] = 5
    else:
        weight.raw_data = weight.raw_data[:5]
    model = _model([helper.make_node("Neg", ["W"], ["Y"])], [], [_value("Y")], [weight])
    with pytest.raises(Fail, match="Tensor 'W': its data does not match its type FLOAT"):  # onnxruntime: FAIL
        _load(model).run(None, {})


def test_unknown_op_is_an_invalid_graph_in_onnx_domains_and_unregistered_elsewhere():
    # onnxruntime's classes: INVALID_GRAPH ("No Op registered") for ai.onnx, FAIL for other domains.
    node = helper.make_node("NoSuchOp", ["X"], ["Y"])
    with pytest.raises(InvalidGraph, match="No op registered for these nodes:\n  .*NoSuchOp"):
        _load(_model([node], [_value("X")], [_value("Y")]))
    model = _model([helper.make_node("NoSuchOp", ["X"], ["Y"], domain="ai.onnx.preview")], [_value("X")], [_value("Y")])
    model.opset_import.append(helper.make_opsetid("ai.onnx.preview", 1))
    with pytest.raises(Fail, match="not registered functions or ops:\n  .*NoSuchOp"):
        _load(model)


def test_attribute_given_twice_is_an_invalid_graph():
    node = helper.make_node("Concat", ["X", "X"], ["Y"], axis=0)
    node.attribute.append(helper.make_attribute("axis", 0))
    with pytest.raises(InvalidGraph, match="has attribute 'axis' twice"):
        _load(_model([node], [_value("X")], [_value("Y")]))


def test_opset_newer_than_any_known_fails_at_load():
    model = _model([helper.make_node("Relu", ["X"], ["Y"])], [_value("X")], [_value("Y")], opset=999)
    with pytest.raises(Fail, match="Opset 999 of domain 'ai.onnx' is newer than the latest"):
        _load(model)


def test_model_without_a_graph_is_an_invalid_argument():
    with pytest.raises(InvalidArgument, match="No graph was found"):
        _load(onnx.ModelProto(ir_version=8).SerializeToString())


def test_nodes_in_a_cycle_fail_at_load_before_their_attributes_are_checked():
    nodes = [helper.make_node("Add", ["X", "b"], ["a"], bogus=1), helper.make_node("Relu", ["a"], ["b"])]
    with pytest.raises(Fail, match="not acyclic"):  # onnxruntime's order: cycles, then each node's schema
        _load(_model(nodes, [_value("X")], [_value("a")]))


def test_string_attribute_that_is_not_utf8_is_rejected_at_load():
    node = helper.make_node("Gelu", ["X"], ["Y"], approximate="none")
    node.attribute[0].s = b"\xff\xfe"
    with pytest.raises(InvalidGraph, match="attribute 'approximate' of node 0 .* is not valid UTF-8"):
        _load(_model([node], [_value("X")], [_value("Y")]))


def test_graph_input_of_undefined_element_type_is_an_invalid_argument():
    inputs = [helper.make_tensor_value_info("X", TensorProto.UNDEFINED, [3])]
    with pytest.raises(InvalidArgument, match="Invalid tensor data type 0 declared for value 'X'"):  # as onnxruntime
        _load(_model([helper.make_node("Relu", ["X"], ["Y"])], inputs, [_value("Y")]))


def test_int_attribute_beyond_int32_does_not_crash_native_inference():
    # onnx's LayerNormalization inference narrowed axis=2**31 to a C int and crashed the process.
    node = helper.make_node("LayerNormalization", ["X", "W"], ["Y"], axis=2**31)
    model = _model([node], [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3]), _value("W")], [_value("Y")])
    with pytest.raises(OnyxRuntimeError, match="axis"):  # a typed refusal (the kernel's), not a crash
        _load(model).run(None, {"X": np.zeros((2, 3), np.float32), "W": np.ones(3, np.float32)})


def test_node_inference_errors_fail_at_load_but_declared_shapes_only_disagree():
    concat = helper.make_node("Concat", ["X", "Z"], ["Y"], axis=0)
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3]),
              helper.make_tensor_value_info("Z", TensorProto.FLOAT, [2, 4])]
    with pytest.raises(Fail, match=r"Node inference failed: .*Concat"):  # dims 3 and 4 cannot concatenate on axis 0
        _load(_model([concat], inputs, [_value("Y")]))
    # A declared output shape inference disagrees with is a warning in onnxruntime, not an error.
    relu = helper.make_node("Relu", ["X"], ["Y"])
    declared = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [7])
    assert _load(_model([relu], inputs[:1], [declared])).run(None, {"X": np.ones((2, 3), np.float32)})[0].shape == (2, 3)


def test_graph_name_that_is_not_utf8_is_accepted_as_onnxruntime_does():
    model = _model([helper.make_node("Relu", ["X"], ["Y"])], [_value("X")], [_value("Y")])
    model.graph.name = "gq"
    data = model.SerializeToString().replace(b"gq", b"g\xff")
    assert _load(data).run(None, {"X": -np.ones(3, np.float32)})[0].tolist() == [0, 0, 0]


def test_ir_version_newer_than_supported_fails():
    model = _model([helper.make_node("Relu", ["X"], ["Y"])], [_value("X")], [_value("Y")])
    model.ir_version = onnx.IR_VERSION + 1
    with pytest.raises(Fail, match=f"Unsupported model IR version: {onnx.IR_VERSION + 1}"):  # as onnxruntime
        _load(model)


def test_constant_without_a_value_fails_at_load():
    nodes = [helper.make_node("Constant", [], ["C"], name="c"), helper.make_node("Add", ["X", "C"], ["Y"])]
    with pytest.raises(Fail, match=r"node 0 \('c', Constant\) must have exactly one value attribute, got none"):
        _load(_model(nodes, [_value("X")], [_value("Y")]))


def test_op_missing_at_the_models_opset_is_an_invalid_graph():
    # Gelu exists (opset 20), but not at opset 9: onnxruntime says INVALID_GRAPH, not FAIL.
    node = helper.make_node("Gelu", ["X"], ["Y"])
    with pytest.raises(InvalidGraph, match="No op registered for these nodes at their domain's opset"):
        _load(_model([node], [_value("X")], [_value("Y")], opset=9))


@pytest.mark.parametrize(
    "node, message",
    [
        (helper.make_node("GatherND", ["X", "I"], ["Y"], batch_dims=-2), "batch_dims must be >= 0"),
        (helper.make_node("Split", ["X"], ["Y", "Z"], num_outputs=1), "num_outputs is 1 but the node has 2 outputs"),
    ],
)
def test_attribute_values_that_crash_native_inference_are_refused_first(node, message):
    # Both crashed onnx's shape inference (and onnxruntime) in the fuzz run.
    inputs = [_value("X"), helper.make_tensor_value_info("I", TensorProto.INT64, [1, 1])][: len(node.input)]
    outputs = [_value(name) for name in node.output]
    with pytest.raises(InvalidGraph, match=message):
        _load(_model([node], inputs, outputs, opset=18))


def test_model_without_opset_imports_fails():
    model = _model([helper.make_node("Relu", ["X"], ["Y"])], [_value("X")], [_value("Y")])
    del model.opset_import[:]
    with pytest.raises(Fail, match="Missing opset in the model"):  # as onnxruntime, whatever the IR version
        _load(model)


def test_node_of_a_domain_the_model_does_not_import_is_an_invalid_graph():
    node = helper.make_node("LeakyRelu", ["X"], ["Y"], domain="org.unknown")
    with pytest.raises(InvalidGraph, match="no opset import for domain 'org.unknown'"):  # as onnxruntime
        _load(_model([node], [_value("X")], [_value("Y")]))
