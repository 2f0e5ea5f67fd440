"""``math/branch_free``: selections and bounds equal to numpy's branching ones, bit for bit."""

import ml_dtypes
import numpy as np
import pytest

from onyxrt.providers.cpu.math import branch_free

RNG = np.random.default_rng(0)
SHAPES = [((64, 64), (64, 64), (64, 64)), ((64, 64), (1,), (64, 64)), ((1, 64), (64, 64), ()),
          ((64, 1, 64), (64, 64), (1, 64)), ((8,), (8,), (8,))]


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.float64, np.int64, np.int8,
                                   np.bool_])
@pytest.mark.parametrize("shapes", SHAPES)
def test_select_equals_where(dtype, shapes):
    condition_shape, x_shape, y_shape = shapes
    mixed = RNG.random(condition_shape) < 0.5
    x = (RNG.standard_normal(x_shape) * 10).astype(dtype)
    y = (RNG.standard_normal(y_shape) * 10).astype(dtype)
    for condition in (mixed, np.zeros_like(mixed), np.ones_like(mixed)):
        got, expected = branch_free.select(condition, x, y), np.where(condition, x, y)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        bits = np.dtype(f"u{expected.dtype.itemsize}")  # bit for bit: NaN, -0.0 kept
        assert np.array_equal(got.view(bits), expected.view(bits))


def test_select_falls_back_for_strings_and_mixed_types():
    condition = RNG.random(4096) < 0.5
    words = np.array(["a", "bc"] * 2048)
    assert np.array_equal(branch_free.select(condition, words, words[::-1]), np.where(condition, words, words[::-1]))
    ints, floats = np.arange(4096), np.ones(4096, np.float32)
    assert np.array_equal(branch_free.select(condition, ints, floats), np.where(condition, ints, floats))


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64])
def test_relu_on_the_sign_bit(dtype):
    x = RNG.standard_normal(5000).astype(dtype)
    x[:4] = [np.nan, -np.nan, -0.0, 0.0]
    bits = np.dtype(f"i{x.dtype.itemsize}")
    expected = np.maximum(x.view(bits), 0).view(x.dtype)  # Relu as the kernels have always given it
    got = branch_free.relu(x)
    assert np.array_equal(got.view(bits), expected.view(bits))
    branch_free.relu(x, out=x)  # in place
    assert np.array_equal(x.view(bits), expected.view(bits))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.uint8, np.int8])
@pytest.mark.parametrize("size", [7, 5000])
def test_bounds_equal_maximum_and_minimum(dtype, size):
    v = (RNG.standard_normal(size) * 50).astype(dtype)
    bound = np.dtype(dtype).type(3)
    assert np.array_equal(branch_free.at_least(v, bound), np.maximum(v, bound))
    assert np.array_equal(branch_free.at_most(v, bound), np.minimum(v, bound))


def test_bounds_propagate_nan():
    v = RNG.standard_normal(5000).astype(np.float32)
    v[10] = np.nan
    assert np.isnan(branch_free.at_least(v, np.float32(0))[10])
    assert np.isnan(branch_free.at_most(v, np.float32(0))[10])
    assert np.isnan(branch_free.at_least(v, np.float32(np.nan))).all()


@pytest.mark.parametrize("alpha", [0.01, 0.0, 1.0, 3.0, -0.5])
def test_leaky_relu(alpha):
    t = RNG.standard_normal(5000).astype(np.float32)
    t[:2] = [np.nan, -0.0]
    expected = np.where(t < 0, t * np.float32(alpha), t)
    np.testing.assert_array_equal(branch_free.leaky_relu(t, alpha), expected)
    branch_free.leaky_relu(t, alpha, out=t)  # in place
    np.testing.assert_array_equal(t, expected)
