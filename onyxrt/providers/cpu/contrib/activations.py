"""com.microsoft activations: Gelu, BiasGelu, FastGelu, QuickGelu, SwiGLU, BiasSplitGelu,
GemmFastGelu, BiasSoftmax.

float16/bfloat16 are computed in float32 and rounded back once; float32 stays float32.
"""

from __future__ import annotations

import math

import numpy as np

from .. import row_kernels
from .._helpers import normalize_axis
from ..math.activations import sigmoid_values, softmax_values
from ..math.elementwise import erf_values
from ..kernel_table import op
from ....errors import NodeInputError, NodeInputTypeError

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_SQRT1_2 = 1.0 / math.sqrt(2.0)
_SQRT_2_PI = math.sqrt(2.0 / math.pi)


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    if dtype == _F32 or dtype == _F64:
        return dtype
    if dtype.kind == "f" or dtype.kind == "V":  # float16, bfloat16 & co
        return _F32
    raise NodeInputTypeError(f"unsupported element type {dtype} (a float type is required)")


def _biased(x: np.ndarray, bias, op_name: str) -> np.ndarray:
    """x (+ bias) as a fresh array in the compute type."""
    ct = _compute_dtype(x.dtype)
    if bias is None:
        return np.array(x, dtype=ct, copy=True)
    if bias.dtype != x.dtype:
        raise NodeInputTypeError(f"{op_name}: bias type {bias.dtype} differs from the input type {x.dtype}")
    if bias.ndim == 0 or bias.shape[-1] != x.shape[-1]:
        raise NodeInputError(f"{op_name}: bias of shape {bias.shape} does not match the input's last dimension {x.shape}")
    if np.broadcast_shapes(x.shape, bias.shape) != x.shape:
        raise NodeInputError(f"{op_name}: bias of shape {bias.shape} does not broadcast to {x.shape}")
    return np.add(x.astype(ct, copy=False), bias.astype(ct, copy=False))


def _bias_fits(x: np.ndarray, bias) -> bool:
    """Whether ``bias`` is absent or one vector over x's last axis (other shapes: the numpy path checks them)."""
    return bias is None or (bias.ndim == 1 and x.ndim >= 1 and bias.shape[0] == x.shape[-1] and bias.dtype == x.dtype)


def gelu_inplace(v: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU of a fresh float32/float64 array, in place; returns it."""
    e = erf_values(v * v.dtype.type(_SQRT1_2))
    e += v.dtype.type(1)
    v *= e
    v *= v.dtype.type(0.5)
    return v


def fast_gelu_inplace(v: np.ndarray) -> np.ndarray:
    """tanh-approximated GELU of a fresh float array, in place; returns it."""
    c = v.dtype.type
    t = np.multiply(v, v)
    t *= c(0.044715 * _SQRT_2_PI)
    t += c(_SQRT_2_PI)
    t *= v
    np.tanh(t, out=t)
    t += c(1)
    v *= t
    v *= c(0.5)
    return v


def _finish(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return y if y.dtype == dtype else y.astype(dtype)


def _fused(x, bias, kind: int, alpha: float, alloc) -> np.ndarray | None:
    """The row kernel's result for float32 inputs (the bias already checked), else None."""
    if x.dtype != _F32 or (bias is not None and bias.dtype != _F32):
        return None
    return row_kernels.activation(x, bias, kind, alpha, alloc)


@op("Gelu", versions=1, domain="com.microsoft", inplace={0: 0})
def gelu(x, *, _alloc=None):
    y = _fused(x, None, row_kernels.GELU_ERF, 1.0, _alloc)
    return y if y is not None else _finish(gelu_inplace(_biased(x, None, "Gelu")), x.dtype)


@op("BiasGelu", versions=1, domain="com.microsoft", inplace={0: 0})
def bias_gelu(a, b, *, _alloc=None):
    y = _fused(a, b, row_kernels.GELU_ERF, 1.0, _alloc) if _bias_fits(a, b) else None
    return y if y is not None else _finish(gelu_inplace(_biased(a, b, "BiasGelu")), a.dtype)


@op("FastGelu", versions=1, domain="com.microsoft", inplace={0: 0})
def fast_gelu(x, bias=None, *, _alloc=None):
    y = _fused(x, bias, row_kernels.GELU_TANH, 1.0, _alloc) if _bias_fits(x, bias) else None
    return y if y is not None else _finish(fast_gelu_inplace(_biased(x, bias, "FastGelu")), x.dtype)


@op("QuickGelu", versions=1, domain="com.microsoft", inplace={0: 0})
def quick_gelu(x, *, alpha=1.702, _alloc=None):
    y = _fused(x, None, row_kernels.X_SIGMOID, alpha, _alloc)
    if y is not None:
        return y
    v = _biased(x, None, "QuickGelu")
    s = sigmoid_values(v * v.dtype.type(alpha) if alpha != 1.0 else v)
    v *= s
    return _finish(v, x.dtype)


@op("SwiGLU", versions=1, domain="com.microsoft")
def swiglu(gate, up=None, *, activation_alpha=1.0, activation_beta=0.0, limit=0.0, round_activation=0, _alloc=None):
    """G * Sigmoid(activation_alpha * G) * (L + activation_beta), G = gate clamped above at ``limit`` and L =
    up clamped to [-limit, limit] (no clamps where limit <= 0); without ``up``, gate's last axis holds both
    halves, gate first. Computed in float32 (float64 stays float64); with ``round_activation`` the gated
    half is rounded to the input type before the product (as a QuickGelu node followed by a Mul)."""
    if up is not None and (up.shape != gate.shape or up.dtype != gate.dtype):
        raise NodeInputError(f"SwiGLU: up of shape {up.shape} ({up.dtype}) does not match gate {gate.shape} ({gate.dtype})")
    if up is None and (gate.ndim == 0 or gate.shape[-1] % 2):
        raise NodeInputError(f"SwiGLU: a packed gate needs an even last dimension, got {gate.shape}")
    y = row_kernels.swiglu(gate, up, activation_alpha, activation_beta, limit, _alloc)
    if y is not None:
        return y
    ct = _compute_dtype(gate.dtype)
    if up is None:
        half = gate.shape[-1] // 2
        g, u = gate[..., :half].astype(ct), gate[..., half:].astype(ct)
    else:
        g, u = gate.astype(ct), up.astype(ct)
    if limit > 0:
        g = np.minimum(g, ct.type(limit))
        u = np.clip(u, ct.type(-limit), ct.type(limit))
    with np.errstate(over="ignore"):
        gated = g * sigmoid_values(g * ct.type(activation_alpha))
    if round_activation and gate.dtype != ct:
        gated = gated.astype(gate.dtype).astype(ct)
    return _finish(gated * (u + ct.type(activation_beta)), gate.dtype)


@op("BiasSplitGelu", versions=1, domain="com.microsoft")
def bias_split_gelu(x, bias):
    if x.ndim != 3 or x.shape[-1] % 2:
        raise NodeInputError(f"BiasSplitGelu: input must be (N, S, D) with an even D, got {x.shape}")
    v = _biased(x, bias, "BiasSplitGelu")
    half = x.shape[-1] // 2
    left = v[..., :half]
    right = np.ascontiguousarray(v[..., half:])
    gelu_inplace(right)
    right *= left
    return _finish(right, x.dtype)


@op("GemmFastGelu", versions=1, domain="com.microsoft")
def gemm_fast_gelu(x, w, bias=None):
    ct = _compute_dtype(x.dtype)
    a = x.astype(ct, copy=False)
    b = w.astype(ct, copy=False)
    if a.ndim > 2 and b.ndim == 2 and a.flags.c_contiguous:
        y = np.matmul(a.reshape(-1, a.shape[-1]), b).reshape(a.shape[:-1] + (b.shape[1],))
    else:
        y = np.matmul(a, b)
    y = np.asarray(y)
    if bias is not None:
        y += bias.astype(ct, copy=False)
    return _finish(fast_gelu_inplace(y), x.dtype)


# --------------------------------------------------------------------------- BiasSoftmax


@op("BiasSoftmax", versions=1, domain="com.microsoft")
def bias_softmax(data, bias, *, axis=1, is_inner_broadcast=0):
    """softmax(data + bias) over the dims from ``axis`` on (Softmax-11 style coercion to 2-D).

    As onnxruntime: data is (batch, elements) after coercion, bias holds ``bias.size /
    elements`` rows; with ``is_inner_broadcast`` each bias row serves a run of consecutive
    batch rows (broadcast over the dims just before ``axis``), else the bias rows repeat
    (broadcast over the leading dims).
    """
    ax = normalize_axis(int(axis), data.ndim)
    ct = _compute_dtype(data.dtype)
    batch = math.prod(data.shape[:ax])
    elems = math.prod(data.shape[ax:])
    if elems == 0 or batch == 0:
        return np.zeros(data.shape, data.dtype)
    if bias.size % elems or batch % (bias.size // elems) or bias.size == 0:
        raise NodeInputError(f"BiasSoftmax: bias {bias.shape} cannot broadcast to {data.shape} at axis {ax}")
    nb = bias.size // elems
    b = bias.astype(ct, copy=False).reshape(nb, elems)
    x = data.astype(ct, copy=False)
    if is_inner_broadcast:
        v = np.add(x.reshape(nb, batch // nb, elems), b[:, None, :])
    else:
        v = np.add(x.reshape(batch // nb, nb, elems), b[None, :, :])
    return _finish(softmax_values(v, -1).reshape(data.shape), data.dtype)
