"""A Transpose between Reshapes runs as one ai.onyxrt Rearrange (optimizer/rearrange_fusion.py, tensor/rearrange.py)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import onyxrt
from onyxrt.errors import OnyxRuntimeError


def _model(nodes, inputs, output, initializers=(), outputs_extra=()) -> bytes:
    graph = h.make_graph(nodes, "g", inputs, [output, *outputs_extra],
                         [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in initializers])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]).SerializeToString()


def _channel_shuffle(dynamic: bool) -> bytes:
    """ShuffleNet's shuffle of 2 groups: Reshape (N, 2, C/2, H, W), Transpose, Reshape (N, C, H, W); with a symbolic
    batch its target shapes are computed from Shape, as exporters write them."""
    x = h.make_tensor_value_info("x", T.FLOAT, ["n" if dynamic else 4, 6, 3, 5])
    y = h.make_tensor_value_info("y", T.FLOAT, ["n" if dynamic else 4, 6, 3, 5])
    nodes = [h.make_node("Transpose", ["r1"], ["t"], perm=[0, 2, 1, 3, 4])]
    if dynamic:
        nodes = [h.make_node("Shape", ["x"], ["s"]), h.make_node("Slice", ["s", "z", "o"], ["n"]),
                 h.make_node("Concat", ["n", "split"], ["s1"], axis=0),
                 h.make_node("Concat", ["n", "merged"], ["s2"], axis=0),
                 h.make_node("Reshape", ["x", "s1"], ["r1"]), *nodes, h.make_node("Reshape", ["t", "s2"], ["y"])]
        constants = [("z", [0]), ("o", [1]), ("split", [2, 3, 3, 5]), ("merged", [6, 3, 5])]
    else:
        nodes = [h.make_node("Reshape", ["x", "s1"], ["r1"]), *nodes, h.make_node("Reshape", ["t", "s2"], ["y"])]
        constants = [("s1", [0, 2, 3, 3, 5]), ("s2", [4, -1, 3, 5])]
    return _model(nodes, [x], y, constants)


def _reference_shuffle(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    return x.reshape(n, 2, 3, 3, 5).transpose(0, 2, 1, 3, 4).reshape(n, 6, 3, 5)


def _op_types(session: onyxrt.InferenceSession) -> list[str]:
    return [node.op_type for node in session._plan.nodes]


@pytest.mark.parametrize("dynamic", [False, True])
def test_channel_shuffle_is_one_rearrange_and_equal(dynamic):
    model = _channel_shuffle(dynamic)
    session = onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert "Rearrange" in _op_types(session) and "Transpose" not in _op_types(session)
    unfused = onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"], disabled_optimizers=["RearrangeFusion"])
    assert "Rearrange" not in _op_types(unfused)
    rng = np.random.default_rng(0)
    for batch in ([4] * 4 if not dynamic else [4, 4, 4, 2, 2, 2, 4]):  # (repeated shapes run specialized plans)
        x = rng.standard_normal((batch, 6, 3, 5)).astype(np.float32)
        (y,) = session.run(None, {"x": x})
        np.testing.assert_array_equal(y, _reference_shuffle(x))
        np.testing.assert_array_equal(y, unfused.run(None, {"x": x})[0])


def test_a_reshape_on_one_side_fuses_and_views_stay_views_of_nothing_fed():
    # attention heads merged: Transpose (0, 2, 1, 3) then Reshape (N, S, H * D)
    x = h.make_tensor_value_info("x", T.FLOAT, [2, 4, 3, 8])
    y = h.make_tensor_value_info("y", T.FLOAT, [2, 3, 32])
    model = _model([h.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1, 3]),
                    h.make_node("Reshape", ["t", "s"], ["y"])], [x], y, [("s", [0, 0, -1])])
    session = onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert _op_types(session) == ["Rearrange"]
    feed = np.arange(2 * 4 * 3 * 8, dtype=np.float32).reshape(2, 4, 3, 8)
    (out,) = session.run(None, {"x": feed})
    np.testing.assert_array_equal(out, feed.transpose(0, 2, 1, 3).reshape(2, 3, 32))
    assert not np.shares_memory(out, feed)
    # a patch embedding's Reshape (N, C, H * W) then Transpose (0, 2, 1): the result is a view of the Reshape's input
    x = h.make_tensor_value_info("x", T.FLOAT, [2, 8, 4, 4])
    y = h.make_tensor_value_info("y", T.FLOAT, [2, 16, 8])
    model = _model([h.make_node("Reshape", ["x", "s"], ["r"]), h.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 1])],
                   [x], y, [("s", [2, 8, 16])])
    session = onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert _op_types(session) == ["Rearrange"]
    feed = np.random.default_rng(1).standard_normal((2, 8, 4, 4)).astype(np.float32)
    (out,) = session.run(None, {"x": feed})
    np.testing.assert_array_equal(out, feed.reshape(2, 8, 16).transpose(0, 2, 1))
    assert out.flags.writeable and not np.shares_memory(out, feed)


def test_values_read_elsewhere_keep_their_nodes():
    x = h.make_tensor_value_info("x", T.FLOAT, [2, 6])
    y = h.make_tensor_value_info("y", T.FLOAT, [3, 4])
    r = h.make_tensor_value_info("r", T.FLOAT, [2, 2, 3])  # the first Reshape's output is a graph output too
    model = _model([h.make_node("Reshape", ["x", "s1"], ["r"]), h.make_node("Transpose", ["r"], ["t"], perm=[2, 1, 0]),
                    h.make_node("Reshape", ["t", "s2"], ["y"])], [x], y, [("s1", [2, 2, 3]), ("s2", [3, 4])],
                   outputs_extra=[r])
    session = onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert _op_types(session) == ["Reshape", "Rearrange"]  # the Transpose takes the second Reshape only
    feed = np.arange(12, dtype=np.float32).reshape(2, 6)
    out, first = session.run(None, {"x": feed})
    np.testing.assert_array_equal(first, feed.reshape(2, 2, 3))
    np.testing.assert_array_equal(out, feed.reshape(2, 2, 3).transpose(2, 1, 0).reshape(3, 4))


def test_a_bad_shape_fails_naming_the_fused_node():
    x = h.make_tensor_value_info("x", T.FLOAT, ["n", "m"])
    y = h.make_tensor_value_info("y", T.FLOAT, None)
    model = _model([h.make_node("Reshape", ["x", "s1"], ["r"]), h.make_node("Transpose", ["r"], ["y"], perm=[1, 0, 2],
                                                                            name="shuffle")],
                   [x], y, [("s1", [0, 4, -1])])
    session = onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert _op_types(session) == ["Rearrange"]
    np.testing.assert_array_equal(session.run(None, {"x": np.ones((2, 8), np.float32)})[0], np.ones((4, 2, 2)))
    with pytest.raises(OnyxRuntimeError, match="shuffle.*Reshape: cannot reshape"):
        session.run(None, {"x": np.ones((2, 6), np.float32)})
