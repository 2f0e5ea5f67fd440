"""The shared node-building helpers of graph/builder.py on onnx_ir graphs."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from onyxrt.graph.builder import (
    GraphBuilder,
    UniqueNames,
    attribute,
    captured_values,
    names_in,
    reads,
    replace_node,
    subgraphs,
)
from onyxrt.graph.model_loader import model_from_proto

N = helper.make_node


def _vi(name, elem=TensorProto.FLOAT, shape=(2,)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def _graph_with_if():
    """x -> Neg -> n ; If(cond) whose branches read n and x (captures); y = If * n."""
    then_branch = helper.make_graph([N("Add", ["n", "x"], ["t"])], "then", [], [_vi("t")])
    else_branch = helper.make_graph([N("Identity", ["x"], ["e"])], "else", [], [_vi("e")])
    graph = helper.make_graph(
        [N("Neg", ["x"], ["n"], name="neg"), N("If", ["cond"], ["i"], then_branch=then_branch, else_branch=else_branch),
         N("Mul", ["i", "n"], ["y"], name="mul")],
        "g", [_vi("x"), _vi("cond", TensorProto.BOOL, ())], [_vi("y")],
    )
    return model_from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).graph


def test_captures_reads_and_names_cover_subgraphs():
    graph = _graph_with_if()
    neg, if_node, _ = graph
    else_graph, then_graph = subgraphs(if_node)
    assert (then_graph.name, else_graph.name) == ("then", "else")
    x, n = graph.inputs[0], neg.outputs[0]
    assert captured_values(then_graph) == [n, x]
    assert captured_values(else_graph) == [x]
    assert captured_values(graph) == []
    assert reads(if_node) == [graph.inputs[1], x, n, x]
    assert {"x", "cond", "n", "i", "y", "t", "neg", "mul"} <= names_in(graph)


def test_unique_names_avoid_every_scope_and_are_not_handed_out_twice():
    names = UniqueNames(_graph_with_if())
    assert names.fresh("t") == "t_1"  # "t" is taken inside the then-branch
    assert names.fresh("t") == "t_2"
    assert names.fresh("fresh") == "fresh"
    assert names.fresh("fresh") == "fresh_1"


@pytest.mark.parametrize(
    "value,kind,expected",
    [
        (True, ir.AttributeType.INT, 1),
        (np.int64(3), ir.AttributeType.INT, 3),
        (np.float32(0.5), ir.AttributeType.FLOAT, 0.5),
        ("mode", ir.AttributeType.STRING, "mode"),
        ([np.int64(1), 2], ir.AttributeType.INTS, (1, 2)),
        ([1, 2.5], ir.AttributeType.FLOATS, (1.0, 2.5)),
        (["a", "b"], ir.AttributeType.STRINGS, ("a", "b")),
    ],
)
def test_attribute_from_python_values(value, kind, expected):
    attr = attribute("k", value)
    assert (attr.name, attr.type, attr.value) == ("k", kind, expected)


def test_attribute_tensors_and_renamed_attributes():
    attr = attribute("value", np.array([["a", "b"]], dtype=object))
    assert attr.type == ir.AttributeType.TENSOR and attr.value.dtype == ir.DataType.STRING
    np.testing.assert_array_equal(attribute("value", np.arange(3.0)).value.numpy(), [0.0, 1.0, 2.0])
    renamed = attribute("alpha", ir.Attr("value_float", ir.AttributeType.FLOAT, 2.0))
    assert (renamed.name, renamed.value) == ("alpha", 2.0)


def test_builder_names_nodes_and_values_and_inserts_in_place():
    graph = _graph_with_if()
    neg, _, mul = graph
    builder = GraphBuilder(UniqueNames(graph), "mul__")
    doubled = builder.op("Add", [neg.outputs[0], neg.outputs[0]], type=ir.TensorType(ir.DataType.FLOAT))
    pair = builder.node("Split", [doubled], {"axis": 0}, num_outputs=2)
    named = builder.node("Identity", [pair.outputs[1]], output_names=["kept"])
    assert doubled.name == "mul__Add" and doubled.dtype == ir.DataType.FLOAT
    assert [v.name for v in pair.outputs] == ["mul__Split", "mul__Split_1"]
    assert named.outputs[0].name == "kept" and pair.attributes["axis"].value == 0
    assert [n.name for n in builder.nodes] == ["mul__Add_node", "mul__Split_node", "mul__Identity_node"]
    inserted = builder.insert_before(mul)
    assert builder.nodes == [] and [n.op_type for n in graph] == ["Neg", "If", "Add", "Split", "Identity", "Mul"]
    assert all(n.graph is graph for n in inserted)


def test_replace_node_moves_uses_captures_and_graph_outputs_and_keeps_names():
    graph = _graph_with_if()
    neg, if_node, mul = graph
    n = neg.outputs[0]
    n.type, n.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([2])
    builder = GraphBuilder(UniqueNames(graph), "neg__")
    zero = builder.op("Constant", [], {"value": np.zeros(2, np.float32)})
    replacement = builder.op("Sub", [zero, graph.inputs[0]])
    replace_node(neg, builder.nodes, [replacement])
    assert [node.op_type for node in graph] == ["Constant", "Sub", "If", "Mul"]
    assert replacement.name == "n" and replacement.dtype == ir.DataType.FLOAT and list(replacement.shape) == [2]
    assert mul.inputs[1] is replacement
    then_graph = if_node.attributes["then_branch"].as_graph()
    assert then_graph[0].inputs[0] is replacement  # the then-branch's capture follows
    assert neg.graph is None and not n.uses()

    final = graph.outputs[0]
    replace_node(mul, [], [graph.inputs[0]])  # an existing value cannot take the name: an Identity copies it
    copy = graph.outputs[0]
    assert copy is not final and copy.name == "y"
    assert copy.producer().op_type == "Identity" and copy.producer().inputs[0] is graph.inputs[0]


def test_replace_node_refuses_to_drop_a_used_output():
    graph = _graph_with_if()
    neg = graph[0]
    with pytest.raises(ValueError, match="'n'"):
        replace_node(neg, [], [None])
    assert neg.graph is graph


def test_graph_sort_restores_dependency_order_after_insertion():
    """Passes insert where convenient and let onnx_ir's stable Graph.sort() restore the order."""
    graph = _graph_with_if()
    neg, _, mul = graph
    builder = GraphBuilder(UniqueNames(graph), "")
    early = builder.op("Abs", [mul.outputs[0]])  # reads a value produced later
    builder.insert_before(neg)
    graph.sort()
    assert [n.op_type for n in graph] == ["Neg", "If", "Mul", "Abs"]
    assert early.producer() is graph[3]
