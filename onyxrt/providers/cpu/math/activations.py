"""Activation functions, Clip and the Softmax family (ONNX standard domain).

Float activations of float16/bfloat16 inputs are computed in float32 and rounded
back once. Every kernel returns a fresh array in the input's element type; Relu,
Sigmoid, Tanh and Softmax-13 write C-contiguous inputs' results into the plan's buffers
(``_alloc``), in place over a dying input.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

from .. import row_kernels
from . import branch_free
from .._helpers import normalize_axis, wants_buffer
from ..kernel_table import op
from .elementwise import as_array, erf_values, float_apply, is_float
from ....errors import NodeInputError, NodeInputTypeError

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_SQRT_2_PI = math.sqrt(2.0 / math.pi)


def _c(x: np.ndarray, value: float):
    """A Python number as a scalar of x's type (keeps float32 math in float32)."""
    return x.dtype.type(value)


# --------------------------------------------------------------------------- ReLU family


@op("Relu", versions=(1, 6, 13, 14), inplace={0: 0})
def relu(x, *, consumed_inputs=None, _alloc=None):
    if x.dtype.kind == "i" or is_float(x.dtype):
        out = _alloc(x.shape, x.dtype) if wants_buffer(_alloc, x) else None
        return as_array(branch_free.at_least(x, _c(x, 0), out=out))
    raise NodeInputTypeError(f"Relu: unsupported input type {x.dtype}")


@op("Relu", versions=(1, 6, 13, 14), types={0: (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16),
                                                np.dtype(np.float32), np.dtype(np.float64))}, priority=1, inplace={0: 0})
def relu_sign_bit(x, *, consumed_inputs=None, _alloc=None):
    """Relu of IEEE floats on their bits (``branch_free.relu``): NaN with the sign bit set gives 0, other NaN
    stay NaN (onnxruntime's x86 kernel gives 0 for every NaN, numpy's max keeps every NaN)."""
    return branch_free.relu(x, _alloc(x.shape, x.dtype) if wants_buffer(_alloc, x) else None)


@op("LeakyRelu", versions=(1, 6, 16))
def leaky_relu(x, *, alpha=0.009999999776482582, consumed_inputs=None):
    return float_apply(lambda v: branch_free.leaky_relu(v, alpha), x, "LeakyRelu")


def _prelu_slope(x: np.ndarray, slope: np.ndarray, legacy: bool) -> np.ndarray:
    if legacy and slope.ndim == 1 and slope.size > 1 and x.ndim > 2 and slope.shape[0] == x.shape[1]:
        # PRelu-1/6: a 1-D slope holds one value per channel (axis 1)
        return slope.reshape((-1,) + (1,) * (x.ndim - 2))
    return slope


def _prelu(x, slope, legacy):
    slope = _prelu_slope(x, slope, legacy)
    dt = x.dtype
    if dt.kind in "iu":
        return as_array(np.where(x < 0, x * slope, x).astype(dt, copy=False))

    def compute(v):
        s = slope.astype(v.dtype, copy=False)
        return np.where(v < 0, v * s, v)

    return float_apply(compute, x, "PRelu")


@op("PRelu", versions=(1, 6))
def prelu_legacy(x, slope, *, consumed_inputs=None):
    return _prelu(x, slope, legacy=True)


@op("PRelu", versions=(7, 9, 16))
def prelu(x, slope):
    return _prelu(x, slope, legacy=False)


def _elu(v: np.ndarray, alpha: float) -> np.ndarray:
    neg = np.minimum(v, _c(v, 0))  # expm1 of the negative part only: no overflow
    np.expm1(neg, out=neg)
    neg *= _c(v, alpha)
    return np.where(v > 0, v, neg)


@op("Elu", versions=(1, 6, 22))
def elu(x, *, alpha=1.0, consumed_inputs=None):
    return float_apply(lambda v: _elu(v, alpha), x, "Elu")


def _selu(x, alpha, gamma):
    def compute(v):
        out = _elu(v, alpha)
        out *= _c(v, gamma)
        return out

    return float_apply(compute, x, "Selu")


# Attribute defaults are the float32 values the schemas store (what onnxruntime uses).
@op("Selu", versions=1)
def selu_1(x, *, alpha=1.673200011253357, gamma=1.0506999492645264, consumed_inputs=None):
    return _selu(x, alpha, gamma)


@op("Selu", versions=(6, 22))
def selu(x, *, alpha=1.6732631921768188, gamma=1.0507010221481323):
    return _selu(x, alpha, gamma)


@op("Celu", versions=(12, 28))
def celu(x, *, alpha=1.0):
    def compute(v):
        a = _c(v, alpha)
        neg = np.minimum(v, _c(v, 0))
        neg /= a
        np.expm1(neg, out=neg)
        neg *= a
        return np.maximum(v, _c(v, 0)) + neg

    return float_apply(compute, x, "Celu")


@op("ThresholdedRelu", versions=(10, 22))
def thresholded_relu(x, *, alpha=1.0):
    return float_apply(lambda v: np.where(v > _c(v, alpha), v, _c(v, 0)), x, "ThresholdedRelu")


@op("Shrink", versions=9)
def shrink(x, *, bias=0.0, lambd=0.5):
    dt = x.dtype
    if dt.kind in "iu":
        v = x.astype(np.float64)
        out = np.where(v < -lambd, v + bias, np.where(v > lambd, v - bias, 0.0))
        return as_array(out.astype(dt))

    def compute(v):
        return np.where(v < _c(v, -lambd), v + _c(v, bias), np.where(v > _c(v, lambd), v - _c(v, bias), _c(v, 0)))

    return float_apply(compute, x, "Shrink")


# --------------------------------------------------------------------------- sigmoid family


def _fused(x: np.ndarray, kind: int, alloc) -> np.ndarray | None:
    """A float32 activation by the one-pass row kernel (into the plan's buffer when it offers one), or None."""
    return row_kernels.activation(x, None, kind, alloc=alloc) if x.dtype == np.float32 else None


def sigmoid_values(v: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-v)) for float32/float64, into a fresh array."""
    out = np.negative(v)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += _c(v, 1)
    np.reciprocal(out, out=out)
    return out


@op("Sigmoid", versions=(1, 6, 13), inplace={0: 0})
def sigmoid(x, *, consumed_inputs=None, _alloc=None):
    y = _fused(x, row_kernels.SIGMOID, _alloc)
    if y is not None:
        return y
    if (x.dtype == np.float32 or x.dtype == np.float64) and wants_buffer(_alloc, x):
        out = np.negative(x, out=_alloc(x.shape, x.dtype))
        with np.errstate(over="ignore"):
            np.exp(out, out=out)
        out += _c(x, 1)
        return np.reciprocal(out, out=out)
    return float_apply(sigmoid_values, x, "Sigmoid")


def _hard_sigmoid(v: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    out = np.multiply(v, _c(v, alpha))
    out += _c(v, beta)
    return np.clip(out, _c(v, 0), _c(v, 1), out=out)


@op("HardSigmoid", versions=(1, 6, 22))
def hard_sigmoid(x, *, alpha=0.20000000298023224, beta=0.5, consumed_inputs=None):
    return float_apply(lambda v: _hard_sigmoid(v, alpha, beta), x, "HardSigmoid")


@op("HardSwish", versions=(14, 22), inplace={0: 0})
def hard_swish(x, *, _alloc=None):
    y = _fused(x, row_kernels.HARD_SWISH, _alloc)
    if y is not None:
        return y

    def compute(v):
        out = _hard_sigmoid(v, 1.0 / 6.0, 0.5)
        out *= v
        return out

    return float_apply(compute, x, "HardSwish")


@op("Swish", versions=24)
def swish(x, *, alpha=1.0):
    def compute(v):
        out = sigmoid_values(v * _c(v, alpha) if alpha != 1.0 else v)
        out *= v
        return out

    return float_apply(compute, x, "Swish")


@op("Tanh", versions=(1, 6, 13), inplace={0: 0})
def tanh(x, *, consumed_inputs=None, _alloc=None):
    if (x.dtype == np.float32 or x.dtype == np.float64) and wants_buffer(_alloc, x):
        return np.tanh(x, out=_alloc(x.shape, x.dtype))
    return float_apply(np.tanh, x, "Tanh")


def _softplus(v: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # nan inputs
        return np.logaddexp(v, _c(v, 0))  # log(1 + exp(v)) without overflow


@op("Softplus", versions=(1, 22))
def softplus(x):
    return float_apply(_softplus, x, "Softplus")


@op("Softsign", versions=(1, 22))
def softsign(x):
    def compute(v):
        den = np.abs(v)
        den += _c(v, 1)
        return np.divide(v, den, out=den)

    return float_apply(compute, x, "Softsign")


@op("Mish", versions=(18, 22))
def mish(x):
    def compute(v):
        out = _softplus(v)
        np.tanh(out, out=out)
        out *= v
        return out

    return float_apply(compute, x, "Mish")


@op("Gelu", versions=20)
def gelu(x, *, approximate="none"):
    if isinstance(approximate, bytes):
        approximate = approximate.decode()
    if approximate not in ("none", "tanh"):
        raise NodeInputError(f"Gelu: approximate must be 'none' or 'tanh', got {approximate!r}")

    def compute(v):
        if approximate == "tanh":
            inner = np.multiply(v, v)
            inner *= _c(v, 0.044715)
            inner += _c(v, 1)
            inner *= v
            inner *= _c(v, _SQRT_2_PI)
            np.tanh(inner, out=inner)
        else:
            inner = erf_values(v * _c(v, _SQRT1_2))
        inner += _c(v, 1)
        inner *= v
        inner *= _c(v, 0.5)
        return inner

    return float_apply(compute, x, "Gelu")


# --------------------------------------------------------------------------- Clip


def _clip(x: np.ndarray, lo, hi) -> np.ndarray:
    """min(max(x, lo), hi): with lo > hi every value becomes hi, as the spec says."""
    if lo is None and hi is None:
        return x.copy()
    if hi is None:
        return as_array(branch_free.at_least(x, lo))
    if lo is None:
        return as_array(branch_free.at_most(x, hi))
    return as_array(np.clip(x, lo, hi))


def _clip_bound(x: np.ndarray, value):
    if value is None:
        return None
    if x.dtype.kind == "f" and abs(value) >= 3.4028234663852886e38:
        return None  # the numeric_limits default: no bound (and no float16 overflow)
    return x.dtype.type(value)


def _clip_attributes(x, lo, hi):
    if not is_float(x.dtype):
        raise NodeInputTypeError(f"Clip: unsupported input type {x.dtype}")
    return _clip(x, _clip_bound(x, lo), _clip_bound(x, hi))


@op("Clip", versions=1)
def clip_1(x, *, min=None, max=None, consumed_inputs=None):
    return _clip_attributes(x, min, max)


_FLT_MAX = 3.4028234663852886e38


@op("Clip", versions=6)
def clip_6(x, *, min=-_FLT_MAX, max=_FLT_MAX):
    return _clip_attributes(x, min, max)


def _bound_input(x: np.ndarray, bound):
    if bound is None or bound.size == 0:
        return None
    if bound.size != 1:
        raise NodeInputError(f"Clip: min/max must be scalars, got shape {bound.shape}")
    return bound.reshape(()).astype(x.dtype, copy=False)


@op("Clip", versions=(11, 12, 13))
def clip(x, min=None, max=None):
    return _clip(x, _bound_input(x, min), _bound_input(x, max))


# --------------------------------------------------------------------------- Softmax family


def softmax_values(v: np.ndarray, axis: int, out: np.ndarray | None = None) -> np.ndarray:
    """Softmax of a float32/float64 tensor along ``axis``, into ``out`` (may be ``v`` itself) or a fresh array."""
    if v.size == 0:
        return v.copy()
    with np.errstate(invalid="ignore"):  # rows of -inf give nan, as in onnxruntime
        out = np.subtract(v, np.maximum.reduce(v, axis=axis, keepdims=True), out=out)
        np.exp(out, out=out)
        out /= np.add.reduce(out, axis=axis, keepdims=True)
    return out


def log_softmax_values(v: np.ndarray, axis: int) -> np.ndarray:
    if v.size == 0:
        return v.copy()
    out = np.subtract(v, np.maximum.reduce(v, axis=axis, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        out -= np.log(np.add.reduce(np.exp(out), axis=axis, keepdims=True))
    return out


def hardmax_values(v: np.ndarray, axis: int) -> np.ndarray:
    out = np.zeros_like(v)
    if v.size:
        index = np.expand_dims(np.argmax(v, axis=axis), axis)
        np.put_along_axis(out, index, v.dtype.type(1), axis=axis)
    return out


def _along_axis(name: str, compute, x: np.ndarray, axis: int) -> np.ndarray:
    """opset 13+: the function along one axis."""
    axis = normalize_axis(axis, x.ndim)
    return float_apply(lambda v: compute(v, axis), x, name)


def _coerced_2d(name: str, compute, x: np.ndarray, axis: int) -> np.ndarray:
    """opset < 13: x coerced to [prod(shape[:axis]), prod(shape[axis:])], rows normalized."""
    axis = normalize_axis(axis, x.ndim) if x.ndim else 0
    rows = math.prod(x.shape[:axis])
    cols = math.prod(x.shape[axis:])
    flat = x.reshape(rows, cols)
    return float_apply(lambda v: compute(v, 1), flat, name).reshape(x.shape)


@op("Softmax", versions=(1, 11))
def softmax_legacy(x, *, axis=1):
    return _coerced_2d("Softmax", softmax_values, x, axis)


@op("Softmax", versions=13, inplace={0: 0})
def softmax(x, *, axis=-1, _alloc=None):
    if x.dtype == np.float32 and x.size and x.ndim and normalize_axis(axis, x.ndim) == x.ndim - 1:
        # the last axis (attention's scores): one compiled pass a row instead of numpy's five
        out = _alloc(x.shape, x.dtype) if wants_buffer(_alloc, x) else np.empty_like(x, order="C")
        if out is not x:
            np.copyto(out, x)
        if row_kernels.softmax_in_place(out):
            return out
        return softmax_values(out, x.ndim - 1, out)
    if (x.dtype == np.float32 or x.dtype == np.float64) and x.size and wants_buffer(_alloc, x):
        return softmax_values(x, normalize_axis(axis, x.ndim), _alloc(x.shape, x.dtype))
    if x.dtype == np.float16:  # float16 arithmetic throughout, as the spec's function body computes it
        return softmax_values(x, normalize_axis(axis, x.ndim))
    return _along_axis("Softmax", softmax_values, x, axis)


@op("LogSoftmax", versions=(1, 11))
def log_softmax_legacy(x, *, axis=1):
    return _coerced_2d("LogSoftmax", log_softmax_values, x, axis)


@op("LogSoftmax", versions=13)
def log_softmax(x, *, axis=-1):
    return _along_axis("LogSoftmax", log_softmax_values, x, axis)


@op("Hardmax", versions=(1, 11))
def hardmax_legacy(x, *, axis=1):
    return _coerced_2d("Hardmax", hardmax_values, x, axis)


@op("Hardmax", versions=13)
def hardmax(x, *, axis=-1):
    return _along_axis("Hardmax", hardmax_values, x, axis)
