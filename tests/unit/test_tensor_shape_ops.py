"""Unit tests for onyxrt.providers.cpu.tensor.shape_ops."""

import numpy as np
import pytest

from onyxrt.providers.cpu.tensor import shape_ops as so


def test_reshape_zero_and_minus_one():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    y = so.reshape_5(x, np.array([0, -1], dtype=np.int64))
    assert y.shape == (2, 12)
    assert np.shares_memory(x, y)  # a view, no copy
    assert so.reshape_14(x, np.array([4, 0, 2], np.int64)).shape == (4, 3, 2)
    assert so.reshape_1(x, shape=[-1]).shape == (24,)


def test_reshape_allowzero():
    x = np.zeros((0, 3), np.float32)
    assert so.reshape_14(x, np.array([3, 0], np.int64), allowzero=1).shape == (3, 0)
    assert so.reshape_14(x, np.array([-1, 3], np.int64)).shape == (0, 3)
    with pytest.raises(ValueError):
        so.reshape_14(np.zeros((2, 3)), np.array([0, -1], np.int64), allowzero=1)


def test_reshape_bad_size():
    with pytest.raises(ValueError):
        so.reshape_5(np.zeros(6), np.array([4, -1], np.int64))


def test_flatten():
    x = np.zeros((2, 3, 4, 5))
    assert so.flatten(x, axis=0).shape == (1, 120)
    assert so.flatten(x).shape == (2, 60)
    assert so.flatten(x, axis=-1).shape == (24, 5)
    assert so.flatten(x, axis=4).shape == (120, 1)


def test_squeeze_unsqueeze():
    x = np.zeros((1, 3, 1, 2))
    assert so.squeeze_13(x).shape == (3, 2)
    assert so.squeeze_13(x, np.array([-2], np.int64)).shape == (1, 3, 2)
    assert so.squeeze_1(x, axes=[0]).shape == (3, 1, 2)
    with pytest.raises(ValueError):
        so.squeeze_13(x, np.array([1], np.int64))
    y = np.zeros((3, 4))
    assert so.unsqueeze_13(y, np.array([0, 3], np.int64)).shape == (1, 3, 4, 1)
    assert so.unsqueeze_13(y, np.array([-1], np.int64)).shape == (3, 4, 1)
    assert so.unsqueeze_1(y, axes=[1]).shape == (3, 1, 4)
    assert so.unsqueeze_13(np.float32(2.0) * np.ones(()), np.array([0], np.int64)).shape == (1,)


def test_transpose():
    x = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(so.transpose(x), x.T)
    np.testing.assert_array_equal(so.transpose(x, perm=[1, 0, 2]), x.transpose(1, 0, 2))
    assert so.transpose(x, perm=[0, 1, 2]) is x


def test_shape_size():
    x = np.zeros((2, 3, 4))
    np.testing.assert_array_equal(so.shape_1(x), [2, 3, 4])
    assert so.shape_1(x).dtype == np.int64
    np.testing.assert_array_equal(so.shape_15(x, start=1), [3, 4])
    np.testing.assert_array_equal(so.shape_15(x, start=-2, end=-1), [3])
    np.testing.assert_array_equal(so.shape_15(x, start=-10, end=10), [2, 3, 4])
    assert so.shape_15(x, start=2, end=1).shape == (0,)
    s = so.size(x)
    assert s.dtype == np.int64 and s.shape == () and int(s) == 24


def test_expand():
    x = np.array([[1], [2], [3]], np.float32)
    y = so.expand(x, np.array([2, 1, 6], np.int64))
    assert y.shape == (2, 3, 6)
    np.testing.assert_array_equal(y[1, 2], np.full(6, 3))
    # the shape may be smaller than the input's
    assert so.expand(np.zeros((3, 4)), np.array([4], np.int64)).shape == (3, 4)
    with pytest.raises(ValueError):
        so.expand(np.zeros((3, 4)), np.array([5], np.int64))


def test_tile():
    x = np.array([[1, 2], [3, 4]])
    np.testing.assert_array_equal(so.tile_6(x, np.array([2, 1])), np.tile(x, (2, 1)))
    np.testing.assert_array_equal(so.tile_1(x, np.array(3), np.array(1)), np.tile(x, (1, 3)))


def test_identity_passes_anything():
    seq = [np.zeros(2)]
    assert so.identity(seq) is seq
    x = np.zeros(3)
    assert so.identity(x) is x
    assert so.identity(None) is None


def test_depth_space_roundtrip():
    x = np.arange(2 * 8 * 3 * 2, dtype=np.float32).reshape(2, 8, 3, 2)
    for mode in ("DCR", "CRD"):
        y = so.depth_to_space_11(x, blocksize=2, mode=mode)
        assert y.shape == (2, 2, 6, 4)
        np.testing.assert_array_equal(so.space_to_depth_28(y, blocksize=2, mode=mode), x)
    # spec example for DCR
    x = np.arange(8, dtype=np.float32).reshape(1, 8, 1, 1)
    np.testing.assert_array_equal(so.depth_to_space_1(x, blocksize=2).reshape(2, 2, 2)[0], [[0, 2], [4, 6]])


def test_against_reference():
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    x = np.random.default_rng(0).standard_normal((1, 12, 4, 6)).astype(np.float32)
    for mode in ("DCR", "CRD"):
        node = helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode=mode)
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        ref = ReferenceEvaluator(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
        np.testing.assert_array_equal(so.depth_to_space_11(x, blocksize=2, mode=mode), ref.run(None, {"x": x})[0])
