"""Common-subexpression elimination: equal nodes on equal inputs run once, through the session and alone."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

import onyxrt as ort
from optimizer_checks import optimized_at_basic
from onyxrt.framework.constant_evaluator import provider_evaluator
from onyxrt.optimizer import OptimizationContext
from onyxrt.optimizer.common_subexpression_elimination import CommonSubexpressionElimination
from onyxrt.providers.cpu import CPUExecutionProvider

FLOAT = TensorProto.FLOAT
X = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
X_INPUT = helper.make_tensor_value_info("x", FLOAT, [2, 3])


def _model(nodes, outputs=("y",), inputs=(X_INPUT,), initializers=(), opset=21, extra_opsets=()) -> onnx.ModelProto:
    outputs = [helper.make_tensor_value_info(name, FLOAT, None) for name in outputs]
    inits = [numpy_helper.from_array(np.asarray(array), name) for name, array in dict(initializers).items()]
    graph = helper.make_graph(nodes, "g", list(inputs), outputs, inits)
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    return helper.make_model(graph, opset_imports=opsets)


def _optimize(model: onnx.ModelProto, tmp_path, feeds=None) -> Counter:
    """Op histogram of the model onyxrt optimized at BASIC (outputs checked against onnxruntime to 1e-6)."""
    return optimized_at_basic(model, tmp_path, feeds, exact=False)[0]


def test_equal_nodes_on_the_same_input_run_once(tmp_path):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Relu", ["x"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    assert _optimize(_model(nodes), tmp_path, {"x": X}) == Counter({"Relu": 1, "Add": 1})


def test_chains_merge_in_one_pass():
    nodes = [
        helper.make_node("Relu", ["x"], ["a1"]),
        helper.make_node("Exp", ["a1"], ["b1"]),
        helper.make_node("Relu", ["x"], ["a2"]),
        helper.make_node("Exp", ["a2"], ["b2"]),
        helper.make_node("Sub", ["b1", "b2"], ["y"]),
    ]
    model = _ir(_model(nodes))
    assert _run_pass(model) == 2
    assert [node.op_type for node in model.graph] == ["Relu", "Exp", "Sub"]
    sub = list(model.graph)[-1]
    assert sub.inputs[0] is sub.inputs[1]


def test_equal_attributes_merge_and_different_ones_do_not(tmp_path):
    nodes = [
        helper.make_node("LeakyRelu", ["x"], ["a"], alpha=0.2),
        helper.make_node("LeakyRelu", ["x"], ["b"], alpha=0.2),
        helper.make_node("LeakyRelu", ["x"], ["c"], alpha=0.3),
        helper.make_node("LeakyRelu", ["x"], ["d"]),  # the default spelled nowhere: not compared as 0.01
        helper.make_node("Sum", ["a", "b", "c", "d"], ["y"]),
    ]
    assert _optimize(_model(nodes), tmp_path, {"x": X}) == Counter({"LeakyRelu": 3, "Sum": 1})


def test_tensor_attributes_compare_by_value(tmp_path):
    shape = helper.make_tensor_value_info("s", TensorProto.INT64, [2])
    nodes = [
        helper.make_node("ConstantOfShape", ["s"], ["a"], value=helper.make_tensor("v", FLOAT, [1], [2.0])),
        helper.make_node("ConstantOfShape", ["s"], ["b"], value=helper.make_tensor("w", FLOAT, [1], [2.0])),
        helper.make_node("ConstantOfShape", ["s"], ["c"], value=helper.make_tensor("v", FLOAT, [1], [3.0])),
        helper.make_node("Sum", ["x", "a", "b", "c"], ["y"]),
    ]
    model = _model(nodes, inputs=(X_INPUT, shape))
    ops = _optimize(model, tmp_path, {"x": X, "s": np.array([2, 3])})
    assert ops == Counter({"ConstantOfShape": 2, "Sum": 1})


def test_inputs_in_another_order_do_not_merge(tmp_path):
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Sub", ["x", "r"], ["a"]),
        helper.make_node("Sub", ["r", "x"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    assert _optimize(_model(nodes), tmp_path, {"x": X}) == Counter({"Relu": 1, "Sub": 2, "Add": 1})


def test_random_nodes_do_not_merge(tmp_path):
    nodes = [
        helper.make_node("RandomUniformLike", ["x"], ["a"]),
        helper.make_node("RandomUniformLike", ["x"], ["b"]),
        helper.make_node("Sub", ["a", "b"], ["y"]),
    ]
    assert _optimize(_model(nodes), tmp_path) == Counter({"RandomUniformLike": 2, "Sub": 1})


def test_nodes_with_subgraphs_do_not_merge(tmp_path):
    def branch(name):
        return helper.make_graph(
            [helper.make_node("Neg", ["x"], [name])], name, [], [helper.make_tensor_value_info(name, FLOAT, None)]
        )

    nodes = [
        helper.make_node("If", ["c"], ["a"], then_branch=branch("t1"), else_branch=branch("e1")),
        helper.make_node("If", ["c"], ["b"], then_branch=branch("t2"), else_branch=branch("e2")),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    model = _model(nodes, inputs=(X_INPUT, helper.make_tensor_value_info("c", TensorProto.BOOL, [])))
    assert _optimize(model, tmp_path, {"x": X, "c": np.array(True)}) == Counter({"If": 2, "Add": 1})


def test_readers_inside_subgraphs_are_rewired(tmp_path):
    then_graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["t"])], "then", [], [helper.make_tensor_value_info("t", FLOAT, None)]
    )
    else_graph = helper.make_graph(
        [helper.make_node("Sub", ["b", "x"], ["e"])], "else", [], [helper.make_tensor_value_info("e", FLOAT, None)]
    )
    nodes = [
        helper.make_node("Exp", ["x"], ["a"]),
        helper.make_node("Exp", ["x"], ["b"]),
        helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph),
    ]
    model = _model(nodes, inputs=(X_INPUT, helper.make_tensor_value_info("c", TensorProto.BOOL, [])))
    for cond in (True, False):
        assert _optimize(model, tmp_path, {"x": X, "c": np.array(cond)}) == Counter({"Exp": 1, "If": 1})


def test_a_merged_graph_output_keeps_its_name(tmp_path):
    nodes = [
        helper.make_node("Exp", ["x"], ["a"]),
        helper.make_node("Neg", ["a"], ["z"]),
        helper.make_node("Exp", ["x"], ["y"]),
    ]
    model = _model(nodes, outputs=("y", "z"))
    assert _optimize(model, tmp_path, {"x": X}) == Counter({"Exp": 1, "Neg": 1})


def test_two_graph_outputs_keep_both_nodes(tmp_path):
    nodes = [helper.make_node("Exp", ["x"], ["y"]), helper.make_node("Exp", ["x"], ["z"])]
    model = _model(nodes, outputs=("y", "z"))
    assert _optimize(model, tmp_path, {"x": X}) == Counter({"Exp": 2})


def test_multi_output_nodes_merge_output_by_output(tmp_path):
    k = helper.make_tensor_value_info("k", TensorProto.INT64, [1])
    nodes = [
        helper.make_node("TopK", ["x", "k"], ["v1", "i1"]),
        helper.make_node("TopK", ["x", "k"], ["v2", "i2"]),
        helper.make_node("Cast", ["i1"], ["f1"], to=FLOAT),
        helper.make_node("Cast", ["i2"], ["f2"], to=FLOAT),
        helper.make_node("Sum", ["v1", "v2", "f1", "f2"], ["y"]),
    ]
    model = _model(nodes, inputs=(X_INPUT, k))
    assert _optimize(model, tmp_path, {"x": X, "k": np.array([2])}) == Counter({"TopK": 1, "Cast": 1, "Sum": 1})


# ---------------------------------------------------------------- the pass alone


def _ir(model: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(model)


def _run_pass(model: ir.Model) -> int:
    context = OptimizationContext(
        opset_imports=model.opset_imports,
        providers=("CPUExecutionProvider",),
        evaluator=provider_evaluator(CPUExecutionProvider()),
    )
    return CommonSubexpressionElimination().run(model.graph, context)


def test_ops_of_unknown_domains_do_not_merge():
    nodes = [
        helper.make_node("Stateful", ["x"], ["a"], domain="custom.domain"),
        helper.make_node("Stateful", ["x"], ["b"], domain="custom.domain"),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    model = _ir(_model(nodes, extra_opsets=[("custom.domain", 1)]))
    assert _run_pass(model) == 0


def test_nodes_that_differ_in_present_outputs_do_not_merge():
    nodes = [
        helper.make_node("TopK", ["x", "k"], ["v1", "i1"]),
        helper.make_node("TopK", ["x", "k"], ["v2"]),
        helper.make_node("Add", ["v1", "v2"], ["y"]),
    ]
    model = _ir(_model(nodes, initializers={"k": np.array([2])}))
    assert _run_pass(model) == 0


def test_small_constants_of_equal_content_count_as_the_same_input(tmp_path):
    # Folding leaves each Unsqueeze its own axes initializer; equal contents still merge.
    nodes = [helper.make_node("Unsqueeze", ["x", "axes_a"], ["a"]), helper.make_node("Unsqueeze", ["x", "axes_b"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    initializers = {"axes_a": np.array([0], np.int64), "axes_b": np.array([0], np.int64)}
    ops = _optimize(_model(nodes, initializers=initializers), tmp_path, {"x": X})
    assert ops["Unsqueeze"] == 1
    different = {"axes_a": np.array([0], np.int64), "axes_b": np.array([1], np.int64)}
    model = _model(nodes[:2] + [helper.make_node("Identity", ["a"], ["y"]), helper.make_node("Identity", ["b"], ["z"])],
                   outputs=("y", "z"), initializers=different)
    assert _optimize(model, tmp_path, {"x": X})["Unsqueeze"] == 2
