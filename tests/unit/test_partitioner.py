"""The partitioner on onnx_ir graphs: assignment on the node, fused regions, the no-cycle rule, subgraphs, errors."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onyxrt.errors import EPFail, NotImplemented as OrtNotImplemented
from onyxrt.framework.partitioner import FUSED_DOMAIN, FUSED_GROUP, PROVIDER_KEY, partition
from onyxrt.providers import CPUExecutionProvider, NodeGroup

from separate_memory_provider import SeparateMemoryProvider

SEP = SeparateMemoryProvider.name
CPU = CPUExecutionProvider.name


def _graph(nodes, inputs, outputs, initializers=()) -> ir.Graph:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ir.serde.deserialize_model(model).graph


def _vi(name, shape=(2, 2)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _in_dependency_order(graph: ir.Graph) -> bool:
    defined = set(graph.inputs) | set(graph.initializers.values())
    for node in graph:
        if any(v is not None and v not in defined for v in node.inputs):
            return False
        defined.update(node.outputs)
    return True


def _fused(graph: ir.Graph) -> list[ir.Node]:
    return [node for node in graph if FUSED_GROUP in node.meta]


def test_per_node_provider_assigns_on_the_node_and_keeps_the_graph():
    graph = _graph([helper.make_node("Relu", ["x"], ["t"]), helper.make_node("Softmax", ["t"], ["y"])],
                   [_vi("x")], [_vi("y")])
    partition(graph, {"": 17}, [CPUExecutionProvider()])
    assert [(n.op_type, n.meta[PROVIDER_KEY]) for n in graph] == [("Relu", CPU), ("Softmax", CPU)]


def test_region_becomes_one_fused_node_with_the_original_names():
    graph = _graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "x"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])],
        [_vi("x")], [_vi("y")], [numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")],
    )
    partition(graph, {"": 17}, [SeparateMemoryProvider(), CPUExecutionProvider()])
    (fused,) = list(graph)
    assert (fused.domain, fused.op_type, fused.meta[PROVIDER_KEY]) == (FUSED_DOMAIN, SEP, SEP)
    assert [v.name for v in fused.inputs] == ["x", "w"] and graph.outputs[0] is fused.outputs[0]
    assert graph.outputs[0].name == "y"
    group = fused.meta[FUSED_GROUP]
    assert [n.op_type for n in group.nodes] == ["MatMul", "Add", "Relu"]
    # the moved nodes read the body's inputs, not the outer values
    assert all(user.graph is not group.nodes[0].graph for user, _ in graph.inputs[0].uses() if user is not fused)
    assert [user for user, _ in graph.inputs[0].uses()] == [fused]


def test_outputs_read_outside_the_region_leave_it_and_order_is_kept():
    graph = _graph(
        [helper.make_node("Add", ["x", "x"], ["a"]), helper.make_node("Softmax", ["a"], ["s"]),
         helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Concat", ["s", "r"], ["y"], axis=0)],
        [_vi("x")], [_vi("y", (4, 2))],
    )
    partition(graph, {"": 17}, [SeparateMemoryProvider(), CPUExecutionProvider()])
    (fused,) = _fused(graph)
    assert [v.name for v in fused.outputs] == ["a", "r"]
    assert _in_dependency_order(graph)


def test_a_region_that_would_close_a_cycle_is_split():
    # Add -> Relu -> Softmax (CPU only) -> Mul, and Relu -> Mul: one region {Add, Relu, Mul}
    # contracted to a node would both feed and read Softmax.
    graph = _graph(
        [helper.make_node("Add", ["x", "x"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("Softmax", ["r"], ["s"]), helper.make_node("Mul", ["s", "r"], ["y"])],
        [_vi("x")], [_vi("y")],
    )
    partition(graph, {"": 17}, [SeparateMemoryProvider(), CPUExecutionProvider()])
    parts = [[n.op_type for n in node.meta[FUSED_GROUP].nodes] for node in _fused(graph)]
    assert parts == [["Add", "Relu"], ["Mul"]]
    assert [n.op_type if n.domain != FUSED_DOMAIN else "fused" for n in graph] == ["fused", "Softmax", "fused"]
    assert _in_dependency_order(graph)


def test_two_independent_regions_stay_apart_when_joined_they_would_cycle():
    # Tanh and Neg read from / feed Softmax on either side; a region of both would cycle with Softmax.
    graph = _graph(
        [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Softmax", ["t"], ["s"]),
         helper.make_node("Neg", ["s"], ["n"]), helper.make_node("Add", ["n", "t"], ["y"])],
        [_vi("x")], [_vi("y")],
    )
    partition(graph, {"": 17}, [SeparateMemoryProvider(), CPUExecutionProvider()])
    assert len(_fused(graph)) == 2 and _in_dependency_order(graph)
    first, second = (node.meta[FUSED_GROUP] for node in _fused(graph))
    assert [n.op_type for n in first.nodes] == ["Tanh"] and [n.op_type for n in second.nodes] == ["Neg", "Add"]


def test_nodes_no_provider_takes_are_listed_in_one_error():
    graph = _graph([helper.make_node("Relu", ["x"], ["t"]), helper.make_node("Softmax", ["t"], ["u"]),
                    helper.make_node("Hardmax", ["u"], ["y"])], [_vi("x")], [_vi("y")])
    with pytest.raises(OrtNotImplemented) as info:
        partition(graph, {"": 17}, [SeparateMemoryProvider()])
    assert "Softmax" in str(info.value) and "Hardmax" in str(info.value) and "Relu" not in str(info.value)


def test_subgraphs_are_partitioned_too():
    branch = helper.make_graph([helper.make_node("Add", ["x", "x"], ["b1"]), helper.make_node("Relu", ["b1"], ["b"])],
                               "then", [], [_vi("b")])
    other = helper.make_graph([helper.make_node("Softmax", ["x"], ["c"])], "else", [], [_vi("c")])
    graph = _graph([helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)],
                   [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), _vi("x")], [_vi("y")])
    partition(graph, {"": 17}, [SeparateMemoryProvider(), CPUExecutionProvider()])
    (if_node,) = list(graph)
    then_graph, else_graph = if_node.attributes["then_branch"].value, if_node.attributes["else_branch"].value
    assert if_node.meta[PROVIDER_KEY] == CPU
    assert [n.meta[PROVIDER_KEY] for n in then_graph] == [SEP] and FUSED_GROUP in then_graph[0].meta
    assert then_graph.outputs[0].name == "b" and [n.meta[PROVIDER_KEY] for n in else_graph] == [CPU]


class _ClaimsTwoUnfused(CPUExecutionProvider):
    name = "ClaimsTwoUnfused"

    def get_capability(self, graph, opset_imports):
        return [NodeGroup.of(list(graph)[:2], opset_imports, fused=False)]


def test_a_provider_returning_an_unfused_group_of_several_nodes_fails():
    graph = _graph([helper.make_node("Relu", ["x"], ["t"]), helper.make_node("Neg", ["t"], ["y"])],
                   [_vi("x")], [_vi("y")])
    with pytest.raises(EPFail):
        partition(graph, {"": 17}, [_ClaimsTwoUnfused()])


def test_partitioning_again_starts_from_scratch():
    graph = _graph([helper.make_node("Relu", ["x"], ["y"])], [_vi("x")], [_vi("y")])
    partition(graph, {"": 17}, [CPUExecutionProvider()])
    clone = graph.clone()
    partition(clone, {"": 17}, [SeparateMemoryProvider(), CPUExecutionProvider()])
    assert [n.meta[PROVIDER_KEY] for n in clone] == [SEP]


def test_node_group_border_values():
    graph = _graph(
        [helper.make_node("Add", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("Neg", ["a"], ["n"]), helper.make_node("Softmax", ["n"], ["y"])],
        [_vi("x")], [_vi("y"), _vi("r")], [numpy_helper.from_array(np.ones((2, 2), np.float32), "w")],
    )
    add, relu, neg, _ = graph
    group = NodeGroup.of([add, relu, neg], {"": 17})
    assert [v.name for v in group.inputs] == ["x", "w"]
    assert [v.name for v in group.outputs] == ["r", "n"]  # a graph output, and a value Softmax reads


class _ClaimsEverything(CPUExecutionProvider):
    name = "ClaimsEverything"

    def get_capability(self, graph, opset_imports):
        return [NodeGroup.of([node], opset_imports, fused=False) for node in graph]


def test_a_provider_claiming_an_assigned_node_fails():
    graph = _graph([helper.make_node("Relu", ["x"], ["y"])], [_vi("x")], [_vi("y")])
    with pytest.raises(EPFail, match="not a free node"):
        partition(graph, {"": 17}, [CPUExecutionProvider(), _ClaimsEverything()])
