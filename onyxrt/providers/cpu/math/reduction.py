"""Reductions, ArgMax/ArgMin, CumSum/CumProd and TopK (ONNX standard domain).

Reduce* ops take their axes from an attribute up to ReduceSum-11 / other Reduce*-13 and
from an optional second input afterwards (with ``noop_with_empty_axes``). Results keep
the input element type: integer sums stay integer (numpy would widen them), float16 and
bfloat16 accumulate in float32.
"""

from __future__ import annotations

import math

import numpy as np

from .._helpers import ConstantInputs, as_int_list, constant_inputs, normalize_axis, shape_keyed_fast_path
from ..kernel_table import op
from .elementwise import as_array, is_float
from ..nn.pool import plane_means
from ....errors import NodeInputError

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


def _is_low_float(dt: np.dtype) -> bool:
    return is_float(dt) and dt != _F32 and dt != _F64


# --------------------------------------------------------------------------- axes


def _resolve_axes(data: np.ndarray, axes, noop_with_empty_axes: int = 0):
    """numpy ``axis`` for ONNX axes: None = all axes, () = none (identity)."""
    if axes is None or len(axes) == 0:
        return () if noop_with_empty_axes else None
    rank = data.ndim
    return tuple(sorted({normalize_axis(int(a), rank) for a in axes}))


def _axes_input(axes) -> list[int] | None:
    return None if axes is None else np.asarray(axes).reshape(-1).tolist()


# --------------------------------------------------------------------------- computations
# Each takes (data, numpy axis, keepdims) and returns an array of data's type. They call
# ufunc.reduce directly: np.sum/np.max cost a few microseconds more per call.


def _accumulator(dt: np.dtype):
    """dtype numpy should accumulate sums/products of ``dt`` in (None: numpy's own)."""
    if dt.kind in "iub":
        return dt  # numpy would widen small integer sums to int64
    if _is_low_float(dt):
        return _F32
    return None


def _typed(out, dt: np.dtype) -> np.ndarray:
    out = as_array(out)
    return out if out.dtype == dt else out.astype(dt)


def _sum(data, axis, keepdims):
    dt = data.dtype
    return _typed(np.add.reduce(data, axis=axis, dtype=_accumulator(dt), keepdims=keepdims), dt)


def _sum_square(data, axis, keepdims):
    dt = data.dtype
    if _is_low_float(dt):
        data = data.astype(np.float32)
    return _typed(np.add.reduce(np.square(data), axis=axis, dtype=_accumulator(data.dtype), keepdims=keepdims), dt)


def _l1(data, axis, keepdims):
    dt = data.dtype
    return _typed(np.add.reduce(np.abs(data), axis=axis, dtype=_accumulator(dt), keepdims=keepdims), dt)


def _in_float(data: np.ndarray) -> np.ndarray:
    """data in the float type a non-linear reduction computes in."""
    dt = data.dtype
    if dt == _F32 or dt == _F64:
        return data
    if _is_low_float(dt):
        return data.astype(np.float32)
    return data.astype(np.float64)  # integers: computed in double, cast back (truncating)


def _l2(data, axis, keepdims):
    v = _in_float(data)
    out = as_array(np.add.reduce(np.square(v), axis=axis, keepdims=keepdims))
    return _typed(np.sqrt(out, out=out), data.dtype)


def _mean(data, axis, keepdims):
    if (axis is not None and tuple(axis) == (1, 2) and data.ndim == 4 and data.dtype == np.float32
            and data.flags.c_contiguous and data.shape[1] * data.shape[2] > 1 and data.size):
        # a channels-last image's mean over its rows and columns (a global average pool): one product per image with
        # a row of 1 / (H * W), BLAS's, where numpy's reduction over the middle axis of (N, H * W, C) is several
        # times slower (8x256x48: 4.7 vs 29 us)
        n, h, w, c = data.shape
        weights = np.full((1, h * w), 1.0 / (h * w), np.float32)
        total = np.matmul(weights, data.reshape(n, h * w, c))
        return total.reshape((n, 1, 1, c) if keepdims else (n, c))
    if (axis is not None and 0 < len(axis) < data.ndim and data.dtype == np.float32 and data.flags.c_contiguous
            and data.size and sorted(axis) == list(range(data.ndim - len(axis), data.ndim))):
        # the trailing axes (an NCHW image's rows and columns: a global average pool): each row's mean as the pool's
        # (8x48x8x8 over (2, 3): 9 -> ~5 us)
        kept = data.shape[:data.ndim - len(axis)]
        y = plane_means(data.reshape(math.prod(kept), -1))
        return y.reshape(kept + ((1,) * len(axis) if keepdims else ()))
    v = _in_float(data)
    count = v.size if axis is None else math.prod(v.shape[a] for a in axis)
    total = as_array(np.add.reduce(v, axis=axis, keepdims=keepdims))
    if count:
        # (an empty mean is undefined by the spec: it stays 0, the empty sum, as in onnxruntime)
        total /= v.dtype.type(count)
    return _typed(total, data.dtype)


def _prod(data, axis, keepdims):
    dt = data.dtype
    return _typed(np.multiply.reduce(data, axis=axis, dtype=_accumulator(dt), keepdims=keepdims), dt)


def _lowest(dt: np.dtype):
    if dt == np.bool_:
        return False
    if dt.kind in "iu":
        return np.iinfo(dt).min
    return -np.inf


def _highest(dt: np.dtype):
    if dt == np.bool_:
        return True
    if dt.kind in "iu":
        return np.iinfo(dt).max
    return np.inf


def _max(data, axis, keepdims):
    dt = data.dtype
    v = data.astype(np.float32) if _is_low_float(dt) else data
    # ``initial`` makes an empty reduction give -inf / the type's lowest value
    return _typed(np.maximum.reduce(v, axis=axis, keepdims=keepdims, initial=_lowest(v.dtype)), dt)


def _min(data, axis, keepdims):
    dt = data.dtype
    v = data.astype(np.float32) if _is_low_float(dt) else data
    return _typed(np.minimum.reduce(v, axis=axis, keepdims=keepdims, initial=_highest(v.dtype)), dt)


def _log_sum(data, axis, keepdims):
    v = _in_float(data)
    out = as_array(np.add.reduce(v, axis=axis, keepdims=keepdims))
    with np.errstate(divide="ignore", invalid="ignore"):
        np.log(out, out=out)
    return _typed(out, data.dtype)


def _log_sum_exp(data, axis, keepdims):
    v = _in_float(data)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        m = as_array(np.maximum.reduce(v, axis=axis, keepdims=True, initial=-np.inf))
        m[~np.isfinite(m)] = 0  # all -inf (or empty) rows: plain log-sum-exp
        out = as_array(np.add.reduce(np.exp(v - m), axis=axis, keepdims=True))
        np.log(out, out=out)
        out += m
    if not keepdims:
        out = out.reshape(()) if axis is None else np.squeeze(out, axis=axis)
    return _typed(out, data.dtype)


# --------------------------------------------------------------------------- registration


def _axes_prepack(inputs, attributes) -> ConstantInputs | None:
    """Constant axes (or none given): the numpy axes are worked out once per input shape."""
    return constant_inputs(inputs, 1, 0)


def _attribute_axes_fast_path(compute):
    """The ``fast_path`` of a Reduce* kernel taking its axes from an attribute: the numpy axes resolved once per input
    rank (~1.5 us a call otherwise)."""

    def fast_path(bound, keywords):
        axes = keywords.get("axes")
        axes = None if axes is None else tuple(int(a) for a in axes)
        keepdims = bool(keywords.get("keepdims", 1))
        by_rank: dict = {}

        def reduce(data):
            axis = by_rank.get(data.ndim, _UNRESOLVED)
            if axis is _UNRESOLVED:
                axis = by_rank[data.ndim] = _resolve_axes(data, axes)
            return compute(data, axis, keepdims)

        return reduce

    return fast_path


_UNRESOLVED = object()


def _register_reduce(name: str, compute, attr_versions, input_versions):
    def reduce_attr(data, *, axes=None, keepdims=1):
        return compute(data, _resolve_axes(data, axes), bool(keepdims))

    def reduce_input(data, axes=None, *, keepdims=1, noop_with_empty_axes=0, _packed=None):
        return compute(data, _resolve_axes(data, _axes_input(axes), noop_with_empty_axes), bool(keepdims))

    for fn, suffix in ((reduce_attr, "attr"), (reduce_input, "input")):
        fn.__name__ = fn.__qualname__ = f"{name.lower()}_{suffix}"
    op(name, versions=attr_versions)(reduce_attr)
    op(name, versions=input_versions, prepack=_axes_prepack)(reduce_input)
    reduce_attr.fast_path = _attribute_axes_fast_path(compute)
    reduce_input.fast_path = shape_keyed_fast_path(
        lambda data, params, keywords: (
            _resolve_axes(data, _axes_input(params[0] if params else None), keywords.get("noop_with_empty_axes", 0)),
            bool(keywords.get("keepdims", 1))),
        lambda data, derived: compute(data, *derived))
    return reduce_attr, reduce_input


reduce_sum_attr, reduce_sum = _register_reduce("ReduceSum", _sum, (1, 11), (13,))
reduce_mean_attr, reduce_mean = _register_reduce("ReduceMean", _mean, (1, 11, 13), (18,))
reduce_max_attr, reduce_max = _register_reduce("ReduceMax", _max, (1, 11, 12, 13), (18, 20))
reduce_min_attr, reduce_min = _register_reduce("ReduceMin", _min, (1, 11, 12, 13), (18, 20))
reduce_prod_attr, reduce_prod = _register_reduce("ReduceProd", _prod, (1, 11, 13), (18,))
reduce_l1_attr, reduce_l1 = _register_reduce("ReduceL1", _l1, (1, 11, 13), (18,))
reduce_l2_attr, reduce_l2 = _register_reduce("ReduceL2", _l2, (1, 11, 13), (18,))
reduce_log_sum_attr, reduce_log_sum = _register_reduce("ReduceLogSum", _log_sum, (1, 11, 13), (18, 28))
reduce_log_sum_exp_attr, reduce_log_sum_exp = _register_reduce(
    "ReduceLogSumExp", _log_sum_exp, (1, 11, 13), (18, 28)
)
reduce_sum_square_attr, reduce_sum_square = _register_reduce("ReduceSumSquare", _sum_square, (1, 11, 13), (18,))


# --------------------------------------------------------------------------- ArgMax / ArgMin


def _arg_reduce(fn, data, axis, keepdims, select_last_index):
    axis = normalize_axis(axis, data.ndim)
    if _is_low_float(data.dtype):
        data = data.astype(np.float32)
    if data.shape[axis] == 0:
        raise NodeInputError(f"cannot take the arg-extremum over an empty axis {axis} of shape {data.shape}")
    if select_last_index:
        last = data.shape[axis] - 1
        index = last - fn(np.flip(data, axis), axis=axis, keepdims=bool(keepdims))
    else:
        index = fn(data, axis=axis, keepdims=bool(keepdims))
    return as_array(index).astype(np.int64, copy=False)


@op("ArgMax", versions=(1, 11, 12, 13))
def arg_max(data, *, axis=0, keepdims=1, select_last_index=0):
    return _arg_reduce(np.argmax, data, axis, keepdims, select_last_index)


@op("ArgMin", versions=(1, 11, 12, 13))
def arg_min(data, *, axis=0, keepdims=1, select_last_index=0):
    return _arg_reduce(np.argmin, data, axis, keepdims, select_last_index)


# --------------------------------------------------------------------------- CumSum / CumProd


def _scan(fn, identity, x, axis, exclusive, reverse):
    axis_values = as_int_list(axis)
    if len(axis_values) != 1:
        raise NodeInputError(f"axis must hold one value, got {axis_values}")
    rank = x.ndim
    ax = normalize_axis(axis_values[0], rank)
    dt = x.dtype
    v = x.astype(np.float32) if _is_low_float(dt) else x
    if reverse:
        v = np.flip(v, ax)
    if exclusive:
        n = v.shape[ax]
        out = np.empty(v.shape, dtype=v.dtype)
        head = [slice(None)] * rank
        head[ax] = slice(0, 1)
        out[tuple(head)] = identity
        if n > 1:
            body = [slice(None)] * rank
            body[ax] = slice(1, None)
            src = [slice(None)] * rank
            src[ax] = slice(0, n - 1)
            fn(v[tuple(src)], axis=ax, dtype=v.dtype, out=out[tuple(body)])
    else:
        out = fn(v, axis=ax, dtype=v.dtype)
    if reverse:
        out = np.flip(out, ax)
    return out.astype(dt) if reverse or out.dtype != dt else out


@op("CumSum", versions=(11, 14))
def cum_sum(x, axis, *, exclusive=0, reverse=0):
    return _scan(np.cumsum, 0, x, axis, exclusive, reverse)


@op("CumProd", versions=26)
def cum_prod(x, axis, *, exclusive=0, reverse=0):
    return _scan(np.cumprod, 1, x, axis, exclusive, reverse)


# --------------------------------------------------------------------------- TopK


_SIGN32 = np.uint32(0x80000000)


def _order_keys32(v: np.ndarray) -> np.ndarray | None:
    """uint32 keys ordered like the values of v (types of at most 32 bits), or None."""
    dt = v.dtype
    if dt == np.float16 or dt == _F32:
        bits = np.add(v, np.float32(0), dtype=np.float32).view(np.uint32)  # + 0 turns -0 into +0
        flip = (bits >> np.uint32(31)) * np.uint32(0xFFFFFFFF)  # negative: all bits flipped
        return bits ^ (flip | _SIGN32)
    if dt.kind == "i" and dt.itemsize <= 4:
        return v.astype(np.int32).view(np.uint32) ^ _SIGN32
    if dt.kind == "u" and dt.itemsize <= 4:
        return v.astype(np.uint32)
    return None


def _top_k_keyed(keys: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """Indices (along the last axis) of the top k of unique (key, index) pairs, sorted."""
    if largest:
        keys = ~keys
    n = keys.shape[-1]
    combined = keys.astype(np.uint64) << np.uint64(32)
    combined |= np.arange(n, dtype=np.uint64)  # ties: lower index first
    if 0 < k < n and 4 * k < n:
        combined = np.partition(combined, k - 1, axis=-1)[..., :k]
        combined.sort(axis=-1)
    else:
        combined.sort(axis=-1)
        combined = combined[..., :k]
    return (combined & np.uint64(0xFFFFFFFF)).astype(np.int64)


def top_k_values(x: np.ndarray, k: int, axis: int, largest: bool) -> tuple[np.ndarray, np.ndarray]:
    """The k largest (smallest) values along ``axis``, sorted, ties by lower index first."""
    axis = normalize_axis(axis, x.ndim)
    n = x.shape[axis]
    if k < 0 or k > n:
        raise NodeInputError(f"k={k} is out of range for axis {axis} of size {n}")
    v = x.astype(np.float32) if _is_low_float(x.dtype) else x
    keys = _order_keys32(np.moveaxis(v, axis, -1)) if n < 2**32 else None
    if keys is not None:
        index = np.moveaxis(_top_k_keyed(keys, k, largest), -1, axis)
    elif largest:
        # stable ascending sort of the reversed axis, read backwards: descending values,
        # equal values in increasing original index
        order = np.argsort(np.flip(v, axis), axis=axis, kind="stable")
        index = (n - 1) - np.flip(np.take(order, np.arange(n - k, n), axis=axis), axis)
    else:
        order = np.argsort(v, axis=axis, kind="stable")
        index = np.take(order, np.arange(k), axis=axis)
    index = np.ascontiguousarray(index, dtype=np.int64)
    return np.take_along_axis(x, index, axis=axis), index


def _k_input(k) -> int:
    values = as_int_list(k)
    if len(values) != 1:
        raise NodeInputError(f"K must hold one value, got {values}")
    return values[0]


@op("TopK", versions=1, multi_output=True)
def top_k_1(x, *, k, axis=-1):
    return top_k_values(x, int(k), axis, True)


@op("TopK", versions=10, multi_output=True)
def top_k_10(x, k, *, axis=-1):
    return top_k_values(x, _k_input(k), axis, True)


@op("TopK", versions=(11, 24), multi_output=True)
def top_k(x, k, *, axis=-1, largest=1, sorted=1):
    # sorted=0 leaves the order unspecified: the sorted order is one such order
    return top_k_values(x, _k_input(k), axis, bool(largest))
