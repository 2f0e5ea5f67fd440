"""Reshape-chain fusion: runs of Reshape/Squeeze/Unsqueeze/Flatten become one node, legal for every run-time shape."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer_checks import optimized_at_basic


def _model(steps, input_dims, opset: int = 17, extra_outputs=()) -> onnx.ModelProto:
    """``x`` through ``steps`` ((op, parameter or None, attributes) each), then Relu into ``y``."""
    nodes, initializers, value = [], [], "x"
    for index, (op, parameter, attributes) in enumerate(steps):
        inputs = [value]
        if parameter is not None:
            initializers.append(numpy_helper.from_array(np.array(parameter, np.int64), f"p{index}"))
            inputs.append(f"p{index}")
        nodes.append(helper.make_node(op, inputs, [f"v{index}"], **attributes))
        value = f"v{index}"
    nodes.append(helper.make_node("Relu", [value], ["y"]))
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("y", *extra_outputs)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_dims)],
                              outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _optimized(model: onnx.ModelProto, tmp_path, *shapes) -> tuple[dict, onnx.ModelProto]:
    """(op histogram at BASIC, the saved model); outputs equal onnxruntime's for each input shape, the saved model's too."""
    rng = np.random.default_rng(0)
    histogram = None
    for shape in shapes:
        feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
        histogram, _ = optimized_at_basic(model, tmp_path, feeds)
        saved = onnx.load(str(tmp_path / "optimized.onnx"))
        for ours, theirs in zip(onnxruntime.InferenceSession(saved.SerializeToString()).run(None, feeds),
                                onnxruntime.InferenceSession(model.SerializeToString()).run(None, feeds)):
            np.testing.assert_array_equal(ours, theirs)
    return dict(histogram), saved


def _reshape_target(saved: onnx.ModelProto) -> list[int]:
    reshape = next(node for node in saved.graph.node if node.op_type == "Reshape")
    return numpy_helper.to_array(next(t for t in saved.graph.initializer if t.name == reshape.input[1])).tolist()


def test_reshape_of_a_static_reshape_is_one_reshape(tmp_path):
    ops, saved = _optimized(_model([("Reshape", [6, 4], {}), ("Reshape", [2, 12], {})], [2, 3, 4]), tmp_path, (2, 3, 4))
    assert ops == {"Reshape": 1, "Relu": 1} and _reshape_target(saved) == [2, 12]


def test_copied_dims_read_through_the_chain_stay_copies(tmp_path):
    model = _model([("Reshape", [0, 3, 4], {}), ("Reshape", [0, 0, 2, 2], {})], ["batch", 12])
    ops, saved = _optimized(model, tmp_path, (2, 12), (0, 12))
    assert ops == {"Reshape": 1, "Relu": 1} and _reshape_target(saved) == [0, 3, 2, 2]


def test_a_chain_back_to_the_input_shape_disappears(tmp_path):
    model = _model([("Reshape", [0, 0, 2, 4], {}), ("Reshape", [0, 0, 8], {})], ["batch", "seq", 8])
    assert _optimized(model, tmp_path, (2, 3, 8), (0, 3, 8))[0] == {"Relu": 1}


def test_unsqueeze_then_squeeze_cancel(tmp_path):
    model = _model([("Unsqueeze", [1], {}), ("Squeeze", [1], {})], ["batch", 8])
    assert _optimized(model, tmp_path, (2, 8))[0] == {"Relu": 1}


def test_squeeze_then_unsqueeze_elsewhere_is_a_reshape_with_one_inferred_dim(tmp_path):
    model = _model([("Squeeze", [1], {}), ("Unsqueeze", [0], {})], ["batch", 1, 8])
    ops, saved = _optimized(model, tmp_path, (2, 1, 8), (0, 1, 8))
    assert ops == {"Reshape": 1, "Relu": 1} and _reshape_target(saved) == [1, -1, 8]


def test_a_final_reshape_keeps_its_inferred_dim_where_it_put_it(tmp_path):
    model = _model([("Unsqueeze", [1], {}), ("Reshape", [0, -1, 4], {})], ["batch", "seq", 8])
    ops, saved = _optimized(model, tmp_path, (2, 3, 8))
    assert ops == {"Reshape": 1, "Relu": 1} and _reshape_target(saved) == [0, -1, 4]


def test_flatten_then_reshape_is_one_reshape(tmp_path):
    model = _model([("Flatten", None, {"axis": 2}), ("Reshape", [-1, 2, 2], {})], ["batch", 3, 4])
    ops, saved = _optimized(model, tmp_path, (2, 3, 4), (0, 3, 4))
    assert ops == {"Reshape": 1, "Relu": 1} and _reshape_target(saved) == [-1, 2, 2]


@pytest.mark.parametrize("opset", [11, 13])
def test_unsqueezes_become_one_unsqueeze(opset, tmp_path):
    if opset < 13:
        steps = [("Unsqueeze", None, {"axes": [1]}), ("Unsqueeze", None, {"axes": [-2]})]
    else:
        steps = [("Unsqueeze", [1], {}), ("Unsqueeze", [-2], {})]
    ops, saved = _optimized(_model(steps, ["batch", "seq"], opset), tmp_path, (2, 5), (0, 5))
    assert ops == {"Unsqueeze": 1, "Relu": 1}


def test_a_minus_one_the_last_node_did_not_write_is_left_as_written(tmp_path):
    # Reshape(x, [0, 1, -1]) would be ambiguous on an empty batch where the chain is not.
    model = _model([("Reshape", [0, -1], {}), ("Unsqueeze", [1], {})], ["batch", "seq", 8])
    assert _optimized(model, tmp_path, (2, 3, 8))[0] == {"Reshape": 1, "Unsqueeze": 1, "Relu": 1}


def test_squeeze_without_axes_of_symbolic_dims_is_left_alone(tmp_path):
    model = _model([("Squeeze", None, {}), ("Unsqueeze", [0], {})], ["batch", 1, 8])
    assert _optimized(model, tmp_path, (2, 1, 8))[0] == {"Squeeze": 1, "Unsqueeze": 1, "Relu": 1}


def test_an_intermediate_value_read_elsewhere_keeps_the_chain(tmp_path):
    model = _model([("Reshape", [6, 4], {}), ("Reshape", [2, 12], {})], [2, 3, 4], extra_outputs=("v0",))
    assert _optimized(model, tmp_path, (2, 3, 4))[0] == {"Reshape": 2, "Relu": 1}


def test_a_target_the_caller_can_override_keeps_the_chain(tmp_path):
    model = _model([("Reshape", [6, 4], {}), ("Reshape", [2, 12], {})], [2, 3, 4])
    model.graph.input.append(helper.make_tensor_value_info("p1", TensorProto.INT64, [2]))
    assert _optimized(model, tmp_path, (2, 3, 4))[0] == {"Reshape": 2, "Relu": 1}


def test_the_chain_output_keeps_its_graph_output_name(tmp_path):
    model = _model([("Reshape", [6, 4], {}), ("Reshape", [2, 12], {})], [2, 3, 4])
    model.graph.node.pop()  # the chain's result is the graph output itself
    model.graph.output[0].name = "v1"
    assert _optimized(model, tmp_path, (2, 3, 4))[0] == {"Reshape": 1}
