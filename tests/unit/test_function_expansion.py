"""Function ops replaced by their ONNX schema bodies on onnx_ir graphs (graph/function_expansion.py).

Each case expands a model's function ops as if no provider ran them, then checks
the expanded graph with onnx.reference against the original model.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onyxrt.graph.builder import names_in
from onyxrt.graph.function_expansion import expand_node, expand_unsupported, schema_function
from onyxrt.graph.model_loader import model_from_proto
from onyxrt.graph.model_saver import model_to_proto

N = helper.make_node
RNG = np.random.default_rng(7)


def _model(nodes, inputs, outputs, initializers=(), opset=18, value_info=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers), value_info=list(value_info))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, shape=(2, 4), elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, None if shape is None else list(shape))


def _runs_all_but(*op_types):
    return lambda node, opset: node.op_type not in op_types


def _expand(proto, *unsupported):
    model = model_from_proto(proto)
    count = expand_unsupported(model.graph, model.opset_imports, _runs_all_but(*unsupported))
    return model, count


def _assert_same_results(original, model, feeds):
    expanded = model_to_proto(model)
    onnx.checker.check_model(expanded, full_check=True)
    expected = ReferenceEvaluator(original).run(None, feeds)
    got = ReferenceEvaluator(expanded).run(None, feeds)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def _op_types(graph):
    return [node.op_type for node in graph]


def test_body_replaces_the_node_reading_its_inputs_and_keeping_its_output_names():
    # alpha is the node's, beta the schema default (0.5); y is both a graph output and read by Neg.
    proto = _model([N("HardSigmoid", ["x"], ["y"], alpha=0.3), N("Neg", ["y"], ["z"])], [_vi("x")], [_vi("y"), _vi("z")])
    model, count = _expand(proto, "HardSigmoid")
    assert count == 1
    assert "HardSigmoid" not in _op_types(model.graph)
    assert [v.name for v in model.graph.outputs] == ["y", "z"]
    y = model.graph.outputs[0]
    assert y.producer().op_type == "Max" and y.dtype == ir.DataType.FLOAT  # typed like the replaced output
    assert model.graph.outputs[1].producer().inputs[0] is y
    _assert_same_results(proto, model, {"x": RNG.normal(size=(2, 4)).astype(np.float32) * 4})


def test_context_dependent_body_needs_the_input_types():
    node = N("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1, epsilon=1e-3)
    inits = [numpy_helper.from_array(RNG.normal(size=4).astype(np.float32), n) for n in ("s", "b")]
    typed = _model([node], [_vi("x")], [_vi("y")], inits)
    model, count = _expand(typed, "LayerNormalization")
    # The body lists Mean and InvStdDev as outputs the one-output node leaves unset.
    assert count == 1 and "LayerNormalization" not in _op_types(model.graph)
    _assert_same_results(typed, model, {"x": RNG.normal(size=(2, 4)).astype(np.float32)})

    untyped = model_from_proto(_model([node], [_vi("x", shape=None, elem=TensorProto.UNDEFINED)], [_vi("y")], inits))
    (layer_norm,) = untyped.graph
    assert schema_function(layer_norm, 18) is None


def test_nested_function_ops_and_subgraphs_are_expanded_with_captures_rewired():
    # Celu's body uses Elu, itself a function op; the Celu in the then-branch reads an outer value.
    then_branch = helper.make_graph([N("Celu", ["x"], ["c"], alpha=2.0)], "then", [], [_vi("c")])
    else_branch = helper.make_graph([N("Identity", ["x"], ["e"])], "else", [], [_vi("e")])
    proto = _model(
        [N("Mish", ["x"], ["m"]), N("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch),
         N("Add", ["y", "m"], ["z"])],
        [_vi("x"), _vi("cond", (), TensorProto.BOOL)], [_vi("z")],
    )
    model, count = _expand(proto, "Celu", "Elu", "Mish")
    assert count == 3  # Mish, Celu, and the Elu of Celu's body
    then_graph = next(node for node in model.graph if node.op_type == "If").attributes["then_branch"].as_graph()
    assert not {"Celu", "Elu"} & set(_op_types(then_graph))
    assert then_graph.outputs[0].name == "c"
    names = [v.name for g in (model.graph, then_graph) for n in g for v in n.outputs]
    assert len(names) == len(set(names)), "fresh names are unique across scopes"
    x = RNG.normal(size=(2, 4)).astype(np.float32)
    for cond in (True, False):
        _assert_same_results(proto, model, {"x": x, "cond": np.array(cond)})


def test_body_subgraphs_are_copied_reading_the_inlined_values():
    # SequenceMap's body is a Loop whose body graph captures function-scope values.
    body = helper.make_graph([N("Mul", ["t", "t"], ["sq"])], "sq", [_vi("t", shape=None)], [_vi("sq", shape=None)])
    seq = helper.make_tensor_sequence_value_info
    proto = _model(
        [N("SequenceMap", ["s"], ["r"], body=body)],
        [seq("s", TensorProto.FLOAT, None)], [seq("r", TensorProto.FLOAT, None)],
    )
    model, count = _expand(proto, "SequenceMap")
    assert count == 1 and "Loop" in _op_types(model.graph)
    feeds = {"s": [RNG.normal(size=(3,)).astype(np.float32), RNG.normal(size=(2, 2)).astype(np.float32)]}
    expected = ReferenceEvaluator(proto).run(None, feeds)[0]
    got = ReferenceEvaluator(model_to_proto(model)).run(None, feeds)[0]
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e)


def test_supported_nodes_stay_and_ops_without_a_body_are_left_alone():
    proto = _model([N("HardSigmoid", ["x"], ["h"]), N("Sqrt", ["h"], ["y"])], [_vi("x")], [_vi("y")])
    model, count = _expand(proto, "Sqrt")  # Sqrt has no function body; HardSigmoid is supported
    assert count == 0 and _op_types(model.graph) == ["HardSigmoid", "Sqrt"]


def test_expand_node_returns_the_inserted_nodes_in_place():
    proto = _model([N("Neg", ["x"], ["n"]), N("Mish", ["n"], ["m"]), N("Abs", ["m"], ["y"])], [_vi("x")], [_vi("y")])
    model = model_from_proto(proto)
    mish = model.graph.node(1)
    before = names_in(model.graph)
    inserted = expand_node(mish, schema_function(mish, 18), 18)
    assert _op_types(model.graph) == ["Neg", *[n.op_type for n in inserted], "Abs"]
    assert inserted[-1].outputs[0].name == "m"
    assert all(v.name not in before for n in inserted[:-1] for v in n.outputs)
    _assert_same_results(proto, model, {"x": RNG.normal(size=(2, 4)).astype(np.float32)})
