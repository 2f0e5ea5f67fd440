"""Feeds reach kernels as plain arrays of the declared type, or are refused naming the input (issue 7, defects 4 and 8).

Expected values are onnxruntime's for the same feed.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onyxrt
from onyxrt.errors import InvalidArgument


def _session(op: str = "Identity", elem: int = TensorProto.FLOAT, shape=(3,),
             out_elem: int | None = None) -> onyxrt.InferenceSession:
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", elem, list(shape) if shape is not None else None)],
        [helper.make_tensor_value_info("y", out_elem or elem, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onyxrt.InferenceSession(model.SerializeToString())


def _run(session: onyxrt.InferenceSession, value) -> np.ndarray:
    return session.run(None, {"x": value})[0]


def test_masked_array_feeds_its_data_not_its_mask():
    masked = np.ma.masked_array(np.array([1, -1, 0], np.float32), mask=[0, 1, 0])
    result = _run(_session("Log"), masked)
    assert type(result) is np.ndarray
    np.testing.assert_array_equal(result, np.array([0, np.nan, -np.inf], np.float32))


def test_masked_array_of_another_type_is_refused_like_an_array():
    masked = np.ma.masked_array(np.array([1.0, 2.0, 3.0]), mask=[0, 1, 0])
    with pytest.raises(InvalidArgument, match=r"Actual: \(tensor\(double\)\) , expected: \(tensor\(float\)\)"):
        _run(_session(), masked)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_ndarray_subclasses_become_plain_arrays():
    result = _run(_session(shape=(1, 3)), np.matrix([[1, 2, 3]], dtype=np.float32))
    assert type(result) is np.ndarray
    np.testing.assert_array_equal(result, [[1, 2, 3]])


@pytest.mark.parametrize("shape", [(3,), (), None])
def test_none_is_refused_naming_the_input(shape):
    with pytest.raises(InvalidArgument, match="Input 'x' is None"):
        _run(_session("Log", shape=shape), None)


def test_none_for_a_string_input_is_refused():
    with pytest.raises(InvalidArgument, match="Input 'x' is None"):
        _run(_session(elem=TensorProto.STRING), None)


def test_python_lists_convert_to_the_declared_type():
    np.testing.assert_array_equal(_run(_session("Log"), [1, 2, 3]), np.log(np.array([1, 2, 3], np.float32)))
    as_int = _run(_session(elem=TensorProto.INT64), [1.5, 2.5, -3.7])
    assert as_int.dtype == np.int64
    np.testing.assert_array_equal(as_int, [1, 2, -3])


@pytest.mark.parametrize("elem, values", [
    (TensorProto.INT32, [2**40, 1, 2]),
    (TensorProto.INT64, [2**70, 1, 2]),
    (TensorProto.UINT8, [-1, 256, 2]),
    (TensorProto.FLOAT, [[1.0], 2.0, 3.0]),
    (TensorProto.FLOAT, "abc"),
])
def test_unconvertible_python_values_are_refused_naming_the_input(elem, values):
    with pytest.raises(InvalidArgument, match="Input 'x' cannot be converted"):
        _run(_session(elem=elem), values)


def test_non_contiguous_arrays_give_the_values_they_show():
    strided = np.arange(6, dtype=np.float32)[::2]
    np.testing.assert_array_equal(_run(_session("Neg"), strided), [-0.0, -2.0, -4.0])
    reversed_ = np.arange(3, dtype=np.float32)[::-1]
    np.testing.assert_array_equal(_run(_session("Neg"), reversed_), [-2.0, -1.0, -0.0])
    transposed = np.arange(6, dtype=np.float32).reshape(2, 3).T
    np.testing.assert_array_equal(_run(_session("Neg", shape=(3, 2)), transposed), -transposed)


def test_object_arrays_for_numeric_inputs_are_refused():
    with pytest.raises(InvalidArgument, match=r"Actual: \(tensor\(string\)\) , expected: \(tensor\(float\)\)"):
        _run(_session(), np.array([1.0, 2.0, 3.0], dtype=object))


def test_string_inputs_hold_str_elements():
    session = _session(elem=TensorProto.STRING)
    for feed in ([1, 2, 3], np.array([1, 2, 3], dtype=object)):
        result = _run(session, feed)
        assert result.dtype == object and list(result) == ["1", "2", "3"]
    mixed = _run(session, np.array(["a", 1.5, None], dtype=object))
    assert list(mixed) == ["a", "1.5", "None"]
    assert list(_run(session, np.array([b"a", b"b", "c".encode()]))) == ["a", "b", "c"]
    assert list(_run(session, np.array(["a", "b", "c"]))) == ["a", "b", "c"]


def test_string_input_with_bytes_that_are_not_utf8_is_refused():
    with pytest.raises(InvalidArgument, match="Input 'x' holds bytes that are not UTF-8"):
        _run(_session(elem=TensorProto.STRING), np.array([b"\xff\xfe", b"a", b"b"]))


@pytest.mark.parametrize("dim", [-1, -7])
def test_negative_declared_dims_are_dynamic(dim):
    session = _session(shape=(dim, 3))
    assert session.get_inputs()[0].shape == [None, 3]
    np.testing.assert_array_equal(_run(session, np.ones((5, 3), np.float32)), np.ones((5, 3)))
    with pytest.raises(InvalidArgument, match=r"index: 1 Got: 4 Expected: 3"):
        _run(session, np.ones((5, 4), np.float32))


def test_shape_of_an_input_with_a_negative_dim_is_the_fed_shape():
    session = _session("Shape", shape=(-1, 3), out_elem=TensorProto.INT64)
    np.testing.assert_array_equal(_run(session, np.zeros((5, 3), np.float32)), [5, 3])


def test_shape_of_a_value_declared_with_a_negative_dim_is_the_computed_shape():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["t"]), helper.make_node("Shape", ["t"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, None)],
        value_info=[helper.make_tensor_value_info("t", TensorProto.FLOAT, [-1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = onyxrt.InferenceSession(model.SerializeToString())
    np.testing.assert_array_equal(session.run(None, {"x": np.zeros((4, 3), np.float32)})[0], [4, 3])


def test_zero_trip_loop_output_declared_with_a_negative_dim_is_empty():
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["xb"], ["scan"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("scan", TensorProto.FLOAT, [-1, 2])],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "c"], ["y"], body=body)], "g",
        [helper.make_tensor_value_info("n", TensorProto.INT64, []),
         helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("xb", TensorProto.FLOAT, [-1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = onyxrt.InferenceSession(model.SerializeToString())
    feed = {"c": np.array(True), "xb": np.ones((3, 2), np.float32)}
    assert session.run(None, {"n": np.array(0), **feed})[0].shape == (0, 0, 2)  # onnxruntime's shapes
    assert session.run(None, {"n": np.array(2), **feed})[0].shape == (2, 3, 2)
