"""Unit tests for onyxrt.providers.cpu.tensor.indexing."""

import numpy as np
import pytest

from onyxrt.providers.cpu.tensor import indexing as ix


def test_gather():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(ix.gather(x, np.array([2, -3], np.int64)), x[[2, 0]])
    np.testing.assert_array_equal(ix.gather(x, np.array([[1, 3]], np.int32), axis=1), x[:, [[1, 3]]])
    s = ix.gather(x, np.array(-1, np.int64), axis=1)
    assert s.shape == (3,) and np.array_equal(s, x[:, 3])
    with pytest.raises(IndexError):
        ix.gather(x, np.array([3], np.int64))


def test_gather_elements():
    x = np.array([[1, 2], [3, 4]], np.float32)
    np.testing.assert_array_equal(ix.gather_elements(x, np.array([[0, 0], [1, 0]]), axis=1), [[1, 1], [4, 3]])
    np.testing.assert_array_equal(ix.gather_elements(x, np.array([[-1, 0]]), axis=0), [[3, 2]])
    # indices smaller than data on a non-axis dim
    y = np.arange(9).reshape(3, 3)
    np.testing.assert_array_equal(ix.gather_elements(y, np.array([[2], [0]]), axis=1), [[2], [3]])


def test_gather_nd():
    d = np.array([[0, 1], [2, 3]])
    np.testing.assert_array_equal(ix.gather_nd(d, np.array([[0, 0], [1, 1]])), [0, 3])
    np.testing.assert_array_equal(ix.gather_nd(d, np.array([[1], [0]])), [[2, 3], [0, 1]])
    d3 = np.arange(8).reshape(2, 2, 2)
    np.testing.assert_array_equal(ix.gather_nd(d3, np.array([[1], [0]]), batch_dims=1), [[2, 3], [4, 5]])
    np.testing.assert_array_equal(ix.gather_nd_11(d3, np.array([[[0, 1]], [[1, 0]]])), [[[2, 3]], [[4, 5]]])


def test_scatter_elements_reductions():
    data = np.zeros((1, 5), np.float32)
    idx = np.array([[1, 3, 1]])
    upd = np.array([[1.0, 2.0, 3.0]], np.float32)
    out = ix.scatter_elements_16(data, idx, upd, axis=1, reduction="add")
    np.testing.assert_array_equal(out, [[0, 4, 0, 2, 0]])
    assert data.sum() == 0  # input untouched
    out = ix.scatter_elements_16(np.ones((1, 5), np.float32), idx, upd, axis=1, reduction="mul")
    np.testing.assert_array_equal(out, [[1, 3, 1, 2, 1]])
    out = ix.scatter_elements_16(np.ones((1, 5), np.float32), idx, upd, axis=1, reduction="max")
    np.testing.assert_array_equal(out, [[1, 3, 1, 2, 1]])
    out = ix.scatter_elements_16(np.ones((1, 5), np.float32), idx, upd, axis=1, reduction="min")
    np.testing.assert_array_equal(out, [[1, 1, 1, 1, 1]])
    out = ix.scatter(np.zeros((3, 3)), np.array([[1, 0, 2], [0, 2, 1]]), np.array([[1.0, 1.1, 1.2], [2.0, 2.1, 2.2]]))
    np.testing.assert_allclose(out, [[2.0, 1.1, 0.0], [1.0, 0.0, 2.2], [0.0, 2.1, 1.2]])
    out = ix.scatter_elements_11(np.zeros((1, 5)), np.array([[-1]]), np.array([[7.0]]), axis=1)
    assert out[0, 4] == 7


def test_scatter_nd():
    data = np.arange(1, 9, dtype=np.float32)
    out = ix.scatter_nd_11(data, np.array([[4], [3], [1], [7]]), np.array([9, 10, 11, 12], np.float32))
    np.testing.assert_array_equal(out, [1, 11, 3, 10, 9, 6, 7, 12])
    out = ix.scatter_nd_16(data, np.array([[0], [0]]), np.array([5, 6], np.float32), reduction="add")
    assert out[0] == 12
    d = np.zeros((2, 2, 2))
    out = ix.scatter_nd_11(d, np.array([[1]]), np.ones((1, 2, 2)))
    np.testing.assert_array_equal(out[1], np.ones((2, 2)))
    assert out[0].sum() == 0


def _ref_slice(x, starts, ends, axes, steps):
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node("Slice", ["x", "s", "e", "a", "t"], ["y"])
    i64 = lambda n: helper.make_tensor_value_info(n, TensorProto.INT64, None)  # noqa: E731
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
                                        i64("s"), i64("e"), i64("a"), i64("t")],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    ref = ReferenceEvaluator(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    a = lambda v: np.array(v, np.int64)  # noqa: E731
    return ref.run(None, {"x": x, "s": a(starts), "e": a(ends), "a": a(axes), "t": a(steps)})[0]


@pytest.mark.parametrize("start,end,step", [
    (0, 10, 1), (1, -1, 1), (-100, 100, 2), (100, -100, -1), (-1, -100, -2), (3, 1, -1), (5, 5, 1),
    (2, 20, 3), (-2, 0, -1), (0, -1, -1), (9223372036854775807, -9223372036854775808, -1),
])
def test_slice_clamping(start, end, step):
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    got = ix.slice_10(x, np.array([start]), np.array([end]), np.array([1]), np.array([step]))
    np.testing.assert_array_equal(got, _ref_slice(x, [start], [end], [1], [step]))


def test_slice_v1_and_view():
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    y = ix.slice_1(x, starts=[1, 0], ends=[3, 100], axes=[0, -1])
    np.testing.assert_array_equal(y, x[1:3])
    assert np.shares_memory(x, y)
    np.testing.assert_array_equal(ix.slice_10(x, np.array([1]), np.array([3])), x[1:3])


def test_one_hot():
    out = ix.one_hot(np.array([0, 2, -1, 5]), np.array(3), np.array([0, 1], np.float32))
    np.testing.assert_array_equal(out, [[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 0]])
    assert out.dtype == np.float32
    out = ix.one_hot(np.array([1.0, 0.0]), np.array([2.0]), np.array([2, 5], np.int64), axis=0)
    np.testing.assert_array_equal(out, [[2, 5], [5, 2]])


def test_non_zero_compress():
    x = np.array([[1, 0], [1, 1]])
    out = ix.non_zero(x)
    np.testing.assert_array_equal(out, [[0, 1, 1], [0, 0, 1]])
    assert out.dtype == np.int64
    assert ix.non_zero(np.array(3)).shape == (1, 1)
    assert ix.non_zero(np.zeros((2, 3))).shape == (2, 0)
    a = np.array([[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(ix.compress(a, np.array([0, 1]), axis=0), [[3, 4]])
    np.testing.assert_array_equal(ix.compress(a, np.array([False, True, True]), axis=-1 + 1), [[3, 4], [5, 6]])
    np.testing.assert_array_equal(ix.compress(a, np.array([0, 1, 0, 0, 1])), [2, 5])


def test_trilu():
    x = np.arange(1, 13, dtype=np.int64).reshape(3, 4)
    np.testing.assert_array_equal(ix.trilu(x), np.triu(x))
    np.testing.assert_array_equal(ix.trilu(x, np.array(-1), upper=0), np.tril(x, -1))
    b = np.stack([x, x])
    np.testing.assert_array_equal(ix.trilu(b, np.array(2)), np.stack([np.triu(x, 2)] * 2))


def test_unique():
    y, i, inv, c = ix.unique(np.array([2, 1, 1, 3, 4, 3], np.float32), sorted=0)
    np.testing.assert_array_equal(y, [2, 1, 3, 4])
    np.testing.assert_array_equal(i, [0, 1, 3, 4])
    np.testing.assert_array_equal(inv, [0, 1, 1, 2, 3, 2])
    np.testing.assert_array_equal(c, [1, 2, 2, 1])
    y, i, inv, c = ix.unique(np.array([[1, 0, 0], [1, 0, 0], [2, 3, 4]]), axis=0)
    np.testing.assert_array_equal(y, [[1, 0, 0], [2, 3, 4]])
    np.testing.assert_array_equal(i, [0, 2])
    np.testing.assert_array_equal(inv, [0, 0, 1])
    np.testing.assert_array_equal(c, [2, 1])
    assert len(ix.unique(np.array([1, 1]), _num_outputs=1)) == 1
    s = np.array(["b", "a", "b"], dtype=object)
    y, *_ = ix.unique(s)
    assert list(y) == ["a", "b"]


def test_reverse_sequence():
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    out = ix.reverse_sequence(x.T.copy(), np.array([4, 3, 2, 1]), batch_axis=1, time_axis=0)
    np.testing.assert_array_equal(out, [[3, 6, 9, 12], [2, 5, 8, 13], [1, 4, 10, 14], [0, 7, 11, 15]])
    out = ix.reverse_sequence(x, np.array([1, 2, 3, 4]), batch_axis=0, time_axis=1)
    np.testing.assert_array_equal(out, [[0, 1, 2, 3], [5, 4, 6, 7], [10, 9, 8, 11], [15, 14, 13, 12]])
