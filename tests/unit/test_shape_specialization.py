"""Plans specialized to repeated input shapes (framework/shape_specialization.py): which steps they drop,
and that results never depend on a stale recording."""

import numpy as np
import pytest
from onnx import TensorProto, helper

import onyxrt as ort
from onyxrt.framework.shape_specialization import shape_determined_steps, signature


def _session(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options)


def _flatten_to_batch():
    """y = Reshape(x, [batch, -1]) with the target computed from Shape(x), as exporters write it."""
    return _session(
        [helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("Shape", ["r"], ["s"]),
         helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
         helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
         helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
         helper.make_node("Reshape", ["r", "target"], ["y"]),
         helper.make_node("Shape", ["y"], ["y_shape"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("y_shape", TensorProto.INT64, None)],
        [helper.make_tensor("zero", TensorProto.INT64, [], [0]), helper.make_tensor("axes", TensorProto.INT64, [1], [0]),
         helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1])])


def test_repeated_shapes_run_without_the_shape_steps():
    session = _flatten_to_batch()
    plan = session._plan
    static = plan._specializations.static_steps
    assert [plan.nodes[i].op_type for i in sorted(static)] == ["Shape", "Gather", "Unsqueeze", "Concat", "Shape"]
    rng = np.random.default_rng(0)
    for shape in [(2, 3, 4), (2, 3, 4), (2, 3, 4), (5, 3, 1), (2, 3, 4), (5, 3, 1), (5, 3, 1)]:
        x = rng.standard_normal(shape).astype(np.float32)
        y, y_shape = session.run(None, {"x": x})
        np.testing.assert_array_equal(y, np.maximum(x, 0).reshape(shape[0], -1))
        np.testing.assert_array_equal(y_shape, [shape[0], shape[1] * shape[2]])
        y_shape[0] = -7  # the caller's copy: a later run's recorded value stays intact
    specialized = plan._specializations.plan_for(signature([np.empty((2, 3, 4), np.float32)]))
    assert [n.op_type for n in specialized.nodes] == ["Relu", "Reshape"]
    assert plan._specializations.plan_for(signature([np.empty((5, 3, 1), np.float32)])) is not None


def test_profiled_runs_of_a_specialized_plan_name_its_nodes():
    session = _flatten_to_batch()
    x = np.ones((2, 3, 4), np.float32)
    for _ in range(3):
        session.run(None, {"x": x})
    steps = []
    session._plan.run([x], profile=steps)
    assert [(step.node.op_type, step.index) for step in steps] == [("Relu", 0), ("Reshape", 5)]  # the graph's indices


def test_values_that_depend_on_data_are_never_recorded():
    """Shape of NonZero's result, and a shape combined with an input's value, change at a fixed input shape."""
    session = _session(
        [helper.make_node("NonZero", ["x"], ["nz"]),
         helper.make_node("Shape", ["nz"], ["s"]),
         helper.make_node("Shape", ["x"], ["sx"]),
         helper.make_node("Add", ["sx", "k"], ["shifted"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"]),
         helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("s", TensorProto.INT64, None),
         helper.make_tensor_value_info("shifted", TensorProto.INT64, None)])
    plan = session._plan
    assert [plan.nodes[i].op_type for i in sorted(plan._specializations.static_steps)] == ["Shape"]  # Shape(x) only
    for count in range(1, 6):
        x = np.zeros(6, np.float32)
        x[:count] = 1
        s, shifted = session.run(None, {"x": x, "k": np.array([count], np.int64)})
        np.testing.assert_array_equal(s, [1, count])
        np.testing.assert_array_equal(shifted, [6 + count])


def test_random_ops_and_unknown_domains_are_not_static():
    session = _session(
        [helper.make_node("Shape", ["x"], ["s"]),
         helper.make_node("Cast", ["s"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("RandomUniformLike", ["f"], ["r"], dtype=TensorProto.FLOAT)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)])
    plan = session._plan
    assert [plan.nodes[i].op_type for i in sorted(plan._specializations.static_steps)] == ["Shape", "Cast"]
    x = np.zeros(3, np.float32)
    draws = [session.run(None, {"x": x})[0] for _ in range(4)]
    assert not all(np.array_equal(draws[0], d) for d in draws[1:])


def test_signature_of_non_tensor_inputs_is_none():
    assert signature([np.zeros((2, 3)), None]) == ((2, 3), None)
    assert signature([[np.zeros(2)]]) is None


@pytest.mark.parametrize("op, static", [("Reshape", True), ("NonZero", False)])
def test_shape_chains_through_value_inputs(op, static):
    """A Reshape whose target is value-static keeps its output's shape static; a NonZero does not."""
    class Node:
        def __init__(self, op_type):
            self.op_type, self.domain, self.attributes, self.meta = op_type, "", {}, {}

    nodes = [Node("Shape"), Node(op), Node("Shape")]
    # slots: 2 input x, 3 shape of x, 4 reshaped / nonzero, 5 its shape
    steps = [(None, (2,), (3,)), (None, (2, 3) if op == "Reshape" else (2,), (4,)), (None, (4,), (5,))]
    found = shape_determined_steps(nodes, steps, (2,), frozenset(), lambda node: True)
    assert (2 in found) is static and 0 in found
