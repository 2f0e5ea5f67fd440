"""Unit tests for onyxrt.providers.cpu.tensor.creation."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onyxrt.providers.cpu.tensor import creation as cr


def test_constant_forms():
    v = np.arange(6, dtype=np.float16).reshape(2, 3)
    assert cr.constant_1(value=v) is v
    np.testing.assert_array_equal(cr.constant_1(value=numpy_helper.from_array(v)), v)
    a = cr.constant_12(value_float=1.5)
    assert a.dtype == np.float32 and a.shape == () and a == 1.5
    a = cr.constant_12(value_floats=[1.0, 2.0])
    assert a.dtype == np.float32 and a.shape == (2,)
    a = cr.constant_12(value_int=7)
    assert a.dtype == np.int64 and a.shape == () and a == 7
    a = cr.constant_12(value_ints=[])
    assert a.dtype == np.int64 and a.shape == (0,)
    a = cr.constant_12(value_string="hi")
    assert a.dtype == object and a.shape == () and a[()] == "hi"
    a = cr.constant_12(value_strings=["a", b"b"])
    assert a.dtype == object and list(a) == ["a", "b"]
    with pytest.raises(ValueError):
        cr.constant_12()
    with pytest.raises(ValueError):
        cr.constant_12(value_int=1, value_float=2.0)


def test_constant_sparse():
    values = numpy_helper.from_array(np.array([1.0, 2.0], np.float32))
    indices = numpy_helper.from_array(np.array([1, 5], np.int64))
    sp = helper.make_sparse_tensor(values, indices, [2, 3])
    out = cr.constant_11(sparse_value=sp)
    np.testing.assert_array_equal(out, [[0, 1, 0], [0, 0, 2]])
    indices2 = numpy_helper.from_array(np.array([[0, 1], [1, 2]], np.int64))
    out = cr.constant_12(sparse_value=helper.make_sparse_tensor(values, indices2, [2, 3]))
    np.testing.assert_array_equal(out, [[0, 1, 0], [0, 0, 2]])


def test_constant_of_shape():
    out = cr.constant_of_shape(np.array([2, 3], np.int64))
    assert out.dtype == np.float32 and out.shape == (2, 3) and not out.any()
    out = cr.constant_of_shape(np.array([2], np.int64), value=np.array([5], np.int32))
    assert out.dtype == np.int32 and list(out) == [5, 5]
    out = cr.constant_of_shape(np.array([], np.int64), value=np.array([1.0]))
    assert out.shape == () and out.dtype == np.float64
    assert cr.constant_of_shape(np.array([0, 4], np.int64)).shape == (0, 4)


def test_range():
    out = cr.range_11(np.array(3, np.int32), np.array(9, np.int32), np.array(3, np.int32))
    assert out.dtype == np.int32 and list(out) == [3, 6]
    out = cr.range_11(np.array(10.0, np.float32), np.array(4.0, np.float32), np.array(-2.0, np.float32))
    assert out.dtype == np.float32 and list(out) == [10, 8, 6]
    out = cr.range_11(np.array(10, np.int64), np.array(4, np.int64), np.array(1, np.int64))
    assert out.shape == (0,) and out.dtype == np.int64
    out = cr.range_27(np.array(0, np.float16), np.array(1, np.float16), np.array(0.25, np.float16))
    assert out.dtype == np.float16 and list(out) == [0, 0.25, 0.5, 0.75]
    out = cr.range_11(np.array(0, np.int64), np.array(10, np.int64), np.array(3, np.int64))
    assert list(out) == [0, 3, 6, 9]


def test_eye_like():
    out = cr.eye_like(np.zeros((3, 4), np.float32), k=1)
    np.testing.assert_array_equal(out, np.eye(3, 4, 1))
    assert out.dtype == np.float32
    out = cr.eye_like(np.zeros((3, 2), np.int32), dtype=TensorProto.DOUBLE, k=-1)
    np.testing.assert_array_equal(out, np.eye(3, 2, -1))
    assert out.dtype == np.float64
    assert not cr.eye_like(np.zeros((2, 2)), k=5).any()


def test_random_ops():
    a = cr.random_normal(shape=[3, 4], seed=1.0)
    b = cr.random_normal(shape=[3, 4], seed=1.0)
    assert a.dtype == np.float32 and a.shape == (3, 4)
    np.testing.assert_array_equal(a, b)
    u = cr.random_uniform(shape=[1000], dtype=TensorProto.DOUBLE, low=2.0, high=3.0)
    assert u.dtype == np.float64 and u.min() >= 2 and u.max() < 3
    x = np.zeros((2, 5), np.float16)
    assert cr.random_normal_like(x).dtype == np.float16
    assert cr.random_uniform_like(x, dtype=TensorProto.FLOAT).dtype == np.float32
    n = cr.random_normal(shape=[20000], mean=5.0, scale=2.0, seed=3.0)
    assert abs(n.mean() - 5) < 0.1 and abs(n.std() - 2) < 0.1


def test_multinomial():
    logits = np.log(np.array([[0.0001, 0.9999, 0.0], [1.0, 0.0, 0.0]], np.float32) + 1e-30)
    out = cr.multinomial(logits, sample_size=50, seed=2.0)
    assert out.dtype == np.int32 and out.shape == (2, 50)
    assert (out[1] == 0).all() and (out[0] == 1).mean() > 0.9
    assert cr.multinomial(logits, dtype=TensorProto.INT64).dtype == np.int64


def test_bernoulli():
    p = np.array([0.0, 1.0, 0.0, 1.0], np.float32)
    out = cr.bernoulli(p, seed=0.0)
    assert out.dtype == np.float32 and list(out) == [0, 1, 0, 1]
    out = cr.bernoulli(p, dtype=TensorProto.BOOL)
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(cr.bernoulli(np.full(10, 0.5), seed=4.0), cr.bernoulli(np.full(10, 0.5), seed=4.0))
