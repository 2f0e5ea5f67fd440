"""Normalization kernels: BatchNormalization, InstanceNormalization, LayerNormalization,
GroupNormalization, RMSNormalization, LRN, MeanVarianceNormalization, LpNormalization.

Statistics are computed in float32 (float64 for float64 inputs; float16/bfloat16
are upcast), and results are cast back to the input type once at the end.
"""

from __future__ import annotations

import math

import numpy as np

from ....framework.thread_pool import current_pool
from .. import row_kernels
from .._helpers import normalize_axis
from ..kernel_table import op
from ....errors import NodeInputError


_F32 = np.dtype(np.float32)


def _ct(dtype) -> np.dtype:
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _as(x, ct):
    x = np.asarray(x)
    return x if x.dtype == ct else x.astype(ct)


def _stash_dtype(stash_type: int, x_dtype) -> np.dtype:
    """Computation dtype of stage one for a ``stash_type`` (a TensorProto data type)."""
    if np.dtype(x_dtype) == np.float64 or stash_type == 11:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


# --------------------------------------------------------------------------- BatchNormalization


def _channel_param(p, x, ct, spatial=True):
    """Shape a per-channel parameter (or, non-spatial, per-activation) to broadcast against x."""
    p = _as(p, ct)
    if x.ndim < 2:
        return p
    C = x.shape[1]
    if p.size == C and (spatial or p.ndim == 1 and x.ndim == 2):
        return p.reshape((1, C) + (1,) * (x.ndim - 2))
    if p.size == int(np.prod(x.shape[1:])):
        return p.reshape((1,) + x.shape[1:])
    raise NodeInputError(f"BatchNormalization parameter of shape {p.shape} does not fit input {x.shape}")


def _bn_inference(x, scale, b, mean, var, epsilon, spatial=True):
    ct = _ct(x.dtype)
    xc = _as(x, ct)
    sc = _channel_param(scale, x, ct, spatial)
    mu = _channel_param(mean, x, ct, spatial)
    va = _channel_param(var, x, ct, spatial)
    bb = _channel_param(b, x, ct, spatial)
    a = sc / np.sqrt(va + ct.type(epsilon))
    shift = bb - mu * a
    y = xc * a
    y += shift
    return y if y.dtype == x.dtype else y.astype(x.dtype)


def _bn_training(x, scale, b, mean, var, epsilon, momentum, spatial=True):
    """(Y, running_mean, running_var, batch_mean, batch_var) of a training-mode BatchNormalization."""
    ct = _ct(x.dtype)
    xc = _as(x, ct)
    axes = (0,) + tuple(range(2, x.ndim)) if spatial else (0,)
    cur_mean = xc.mean(axis=axes, keepdims=True)
    d = xc - cur_mean
    cur_var = np.mean(d * d, axis=axes, keepdims=True)
    sc = _channel_param(scale, x, ct, spatial)
    bb = _channel_param(b, x, ct, spatial)
    y = d * (sc / np.sqrt(cur_var + ct.type(epsilon))) + bb
    y = y if y.dtype == x.dtype else y.astype(x.dtype)
    mean_arr, var_arr = np.asarray(mean), np.asarray(var)
    cm = cur_mean.reshape(mean_arr.shape)
    cv = cur_var.reshape(var_arr.shape)
    m = ct.type(momentum)
    run_mean = (_as(mean_arr, ct) * m + cm * (1 - m)).astype(mean_arr.dtype)
    run_var = (_as(var_arr, ct) * m + cv * (1 - m)).astype(var_arr.dtype)
    return y, run_mean, run_var, cm.astype(mean_arr.dtype), cv.astype(var_arr.dtype)


def _bn_legacy(x, scale, b, mean, var, epsilon, momentum, spatial, training, n_out):
    if training and n_out > 1:
        outs = _bn_training(x, scale, b, mean, var, epsilon, momentum, bool(spatial))
        return outs[:n_out]
    y = _bn_inference(x, scale, b, mean, var, epsilon, bool(spatial))
    return (y,) + tuple(np.asarray(t) for t in (mean, var, mean, var))[: n_out - 1]


@op("BatchNormalization", versions=1, multi_output=True)
def batch_norm_1(x, scale, b, mean, var, *, consumed_inputs=None, epsilon=1e-5, is_test=0, momentum=0.9, spatial=1, _num_outputs=1):
    return _bn_legacy(x, scale, b, mean, var, epsilon, momentum, spatial, not is_test, _num_outputs)


@op("BatchNormalization", versions=6, multi_output=True)
def batch_norm_6(x, scale, b, mean, var, *, epsilon=1e-5, is_test=0, momentum=0.9, spatial=1, _num_outputs=1):
    return _bn_legacy(x, scale, b, mean, var, epsilon, momentum, spatial, not is_test, _num_outputs)


@op("BatchNormalization", versions=7, multi_output=True)
def batch_norm_7(x, scale, b, mean, var, *, epsilon=1e-5, momentum=0.9, spatial=1, _num_outputs=1):
    return _bn_legacy(x, scale, b, mean, var, epsilon, momentum, spatial, True, _num_outputs)


@op("BatchNormalization", versions=9, multi_output=True)
def batch_norm_9(x, scale, b, mean, var, *, epsilon=1e-5, momentum=0.9, _num_outputs=1):
    return _bn_legacy(x, scale, b, mean, var, epsilon, momentum, 1, True, _num_outputs)


@op("BatchNormalization", versions=(14, 15), multi_output=True)
def batch_norm(x, scale, b, input_mean, input_var, *, epsilon=1e-5, momentum=0.9, training_mode=0, _num_outputs=1):
    if training_mode:
        y, run_mean, run_var, _, _ = _bn_training(x, scale, b, input_mean, input_var, epsilon, momentum)
        return (y, run_mean, run_var)[:_num_outputs]
    if _num_outputs > 1:
        raise NodeInputError("BatchNormalization: extra outputs are only valid with training_mode=1")
    return (_bn_inference(x, scale, b, input_mean, input_var, epsilon),)


# --------------------------------------------------------------------------- Instance / Group


def _normalize_groups(xc, n_groups, epsilon):
    """Normalize xc (N, C, ...) per (n, group) over the group's channels and the spatial axes."""
    N = xc.shape[0]
    g = xc.reshape(N, n_groups, -1)
    mean = g.mean(axis=2, keepdims=True)
    d = g - mean
    var = np.einsum("ngk,ngk->ng", d, d)[..., None] / d.shape[2] if d.shape[2] else mean
    d *= 1.0 / np.sqrt(var + xc.dtype.type(epsilon))
    return d.reshape(xc.shape)


def _channel_affine(y, scale, bias, ct):
    shape = (1, -1) + (1,) * (y.ndim - 2)
    y *= _as(scale, ct).reshape(shape)
    y += _as(bias, ct).reshape(shape)
    return y


@op("InstanceNormalization", versions=1)
def instance_norm_1(x, scale, b, *, consumed_inputs=None, epsilon=1e-5):
    return instance_norm(x, scale, b, epsilon=epsilon)


@op("InstanceNormalization", versions=(6, 22))
def instance_norm(x, scale, b, *, epsilon=1e-5):
    if x.ndim < 3:
        raise NodeInputError(f"InstanceNormalization input must have rank >= 3, got shape {x.shape}")
    ct = _ct(x.dtype)
    y = _normalize_groups(_as(x, ct), x.shape[1], epsilon)
    y = _channel_affine(y, scale, b, ct)
    return y if y.dtype == x.dtype else y.astype(x.dtype)


@op("GroupNormalization", versions=18)
def group_norm_18(x, scale, bias, *, epsilon=1e-5, num_groups=None):
    # scale and bias are per group in this (deprecated) version
    if num_groups is None:
        raise NodeInputError("num_groups is required")
    ct = _ct(x.dtype)
    C = x.shape[1]
    if C % num_groups:
        raise NodeInputError(f"channels {C} are not divisible by num_groups {num_groups}")
    y = _normalize_groups(_as(x, ct), int(num_groups), epsilon)
    rep = C // num_groups
    y = _channel_affine(y, np.repeat(_as(scale, ct).reshape(-1), rep), np.repeat(_as(bias, ct).reshape(-1), rep), ct)
    return y if y.dtype == x.dtype else y.astype(x.dtype)


@op("GroupNormalization", versions=21)
def group_norm(x, scale, bias, *, epsilon=1e-5, num_groups=None, stash_type=1):
    if num_groups is None:
        raise NodeInputError("num_groups is required")
    C = x.shape[1]
    if C % num_groups:
        raise NodeInputError(f"channels {C} are not divisible by num_groups {num_groups}")
    st = _stash_dtype(stash_type, x.dtype)
    y = _normalize_groups(_as(x, st), int(num_groups), epsilon)
    if y.dtype != x.dtype:
        y = y.astype(x.dtype)
    ct = _ct(x.dtype)
    y = _channel_affine(_as(y, ct), scale, bias, ct)
    return y if y.dtype == x.dtype else y.astype(x.dtype)


# --------------------------------------------------------------------------- Layer / RMS


# Splitting rows across threads only pays off for large tensors (each numpy call
# must run long enough to amortize the GIL handoffs).
_LN_PARALLEL_MIN = 1 << 21


def _layer_norm_rows(x2, scale, b, epsilon, y, mean_out, inv_out, r0, r1):
    """Normalize rows [r0, r1) of the 2-D ``x2`` into ``y`` (float32/64 arithmetic)."""
    st = x2.dtype
    inner = x2.shape[1]
    xs = x2[r0:r1]
    mean = np.matmul(xs, np.ones(inner, dtype=st)).reshape(-1, 1)  # BLAS row sums
    mean *= st.type(1.0 / inner)
    d = np.subtract(xs, mean, out=y[r0:r1]) if y.dtype == st else xs - mean
    var = np.einsum("ij,ij->i", d, d).reshape(-1, 1)
    var *= st.type(1.0 / inner)
    var += st.type(epsilon)
    inv = np.sqrt(var)
    np.reciprocal(inv, out=inv)
    d *= inv
    if d is not y[r0:r1] and not np.shares_memory(d, y):
        d = d.astype(y.dtype)
    d *= scale
    if b is not None:
        d += b
    if not np.shares_memory(d, y):
        y[r0:r1] = d
    mean_out[r0:r1] = mean
    inv_out[r0:r1] = inv


def _layer_norm_numpy(x2, sc, bb, epsilon, ct, shape):
    """LayerNorm of the rows of ``x2`` (outer, inner) by numpy: (y, mean, inv_std); y has ``shape``
    when scale or bias broadcast over the outer axes too."""
    outer, inner = x2.shape
    st = x2.dtype
    y = np.empty((outer, inner), dtype=ct)
    mean = np.empty((outer, 1), dtype=st)
    inv = np.empty((outer, 1), dtype=st)
    if inner == 0:
        mean[:] = 0
        inv[:] = 1 / np.sqrt(st.type(epsilon))
    elif sc.ndim <= 1 and (bb is None or bb.ndim <= 1):
        if outer * inner >= _LN_PARALLEL_MIN:
            current_pool().run_chunks(lambda r0, r1: _layer_norm_rows(x2, sc, bb, epsilon, y, mean, inv, r0, r1), outer, outer * inner)
        else:
            _layer_norm_rows(x2, sc, bb, epsilon, y, mean, inv, 0, outer)
    else:  # scale/bias broadcasting over the outer axes too
        _layer_norm_rows(x2, np.ones(1, ct), None, epsilon, y, mean, inv, 0, outer)
        y = y.reshape(shape) * sc
        if bb is not None:
            y = y + bb
    return y, mean, inv


@op("LayerNormalization", versions=17, multi_output=True)
def layer_norm(x, scale, b=None, *, axis=-1, epsilon=1e-5, stash_type=1, _num_outputs=1):
    rank = x.ndim
    if _num_outputs == 1 and stash_type == 1 and x.dtype == _F32 and rank and axis in (-1, rank - 1):
        y = row_kernels.layer_norm_last_axis(x, scale, b, epsilon)  # (the common case, with the least set-up)
        if y is not None:
            return (y,)
    axis = normalize_axis(axis, rank)
    st = _stash_dtype(stash_type, x.dtype)
    ct = _ct(x.dtype)
    outer = math.prod(x.shape[:axis])
    inner = math.prod(x.shape[axis:])
    x2 = _as(x, st).reshape(outer, inner)
    sc = _as(scale, ct)
    bb = None if b is None else _as(b, ct)
    if sc.ndim > 1 or (bb is not None and bb.ndim > 1):
        # scale / bias spanning several normalized axes: flatten them the same way
        norm_shape = x.shape[axis:]
        sc = np.broadcast_to(sc, norm_shape).reshape(inner) if sc.ndim <= len(norm_shape) else sc
        if bb is not None and bb.ndim <= len(norm_shape):
            bb = np.broadcast_to(bb, norm_shape).reshape(inner)
    fused = None
    if st == ct == x.dtype == np.float32 and inner and sc.shape == (inner,) and (bb is None or bb.shape == (inner,)):
        fused = row_kernels.layer_norm(x2, None, None, sc, bb, epsilon, False, keep_total=False)
    if fused is not None:
        y, mean, inv, _ = fused
    else:
        y, mean, inv = _layer_norm_numpy(x2, sc, bb, epsilon, ct, x.shape)
    y = y.reshape(x.shape)
    if y.dtype != x.dtype:
        y = y.astype(x.dtype)
    if _num_outputs == 1:
        return (y,)
    stat_shape = x.shape[:axis] + (1,) * (rank - axis)
    u = np.dtype(np.float32) if stash_type == 1 else st
    if stash_type == 16:
        import ml_dtypes

        u = np.dtype(ml_dtypes.bfloat16)
    outs = (y, mean.reshape(stat_shape).astype(u), inv.reshape(stat_shape).astype(u))
    return outs[:_num_outputs]


def _layer_norm_fast_path(bound, keywords):
    """``kernel_registry``'s fast path of a LayerNormalization node with one output over the last axis in float32
    statistics: the row kernel with its scale and bias prepared once (``row_kernels.prepared_norm_last_axis``)."""
    axis = keywords.get("axis", -1)
    if keywords.get("_num_outputs", 1) != 1 or keywords.get("stash_type", 1) != 1:
        return None
    epsilon = keywords.get("epsilon", 1e-5)
    prepared = row_kernels.ConstantParameters(
        lambda scale, b: row_kernels.prepared_norm_last_axis(scale.shape[-1] if scale.ndim else 0, scale, b, None,
                                                             epsilon, False, False))

    def norm(x, scale, b=None):
        if x.ndim and axis in (-1, x.ndim - 1):
            run = prepared(scale, b)
            done = None if run is None else run(x, None)
            if done is not None:
                return (done[0],)
        return bound(x, scale, b)

    return norm


layer_norm.fast_path = _layer_norm_fast_path


@op("RMSNormalization", versions=23)
def rms_norm(x, scale, *, axis=-1, epsilon=1e-5, stash_type=1):
    rank = x.ndim
    axis = normalize_axis(axis, rank)
    st = _stash_dtype(stash_type, x.dtype)
    outer = math.prod(x.shape[:axis])
    inner = math.prod(x.shape[axis:])
    x2 = _as(x, st).reshape(outer, inner)
    ms = np.einsum("ij,ij->i", x2, x2).reshape(outer, 1)
    ms *= st.type(1.0 / inner) if inner else st.type(0)
    ms += st.type(epsilon)
    inv = np.sqrt(ms)
    np.reciprocal(inv, out=inv)
    y = (x2 * inv).reshape(x.shape)
    if y.dtype != x.dtype:
        y = y.astype(x.dtype)
    out_dtype = np.asarray(scale).dtype
    ct = _ct(out_dtype)
    y = _as(y, ct) * _as(scale, ct)
    return y if y.dtype == out_dtype else y.astype(out_dtype)


# --------------------------------------------------------------------------- LRN / MVN / Lp


@op("LRN", versions=(1, 13))
def lrn(x, *, alpha=1e-4, beta=0.75, bias=1.0, size=None):
    if size is None:
        raise NodeInputError("size is required")
    if x.ndim < 2:
        raise NodeInputError(f"LRN input must have rank >= 2, got shape {x.shape}")
    ct = _ct(x.dtype)
    xc = _as(x, ct)
    sq = xc * xc
    C = x.shape[1]
    lo = (size - 1) // 2
    hi = size - 1 - lo
    # zero-pad the channel axis, then sum the `size` shifted windows
    pad = np.zeros((x.shape[0], C + lo + hi) + x.shape[2:], dtype=ct)
    pad[:, lo : lo + C] = sq
    acc = np.array(pad[:, 0:C], copy=True)
    for t in range(1, size):
        acc += pad[:, t : t + C]
    acc *= ct.type(alpha / size)
    acc += ct.type(bias)
    if beta == 0.75:
        d = np.sqrt(acc)
        acc = d * np.sqrt(d)
    else:
        acc = np.power(acc, ct.type(beta))
    y = xc / acc
    return y if y.dtype == x.dtype else y.astype(x.dtype)


@op("MeanVarianceNormalization", versions=(9, 13))
def mean_variance_norm(x, *, axes=None):
    axes = tuple(normalize_axis(a, x.ndim) for a in (axes if axes is not None else [0, 2, 3]))
    ct = _ct(x.dtype)
    xc = _as(x, ct)
    mean = xc.mean(axis=axes, keepdims=True)
    d = xc - mean
    var = np.mean(d * d, axis=axes, keepdims=True)
    d /= np.sqrt(var) + ct.type(1e-9)
    return d if d.dtype == x.dtype else d.astype(x.dtype)


@op("LpNormalization", versions=(1, 22))
def lp_norm(x, *, axis=-1, p=2):
    axis = normalize_axis(axis, x.ndim)
    ct = _ct(x.dtype)
    xc = _as(x, ct)
    if p == 1:
        norm = np.sum(np.abs(xc), axis=axis, keepdims=True)
    elif p == 2:
        norm = np.sqrt(np.sum(xc * xc, axis=axis, keepdims=True))
    else:
        raise NodeInputError(f"LpNormalization supports p = 1 or 2, got {p}")
    y = np.zeros_like(xc)
    np.divide(xc, norm, out=y, where=np.broadcast_to(norm != 0, xc.shape))
    return y if y.dtype == x.dtype else y.astype(x.dtype)
