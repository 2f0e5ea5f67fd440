"""Slice and Reshape with constant parameters (initializers): their windows and target shapes worked out once per
input shape (``_helpers.ConstantInputs``), with the results, views and errors of the general kernels, for input
shapes that change between runs, and the general kernels where a parameter is computed."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt
from onyxrt.errors import OnyxRuntimeError
from onyxrt.providers.cpu._helpers import ConstantInputs, constant_inputs

RNG = np.random.default_rng(41)


def _model(nodes, initializers, inputs):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = onyxrt.SessionOptions()
    options.graph_optimization_level = onyxrt.GraphOptimizationLevel.ORT_DISABLE_ALL  # (the nodes kept as they are)
    return onyxrt.InferenceSession(model.SerializeToString(), options)


FAST = "shape_keyed_fast_path.<locals>.fast_path.<locals>.constant_parameters"


def _steps(session) -> list[str]:
    return [getattr(step[0], "__qualname__", "") for step in session._plan._steps]


def test_constant_slices_follow_each_input_shape():
    """Negative and clamped bounds, steps and axes resolved against each run's shape (a cached window per shape)."""
    session = _model([helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])],
                     {"starts": np.array([1, -4], np.int64), "ends": np.array([1000, -1], np.int64),
                      "axes": np.array([0, 2], np.int64), "steps": np.array([2, 1], np.int64)},
                     [("x", TensorProto.FLOAT, ["a", 3, "b"])])
    assert _steps(session) == [FAST]
    for shape in [(5, 3, 8), (7, 3, 6), (5, 3, 8), (2, 3, 4)]:
        x = RNG.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], x[1::2, :, -4:-1])


def test_constant_slice_errors_are_the_kernels():
    session = _model([helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"])],
                     {"starts": np.array([0], np.int64), "ends": np.array([2], np.int64),
                      "axes": np.array([3], np.int64)}, [("x", TensorProto.FLOAT, None)])
    np.testing.assert_array_equal(session.run(None, {"x": np.ones((2, 2, 2, 5), np.float32)})[0],
                                  np.ones((2, 2, 2, 2), np.float32))
    with pytest.raises(OnyxRuntimeError, match="axis 3 for rank 2"):
        session.run(None, {"x": np.ones((2, 5), np.float32)})


def test_constant_reshapes_follow_each_input_shape():
    """0 (copy a dimension) and -1 (infer one) resolved per run's shape; the output a view of a contiguous input."""
    session = _model([helper.make_node("Reshape", ["x", "shape"], ["y"])],
                     {"shape": np.array([0, -1, 2], np.int64)}, [("x", TensorProto.FLOAT, ["a", "b"])])
    assert _steps(session) == [FAST]
    for shape in [(3, 8), (4, 6), (3, 8), (5, 2)]:
        x = RNG.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], x.reshape(shape[0], -1, 2))
    with pytest.raises(OnyxRuntimeError, match="Reshape"):
        session.run(None, {"x": np.ones((3, 5), np.float32)})


def test_computed_parameters_take_the_general_kernels():
    """A Reshape whose shape is computed (and a Slice whose ends are) each run: no constants to look up by."""
    nodes = [helper.make_node("Shape", ["z"], ["zs"]),
             helper.make_node("Slice", ["x", "starts", "zs"], ["s"]),
             helper.make_node("Reshape", ["s", "zs"], ["y"])]
    session = _model(nodes, {"starts": np.array([0, 0], np.int64)},
                     [("x", TensorProto.FLOAT, [6, 6]), ("z", TensorProto.FLOAT, ["p", "q"])])
    x = RNG.standard_normal((6, 6)).astype(np.float32)
    for p, q in [(2, 3), (3, 2), (4, 4)]:
        got = session.run(None, {"x": x, "z": np.zeros((p, q), np.float32)})[0]
        np.testing.assert_array_equal(got, x[:p, :q])


def test_constant_inputs_match_by_identity():
    starts, ends = np.array([0]), np.array([1])
    constants = constant_inputs([None, starts, ends, None], 1, 2)
    assert isinstance(constants, ConstantInputs)
    assert constants.given((starts, ends)) and constants.given((starts, ends, None))
    assert not constants.given((starts, ends.copy()))  # an equal array computed by the run: not the constant
    assert not constants.given((starts, ends, np.array([0])))  # an axes input the prepack did not see as constant
    assert constant_inputs([None, starts, None], 1, 2) is None  # ends computed: no constant window


def test_a_specialized_plan_rebinds_shapes_it_recorded():
    """Runs of one input shape record the Shape/Concat chain that computes a Reshape's target (shape_specialization):
    the specialized plan's Reshape and Slice look those recorded values up like constants; other shapes still run the
    general kernels."""
    nodes = [helper.make_node("Shape", ["x"], ["xs"]),
             helper.make_node("Gather", ["xs", "zero"], ["rows"], axis=0),
             helper.make_node("Concat", ["rows", "minus_one"], ["target"], axis=0),
             helper.make_node("Slice", ["x", "zero", "rows"], ["s"]),
             helper.make_node("Reshape", ["s", "target"], ["y"])]
    session = _model(nodes, {"zero": np.array([0], np.int64), "minus_one": np.array([-1], np.int64)},
                     [("x", TensorProto.FLOAT, ["a", "b", "c"])])
    for shape in [(2, 3, 4)] * 4 + [(3, 2, 2), (2, 3, 4)]:
        x = RNG.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], x.reshape(shape[0], -1))
    specialized = list(session._plan._specializations._plans.values())[0]
    steps = [getattr(step[0], "__qualname__", "") for step in specialized._steps]
    assert steps == [FAST, FAST]


@pytest.mark.parametrize("op, axes, shapes", [
    ("Unsqueeze", [0, -1], [(3, 4), (2, 5), (3, 4)]),
    ("Squeeze", [1, -1], [(3, 1, 4, 1), (2, 1, 5, 1)]),
    ("Squeeze", None, [(1, 3, 1), (2, 1, 1)]),
])
def test_constant_axes_follow_each_input_shape(op, axes, shapes):
    """Squeeze and Unsqueeze with constant axes (or, for Squeeze, none): the output shape per input shape; a
    dimension that is not 1 still raises the kernel's error."""
    inputs = ["x"] if axes is None else ["x", "axes"]
    session = _model([helper.make_node(op, inputs, ["y"])],
                     {} if axes is None else {"axes": np.array(axes, np.int64)}, [("x", TensorProto.FLOAT, None)])
    assert _steps(session) == [FAST]
    for shape in shapes:
        x = RNG.standard_normal(shape).astype(np.float32)
        if op == "Unsqueeze":
            want = np.expand_dims(x, tuple(axes))
        else:
            want = np.squeeze(x, axis=None if axes is None else tuple(axes))
        got = session.run(None, {"x": x})[0]
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    if op == "Squeeze" and axes is not None:
        with pytest.raises(OnyxRuntimeError, match="Squeeze"):
            session.run(None, {"x": np.ones((3, 2, 4, 1), np.float32)})
