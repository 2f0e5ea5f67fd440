"""Kernels that combine, split, pad or resample tensors: Concat, Split, Pad, Resize, Upsample."""

from __future__ import annotations

import math

import numpy as np

from ..kernel_table import op
from .shape_ops import ints
from .._helpers import normalize_axis
from ....errors import NodeInputError
from ....framework import kv_cache


# --------------------------------------------------------------------------- Concat


def _concat(inputs, axis: int, alloc=None) -> np.ndarray:
    plain = _plain_concat(inputs, axis, alloc)
    if plain is not None:
        return plain
    if not inputs:
        raise NodeInputError("Concat: needs at least one input")
    inputs = [x if type(x) is np.ndarray else np.asarray(x) for x in inputs]
    first = inputs[0]
    axis = normalize_axis(int(axis), first.ndim)
    if len(inputs) == 1:
        return first
    if any(x.ndim != first.ndim for x in inputs):
        raise NodeInputError(f"Concat: inputs have different ranks {[x.ndim for x in inputs]}")
    if len(inputs) == 2:  # a past key/value cache with room after it: the new rows are written there
        appended = kv_cache.append_in_place(first, inputs[1], axis)
        if appended is not None:
            return appended
    nonempty = [x for x in inputs if x.shape[axis] != 0]
    if len(nonempty) == 1 and all(x.shape[:axis] + x.shape[axis + 1:] == nonempty[0].shape[:axis] + nonempty[0].shape[axis + 1:] for x in inputs):
        return nonempty[0]
    if alloc is not None and all(x.dtype == first.dtype for x in inputs) and not first.dtype.hasobject:
        return _concatenated(inputs, axis, sum(x.shape[axis] for x in inputs), alloc)
    return np.concatenate(inputs, axis=axis)


@op("Concat", versions=1)
def concat_1(*inputs, axis=1, _alloc=None):
    return _concat(inputs, axis, _alloc)


@op("Concat", versions=(4, 11, 13))
def concat(*inputs, axis, _alloc=None):
    return _concat(inputs, axis, _alloc)


def _plain_concat(inputs, axis: int, alloc) -> np.ndarray | None:
    """The common Concat in one pass of checks (~2 us less than the general path on small tensors): two or more
    arrays of one numeric dtype and rank, none empty along a valid axis, the first no key/value cache's view; None
    for anything else (the general path)."""
    if len(inputs) < 2 or type(inputs[0]) is not np.ndarray:
        return None
    first = inputs[0]
    rank, dtype = first.ndim, first.dtype
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank or dtype.hasobject:
        return None
    total = 0
    for x in inputs:
        if type(x) is not np.ndarray or x.ndim != rank or (x.dtype is not dtype and x.dtype != dtype):
            return None
        size = x.shape[axis]
        if size == 0:
            return None
        total += size
    if len(inputs) == 2 and kv_cache.owner_of(first) is not None:
        return None
    if alloc is None:
        return np.concatenate(inputs, axis=axis)
    return _concatenated(inputs, axis, total, alloc)


def _concatenated(inputs, axis: int, total: int, alloc) -> np.ndarray:
    """``inputs`` (of one dtype, ``total`` long along ``axis`` together) concatenated into a buffer of the plan's (a
    run's repeated Concat of one shape reuses one): no fresh array each run (inputs that differ off the axis fail in
    np.concatenate, as without a buffer)."""
    shape = inputs[0].shape
    return np.concatenate(inputs, axis=axis, out=alloc(shape[:axis] + (total,) + shape[axis + 1:], inputs[0].dtype))


# --------------------------------------------------------------------------- Split


def _split(x: np.ndarray, axis: int, split, n_out: int, uneven_ok: bool) -> tuple:
    if x.ndim == 0:
        raise NodeInputError("Split: the input is a scalar; it has no axis to split")
    axis = normalize_axis(int(axis), x.ndim)
    dim = x.shape[axis]
    if split is not None and np.size(split) > 0:
        sizes = ints(split)
        if sum(sizes) != dim or any(s < 0 for s in sizes):
            raise NodeInputError(f"Split: split sizes {sizes} do not add up to dimension {dim}")
        if len(sizes) != n_out:
            raise NodeInputError(f"Split: {len(sizes)} split sizes for {n_out} outputs")
    else:
        if n_out < 1:
            raise NodeInputError("Split: needs at least one output")
        if dim % n_out == 0:
            sizes = [dim // n_out] * n_out
        elif uneven_ok:
            chunk = -(-dim // n_out)
            sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(n_out)]
        else:
            raise NodeInputError(f"Split: dimension {dim} is not divisible into {n_out} equal parts")
    lead = (slice(None),) * axis
    outs = []
    start = 0
    for s in sizes:
        outs.append(x[lead + (slice(start, start + s),)])
        start += s
    return tuple(outs)


@op("Split", versions=1, multi_output=True)
def split_1(x, split=None, *, axis=0, _num_outputs=1):
    # Split-1 takes the sizes from its optional second input or from the 'split'
    # attribute, which share a name: either binds to ``split``.
    return _split(x, axis, split, _num_outputs, False)


@op("Split", versions=(2, 11), multi_output=True)
def split_2(x, *, axis=0, split=None, _num_outputs=1):
    return _split(x, axis, split, _num_outputs, False)


@op("Split", versions=13, multi_output=True)
def split_13(x, split=None, *, axis=0, _num_outputs=1):
    return _split(x, axis, split, _num_outputs, False)


@op("Split", versions=18, multi_output=True)
def split_18(x, split=None, *, axis=0, num_outputs=None, _num_outputs=1):
    if split is not None and np.size(split) > 0 and num_outputs is not None:
        raise NodeInputError("Split: only one of the 'split' input and 'num_outputs' attribute may be given")
    n = _num_outputs if num_outputs is None else int(num_outputs)
    if num_outputs is not None and n != _num_outputs:
        raise NodeInputError(f"Split: num_outputs={n} but the node has {_num_outputs} outputs")
    return _split(x, axis, split, n, True)


# --------------------------------------------------------------------------- Pad


def _default_pad_value(dtype: np.dtype):
    if dtype == object:
        return ""
    if dtype == np.bool_:
        return False
    return 0


def _pad(data: np.ndarray, pads, mode: str, value, axes=None) -> np.ndarray:
    rank = data.ndim
    pads = ints(pads)
    if axes is None or np.size(axes) == 0:
        axes = list(range(rank))
    else:
        axes = [normalize_axis(a, rank) for a in ints(axes)]
    n = len(axes)
    if len(pads) != 2 * n:
        raise NodeInputError(f"Pad: pads {pads} must have 2 * {n} entries")
    begin = [0] * rank
    end = [0] * rank
    for i, a in enumerate(axes):
        begin[a] = pads[i]
        end[a] = pads[i + n]
    if any(p < 0 for p in begin + end):
        crop = tuple(slice(max(-b, 0), d - max(-e, 0)) for b, e, d in zip(begin, end, data.shape))
        data = data[crop]
        begin = [max(b, 0) for b in begin]
        end = [max(e, 0) for e in end]
    if not any(begin) and not any(end):
        return data
    if mode == "constant":
        shape = tuple(b + d + e for b, d, e in zip(begin, data.shape, end))
        if value is None:
            value = _default_pad_value(data.dtype)
        out = np.full(shape, value, dtype=data.dtype)
        out[tuple(slice(b, b + d) for b, d in zip(begin, data.shape))] = data
        return out
    if mode not in ("reflect", "edge", "wrap"):
        raise NodeInputError(f"Pad: unsupported mode {mode!r}")
    for a in range(rank):
        if (begin[a] or end[a]) and data.shape[a] == 0:
            raise NodeInputError(f"Pad: cannot pad an empty axis in {mode!r} mode")
        if mode == "reflect" and (begin[a] or end[a]) and data.shape[a] < 2:
            raise NodeInputError(f"Pad: reflect mode needs at least 2 elements on axis {a}")
    return np.pad(data, list(zip(begin, end)), mode=mode)


def _scalar_value(value):
    """The constant_value input as a scalar, or None when absent."""
    if value is None or np.size(value) == 0:
        return None
    return np.asarray(value).reshape(-1)[0]


@op("Pad", versions=1)
def pad_1(data, *, paddings, mode="constant", value=0.0):
    return _pad(data, paddings, mode, np.asarray(value).astype(data.dtype) if data.dtype != object else value)


@op("Pad", versions=2)
def pad_2(data, *, pads, mode="constant", value=0.0):
    return _pad(data, pads, mode, np.asarray(value).astype(data.dtype) if data.dtype != object else value)


@op("Pad", versions=(11, 13))
def pad_11(data, pads, constant_value=None, *, mode="constant"):
    return _pad(data, pads, mode, _scalar_value(constant_value))


@op("Pad", versions=(18, 19, 21, 23, 24, 25))
def pad_18(data, pads, constant_value=None, axes=None, *, mode="constant"):
    return _pad(data, pads, mode, _scalar_value(constant_value), axes)


# --------------------------------------------------------------------------- Resize


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    if dtype == np.float64 or dtype in (np.int32, np.int64, np.uint32, np.uint64):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def _original_coords(ctm: str, out_len: int, in_len: int, scale: float, roi_start: float, roi_end: float):
    """Source coordinate of every output position along one axis (float64)."""
    y = np.arange(out_len, dtype=np.float64)
    out_w = scale * in_len  # the (possibly fractional) resized length
    if ctm == "half_pixel":
        return (y + 0.5) / scale - 0.5
    if ctm == "asymmetric":
        return y / scale
    if ctm == "align_corners":
        if out_w == 1:
            return np.zeros(out_len)
        return y * (in_len - 1) / (out_w - 1)
    if ctm == "pytorch_half_pixel":
        if out_w == 1:
            return np.full(out_len, -0.5)
        return (y + 0.5) / scale - 0.5
    if ctm == "half_pixel_symmetric":
        adjustment = out_len / out_w
        offset = in_len / 2 * (1 - adjustment)
        return offset + (y + 0.5) / scale - 0.5
    if ctm == "tf_half_pixel_for_nn":
        return (y + 0.5) / scale
    if ctm == "tf_crop_and_resize":
        if out_w == 1:
            x = np.full(out_len, (roi_end - roi_start) * (in_len - 1) / 2)
        else:
            x = y * (roi_end - roi_start) * (in_len - 1) / (out_w - 1)
        return x + roi_start * (in_len - 1)
    raise NodeInputError(f"Resize: unsupported coordinate_transformation_mode {ctm!r}")


def _nearest_index(x: np.ndarray, nearest_mode: str, downsampling: bool) -> np.ndarray:
    if nearest_mode == "round_prefer_floor":
        r = np.ceil(x - 0.5)
    elif nearest_mode == "round_prefer_ceil":
        r = np.floor(x + 0.5)
    elif nearest_mode == "floor":
        r = np.floor(x)
    elif nearest_mode == "ceil":
        r = np.ceil(x)
    elif nearest_mode == "simple":  # Resize-10 / Upsample
        r = np.ceil(x) if downsampling else np.trunc(x)
    else:
        raise NodeInputError(f"Resize: unsupported nearest_mode {nearest_mode!r}")
    return r.astype(np.int64)


def _cubic_kernel(t: np.ndarray, a: float) -> np.ndarray:
    t = np.abs(t)
    t2 = t * t
    t3 = t2 * t
    return np.where(
        t <= 1,
        (a + 2) * t3 - (a + 3) * t2 + 1,
        np.where(t < 2, a * t3 - 5 * a * t2 + 8 * a * t - 4 * a, 0.0),
    )


def _taps(x: np.ndarray, mode: str, scale: float, antialias: bool, cubic_a: float):
    """(tap indices [out, K] unclamped, weights [out, K]) for linear/cubic resampling."""
    base = np.floor(x)
    ratio = x - base
    exact = ratio == 0
    # prefer the left neighbour for exact positions (ratio in (0, 1])
    base = np.where(exact, base - 1, base)
    ratio = np.where(exact, 1.0, ratio)
    s = min(scale, 1.0) if antialias else 1.0
    if mode == "linear":
        start = int(math.floor(-1 / s) + 1)
        offsets = np.arange(start, 2 - start)
        w = np.clip(1 - np.abs((offsets[None, :] - ratio[:, None]) * s), 0, 1)
    else:
        start = int(math.floor(-2 / s) + 1)
        offsets = np.arange(start, 2 - start)
        w = _cubic_kernel((offsets[None, :] - ratio[:, None]) * s, cubic_a)
    if antialias:
        w = w / w.sum(axis=1, keepdims=True)
    idx = base.astype(np.int64)[:, None] + offsets[None, :]
    return idx, w


def _along(shape_len: int, axis: int, arr: np.ndarray) -> np.ndarray:
    shape = [1] * shape_len
    shape[axis] = arr.shape[0]
    return arr.reshape(shape)


_DENSE_MAX = 128


def _resize_axis(data, axis, out_len, scale, mode, ctm, nearest_mode, cubic_a, exclude_outside,
                 extrapolation_value, antialias, roi_start, roi_end, cdt):
    in_len = data.shape[axis]
    if out_len == 0:
        shape = list(data.shape)
        shape[axis] = 0
        return np.empty(shape, dtype=data.dtype)
    x = _original_coords(ctm, out_len, in_len, scale, roi_start, roi_end)
    outside = None
    if ctm == "tf_crop_and_resize":
        outside = (x < 0) | (x > in_len - 1)
        if not outside.any():
            outside = None
    if mode == "nearest":
        idx = np.clip(_nearest_index(x, nearest_mode, scale < 1), 0, in_len - 1)
        return _extrapolate(np.take(data, idx, axis=axis), axis, outside, extrapolation_value)
    if mode not in ("linear", "cubic"):
        raise NodeInputError(f"Resize: unsupported mode {mode!r}")
    if mode == "linear" and not (antialias and scale < 1):
        base = np.floor(x)
        frac = x - base
        idx = base.astype(np.int64)[:, None] + np.arange(2)[None, :]
        w = np.stack([1 - frac, frac], axis=1)
    else:
        idx, w = _taps(x, mode, scale, bool(antialias) and scale < 1, cubic_a)
    if exclude_outside:
        w = np.where((idx >= 0) & (idx < in_len), w, 0.0)
        tot = w.sum(axis=1, keepdims=True)
        w = w / np.where(tot == 0, 1.0, tot)
    idx = np.clip(idx, 0, in_len - 1)
    nd = data.ndim
    if axis == nd - 1 and in_len <= _DENSE_MAX and data.size and np.isfinite(data).all():
        # gathers along the innermost axis are slow: use a small dense interpolation matrix
        dense = np.zeros((out_len, in_len), dtype=np.float64)
        np.add.at(dense, (np.repeat(np.arange(out_len), idx.shape[1]), idx.reshape(-1)), w.reshape(-1))
        res = data @ dense.T.astype(cdt)
    elif idx.shape[1] == 2 and not exclude_outside:
        # a * (1 - w) + b * w == a + (b - a) * w, computed in place
        a = np.take(data, idx[:, 0], axis=axis)
        res = np.take(data, idx[:, 1], axis=axis)
        res -= a
        res *= _along(nd, axis, w[:, 1].astype(cdt))
        res += a
    else:
        w = w.astype(cdt)
        res = None
        for k in range(idx.shape[1]):
            term = np.take(data, idx[:, k], axis=axis)
            term *= _along(nd, axis, w[:, k])
            if res is None:
                res = term
            else:
                res += term
    return _extrapolate(res, axis, outside, extrapolation_value)


def _extrapolate(res, axis, outside, extrapolation_value):
    if outside is not None:
        res = np.where(_along(res.ndim, axis, outside), np.asarray(extrapolation_value, dtype=res.dtype), res)
    return res


def _finish(res: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if res.dtype == dtype:
        return res
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        # onnxruntime converts the float result with a C cast (truncation)
        return np.clip(res, info.min, info.max).astype(dtype)
    if dtype == np.bool_:
        return res != 0
    return res.astype(dtype)


def _resize(x, roi, scales, sizes, *, mode="nearest", coordinate_transformation_mode="half_pixel",
            nearest_mode="round_prefer_floor", cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0,
            antialias=0, axes=None, keep_aspect_ratio_policy="stretch"):
    rank = x.ndim
    ctm = coordinate_transformation_mode
    axes = list(range(rank)) if axes is None else [normalize_axis(int(a), rank) for a in axes]
    if len(set(axes)) != len(axes):
        raise NodeInputError(f"Resize: repeated axes {axes}")
    scales = None if scales is None or np.size(scales) == 0 else [float(s) for s in np.asarray(scales).reshape(-1)]
    sizes = None if sizes is None or np.size(sizes) == 0 else ints(sizes)
    if scales is not None and sizes is not None:
        raise NodeInputError("Resize: only one of 'scales' and 'sizes' may be given")
    if scales is None and sizes is None:
        raise NodeInputError("Resize: one of 'scales' and 'sizes' must be given")
    n = len(axes)
    full_scales = [1.0] * rank
    out_shape = list(x.shape)
    if scales is not None:
        if len(scales) != n:
            raise NodeInputError(f"Resize: {len(scales)} scales for {n} axes")
        for a, s in zip(axes, scales):
            if s <= 0:
                raise NodeInputError(f"Resize: scales must be positive, got {scales}")
            full_scales[a] = s
            out_shape[a] = int(s * x.shape[a])
    else:
        if len(sizes) != n:
            raise NodeInputError(f"Resize: {len(sizes)} sizes for {n} axes")
        policy = keep_aspect_ratio_policy
        if policy == "stretch":
            for a, sz in zip(axes, sizes):
                out_shape[a] = sz
                full_scales[a] = sz / x.shape[a] if x.shape[a] else 1.0
        elif policy in ("not_larger", "not_smaller"):
            ratios = [sz / x.shape[a] for a, sz in zip(axes, sizes)]
            s = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                full_scales[a] = s
                out_shape[a] = int(s * x.shape[a] + 0.5)
        else:
            raise NodeInputError(f"Resize: unsupported keep_aspect_ratio_policy {policy!r}")
    roi_start = [0.0] * rank
    roi_end = [1.0] * rank
    if ctm == "tf_crop_and_resize":
        if roi is None or np.size(roi) == 0:
            raise NodeInputError("Resize: tf_crop_and_resize needs the 'roi' input")
        rv = [float(v) for v in np.asarray(roi).reshape(-1)]
        if len(rv) != 2 * n:
            raise NodeInputError(f"Resize: roi must have 2 * {n} entries, got {len(rv)}")
        for i, a in enumerate(axes):
            roi_start[a] = rv[i]
            roi_end[a] = rv[n + i]
    if mode not in ("nearest", "linear", "cubic"):
        raise NodeInputError(f"Resize: unsupported mode {mode!r}")
    cdt = _compute_dtype(x.dtype)
    res = x
    converted = mode == "nearest"
    # resize the axes that shrink most first: cheaper
    order = sorted(range(rank), key=lambda a: out_shape[a] / max(x.shape[a], 1))
    for a in order:
        trivial = (out_shape[a] == x.shape[a] and full_scales[a] == 1.0
                   and roi_start[a] == 0.0 and roi_end[a] == 1.0)
        if trivial:
            continue
        if not converted:
            res = res.astype(cdt, copy=False)
            converted = True
        res = _resize_axis(res, a, out_shape[a], full_scales[a], mode, ctm, nearest_mode, float(cubic_coeff_a),
                           exclude_outside, extrapolation_value, antialias, roi_start[a], roi_end[a], cdt)
    return _finish(res, x.dtype)


@op("Resize", versions=10)
def resize_10(x, scales, *, mode="nearest"):
    return _resize(x, None, scales, None, mode=mode, coordinate_transformation_mode="asymmetric",
                   nearest_mode="simple")


@op("Resize", versions=(11, 13))
def resize_11(x, roi=None, scales=None, sizes=None, *, mode="nearest", coordinate_transformation_mode="half_pixel",
              nearest_mode="round_prefer_floor", cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0):
    return _resize(x, roi, scales, sizes, mode=mode, coordinate_transformation_mode=coordinate_transformation_mode,
                   nearest_mode=nearest_mode, cubic_coeff_a=cubic_coeff_a, exclude_outside=exclude_outside,
                   extrapolation_value=extrapolation_value)


@op("Resize", versions=(18, 19))
def resize_18(x, roi=None, scales=None, sizes=None, *, mode="nearest", coordinate_transformation_mode="half_pixel",
              nearest_mode="round_prefer_floor", cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0,
              antialias=0, axes=None, keep_aspect_ratio_policy="stretch"):
    return _resize(x, roi, scales, sizes, mode=mode, coordinate_transformation_mode=coordinate_transformation_mode,
                   nearest_mode=nearest_mode, cubic_coeff_a=cubic_coeff_a, exclude_outside=exclude_outside,
                   extrapolation_value=extrapolation_value, antialias=antialias, axes=axes,
                   keep_aspect_ratio_policy=keep_aspect_ratio_policy)


# --------------------------------------------------------------------------- Upsample (deprecated)


def _upsample(x, scales, mode):
    if mode == "bilinear":
        mode = "linear"
    if mode not in ("nearest", "linear"):
        raise NodeInputError(f"Upsample: unsupported mode {mode!r}")
    scales = [float(s) for s in np.asarray(scales).reshape(-1)]
    if len(scales) != x.ndim:
        raise NodeInputError(f"Upsample: {len(scales)} scales for an input of rank {x.ndim}")
    return _resize(x, None, scales, None, mode=mode, coordinate_transformation_mode="asymmetric",
                   nearest_mode="simple")


@op("Upsample", versions=1)
def upsample_1(x, *, height_scale, width_scale, mode="nearest"):
    if x.ndim != 4:
        raise NodeInputError("Upsample-1: input must be 4-D (NCHW)")
    return _upsample(x, [1.0, 1.0, height_scale, width_scale], mode)


@op("Upsample", versions=7)
def upsample_7(x, *, scales, mode="nearest"):
    return _upsample(x, scales, mode)


@op("Upsample", versions=(9, 10))
def upsample_9(x, scales, *, mode="nearest"):
    return _upsample(x, scales, mode)
