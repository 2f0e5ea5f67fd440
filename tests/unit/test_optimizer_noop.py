"""No-op elimination: nodes whose output equals their input are bypassed, through the session and alone."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt as ort
from optimizer_checks import optimized_at_basic
from onyxrt.framework.constant_evaluator import provider_evaluator
from onyxrt.optimizer import OptimizationContext
from onyxrt.optimizer.noop_elimination import NoopElimination
from onyxrt.providers.cpu import CPUExecutionProvider

INT64_MAX = np.iinfo(np.int64).max
FLOAT = TensorProto.FLOAT
X = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5


def _model(nodes, outputs=("y",), inputs=None, initializers=(), opset=21, out_shape=None) -> onnx.ModelProto:
    inputs = inputs or [helper.make_tensor_value_info("x", FLOAT, [2, 3])]
    outputs = [helper.make_tensor_value_info(name, FLOAT, out_shape) for name in outputs]
    inits = [numpy_helper.from_array(np.asarray(array), name) for name, array in dict(initializers).items()]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _optimize(model: onnx.ModelProto, tmp_path, feeds=None):
    """Op histogram of the model onyxrt optimized at BASIC, and its session (outputs checked against onnxruntime)."""
    return optimized_at_basic(model, tmp_path, feeds)


def _relu_then(op_nodes, initializers=(), opset=21, out_shape=None):
    """x -> Relu -> r -> <op_nodes reading r, writing m> -> Neg -> y: the no-op sits between two nodes."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), *op_nodes, helper.make_node("Neg", ["m"], ["y"])]
    return _model(nodes, initializers=initializers, opset=opset, out_shape=out_shape)


NO_OPS = {
    "dropout_inference": ([helper.make_node("Dropout", ["r"], ["m"])], {}, 21),
    "dropout_training_false": (
        [helper.make_node("Dropout", ["r", "ratio", "train"], ["m"])],
        {"ratio": np.float32(0.3), "train": np.bool_(False)},
        21,
    ),
    "dropout_opset10": ([helper.make_node("Dropout", ["r"], ["m"], ratio=0.4)], {}, 10),
    "cast_same_type": ([helper.make_node("Cast", ["r"], ["m"], to=FLOAT)], {}, 21),
    "castlike_same_type": ([helper.make_node("CastLike", ["r", "like"], ["m"])], {"like": np.float32(1)}, 21),
    "reshape_same": ([helper.make_node("Reshape", ["r", "s"], ["m"])], {"s": np.array([2, 3])}, 21),
    "reshape_copy_and_infer": ([helper.make_node("Reshape", ["r", "s"], ["m"])], {"s": np.array([0, -1])}, 21),
    "expand_ones": ([helper.make_node("Expand", ["r", "s"], ["m"])], {"s": np.array([1, 3])}, 21),
    "expand_lower_rank": ([helper.make_node("Expand", ["r", "s"], ["m"])], {"s": np.array([3])}, 21),
    "squeeze_no_ones": ([helper.make_node("Squeeze", ["r"], ["m"])], {}, 21),
    "flatten_rank2": ([helper.make_node("Flatten", ["r"], ["m"], axis=1)], {}, 21),
    "slice_everything": (
        [helper.make_node("Slice", ["r", "st", "en"], ["m"])],
        {"st": np.array([0, 0]), "en": np.array([INT64_MAX, 3])},
        21,
    ),
    "slice_axes_steps": (
        [helper.make_node("Slice", ["r", "st", "en", "ax", "sp"], ["m"])],
        {"st": np.array([0]), "en": np.array([99]), "ax": np.array([-1]), "sp": np.array([1])},
        21,
    ),
    "slice_opset9": ([helper.make_node("Slice", ["r"], ["m"], starts=[0], ends=[INT64_MAX], axes=[1])], {}, 9),
    "pad_zero": ([helper.make_node("Pad", ["r", "p"], ["m"], mode="reflect")], {"p": np.zeros(4, np.int64)}, 21),
    "pad_opset2": ([helper.make_node("Pad", ["r"], ["m"], pads=[0, 0, 0, 0])], {}, 10),
    "transpose_identity": ([helper.make_node("Transpose", ["r"], ["m"], perm=[0, 1])], {}, 21),
    "tile_ones": ([helper.make_node("Tile", ["r", "t"], ["m"])], {"t": np.array([1, 1])}, 21),
    "concat_one": ([helper.make_node("Concat", ["r"], ["m"], axis=0)], {}, 21),
    "mul_one": ([helper.make_node("Mul", ["r", "one"], ["m"])], {"one": np.ones((1, 3), np.float32)}, 21),
    "one_mul": ([helper.make_node("Mul", ["one", "r"], ["m"])], {"one": np.float32(1)}, 21),
    "div_one": ([helper.make_node("Div", ["r", "one"], ["m"])], {"one": np.ones(3, np.float32)}, 21),
    "add_negative_zero": ([helper.make_node("Add", ["z", "r"], ["m"])], {"z": np.float32(-0.0)}, 21),
    "sub_zero": ([helper.make_node("Sub", ["r", "z"], ["m"])], {"z": np.zeros((2, 1), np.float32)}, 21),
}


@pytest.mark.parametrize("case", sorted(NO_OPS))
def test_no_op_is_removed_and_outputs_match_onnxruntime(case, tmp_path):
    op_nodes, initializers, opset = NO_OPS[case]
    model = _relu_then(op_nodes, initializers, opset)
    ops, session = _optimize(model, tmp_path, {"x": X})
    assert ops == Counter({"Relu": 1, "Neg": 1})
    assert "noop_elimination" in session.applied_optimizations


RANDOM = None  # a training-mode Dropout: outputs not compared
KEPT = {
    # case: (nodes reading r and writing m, initializers, extra graph inputs, extra feeds or RANDOM)
    "dropout_training_input": (
        [helper.make_node("Dropout", ["r", "", "train"], ["m"])],
        {},
        [helper.make_tensor_value_info("train", TensorProto.BOOL, [])],
        RANDOM,
    ),
    "dropout_training_true": (
        [helper.make_node("Dropout", ["r", "", "train"], ["m"])], {"train": np.bool_(True)}, [], RANDOM
    ),
    "cast_other_type": (
        [helper.make_node("Cast", ["r"], ["d"], to=TensorProto.DOUBLE), helper.make_node("Cast", ["d"], ["m"], to=FLOAT)],
        {},
        [],
        {},
    ),
    "reshape_other_shape": ([helper.make_node("Reshape", ["r", "s"], ["m"])], {"s": np.array([3, 2])}, [], {}),
    "reshape_runtime_shape": (
        [helper.make_node("Reshape", ["r", "s"], ["m"])],
        {},
        [helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
        {"s": np.array([2, 3])},
    ),
    "expand_grows": ([helper.make_node("Expand", ["r", "s"], ["m"])], {"s": np.array([2, 2, 3])}, [], {}),
    "slice_start_one": (
        [helper.make_node("Slice", ["r", "st", "en"], ["m"])],
        {"st": np.array([1]), "en": np.array([INT64_MAX])},
        [],
        {},
    ),
    "slice_short_end": (
        [helper.make_node("Slice", ["r", "st", "en", "ax"], ["m"])],
        {"st": np.array([0]), "en": np.array([2]), "ax": np.array([1])},
        [],
        {},
    ),
    "slice_reversed": (
        [helper.make_node("Slice", ["r", "st", "en", "ax", "sp"], ["m"])],
        {"st": np.array([-1]), "en": np.array([-INT64_MAX]), "ax": np.array([0]), "sp": np.array([-1])},
        [],
        {},
    ),
    "pad_nonzero": ([helper.make_node("Pad", ["r", "p"], ["m"])], {"p": np.array([0, 1, 0, 0])}, [], {}),
    "transpose_swap": ([helper.make_node("Transpose", ["r"], ["m"], perm=[1, 0])], {}, [], {}),
    "transpose_default_perm": ([helper.make_node("Transpose", ["r"], ["m"])], {}, [], {}),
    "tile_twice": ([helper.make_node("Tile", ["r", "t"], ["m"])], {"t": np.array([1, 2])}, [], {}),
    "flatten_axis0": ([helper.make_node("Flatten", ["r"], ["m"], axis=0)], {}, [], {}),
    # x + 0.0 turns -0.0 into +0.0
    "add_positive_zero": ([helper.make_node("Add", ["r", "z"], ["m"])], {"z": np.float32(0.0)}, [], {}),
    "sub_from_zero": ([helper.make_node("Sub", ["z", "r"], ["m"])], {"z": np.float32(0.0)}, [], {}),
    "div_into_one": ([helper.make_node("Div", ["one", "r"], ["m"])], {"one": np.float32(1)}, [], {}),
    "mul_two": ([helper.make_node("Mul", ["r", "c"], ["m"])], {"c": np.array([1, 2, 1], np.float32)}, [], {}),
    # the constant broadcasts x to a larger shape
    "mul_broadcasting": ([helper.make_node("Mul", ["r", "one"], ["m"])], {"one": np.ones((2, 2, 3), np.float32)}, [], {}),
}


@pytest.mark.parametrize("case", sorted(KEPT))
def test_node_that_changes_its_input_stays(case, tmp_path):
    op_nodes, initializers, extra_inputs, extra_feeds = KEPT[case]
    nodes = [helper.make_node("Relu", ["x"], ["r"]), *op_nodes, helper.make_node("Neg", ["m"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", FLOAT, [2, 3]), *extra_inputs]
    model = _model(nodes, inputs=inputs, initializers=initializers)
    ops, _ = _optimize(model, tmp_path, None if extra_feeds is RANDOM else {"x": X, **extra_feeds})
    assert ops == Counter(node.op_type for node in op_nodes) + Counter({"Relu": 1, "Neg": 1})


def test_dropout_whose_mask_is_read_stays(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Dropout", ["r"], ["y", "mask"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", FLOAT, None), helper.make_tensor_value_info("mask", TensorProto.BOOL, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    ops, _ = _optimize(model, tmp_path, {"x": X})
    assert ops == Counter({"Relu": 1, "Dropout": 1})


def test_overridable_initializer_parameter_keeps_the_node(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Tile", ["r", "t"], ["m"]),
             helper.make_node("Neg", ["m"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", FLOAT, [2, 3]), helper.make_tensor_value_info("t", TensorProto.INT64, [2])]
    model = _model(nodes, inputs=inputs, initializers={"t": np.array([1, 1])}, out_shape=None)
    ops, session = _optimize(model, tmp_path, {"x": X})
    assert ops["Tile"] == 1
    (y,) = session.run(None, {"x": X, "t": np.array([2, 1])})
    assert y.shape == (4, 3)


def test_no_op_producing_a_graph_output_hands_its_name_to_the_producer(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Cast", ["r"], ["y"], to=FLOAT)]
    ops, _ = _optimize(_model(nodes), tmp_path, {"x": X})
    assert ops == Counter({"Relu": 1})


def test_no_op_between_a_graph_input_and_a_graph_output_stays(tmp_path):
    nodes = [helper.make_node("Transpose", ["x"], ["y"], perm=[0, 1])]
    ops, _ = _optimize(_model(nodes), tmp_path, {"x": X})
    assert ops == Counter({"Transpose": 1})


def test_readers_inside_subgraphs_are_rewired(tmp_path):
    then_graph = helper.make_graph(
        [helper.make_node("Neg", ["m"], ["t"])], "then", [], [helper.make_tensor_value_info("t", FLOAT, None)]
    )
    else_graph = helper.make_graph(
        [helper.make_node("Abs", ["m"], ["e"])], "else", [], [helper.make_tensor_value_info("e", FLOAT, None)]
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Reshape", ["r", "s"], ["m"]),
        helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph),
    ]
    inputs = [helper.make_tensor_value_info("x", FLOAT, [2, 3]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])]
    model = _model(nodes, inputs=inputs, initializers={"s": np.array([2, 3])})
    for cond in (True, False):
        ops, _ = _optimize(model, tmp_path, {"x": X, "c": np.array(cond)})
        assert ops == Counter({"Relu": 1, "If": 1})


# ---------------------------------------------------------------- the pass alone, where inference cannot help


def _ir(nodes, inputs, initializers=()) -> ir.Model:
    outputs = [helper.make_tensor_value_info("y", FLOAT, None)]
    inits = [numpy_helper.from_array(np.asarray(array), name) for name, array in dict(initializers).items()]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


def _run_pass(model: ir.Model) -> int:
    context = OptimizationContext(
        opset_imports=model.opset_imports,
        providers=("CPUExecutionProvider",),
        evaluator=provider_evaluator(CPUExecutionProvider()),
    )
    return NoopElimination().run(model.graph, context)


def _chain(op_node, initializers=(), x_shape=(2, 3), x_type=FLOAT):
    """r (a graph input of the given type and shape) -> op_node -> m -> Neg -> y."""
    nodes = [op_node, helper.make_node("Neg", ["m"], ["y"])]
    return _ir(nodes, [helper.make_tensor_value_info("r", x_type, x_shape)], initializers)


@pytest.mark.parametrize(
    "model",
    [
        # Cast of an input of unknown type
        _chain(helper.make_node("Cast", ["r"], ["m"], to=FLOAT), x_type=TensorProto.UNDEFINED, x_shape=None),
        # allowzero: a 0 in the shape is a zero-sized dim, not a copy
        _chain(helper.make_node("Reshape", ["r", "s"], ["m"], allowzero=1), {"s": np.array([0, 3])}),
        # -1 beside a copied symbolic dim (it may be 0: -1 is then undefined)
        _chain(helper.make_node("Reshape", ["r", "s"], ["m"]), {"s": np.array([0, -1])}, x_shape=("n", "k")),
        # Expand by 2 where the dim is symbolic (it may be 1)
        _chain(helper.make_node("Expand", ["r", "s"], ["m"]), {"s": np.array([2, 3])}, x_shape=("n", 3)),
        # Squeeze of a symbolic dim (it may be 1) or of a shape unknown
        _chain(helper.make_node("Squeeze", ["r"], ["m"]), x_shape=("n", 3)),
        _chain(helper.make_node("Squeeze", ["r"], ["m"]), x_shape=None),
        # Slice to an end short of INT64_MAX where the dim is symbolic
        _chain(helper.make_node("Slice", ["r", "st", "en"], ["m"]), {"st": [0], "en": [1000]}, x_shape=("n", 3)),
        # Transpose without perm of an input of unknown rank
        _chain(helper.make_node("Transpose", ["r"], ["m"]), x_shape=None),
        # x * 1 where 1 may broadcast x's symbolic dim (it may be 1) or x's rank is unknown
        _chain(helper.make_node("Mul", ["r", "one"], ["m"]), {"one": np.ones(3, np.float32)}, x_shape=(2, "n")),
        _chain(helper.make_node("Mul", ["r", "one"], ["m"]), {"one": np.float32(1)}, x_shape=None),
    ],
)
def test_unprovable_no_ops_stay(model):
    assert _run_pass(model) == 0


def test_symbolic_dims_need_no_values_where_the_rule_is_exact():
    expand = _chain(helper.make_node("Expand", ["r", "s"], ["m"]), {"s": np.array([1, 3])}, x_shape=("n", 3))
    reshape = _chain(helper.make_node("Reshape", ["r", "s"], ["m"]), {"s": np.array([0, 3])}, x_shape=("n", 3))
    inferred = _chain(helper.make_node("Reshape", ["r", "s"], ["m"]), {"s": np.array([-1, 3])}, x_shape=("n", 3))
    transpose = _chain(helper.make_node("Transpose", ["r"], ["m"]), x_shape=("n",))
    integer_add = _chain(
        helper.make_node("Add", ["r", "z"], ["m"]), {"z": np.zeros(1, np.int64)}, x_shape=("n",), x_type=TensorProto.INT64
    )
    for model in (expand, reshape, inferred, transpose, integer_add):
        assert _run_pass(model) == 1
        assert [node.op_type for node in model.graph] == ["Neg"]
