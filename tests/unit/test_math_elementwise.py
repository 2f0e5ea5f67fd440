"""Unit tests for onyxrt.providers.cpu.math.elementwise."""

import math

import ml_dtypes
import numpy as np
import onnx.defs
import pytest
from onnx import TensorProto

import onyxrt.providers.cpu.kernel_modules  # noqa: F401  (registers every kernel)
from onyxrt.providers.cpu.math import elementwise as ew
from onyxrt.providers.cpu.kernel_table import CPU_KERNELS
from reference_ops import reference_output

OPS = """Add Sub Mul Div Pow Mod Neg Abs Reciprocal Floor Ceil Round Sqrt Exp Log Sin Cos Tan Asin Acos
Atan Sinh Cosh Asinh Acosh Atanh Sign Erf IsNaN IsInf Max Min Sum Mean Equal Less LessOrEqual Greater
GreaterOrEqual Not And Or Xor BitShift BitwiseAnd BitwiseOr BitwiseXor BitwiseNot Where BitCast""".split()


def _versions(op_type):
    return sorted(
        {s.since_version for s in onnx.defs.get_all_schemas_with_history() if s.name == op_type and s.domain == ""}
    )


@pytest.mark.parametrize("op_type", OPS)
def test_every_schema_version_registered(op_type):
    for version in _versions(op_type):
        kernel = CPU_KERNELS.lookup("", op_type, version)
        assert kernel is not None and kernel.since_version == version, (op_type, version)


_MATH_MODULES = tuple(
    f"onyxrt.providers.cpu.math.{name}" for name in ("elementwise", "activations", "reduction", "einsum")
)


# --------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int8, np.uint16, np.int32, np.int64])
def test_binary_arithmetic_keeps_type(dtype):
    a = np.array([[1, 2, 3], [4, 5, 6]], dtype=dtype)
    b = np.array([3, 2, 1], dtype=dtype)
    for fn, ref in ((ew.add, np.add), (ew.sub, np.subtract), (ew.mul, np.multiply)):
        out = fn(a, b)
        assert out.dtype == dtype and out.shape == (2, 3)
        np.testing.assert_array_equal(out, ref(a, b))


def test_bfloat16_arithmetic():
    a = np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)
    out = ew.add(a, a)
    assert out.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(out.astype(np.float32), [3.0, -4.0])


def test_scalar_operands_give_arrays():
    a = np.array(2.0, np.float32)
    for fn in (ew.add, ew.mul, ew.div, ew.pow_, ew.equal):
        out = fn(a, a)
        assert type(out) is np.ndarray and out.shape == ()
    assert type(ew.sqrt(a)) is np.ndarray and type(ew.erf(a)) is np.ndarray


def test_div_integer_truncates_toward_zero():
    a = np.array([7, -7, 7, -7, -8, 0], np.int32)
    b = np.array([2, 2, -2, -2, 3, 5], np.int32)
    out = ew.div(a, b)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [3, -3, -3, 3, -2, 0])
    big = np.array([np.iinfo(np.int64).max, np.iinfo(np.int64).min + 1], np.int64)
    np.testing.assert_array_equal(ew.div(big, np.array([3, 3], np.int64)), [3074457345618258602, -3074457345618258602])
    np.testing.assert_array_equal(ew.div(np.array([7], np.uint8), np.array([2], np.uint8)), [3])


def test_div_float():
    out = ew.div(np.array([1.0, -3.0], np.float32), np.array([4.0, 2.0], np.float32))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [0.25, -1.5])


def test_legacy_broadcast_axis():
    a = np.zeros((2, 3, 4, 5), np.float32)
    b = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = ew.add(a, b, broadcast=1, axis=1)
    np.testing.assert_array_equal(out[1, :, :, 2], b)
    out = ew.mul(np.ones((2, 3), np.float32), np.array([2.0, 3.0], np.float32), broadcast=1, axis=0)
    np.testing.assert_array_equal(out, [[2, 2, 2], [3, 3, 3]])
    # suffix matching without axis
    out = ew.sub(np.ones((2, 3), np.float32), np.ones(3, np.float32), broadcast=1)
    np.testing.assert_array_equal(out, np.zeros((2, 3)))


def test_pow_types():
    x = np.array([2.0, -2.0, 3.0], np.float32)
    out = ew.pow_(x, np.array([-1, 3, 2], np.int64))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.5, -8.0, 9.0])
    out = ew.pow_(x, np.array(2.0, np.float64))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [4.0, 4.0, 9.0])
    np.testing.assert_allclose(ew.pow_(np.array([4.0], np.float32), np.array(0.5, np.float32)), [2.0])
    # integer base: like C, pow computed in double and truncated
    out = ew.pow_(np.array([2, -2, 1, -1, 3], np.int32), np.array([-1, -1, -1, -1, 2], np.int32))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [0, 0, 1, -1, 9])
    out = ew.pow_(np.array([2, 3], np.int64), np.array([0.5, 2.9], np.float32))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [1, 24])
    # exponent with more dims than the base still broadcasts
    assert ew.pow_(np.array(2.0, np.float32), np.array([[2.0]], np.float32)).shape == (1, 1)


def test_mod():
    a = np.array([7, -7, 7, -7], np.int32)
    b = np.array([3, 3, -3, -3], np.int32)
    np.testing.assert_array_equal(ew.mod(a, b), [1, 2, -2, -1])  # sign of the divisor
    np.testing.assert_array_equal(ew.mod(a, b, fmod=1), [1, -1, 1, -1])  # sign of the dividend
    f = np.array([5.5, -5.5], np.float32)
    np.testing.assert_allclose(ew.mod(f, np.array([2.0, 2.0], np.float32), fmod=1), [1.5, -1.5])
    np.testing.assert_allclose(ew.mod(f, np.array([2.0, 2.0], np.float32)), [1.5, 0.5])
    out = ew.mod(np.array([1.5], np.float16), np.array([1.0], np.float16), fmod=1)
    assert out.dtype == np.float16 and out[0] == 0.5


# --------------------------------------------------------------------------- unary


def test_round_half_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 2.3, 0.9], np.float32)
    np.testing.assert_array_equal(ew.round_(x), [0, 2, 2, -0.0, -2, 2, 1])


@pytest.mark.parametrize(
    "fn, ref",
    [
        (ew.exp, np.exp),
        (ew.log, np.log),
        (ew.sqrt, np.sqrt),
        (ew.sin, np.sin),
        (ew.atan, np.arctan),
        (ew.tan, np.tan),
        (ew.asinh, np.arcsinh),
        (ew.floor, np.floor),
        (ew.ceil, np.ceil),
        (ew.reciprocal, np.reciprocal),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, ml_dtypes.bfloat16])
def test_unary_float(fn, ref, dtype):
    x = np.array([0.25, 1.0, 2.5, 7.0], dtype=dtype)
    out = fn(x)
    assert out.dtype == np.dtype(dtype)
    rtol = 1e-6 if dtype in (np.float32, np.float64) else 1e-2
    np.testing.assert_allclose(out.astype(np.float64), ref(x.astype(np.float64)), rtol=rtol)


def test_unary_rejects_integers_where_undefined():
    with pytest.raises(TypeError):
        ew.exp(np.array([1, 2], np.int32))


def test_unary_integers():
    x = np.array([-3, 0, 5], np.int8)
    assert ew.neg(x).dtype == np.int8 and list(ew.neg(x)) == [3, 0, -5]
    assert list(ew.abs_(x)) == [3, 0, 5]
    assert list(ew.sign(x)) == [-1, 0, 1] and ew.sign(x).dtype == np.int8
    assert list(ew.sign(np.array([0, 7], np.uint32))) == [0, 1]


def test_unary_does_not_mutate_input():
    x = np.array([1.0, 4.0], np.float32)
    x.flags.writeable = False
    ew.sqrt(x)
    ew.neg(x)
    ew.erf(x)


def test_log_of_zero_is_minus_inf_without_warning():
    with np.errstate(all="raise"):
        out = ew.log(np.array([0.0, -1.0], np.float32))
    assert out[0] == -np.inf and np.isnan(out[1])


# --------------------------------------------------------------------------- erf


def test_erf_float32_accuracy():
    x = np.concatenate([np.linspace(-5, 5, 200001), np.geomspace(1e-30, 5, 20001), -np.geomspace(1e-30, 5, 20001)])
    x = x.astype(np.float32)
    ref = np.array([math.erf(v) for v in x.astype(np.float64)])
    out = ew.erf(x)
    assert out.dtype == np.float32
    mask = ref != 0
    rel = np.abs(out.astype(np.float64) - ref)[mask] / np.abs(ref[mask])
    assert rel.max() < 1e-6


@pytest.mark.parametrize("n", [5, 1000])  # the small and the vectorized paths
def test_erf_special_values(n):
    x = np.zeros(n, np.float32)
    x[:5] = [0.0, -0.0, np.inf, -np.inf, np.nan]
    out = ew.erf(x)
    assert out[0] == 0 and out[1] == 0 and np.signbit(out[1])
    assert out[2] == 1 and out[3] == -1 and np.isnan(out[4])
    big = np.array([1e30, -1e30, 4.5, -3.95] + [0.0] * n, np.float32)
    np.testing.assert_array_equal(ew.erf(big)[:4], [1, -1, 1, -1])


def test_erf_other_types():
    x = np.array([0.3, -1.7], np.float64)
    np.testing.assert_array_equal(ew.erf(x), [math.erf(0.3), math.erf(-1.7)])
    h = ew.erf(np.array([0.5], np.float16))
    assert h.dtype == np.float16 and abs(float(h[0]) - math.erf(0.5)) < 1e-3
    b = ew.erf(np.array([0.5], ml_dtypes.bfloat16))
    assert b.dtype == ml_dtypes.bfloat16
    i = ew.erf(np.array([0, 1, -7], np.int32))  # Erf-9 integers: truncated
    assert i.dtype == np.int32 and list(i) == [0, 0, -1]


def test_isnan_isinf():
    x = np.array([1.0, np.nan, np.inf, -np.inf], np.float32)
    np.testing.assert_array_equal(ew.isnan(x), [False, True, False, False])
    np.testing.assert_array_equal(ew.isinf(x), [False, False, True, True])
    np.testing.assert_array_equal(ew.isinf(x, detect_negative=0), [False, False, True, False])
    np.testing.assert_array_equal(ew.isinf(x, detect_positive=0), [False, False, False, True])
    np.testing.assert_array_equal(ew.isinf(x, detect_positive=0, detect_negative=0), [False] * 4)
    f8 = x.astype(ml_dtypes.float8_e4m3fn)
    np.testing.assert_array_equal(ew.isnan(f8), [False, True, True, True])  # e4m3fn has no inf
    np.testing.assert_array_equal(ew.isnan(x.astype(ml_dtypes.bfloat16)), [False, True, False, False])


# --------------------------------------------------------------------------- variadic


def test_variadic_broadcast_and_no_mutation():
    a = np.array([[1.0, 5.0, 3.0]], np.float32)
    b = np.array([[2.0], [4.0]], np.float32)
    c = np.array(3.0, np.float32)
    for arr in (a, b, c):
        arr.flags.writeable = False
    np.testing.assert_array_equal(ew.max_(a, b, c), [[3, 5, 3], [4, 5, 4]])
    np.testing.assert_array_equal(ew.min_(a, b, c), [[1, 2, 2], [1, 3, 3]])
    np.testing.assert_array_equal(ew.sum_(a, b, c), [[6, 10, 8], [8, 12, 10]])
    np.testing.assert_allclose(ew.mean(a, b, c), np.array([[6, 10, 8], [8, 12, 10]]) / 3)
    assert ew.mean(a, b, c).dtype == np.float32
    single = ew.sum_(a)
    assert single is not a and np.array_equal(single, a)


def test_sum_mean_float16_accumulate_in_float32():
    xs = [np.full(4, v, np.float16) for v in (2048.0, 1.0, 1.0)]
    # float16 rounding after each add would lose both 1s (2049 is not representable)
    assert ew.sum_(*xs)[0] == 2050.0
    assert ew.mean(*xs).dtype == np.float16


def test_max_int_types():
    out = ew.max_(np.array([1, -5], np.int8), np.array([-2, 3], np.int8))
    assert out.dtype == np.int8 and list(out) == [1, 3]


# --------------------------------------------------------------------------- comparison / logic


def test_comparisons():
    a = np.array([1, 2, 3], np.int64)
    b = np.array(2, np.int64)
    assert list(ew.equal(a, b)) == [False, True, False]
    assert list(ew.less(a, b)) == [True, False, False]
    assert list(ew.less_or_equal(a, b)) == [True, True, False]
    assert list(ew.greater(a, b)) == [False, False, True]
    assert list(ew.greater_or_equal(a, b)) == [False, True, True]
    s = ew.equal(np.array(["a", "b"], dtype=object), np.array(["a", "c"], dtype=object))
    assert s.dtype == np.bool_ and list(s) == [True, False]


def test_logic():
    t = np.array([True, True, False, False])
    f = np.array([True, False, True, False])
    assert list(ew.and_(t, f)) == [True, False, False, False]
    assert list(ew.or_(t, f)) == [True, True, True, False]
    assert list(ew.xor(t, f)) == [False, True, True, False]
    assert list(ew.not_(t)) == [False, False, True, True]
    out = ew.and_(np.ones((2, 3), bool), np.array([True, False]), broadcast=1, axis=0)
    assert out.tolist() == [[True] * 3, [False] * 3]


# --------------------------------------------------------------------------- bitwise


def test_bit_shift():
    x = np.array([16, 4, 1], np.uint8)
    y = np.array([1, 2, 3], np.uint8)
    assert list(ew.bit_shift(x, y, direction="RIGHT")) == [8, 1, 0]
    assert list(ew.bit_shift(x, y, direction="LEFT")) == [32, 16, 8]
    assert list(ew.bit_shift(np.array([1, 2], np.uint8), np.array([8, 9], np.uint8), direction="LEFT")) == [0, 0]
    s = np.array([-8, -8, 8, -1, 5], np.int32)
    sy = np.array([1, 40, 40, -1, -3], np.int32)
    out = ew.bit_shift(s, sy, direction="RIGHT")
    assert out.dtype == np.int32 and list(out) == [-4, -1, 0, -1, 0]
    assert list(ew.bit_shift(s, sy, direction="LEFT")) == [-16, 0, 0, 0, 0]
    with pytest.raises(ValueError):
        ew.bit_shift(x, y, direction="UP")


def test_bitwise():
    a = np.array([0b1100, -1], np.int16)
    b = np.array([0b1010, 5], np.int16)
    assert list(ew.bitwise_and(a, b)) == [0b1000, 5]
    assert list(ew.bitwise_or(a, b)) == [0b1110, -1]
    assert list(ew.bitwise_xor(a, b)) == [0b0110, -6]
    assert list(ew.bitwise_not(np.array([0, 255], np.uint8))) == [255, 0]
    with pytest.raises(TypeError):
        ew.bitwise_not(np.array([1.0], np.float32))


# --------------------------------------------------------------------------- selection / bitcast


def test_where():
    cond = np.array([[True], [False]])
    out = ew.where(cond, np.array([1, 2, 3], np.int32), np.array(-1, np.int32))
    assert out.dtype == np.int32 and out.tolist() == [[1, 2, 3], [-1, -1, -1]]
    s = ew.where(np.array([True, False]), np.array(["a", "b"], dtype=object), np.array(["c", "d"], dtype=object))
    assert s.tolist() == ["a", "d"]


def test_bit_cast():
    out = ew.bit_cast(np.array([1.0, -2.0], np.float32), to=TensorProto.INT32)
    assert out.dtype == np.int32 and list(out) == [0x3F800000, np.int32(np.uint32(0xC0000000).view(np.int32))]
    scalar = ew.bit_cast(np.array(1.0, np.float32), to=TensorProto.UINT32)
    assert scalar.shape == () and scalar == 0x3F800000
    nib = ew.bit_cast(np.array([-1, 7], ml_dtypes.int4), to=TensorProto.UINT4)
    assert nib.dtype == ml_dtypes.uint4 and nib.astype(np.int32).tolist() == [15, 7]
    assert ew.bit_cast(np.array([True, False]), to=TensorProto.UINT8).tolist() == [1, 0]
    with pytest.raises(ValueError):
        ew.bit_cast(np.array([1.0], np.float32), to=TensorProto.INT64)


# --------------------------------------------------------------------------- against onnx.reference


@pytest.mark.parametrize(
    "op_type, inputs, attrs",
    [
        ("Mod", [np.array([-4, 7, 5], np.int64), np.array([3, -3, 2], np.int64)], {}),
        ("Div", [np.array([-9, 9], np.int64), np.array([4, -4], np.int64)], {}),
        ("Pow", [np.array([1.5, 2.0], np.float32), np.array([2, 3], np.int32)], {}),
        ("Sign", [np.array([-2.0, 0.0, 3.0], np.float32)], {}),
        ("Atanh", [np.array([-0.5, 0.1], np.float32)], {}),
    ],
)
def test_against_reference(op_type, inputs, attrs):
    fn = CPU_KERNELS.lookup("", op_type, 21).fn
    expected = reference_output(op_type, inputs, 21, **attrs)
    out = fn(*inputs, **attrs)
    assert out.dtype == expected.dtype
    np.testing.assert_allclose(out, expected, rtol=1e-6)
