"""Normalizations onnxruntime's fusions write: com.microsoft SkipLayerNormalization,
SkipSimplifiedLayerNormalization and EmbedLayerNormalization, and onnxruntime's own
standard-domain (opset < 17) LayerNormalization-1 and SimplifiedLayerNormalization-1.

Statistics are computed in float32 (float64 for double inputs) with a two-pass
variance; the optional mean / inverse-std outputs have the input's shape with the
normalized dimensions set to 1, as onnxruntime returns them.
"""

from __future__ import annotations

import math

import numpy as np

from .. import row_kernels
from .._helpers import normalize_axis
from ..kernel_table import op
from ....errors import NodeInputError, NodeInputTypeError

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


def _compute_dtype(*dtypes) -> np.dtype:
    for d in dtypes:
        if d.kind not in "fV":
            raise NodeInputTypeError(f"unsupported element type {d} (a float type is required)")
    return _F64 if all(d == _F64 for d in dtypes) else _F32


def _stat_dtype(stash_type: int, ct: np.dtype) -> np.dtype:
    return _F64 if (int(stash_type) == 11 or ct == _F64) else _F32


def _check_param(p: np.ndarray | None, hidden: int, name: str, op_name: str) -> None:
    if p is not None and p.size != hidden:
        raise NodeInputError(f"{op_name}: {name} must have {hidden} elements, got shape {p.shape}")


def _layer_norm_rows(s: np.ndarray, gamma, beta, epsilon: float, simplified: bool):
    """Normalize the rows (last axis) of the fresh 2-D float array ``s`` without touching it.

    Returns (y, mean, inv_std) with y a new array in s's dtype and the statistics (rows, 1).
    """
    c = s.dtype.type
    hidden = s.shape[-1]
    if simplified:
        mean = None
        ms = np.einsum("ij,ij->i", s, s)[:, None]
        ms /= c(hidden)
        y = s.copy()
    else:
        mean = np.add.reduce(s, axis=-1, keepdims=True)
        mean /= c(hidden)
        y = np.subtract(s, mean)
        ms = np.einsum("ij,ij->i", y, y)[:, None]
        ms /= c(hidden)
    ms += c(epsilon)
    inv = np.sqrt(ms, out=ms)
    np.reciprocal(inv, out=inv)
    y *= inv
    if gamma is not None:
        y *= gamma.reshape(-1).astype(s.dtype, copy=False)
    if beta is not None:
        y += beta.reshape(-1).astype(s.dtype, copy=False)
    return y, mean, inv


# --------------------------------------------------------------------------- SkipLayerNormalization


def _skip_sum(x, skip, bias, op_name):
    if x.ndim not in (2, 3):
        raise NodeInputError(f"{op_name}: input must be 2-D or 3-D, got shape {x.shape}")
    hidden = x.shape[-1]
    if skip.shape[-1] != hidden or np.broadcast_shapes(x.shape, skip.shape) != x.shape:
        raise NodeInputError(f"{op_name}: skip of shape {skip.shape} does not match the input {x.shape}")
    ct = _compute_dtype(x.dtype, skip.dtype)
    s = np.add(x.astype(ct, copy=False), skip.astype(ct, copy=False))
    if bias is not None:
        _check_param(bias, hidden, "bias", op_name)
        s += bias.reshape(-1).astype(ct, copy=False)
    return s


def _vector(p: np.ndarray | None) -> np.ndarray | None:
    return None if p is None else p.reshape(-1)


def _fused_skip_layer_norm(x, skip, gamma, beta, bias, epsilon, simplified):
    """The row kernel's four outputs for float32 tensors of matching shapes, else None."""
    if x.ndim not in (2, 3) or skip.shape != x.shape:  # (types and parameter sizes: row_kernels checks them)
        return None
    hidden = x.shape[-1]
    done = row_kernels.layer_norm(x.reshape(-1, hidden), skip.reshape(-1, hidden), _vector(bias), _vector(gamma),
                                  _vector(beta), epsilon, simplified, keep_total=True)
    if done is None:
        return None
    y, mean, inv, total = done
    stat_shape = x.shape[:-1] + (1,)
    return y.reshape(x.shape), mean.reshape(stat_shape), inv.reshape(stat_shape), total.reshape(x.shape)


def _skip_layer_norm(x, skip, gamma, beta, bias, epsilon, simplified, op_name):
    if x.dtype == _F32 and x.ndim in (2, 3):  # the common case, with the least set-up
        fused = row_kernels.norm_last_axis(x, skip, gamma, beta, bias, epsilon, simplified, keep_total=True)
        if fused is not None:
            return fused
    fused = _fused_skip_layer_norm(x, skip, gamma, beta, bias, epsilon, simplified)
    if fused is not None:
        return fused
    s = _skip_sum(x, skip, bias, op_name)
    hidden = x.shape[-1]
    _check_param(gamma, hidden, "gamma", op_name)
    _check_param(beta, hidden, "beta", op_name)
    rows = s.reshape(-1, hidden)
    y, mean, inv = _layer_norm_rows(rows, gamma, beta, epsilon, simplified)
    stat_shape = x.shape[:-1] + (1,)
    y = y.reshape(x.shape)
    if y.dtype != x.dtype:
        y = y.astype(x.dtype)
    mean = np.zeros(stat_shape, np.float32) if mean is None else mean.reshape(stat_shape).astype(np.float32, copy=False)
    inv = inv.reshape(stat_shape).astype(np.float32, copy=False)
    total = s if s.dtype == x.dtype else s.astype(x.dtype)
    return y, mean, inv, total


@op("SkipLayerNormalization", versions=1, domain="com.microsoft", multi_output=True)
def skip_layer_normalization(x, skip, gamma, beta=None, bias=None, *, epsilon=1e-12):
    return _skip_layer_norm(x, skip, gamma, beta, bias, epsilon, False, "SkipLayerNormalization")


@op("SkipSimplifiedLayerNormalization", versions=1, domain="com.microsoft", multi_output=True)
def skip_simplified_layer_normalization(x, skip, gamma, bias=None, *, epsilon=1e-12):
    return _skip_layer_norm(x, skip, gamma, None, bias, epsilon, True, "SkipSimplifiedLayerNormalization")


def _skip_norm_fast_path(simplified: bool):
    """``kernel_registry``'s fast path of a Skip(Simplified)LayerNormalization node: the row kernel with gamma, beta
    and bias prepared once (``row_kernels.prepared_norm_last_axis``) for float32 2-D or 3-D inputs."""

    def fast_path(bound, keywords):
        epsilon = keywords.get("epsilon", 1e-12)
        prepared = row_kernels.ConstantParameters(
            lambda gamma, beta, bias: row_kernels.prepared_norm_last_axis(
                gamma.shape[-1] if gamma.ndim else 0, _vector_param(gamma), _vector_param(beta), _vector_param(bias),
                epsilon, simplified, True))

        def normalized(x, skip, gamma, beta, bias):  # the row kernel's result, None where it does not run
            run = prepared(gamma, beta, bias) if x.ndim in (2, 3) else None
            return None if run is None else run(x, skip)

        def skip_norm(x, skip, gamma, beta=None, bias=None):
            done = normalized(x, skip, gamma, beta, bias)
            return done if done is not None else bound(x, skip, gamma, beta, bias)

        def skip_simplified_norm(x, skip, gamma, bias=None):
            done = normalized(x, skip, gamma, None, bias)
            return done if done is not None else bound(x, skip, gamma, bias)

        return skip_simplified_norm if simplified else skip_norm

    return fast_path


def _vector_param(p: np.ndarray | None) -> np.ndarray | None:
    """A norm parameter of one value per column as the row kernel takes it (1-D), where it is one."""
    return p.reshape(-1) if p is not None and p.ndim > 1 and p.size == p.shape[-1] else p


skip_layer_normalization.fast_path = _skip_norm_fast_path(False)
skip_simplified_layer_normalization.fast_path = _skip_norm_fast_path(True)


# --------------------------------------------------------------------------- LayerNormalization-1 / SimplifiedLayerNormalization-1


def _layer_norm_axis(x, scale, bias, axis, epsilon, stash_type, simplified, op_name):
    if x.ndim == 0:
        raise NodeInputError(f"{op_name}: input must have rank >= 1")
    if (x.dtype == _F32 and scale.dtype == _F32 and int(stash_type) == 1 and axis in (-1, x.ndim - 1)
            and (bias is None or bias.dtype == _F32)):  # the common case, with the least set-up
        done = row_kernels.norm_last_axis(x, None, scale, bias, None, epsilon, simplified, keep_total=False)
        if done is not None:
            return done[0], None if simplified else done[1], done[2]
    ax = normalize_axis(int(axis), x.ndim)
    inner = math.prod(x.shape[ax:])
    out_dtype = scale.dtype
    ct = _compute_dtype(x.dtype, scale.dtype) if bias is None else _compute_dtype(x.dtype, scale.dtype, bias.dtype)
    st = _stat_dtype(stash_type, ct)
    ct = st if st == _F64 else ct
    norm_shape = x.shape[ax:]
    for p, name in ((scale, "scale"), (bias, "bias")):
        if p is not None and p.shape != norm_shape and np.broadcast_shapes(p.shape, norm_shape) != norm_shape:
            raise NodeInputError(f"{op_name}: {name} of shape {p.shape} does not broadcast to {norm_shape}")
    rows = x.astype(ct, copy=False).reshape(-1, inner) if inner else np.zeros((0, 0), ct)
    g = None if scale is None else _flat_like(scale, norm_shape)
    b = None if bias is None else _flat_like(bias, norm_shape)
    if rows.size == 0:
        y = np.zeros(x.shape, out_dtype)
        stat = np.zeros(x.shape[:ax] + (1,) * (x.ndim - ax), st)
        return y, stat, stat.copy()
    fused = None
    if ct == st == rows.dtype == out_dtype == _F32:  # (g and b are float32 then, one entry per column)
        fused = row_kernels.layer_norm(rows, None, None, g, b, epsilon, simplified, keep_total=False)
    if fused is not None:
        y, mean, inv, _ = fused
        mean = None if simplified else mean
    else:
        y, mean, inv = _layer_norm_rows(rows, g, b, epsilon, simplified)
    stat_shape = x.shape[:ax] + (1,) * (x.ndim - ax)
    y = y.reshape(x.shape)
    if y.dtype != out_dtype:
        y = y.astype(out_dtype)
    inv = inv.reshape(stat_shape).astype(st, copy=False)
    mean = None if mean is None else mean.reshape(stat_shape).astype(st, copy=False)
    return y, mean, inv


def _flat_like(p: np.ndarray, shape: tuple) -> np.ndarray:
    """``p`` broadcast to ``shape``, flattened (no broadcast where it has that shape already)."""
    return (p if p.shape == shape else np.broadcast_to(p, shape)).reshape(-1)


@op("LayerNormalization", versions=1, multi_output=True)
def layer_normalization_1(x, scale, b=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    """onnxruntime's LayerNormalization for models of opset < 17 (ONNX's own starts at 17)."""
    y, mean, inv = _layer_norm_axis(x, scale, b, axis, epsilon, stash_type, False, "LayerNormalization")
    return y, mean, inv


@op("SimplifiedLayerNormalization", versions=1, multi_output=True)
def simplified_layer_normalization(x, scale, *, axis=-1, epsilon=1e-5, stash_type=1):
    """RMS normalization (onnxruntime registers it in the standard domain)."""
    y, _, inv = _layer_norm_axis(x, scale, None, axis, epsilon, stash_type, True, "SimplifiedLayerNormalization")
    return y, inv


# --------------------------------------------------------------------------- EmbedLayerNormalization


def _lookup(table: np.ndarray, ids: np.ndarray, name: str) -> np.ndarray:
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= table.shape[0]):
        raise NodeInputError(f"EmbedLayerNormalization: {name} value out of range [0, {table.shape[0]})")
    return np.take(table, ids, axis=0)


@op("EmbedLayerNormalization", versions=1, domain="com.microsoft", multi_output=True)
def embed_layer_normalization(
    input_ids,
    segment_ids,
    word_embedding,
    position_embedding,
    segment_embedding,
    gamma,
    beta,
    mask=None,
    position_ids=None,
    *,
    epsilon=1e-12,
    mask_index_type=1,
):
    if input_ids.ndim != 2:
        raise NodeInputError(f"EmbedLayerNormalization: input_ids must be 2-D, got shape {input_ids.shape}")
    batch, seq = input_ids.shape
    hidden = word_embedding.shape[-1]
    if position_embedding.shape[-1] != hidden:
        raise NodeInputError("EmbedLayerNormalization: embedding tables have different hidden sizes")
    if (segment_ids is None) != (segment_embedding is None):
        raise NodeInputError("EmbedLayerNormalization: segment_ids and segment_embedding must be given together")
    _check_param(gamma, hidden, "gamma", "EmbedLayerNormalization")
    _check_param(beta, hidden, "beta", "EmbedLayerNormalization")
    ct = _compute_dtype(word_embedding.dtype)
    s = _lookup(word_embedding, input_ids, "input_ids").astype(ct, copy=False)
    if position_ids is None:
        pos = np.arange(seq)
        if seq > position_embedding.shape[0]:
            raise NodeInputError("EmbedLayerNormalization: position value out of range")
        s += position_embedding[:seq].astype(ct, copy=False)
    else:
        pos = np.broadcast_to(position_ids.reshape(-1, seq) if position_ids.size else position_ids, (batch, seq))
        s += _lookup(position_embedding, pos, "position_ids").astype(ct, copy=False)
    if segment_ids is not None:
        if segment_ids.shape != input_ids.shape:
            raise NodeInputError(f"EmbedLayerNormalization: segment_ids shape {segment_ids.shape} != input_ids {input_ids.shape}")
        s += _lookup(segment_embedding, segment_ids, "segment_ids").astype(ct, copy=False)
    y, _, _ = _layer_norm_rows(s.reshape(-1, hidden), gamma, beta, epsilon, False)
    out_dtype = word_embedding.dtype
    y = y.reshape(batch, seq, hidden).astype(out_dtype, copy=False)
    if mask is not None:
        if mask.shape != input_ids.shape:
            raise NodeInputError(f"EmbedLayerNormalization: mask shape {mask.shape} != input_ids {input_ids.shape}")
        mask_index = np.count_nonzero(mask == 1, axis=1).astype(np.int32)
    else:
        mask_index = np.zeros(batch, np.int32)
    return y, mask_index, s.astype(out_dtype, copy=False)
