"""Element-wise math, comparison, logical and bitwise ops (ONNX standard domain).

Conventions shared by the kernels here:

* results keep the input element type (numpy promotion never leaks: ``float32`` in,
  ``float32`` out; integer ops stay integer);
* transcendental functions of ``float16``/``bfloat16`` inputs are computed in ``float32``
  and rounded back once, as onnxruntime does;
* the legacy ``broadcast``/``axis`` attributes of opset < 7 binary ops are honoured;
  ``consumed_inputs`` (opset 1) is accepted and ignored;
* the arithmetic kernels write C-contiguous operands' results into the plan's buffers
  (``_alloc``) and may overwrite a dying input of the output's shape (``inplace``): ufuncs
  are correct with ``out`` being one of their operands. Other operands keep numpy's own
  output layout (downstream kernels' float paths, and so their rounding, depend on it).
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

from ....graph.types import np_dtype
from .._helpers import ALLOC_MIN_BYTES, wants_buffer
from ..kernel_table import op
from . import branch_free
from .rational_fits import ERF_LIMIT, ERF_P, ERF_Q, odd_rational
from ....errors import NodeInputError, NodeInputTypeError

# --------------------------------------------------------------------------- helpers

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
# Float types numpy has no fast transcendental loops for: computed in float32.
_LOW_FLOATS = frozenset(
    np.dtype(t)
    for t in (
        np.float16,
        ml_dtypes.bfloat16,
        ml_dtypes.float8_e4m3fn,
        ml_dtypes.float8_e4m3fnuz,
        ml_dtypes.float8_e5m2,
        ml_dtypes.float8_e5m2fnuz,
    )
)


def as_array(value) -> np.ndarray:
    """ufuncs return numpy scalars for 0-d operands: kernels must return arrays."""
    return value if type(value) is np.ndarray else np.asarray(value)


def is_float(dtype: np.dtype) -> bool:
    return dtype == _F32 or dtype == _F64 or dtype in _LOW_FLOATS


def float_apply(fn, x: np.ndarray, op_name: str) -> np.ndarray:
    """``fn(x)`` for a float tensor; float16/bfloat16 go through float32.

    ``fn`` may compute in place (``out=``): a 0-d input is handed over as one element of a 1-d
    array, since numpy arithmetic on 0-d arrays returns scalars that cannot be written to.
    """
    if x.ndim == 0:
        return float_apply(fn, x.reshape(1), op_name).reshape(())
    dt = x.dtype
    if dt == _F32 or dt == _F64:
        return as_array(fn(x))
    if dt in _LOW_FLOATS:
        return as_array(fn(x.astype(np.float32))).astype(dt)
    raise NodeInputTypeError(f"{op_name}: unsupported input type {dt}")


def legacy_broadcast(a: np.ndarray, b: np.ndarray, broadcast: int, axis) -> np.ndarray:
    """B reshaped for the opset < 7 ``broadcast``/``axis`` rules (B broadcast onto A)."""
    if not broadcast or axis is None or b.ndim == 0:
        # broadcast=0 requires equal shapes; suffix matching is numpy's rule.
        return b
    rank = a.ndim
    start = axis + rank if axis < 0 else axis
    if start < 0 or start + b.ndim > rank:
        raise NodeInputError(f"legacy broadcast: B of shape {b.shape} does not fit A {a.shape} at axis {axis}")
    return b.reshape(b.shape + (1,) * (rank - start - b.ndim))


# --------------------------------------------------------------------------- arithmetic


# Either input may become the output buffer (when it has the broadcast shape).
_BINARY_INPLACE = {0: 0, 1: 0}


# numpy's float16 loops convert every element on its own (~20x slower than float32); computing
# in float32 and rounding once is bit-identical for + - * / (float32 holds 2*11+2 bits).
_F16 = np.dtype(np.float16)
_EXACT_IN_FLOAT32 = (np.add, np.subtract, np.multiply, np.divide)
_F16_VIA_F32_MIN_SIZE = 1024


def binary_into(ufunc, a: np.ndarray, b: np.ndarray, alloc) -> np.ndarray:
    """``ufunc(a, b)`` written into an output buffer from ``alloc`` (same-type, C-contiguous operands only)."""
    if (a.dtype == _F16 and b.dtype == _F16 and ufunc in _EXACT_IN_FLOAT32
            and max(a.size, b.size) >= _F16_VIA_F32_MIN_SIZE):
        with np.errstate(all="ignore"):  # overflow to inf, 0/0, as numpy's float16 loops give
            return as_array(ufunc(a.astype(np.float32), b.astype(np.float32)).astype(np.float16))
    if (alloc is None or (a.nbytes < ALLOC_MIN_BYTES and b.nbytes < ALLOC_MIN_BYTES) or a.dtype != b.dtype
            or a.dtype.hasobject or not (a.flags.c_contiguous and b.flags.c_contiguous)):
        return as_array(ufunc(a, b))
    shape = a.shape if a.shape == b.shape else np.broadcast_shapes(a.shape, b.shape)
    return ufunc(a, b, out=alloc(shape, a.dtype))


def _make_binary(name: str, ufunc, versions):
    def kernel(a, b, *, broadcast=0, axis=None, consumed_inputs=None, _alloc=None):
        if broadcast and axis is not None:
            b = legacy_broadcast(a, b, broadcast, axis)
        return binary_into(ufunc, a, b, _alloc)

    kernel.__name__ = kernel.__qualname__ = name.lower()
    op(name, versions=versions, inplace=_BINARY_INPLACE)(kernel)
    return kernel


add = _make_binary("Add", np.add, (1, 6, 7, 13, 14))
sub = _make_binary("Sub", np.subtract, (1, 6, 7, 13, 14))
mul = _make_binary("Mul", np.multiply, (1, 6, 7, 13, 14))


def trunc_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division rounding toward zero (C semantics), exact for all int64 values."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if a.dtype.kind == "u":
            return np.floor_divide(a, b)
        # a - fmod(a, b) is an exact multiple of b, so floor division is exact.
        return np.floor_divide(np.subtract(a, np.fmod(a, b)), b)


@op("Div", versions=(1, 6, 7, 13, 14), inplace=_BINARY_INPLACE)
def div(a, b, *, broadcast=0, axis=None, consumed_inputs=None, _alloc=None):
    if broadcast and axis is not None:
        b = legacy_broadcast(a, b, broadcast, axis)
    if a.dtype.kind in "iu":
        return as_array(trunc_divide(a, b))
    return binary_into(np.divide, a, b, _alloc)


def _scalar_exponent(y: np.ndarray):
    """The exponent when it is a single 1 or 2 (exact shortcuts), else None."""
    if y.size == 1:
        value = y.reshape(-1)[0]
        if value == 2 or value == 1:
            return int(value)
    return None


@op("Pow", versions=(1, 7, 12, 13, 15))
def pow_(x, y, *, broadcast=0, axis=None):
    """x ** y with the result in x's type (the exponent may be of another type)."""
    if broadcast and axis is not None:
        y = legacy_broadcast(x, y, broadcast, axis)
    dt = x.dtype
    if is_float(dt):
        if y.ndim <= x.ndim:  # result shape is x's: fast paths keep it
            special = _scalar_exponent(y)
            if special == 2:
                return as_array(np.multiply(x, x))
            if special == 1:
                return x.copy()
        if dt in _LOW_FLOATS:
            with np.errstate(all="ignore"):
                return as_array(np.power(x.astype(np.float32), y.astype(np.float32)).astype(dt))
        with np.errstate(all="ignore"):
            return as_array(np.power(x, y.astype(dt, copy=False)))
    if dt.kind in "iu":
        if y.dtype.kind in "iu" and not (y.dtype.kind == "i" and (y < 0).any()):
            return as_array(np.power(x, y).astype(dt, copy=False))
        # negative or fractional exponents: computed in double, truncated like C's cast.
        with np.errstate(all="ignore"):
            return as_array(np.power(x.astype(np.float64), y.astype(np.float64)).astype(dt))
    raise NodeInputTypeError(f"Pow: unsupported base type {dt}")


@op("Mod", versions=(10, 13, 28))
def mod(a, b, *, fmod=0):
    """fmod=0: remainder with the divisor's sign (Python %); fmod=1: C fmod."""
    dt = a.dtype
    low = dt in _LOW_FLOATS
    if low:
        a, b = a.astype(np.float32), b.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.fmod(a, b) if fmod else np.mod(a, b)
    return as_array(out.astype(dt) if low else out)


# --------------------------------------------------------------------------- unary


def _make_unary(name: str, versions, ufunc, kinds: str = "f", quiet: bool = False):
    """Register a unary kernel; ``kinds`` says which input kinds go straight to ``ufunc``
    ('f' floats, 'i' signed ints, 'u' unsigned ints, 'b' bool), writing into the plan's
    buffer (in place over a dying input); ``quiet`` silences numpy's domain warnings."""

    def direct(x, out=None):
        if quiet:
            with np.errstate(all="ignore"):
                return ufunc(x, out=out)
        return ufunc(x, out=out)

    def kernel(x, *, consumed_inputs=None, _alloc=None):
        if x.dtype.kind in kinds and x.dtype not in _LOW_FLOATS:
            if not wants_buffer(_alloc, x):
                return as_array(direct(x))
            return direct(x, _alloc(x.shape, x.dtype))
        return float_apply(direct, x, name)

    kernel.__name__ = kernel.__qualname__ = name.lower()
    op(name, versions=versions, inplace={0: 0})(kernel)
    return kernel


neg = _make_unary("Neg", (1, 6, 13), np.negative, "fi")
abs_ = _make_unary("Abs", (1, 6, 13), np.abs, "fiu")
reciprocal = _make_unary("Reciprocal", (1, 6, 13), np.reciprocal, quiet=True)
floor = _make_unary("Floor", (1, 6, 13), np.floor)
ceil = _make_unary("Ceil", (1, 6, 13), np.ceil)
round_ = _make_unary("Round", (11, 22), np.round)  # numpy rounds halves to even
sqrt = _make_unary("Sqrt", (1, 6, 13), np.sqrt, quiet=True)
exp = _make_unary("Exp", (1, 6, 13), np.exp, quiet=True)
log = _make_unary("Log", (1, 6, 13), np.log, quiet=True)
sin = _make_unary("Sin", (7, 22), np.sin)
cos = _make_unary("Cos", (7, 22), np.cos)
tan = _make_unary("Tan", (7, 22), np.tan)
asin = _make_unary("Asin", (7, 22), np.arcsin, quiet=True)
acos = _make_unary("Acos", (7, 22), np.arccos, quiet=True)
atan = _make_unary("Atan", (7, 22), np.arctan)
sinh = _make_unary("Sinh", (9, 22), np.sinh, quiet=True)
cosh = _make_unary("Cosh", (9, 22), np.cosh, quiet=True)
asinh = _make_unary("Asinh", (9, 22), np.arcsinh)
acosh = _make_unary("Acosh", (9, 22), np.arccosh, quiet=True)
atanh = _make_unary("Atanh", (9, 22), np.arctanh, quiet=True)
sign = _make_unary("Sign", (9, 13), np.sign, "fiu")


# --------------------------------------------------------------------------- erf

_erf_f64 = np.frompyfunc(math.erf, 1, 1)
_ERF_SMALL = 128


def erf_float32(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Vectorized float32 erf (``rational_fits``: within 4e-7), into ``out`` (C-contiguous, not ``x``) or a fresh array."""
    x = np.asarray(x, dtype=np.float32)
    if x.size <= _ERF_SMALL:  # the ~25 array operations cost more than libm's erf
        return np.asarray(_erf_f64(x), dtype=np.float32).reshape(x.shape)
    return odd_rational(x, ERF_LIMIT, ERF_P, ERF_Q, out)


def erf_values(x: np.ndarray) -> np.ndarray:
    """erf of a float tensor, in its own type."""
    dt = x.dtype
    if dt == _F32:
        return erf_float32(x)
    if dt == _F64:  # exact: libm's erf (double inputs are rare in models)
        return np.asarray(_erf_f64(x), dtype=np.float64)
    if dt in _LOW_FLOATS:
        return erf_float32(x.astype(np.float32)).astype(dt)
    raise NodeInputTypeError(f"Erf: unsupported input type {dt}")


@op("Erf", versions=(9, 13))
def erf(x, *, _alloc=None):
    if x.dtype.kind in "iu":  # Erf-9 allows integers: erf computed in double, truncated back
        return erf_values(x.astype(np.float64)).astype(x.dtype)
    if _alloc is not None and x.dtype == _F32 and x.flags.c_contiguous and x.size > _ERF_SMALL:
        return erf_float32(x, _alloc(x.shape, x.dtype))
    return erf_values(x)


@op("IsNaN", versions=(9, 13, 20))
def isnan(x):
    if x.dtype in _LOW_FLOATS:
        x = x.astype(np.float32)
    return as_array(np.isnan(x))


@op("IsInf", versions=(10, 20))
def isinf(x, *, detect_negative=1, detect_positive=1):
    if x.dtype in _LOW_FLOATS:
        x = x.astype(np.float32)
    if detect_negative and detect_positive:
        return as_array(np.isinf(x))
    if detect_positive:
        return as_array(np.isposinf(x))
    if detect_negative:
        return as_array(np.isneginf(x))
    return np.zeros(x.shape, dtype=bool)


# --------------------------------------------------------------------------- variadic


def _fold(ufunc, inputs) -> np.ndarray:
    """ufunc folded over the inputs with broadcasting, into a fresh buffer."""
    if not inputs:
        raise NodeInputError("at least one input is required")
    if len(inputs) == 1:
        return np.array(inputs[0], copy=True)
    result = as_array(ufunc(inputs[0], inputs[1]))
    for x in inputs[2:]:
        if np.broadcast_shapes(result.shape, x.shape) == result.shape:
            ufunc(result, x, out=result)
        else:
            result = as_array(ufunc(result, x))
    return result


def _bounded(bound, inputs) -> np.ndarray | None:
    """Max or Min of an array and a single value (``Max(x, 0)``) by ``bound`` (``branch_free``: numpy's max
    against a scalar branches per element); None for any other inputs."""
    if len(inputs) != 2:
        return None
    x, v = inputs if inputs[1].size == 1 else inputs[::-1]
    if v.size != 1 or x.size == 1 or x.dtype != v.dtype or v.ndim > x.ndim:
        return None
    return bound(x, v.reshape(()))


@op("Max", versions=(1, 6, 8, 12, 13))
def max_(*inputs, consumed_inputs=None):
    y = _bounded(branch_free.at_least, inputs)
    return _fold(np.maximum, inputs) if y is None else y


@op("Min", versions=(1, 6, 8, 12, 13))
def min_(*inputs, consumed_inputs=None):
    y = _bounded(branch_free.at_most, inputs)
    return _fold(np.minimum, inputs) if y is None else y


def _low_float_sum(inputs, count: int) -> np.ndarray:
    """Sum (divided by ``count``) of float16/bfloat16 inputs, accumulated in float32."""
    dt = inputs[0].dtype
    total = _fold(np.add, [x.astype(np.float32) for x in inputs])
    if count != 1:
        total /= np.float32(count)
    return total.astype(dt)


@op("Sum", versions=(1, 6, 8, 13))
def sum_(*inputs, consumed_inputs=None):
    if len(inputs) > 1 and inputs[0].dtype in _LOW_FLOATS:
        return _low_float_sum(inputs, 1)
    return _fold(np.add, inputs)


@op("Mean", versions=(1, 6, 8, 13))
def mean(*inputs, consumed_inputs=None):
    if inputs and inputs[0].dtype in _LOW_FLOATS:
        return _low_float_sum(inputs, len(inputs))
    total = _fold(np.add, inputs)
    np.divide(total, total.dtype.type(len(inputs)), out=total)
    return total


# --------------------------------------------------------------------------- comparison / logic


def _make_compare(name: str, ufunc, versions):
    def kernel(a, b, *, broadcast=0, axis=None):
        if broadcast and axis is not None:
            b = legacy_broadcast(a, b, broadcast, axis)
        out = ufunc(a, b)
        if type(out) is not np.ndarray or out.dtype != np.bool_:  # object (string) inputs
            out = np.asarray(out, dtype=bool)
        return out

    kernel.__name__ = kernel.__qualname__ = name.lower()
    op(name, versions=versions)(kernel)
    return kernel


equal = _make_compare("Equal", np.equal, (1, 7, 11, 13, 19))
less = _make_compare("Less", np.less, (1, 7, 9, 13))
less_or_equal = _make_compare("LessOrEqual", np.less_equal, (12, 16))
greater = _make_compare("Greater", np.greater, (1, 7, 9, 13))
greater_or_equal = _make_compare("GreaterOrEqual", np.greater_equal, (12, 16))
and_ = _make_compare("And", np.logical_and, (1, 7))
or_ = _make_compare("Or", np.logical_or, (1, 7))
xor = _make_compare("Xor", np.logical_xor, (1, 7))


@op("Not", versions=1)
def not_(x):
    return as_array(np.logical_not(x))


# --------------------------------------------------------------------------- bitwise


@op("BitShift", versions=(11, 28))
def bit_shift(x, y, *, direction):
    if x.dtype.kind not in "iu":
        raise NodeInputTypeError(f"BitShift: unsupported input type {x.dtype}")
    if direction not in ("LEFT", "RIGHT"):
        raise NodeInputError(f"BitShift: direction must be 'LEFT' or 'RIGHT', got {direction!r}")
    bits = x.dtype.itemsize * 8
    y = y.astype(x.dtype, copy=False)
    shift = np.left_shift if direction == "LEFT" else np.right_shift
    in_range = (y >= 0) & (y < bits) if y.dtype.kind == "i" else (y < bits)
    if in_range.all():
        return as_array(shift(x, y))
    # out-of-range shifts: only the sign fill remains (-1 for a right shift of a negative x)
    out = as_array(shift(x, np.where(in_range, y, 0)))
    fill = x.dtype.type(0)
    if direction == "RIGHT" and x.dtype.kind == "i":
        fill = np.where(x < 0, x.dtype.type(-1), fill)
    return as_array(np.where(in_range, out, fill).astype(x.dtype, copy=False))


def _int_only(name, x):
    if x.dtype.kind not in "iu":
        raise NodeInputTypeError(f"{name}: unsupported input type {x.dtype}")


@op("BitwiseAnd", versions=18)
def bitwise_and(a, b):
    _int_only("BitwiseAnd", a)
    return as_array(np.bitwise_and(a, b))


@op("BitwiseOr", versions=18)
def bitwise_or(a, b):
    _int_only("BitwiseOr", a)
    return as_array(np.bitwise_or(a, b))


@op("BitwiseXor", versions=18)
def bitwise_xor(a, b):
    _int_only("BitwiseXor", a)
    return as_array(np.bitwise_xor(a, b))


@op("BitwiseNot", versions=18)
def bitwise_not(x):
    _int_only("BitwiseNot", x)
    return as_array(np.invert(x))


# --------------------------------------------------------------------------- selection / reinterpretation


@op("Where", versions=(9, 16))
def where(condition, x, y):
    if condition.dtype != np.bool_:
        condition = condition.astype(bool)
    out = as_array(branch_free.select(condition, x, y))
    if out.dtype != x.dtype and x.dtype == y.dtype:
        out = out.astype(x.dtype)
    return out


_SUB_BYTE_BITS = {"int4": 4, "uint4": 4, "float4_e2m1fn": 4, "int2": 2, "uint2": 2}


def _bit_width(dtype: np.dtype) -> int:
    return _SUB_BYTE_BITS.get(dtype.name, dtype.itemsize * 8)


@op("BitCast", versions=26)
def bit_cast(x, *, to):
    target = np.dtype(np_dtype(to))
    if x.dtype == object or target == object:
        raise NodeInputTypeError("BitCast: string tensors cannot be bit-cast")
    if _bit_width(x.dtype) != _bit_width(target):
        raise NodeInputError(f"BitCast: {x.dtype} and {target} have different bit widths")
    if not x.flags.c_contiguous:
        x = x.copy()
    if target == np.bool_:
        return x.view(np.uint8) != 0
    return x.view(target).copy()
