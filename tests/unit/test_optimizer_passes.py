"""Identity elimination, dead-code elimination and constant folding on onnx_ir models."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onyxrt.framework.constant_evaluator import provider_evaluator
from onyxrt.graph.tensors import constant_array
from onyxrt.optimizer import OptimizationContext, optimize
from onyxrt.optimizer.constant_folding import ConstantFolding
from onyxrt.optimizer.dead_code_elimination import DeadCodeElimination
from onyxrt.optimizer.identity_elimination import IdentityElimination
from onyxrt.providers.cpu import CPUExecutionProvider

CPU_EVALUATOR = provider_evaluator(CPUExecutionProvider())


def _ir(nodes, inputs, outputs, initializers=(), opset=21, extra_opsets=()) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=opsets))


def _vi(name, shape=(2,), elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, None if shape is None else list(shape))


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _context(model, evaluator=CPU_EVALUATOR, **limits) -> OptimizationContext:
    return OptimizationContext(
        opset_imports=model.opset_imports, providers=("CPUExecutionProvider",), evaluator=evaluator, **limits
    )


def _ops(graph) -> list[str]:
    return [node.op_type for node in graph]


def _run(model, **kwargs):
    return optimize(model, 1, providers=["CPUExecutionProvider"], evaluator=CPU_EVALUATOR, **kwargs)


def _if_node(then_nodes, then_out, else_nodes, else_out, cond="c", outputs=("y",)):
    then_graph = helper.make_graph(then_nodes, "then", [], [_vi(then_out)])
    else_graph = helper.make_graph(else_nodes, "else", [], [_vi(else_out)])
    return helper.make_node("If", [cond], list(outputs), then_branch=then_graph, else_branch=else_graph)


def _branches(model):
    return {g.name: g for g in model.graph.subgraphs()}


COND = _vi("c", (), TensorProto.BOOL)

# ---------------------------------------------------------------- identity elimination


def test_identity_between_nodes_is_bypassed():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Identity", ["a"], ["b"]),
        helper.make_node("Neg", ["b"], ["y"]),
    ]
    model = _ir(nodes, [_vi("x")], [_vi("y")])
    assert IdentityElimination().run(model.graph, _context(model)) == 1
    relu, neg = model.graph
    assert neg.inputs[0] is relu.outputs[0]


def test_identity_producing_a_graph_output_hands_its_name_to_the_producer():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["y"])]
    model = _ir(nodes, [_vi("x")], [_vi("y")])
    assert IdentityElimination().run(model.graph, _context(model)) == 1
    assert _ops(model.graph) == ["Relu"]
    assert model.graph.outputs[0] is model.graph.node(0).outputs[0]
    assert model.graph.outputs[0].name == "y"


@pytest.mark.parametrize(
    "source_is",
    ["graph input", "initializer", "another graph output"],
)
def test_identity_producing_a_graph_output_stays_when_its_input_cannot_be_renamed(source_is):
    if source_is == "graph input":
        model = _ir([helper.make_node("Identity", ["x"], ["y"])], [_vi("x")], [_vi("y")])
    elif source_is == "initializer":
        model = _ir([helper.make_node("Identity", ["w"], ["y"])], [], [_vi("y")], [_init("w", np.ones(2, np.float32))])
    else:
        nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["y"])]
        model = _ir(nodes, [_vi("x")], [_vi("a"), _vi("y")])
    assert IdentityElimination().run(model.graph, _context(model)) == 0
    assert [v.name for v in model.graph.outputs][-1] == "y"
    assert "Identity" in _ops(model.graph)


def test_identity_read_by_a_subgraph_is_bypassed_there_too():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Identity", ["a"], ["b"]),
        _if_node([helper.make_node("Neg", ["b"], ["t"])], "t", [helper.make_node("Abs", ["b"], ["e"])], "e"),
    ]
    model = _ir(nodes, [_vi("x"), COND], [_vi("y")])
    assert IdentityElimination().run(model.graph, _context(model)) == 1
    relu_output = model.graph.node(0).outputs[0]
    assert all(g.node(0).inputs[0] is relu_output for g in _branches(model).values())


def test_identity_in_a_subgraph_returning_an_outer_value_stays():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        _if_node([helper.make_node("Identity", ["a"], ["t"])], "t", [helper.make_node("Neg", ["a"], ["e"])], "e"),
    ]
    model = _ir(nodes, [_vi("x"), COND], [_vi("y")])
    assert _run(model).counts.get("identity_elimination", 0) == 0
    assert _ops(_branches(model)["then"]) == ["Identity"]


# ---------------------------------------------------------------- dead-code elimination


def test_dead_chain_and_unread_initializers_go_in_one_run_but_graph_inputs_stay():
    nodes = [
        helper.make_node("Relu", ["x"], ["y"]),
        helper.make_node("Add", ["x", "w"], ["dead1"]),
        helper.make_node("Neg", ["dead1"], ["dead2"]),
    ]
    initializers = [_init("w", np.ones(2, np.float32)), _init("unused", np.ones(2, np.float32)), _init("fed", [1.0])]
    model = _ir(nodes, [_vi("x"), _vi("fed", (1,))], [_vi("y")], initializers)
    assert DeadCodeElimination().run(model.graph, _context(model)) == 4  # two nodes, two initializers
    assert _ops(model.graph) == ["Relu"]
    assert list(model.graph.initializers) == ["fed"]


def test_value_read_only_by_a_subgraph_is_alive():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        _if_node([helper.make_node("Add", ["a", "w"], ["t"])], "t", [helper.make_node("Neg", ["x"], ["e"])], "e"),
    ]
    model = _ir(nodes, [_vi("x"), COND], [_vi("y")], [_init("w", np.ones(2, np.float32))])
    assert DeadCodeElimination().run(model.graph, _context(model)) == 0
    assert _ops(model.graph) == ["Relu", "If"]
    assert "w" in model.graph.initializers


def test_removing_a_dead_if_frees_what_only_its_branches_read():
    nodes = [
        helper.make_node("Relu", ["x"], ["y"]),
        helper.make_node("Neg", ["x"], ["a"]),
        _if_node([helper.make_node("Add", ["a", "w"], ["t"])], "t", [helper.make_node("Abs", ["a"], ["e"])], "e",
                 outputs=("unused",)),
    ]
    model = _ir(nodes, [_vi("x"), COND], [_vi("y")], [_init("w", np.ones(2, np.float32))])
    assert DeadCodeElimination().run(model.graph, _context(model)) == 3  # If, Neg, w
    assert _ops(model.graph) == ["Relu"]
    assert not model.graph.initializers


# ---------------------------------------------------------------- constant folding


def test_constant_node_and_initializer_arithmetic_fold_into_one_initializer():
    nodes = [
        helper.make_node("Constant", [], ["k"], value=_init("k", np.full(2, 3.0, np.float32))),
        helper.make_node("Add", ["k", "w"], ["s"]),
        helper.make_node("Mul", ["x", "s"], ["y"]),
    ]
    model = _ir(nodes, [_vi("x")], [_vi("y")], [_init("w", np.ones(2, np.float32))])
    report = _run(model)
    assert report.counts["constant_folding"] == 2
    assert _ops(model.graph) == ["Mul"]
    folded = model.graph.node(0).inputs[1]
    assert folded.name == "s" and folded.is_initializer()
    assert folded.type == ir.TensorType(ir.DataType.FLOAT) and folded.shape == ir.Shape([2])
    np.testing.assert_array_equal(folded.const_value.numpy(), [4.0, 4.0])
    assert list(model.graph.initializers) == ["s"]


def test_overridable_initializer_is_not_folded():
    nodes = [helper.make_node("Neg", ["w"], ["n"]), helper.make_node("Add", ["x", "n"], ["y"])]
    model = _ir(nodes, [_vi("x"), _vi("w")], [_vi("y")], [_init("w", np.ones(2, np.float32))])
    assert ConstantFolding().run(model.graph, _context(model)) == 0


def test_folded_graph_output_keeps_its_name():
    model = _ir([helper.make_node("Neg", ["w"], ["y"])], [], [_vi("y")], [_init("w", np.ones(2, np.float32))])
    assert ConstantFolding().run(model.graph, _context(model)) == 1
    assert len(model.graph) == 0
    assert model.graph.outputs[0].name == "y" and model.graph.outputs[0].is_initializer()


def test_random_ops_are_never_folded():
    nodes = [helper.make_node("RandomNormalLike", ["w"], ["r"]), helper.make_node("Add", ["x", "r"], ["y"])]
    model = _ir(nodes, [_vi("x")], [_vi("y")], [_init("w", np.ones(2, np.float32))])
    calls = []
    context = _context(model, evaluator=lambda *args: calls.append(args))
    assert ConstantFolding().run(model.graph, context) == 0
    assert calls == []


def test_node_the_evaluator_cannot_run_stays():
    model = _ir([helper.make_node("Neg", ["w"], ["n"]), helper.make_node("Add", ["x", "n"], ["y"])],
                [_vi("x")], [_vi("y")], [_init("w", np.ones(2, np.float32))])
    assert ConstantFolding().run(model.graph, _context(model, evaluator=lambda *args: None)) == 0
    assert _ops(model.graph) == ["Neg", "Add"]


def test_evaluator_result_of_another_type_than_declared_is_not_used():
    model = _ir([helper.make_node("Neg", ["w"], ["n"]), helper.make_node("Add", ["x", "n"], ["y"])],
                [_vi("x")], [_vi("y")], [_init("w", np.ones(2, np.float32))])
    model.graph.node(0).outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    context = _context(model, evaluator=lambda node, opset, inputs: [np.zeros(2, np.float64)])
    assert ConstantFolding().run(model.graph, context) == 0


def test_evaluator_gets_the_opset_and_none_for_missing_inputs():
    seen = []

    def evaluator(node, opset, inputs):
        seen.append((node.op_type, opset, [None if a is None else a.tolist() for a in inputs]))
        return CPU_EVALUATOR(node, opset, inputs)

    nodes = [helper.make_node("Clip", ["w", "", "hi"], ["m"]), helper.make_node("Add", ["x", "m"], ["y"])]
    initializers = [_init("w", np.array([1.0, 5.0], np.float32)), _init("hi", np.float32(2.0))]
    model = _ir(nodes, [_vi("x")], [_vi("y")], initializers, opset=13)
    assert ConstantFolding().run(model.graph, _context(model, evaluator=evaluator)) == 1
    assert seen == [("Clip", 13, [[1.0, 5.0], None, 2.0])]
    np.testing.assert_array_equal(model.graph.node(0).inputs[1].const_value.numpy(), [1.0, 2.0])


def test_folding_inside_a_subgraph_reads_outer_initializers():
    nodes = [_if_node([helper.make_node("Neg", ["w"], ["t"])], "t", [helper.make_node("Abs", ["x"], ["e"])], "e")]
    model = _ir(nodes, [_vi("x"), COND], [_vi("y")], [_init("w", np.ones(2, np.float32))])
    report = _run(model)
    assert report.counts["constant_folding"] == 1
    then_graph = _branches(model)["then"]
    assert len(then_graph) == 0
    np.testing.assert_array_equal(then_graph.outputs[0].const_value.numpy(), [-1.0, -1.0])
    assert "w" not in model.graph.initializers  # nothing reads it any more


@pytest.mark.parametrize(("start", "end", "expected"), [(None, None, [2, 3, 4]), (1, None, [3, 4]), (-1, 9, [4])])
def test_shape_of_a_static_shape_folds_even_from_a_graph_input(start, end, expected):
    attributes = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    nodes = [helper.make_node("Shape", ["x"], ["s"], **attributes), helper.make_node("Reshape", ["x", "s"], ["y"])]
    model = _ir(nodes, [_vi("x", (2, 3, 4))], [_vi("y", None)])
    assert ConstantFolding().run(model.graph, _context(model)) == 1
    assert model.graph.node(0).inputs[1].const_value.numpy().tolist() == expected


def test_shape_of_a_dynamic_shape_stays():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])]
    model = _ir(nodes, [_vi("x", ("batch", 3))], [_vi("y", None)])
    assert ConstantFolding().run(model.graph, _context(model)) == 0


# DequantizeLinear: QDQ node units stay for the kernels and providers that fuse them (issue 6).


def _dq_matmul_model() -> ir.Model:
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    initializers = [
        _init("w_q", np.arange(-8, 8, dtype=np.int8).reshape(4, 4)),
        _init("w_scale", np.float32(0.5)),
        _init("w_zero", np.int8(0)),
    ]
    return _ir(nodes, [_vi("x", (1, 4))], [_vi("y", (1, 4))], initializers)


def test_int8_weight_behind_dequantize_linear_stays_quantized():
    model = _dq_matmul_model()
    report = _run(model)
    assert "constant_folding" not in report.counts
    assert _ops(model.graph) == ["DequantizeLinear", "MatMul"]
    assert model.graph.initializers["w_q"].const_value.dtype == ir.DataType.INT8


def test_dequantize_linear_folds_when_the_session_disables_qdq():
    model = _dq_matmul_model()
    _run(model, fold_dequantize_linear=True)
    assert _ops(model.graph) == ["MatMul"]
    np.testing.assert_array_equal(model.graph.node(0).inputs[1].const_value.numpy()[0], [-4.0, -3.5, -3.0, -2.5])


def test_whole_qdq_unit_of_constants_folds():
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "scale", "zero"], ["w"]),
        helper.make_node("Relu", ["w"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "scale", "zero"], ["r_q"]),
        helper.make_node("DequantizeLinear", ["r_q", "scale", "zero"], ["r_dq"]),
        helper.make_node("Add", ["x", "r_dq"], ["y"]),
    ]
    initializers = [_init("w_q", np.array([-2, 3], np.int8)), _init("scale", np.float32(1.0)), _init("zero", np.int8(0))]
    model = _ir(nodes, [_vi("x")], [_vi("y")], initializers)
    _run(model)
    # The DQ -> Relu -> Q unit folds; the DQ feeding Add is its own unit's edge and stays.
    assert _ops(model.graph) == ["DequantizeLinear", "Add"]
    np.testing.assert_array_equal(model.graph.node(0).inputs[0].const_value.numpy(), [0, 3])


# Size cap: a generator is not materialized into a large weight (issue 6).


def _constant_of_shape_model(rows: int, declare_shape: bool) -> ir.Model:
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["filled"], value=_init("v", np.array([1.0], np.float32))),
        helper.make_node("Add", ["x", "filled"], ["y"]),
    ]
    model = _ir(nodes, [_vi("x", (rows, rows))], [_vi("y", (rows, rows))], [_init("shape", np.array([rows, rows]))])
    if declare_shape:  # as shape inference would
        filled = model.graph.node(0).outputs[0]
        filled.type, filled.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([rows, rows])
    return model


@pytest.mark.parametrize("declare_shape", [True, False])
def test_large_constant_of_shape_is_not_materialized(declare_shape):
    model = _constant_of_shape_model(4096, declare_shape)
    calls = []

    def evaluator(node, opset, inputs):
        calls.append(node.op_type)
        return CPU_EVALUATOR(node, opset, inputs)

    assert ConstantFolding().run(model.graph, _context(model, evaluator=evaluator)) == 0
    assert _ops(model.graph) == ["ConstantOfShape", "Add"]
    assert calls == ([] if declare_shape else ["ConstantOfShape"])  # a declared shape spares the evaluation


def test_small_constant_of_shape_folds():
    model = _constant_of_shape_model(64, declare_shape=True)
    assert ConstantFolding().run(model.graph, _context(model)) == 1
    assert model.graph.node(0).inputs[1].const_value.numpy().shape == (64, 64)


def test_cap_does_not_stop_folds_that_do_not_grow_the_model():
    weight = np.arange(1024 * 1024, dtype=np.float32).reshape(1024, 1024)  # 4 MiB
    nodes = [helper.make_node("Transpose", ["w"], ["wt"]), helper.make_node("MatMul", ["x", "wt"], ["y"])]
    model = _ir(nodes, [_vi("x", (1, 1024))], [_vi("y", (1, 1024))], [_init("w", weight)])
    assert ConstantFolding().run(model.graph, _context(model)) == 1
    np.testing.assert_array_equal(model.graph.node(0).inputs[1].const_value.numpy(), weight.T)


def test_cap_is_a_context_setting():
    model = _constant_of_shape_model(64, declare_shape=True)  # 16 KiB
    assert ConstantFolding().run(model.graph, _context(model, max_folded_bytes=1024)) == 0


def test_string_constant_with_a_declared_static_shape_folds():
    # Measuring its declared bytes raised TypeError (strings have no fixed width): the model did not load.
    value = helper.make_tensor("v", TensorProto.STRING, [2], [b"a", b"b"])
    model = _ir([helper.make_node("Constant", [], ["y"], value=value)], [], [_vi("y", (2,), TensorProto.STRING)])
    assert ConstantFolding().run(model.graph, _context(model)) == 1
    assert constant_array(model.graph.outputs[0]).tolist() == ["a", "b"]
