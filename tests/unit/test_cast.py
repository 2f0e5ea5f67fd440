"""Unit tests for onyxrt.providers.cpu.tensor.cast."""

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto as T

from onyxrt.providers.cpu.tensor import cast as c


def test_same_type_is_noop():
    x = np.arange(3, dtype=np.float32)
    assert c.cast_1(x, to=T.FLOAT) is x


def test_numeric_casts():
    x = np.array([1.7, -1.7, 0.0], np.float32)
    out = c.cast_13(x, to=T.INT32) if hasattr(c, "cast_13") else c.cast_1(x, to=T.INT32)
    assert out.dtype == np.int32 and out.tolist() == [1, -1, 0]
    assert c.cast_1(np.array([200], np.int16), to=T.INT8).tolist() == [-56]  # wraps like C
    assert c.cast_1(np.array([300.7, -1000], np.float32), to=T.UINT8).tolist() == [44, 24]
    assert c.cast_1(np.array([0.0, -0.0, np.nan, 2.0]), to=T.BOOL).tolist() == [False, False, True, True]
    assert c.cast_1(np.array([True, False]), to=T.FLOAT).tolist() == [1.0, 0.0]
    b = c.cast_1(np.array([1.5, 3.0], np.float32), to=T.BFLOAT16)
    assert b.dtype == ml_dtypes.bfloat16
    assert c.cast_1(b, to=T.INT64).tolist() == [1, 3]
    assert c.cast_1(np.array([70000.0]), to=T.FLOAT16).tolist() == [np.inf]


def test_cast_1_string_to():
    assert c.cast_1(np.array([1], np.int32), to="FLOAT").dtype == np.float32


def test_to_string():
    x = np.array([0.1, 1 / 3, 1e10, 1e-7, 100, np.nan, np.inf, -np.inf, -0.0, 123456789], np.float32)
    out = c.cast_1(x, to=T.STRING)
    assert out.dtype == object
    assert out.tolist() == ["0.1", "0.33333334", "1e+10", "1e-07", "100", "NaN", "INF", "-INF", "-0",
                            "1.2345679e+08"]
    assert c.cast_1(np.array([0.1], np.float16), to=T.STRING).tolist() == ["0.099975586"]
    assert c.cast_1(np.array([True, False]), to=T.STRING).tolist() == ["1", "0"]
    assert c.cast_1(np.array([-5, 7], np.int8), to=T.STRING).tolist() == ["-5", "7"]
    assert c.cast_1(np.array([2**64 - 1], np.uint64), to=T.STRING).tolist() == ["18446744073709551615"]


def test_from_string():
    s = np.array(["1.5", "+INF", "-inf", "NaN", "1e-5", " 2", "3abc"], dtype=object)
    out = c.cast_1(s, to=T.FLOAT)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([1.5, np.inf, -np.inf, np.nan, 1e-5, 2, 3], np.float32))
    assert c.cast_1(np.array(["1", "-7", "100.5"], object), to=T.INT32).tolist() == [1, -7, 100]
    assert c.cast_1(np.array(["300", "255"], object), to=T.UINT8).tolist() == [44, 255]
    assert c.cast_1(np.array(["-129"], object), to=T.INT8).tolist() == [127]
    assert c.cast_1(np.array(["18446744073709551615"], object), to=T.UINT64).tolist() == [2**64 - 1]
    assert c.cast_1(np.array(["1", "0", "2"], object), to=T.BOOL).tolist() == [True, False, True]
    assert c.cast_1(np.array(["1.5"], object), to=T.FLOAT16).dtype == np.float16
    with pytest.raises(ValueError):
        c.cast_1(np.array(["hello"], object), to=T.DOUBLE)


def test_float8_saturate():
    x = np.array([1000.0, -1000.0, np.inf, np.nan, 1.5], np.float32)
    out = c.cast_19(x, to=T.FLOAT8E4M3FN)
    assert out.dtype == ml_dtypes.float8_e4m3fn
    f = out.astype(np.float32)
    assert f[0] == 448 and f[1] == -448 and f[2] == 448 and np.isnan(f[3]) and f[4] == 1.5
    f = c.cast_19(x, to=T.FLOAT8E4M3FN, saturate=0).astype(np.float32)
    assert np.isnan(f[0]) and np.isnan(f[2])
    f = c.cast_19(x, to=T.FLOAT8E5M2, saturate=0).astype(np.float32)
    assert f[0] == 1024 and f[2] == np.inf
    f = c.cast_19(x, to=T.FLOAT8E5M2).astype(np.float32)
    assert f[2] == 57344
    f = c.cast_19(np.array([-0.0], np.float32), to=T.FLOAT8E4M3FNUZ).astype(np.float32)
    assert f[0] == 0 and not np.signbit(f[0])


def test_e8m0_round_modes():
    x = np.array([1.0, 3.0, 5.0, 0.75], np.float32)
    up = c.cast_24(x, to=T.FLOAT8E8M0).astype(np.float32)
    assert up.tolist() == [1, 4, 8, 1]
    down = c.cast_24(x, to=T.FLOAT8E8M0, round_mode="down").astype(np.float32)
    assert down.tolist() == [1, 2, 4, 0.5]
    near = c.cast_24(x, to=T.FLOAT8E8M0, round_mode="nearest").astype(np.float32)
    assert near.tolist() == [1, 4, 4, 1]


def test_small_ints():
    out = c.cast_24(np.array([-9, -8, 7, 8, 15], np.int32), to=T.INT4)
    assert out.dtype == ml_dtypes.int4
    assert out.astype(np.int64).tolist() == [7, -8, 7, -8, -1]
    assert c.cast_24(out, to=T.FLOAT).tolist() == [7, -8, 7, -8, -1]
    assert c.cast_24(np.array([1, 2], np.float32), to=T.UINT2).astype(np.int64).tolist() == [1, 2]


def test_cast_like():
    x = np.array([1.25, 2.5], np.float64)
    out = c.cast_like_15(x, np.zeros(0, np.float16))
    assert out.dtype == np.float16 and out.tolist() == [1.25, 2.5]
    out = c.cast_like_19(x, np.zeros(0, ml_dtypes.float8_e4m3fn), saturate=0)
    assert out.dtype == ml_dtypes.float8_e4m3fn
    out = c.cast_like_15(x, np.array(["a"], dtype=object))
    assert out.tolist() == ["1.25", "2.5"]
