"""Spatial-transformer kernels: GridSample (2-D and N-D) and AffineGrid.

GridSample follows the ONNX specification (and PyTorch's ``grid_sample``): grid
values are denormalised per axis, nearest rounds half to even, the ``border`` and
``reflection`` padding modes first move an out-of-range coordinate back into the
image (except cubic with ``border``, which, as in onnxruntime and PyTorch, only
clamps each tap), then each interpolation tap is resolved with the padding mode
(zeros: zero outside, border: clamp, reflection: reflect). Interpolation is separable, so
every output point is a weighted sum over the tensor product of each axis' taps
(1 for nearest, 2 for linear, 4 for cubic); each tap combination is one
vectorised gather over the whole (N, C, points) output.

DeformConv lives with the other convolutions in ``conv.py``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .._helpers import as_int_list
from ..kernel_table import op
from ....errors import NodeInputError

_MODE_ALIASES = {
    "bilinear": "linear",
    "linear": "linear",
    "nearest": "nearest",
    "bicubic": "cubic",
    "cubic": "cubic",
}
_CUBIC_ALPHA = -0.75


def _value_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype interpolation arithmetic runs in for input values of ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        return dtype
    if dtype == np.float64 or (dtype.kind in "iu" and dtype.itemsize >= 4):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def _as_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _reflect(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect coordinates by the borders ``lo``/``hi`` until they lie in [lo, hi]."""
    rng = hi - lo
    if rng <= 0:
        return np.full_like(v, lo)
    below = v < lo
    above = v > hi
    dx = np.where(below, lo - v, np.where(above, v - hi, 0))
    n = np.floor(dx / rng)
    r = dx - n * rng
    even = np.mod(n, 2) == 0
    from_lo = lo + r
    from_hi = hi - r
    return np.where(below, np.where(even, from_lo, from_hi), np.where(above, np.where(even, from_hi, from_lo), v))


def _cubic_coeffs(t: np.ndarray) -> list[np.ndarray]:
    """Keys cubic convolution weights (alpha -0.75) of the taps at -1, 0, 1, 2 for fraction ``t``."""
    a = _CUBIC_ALPHA
    t1 = t + 1
    u = 1 - t
    u1 = 2 - t
    return [
        ((a * t1 - 5 * a) * t1 + 8 * a) * t1 - 4 * a,
        ((a + 2) * t - (a + 3)) * t * t + 1,
        ((a + 2) * u - (a + 3)) * u * u + 1,
        ((a * u1 - 5 * a) * u1 + 8 * a) * u1 - 4 * a,
    ]


def _axis_taps(v, size, mode, padding_mode, lo, hi, wdt):
    """The interpolation taps of one axis: a list of (index, weight or None, valid mask or None)."""
    if mode == "nearest":
        raw = [(v, None)]
    else:
        base = np.floor(v)
        t = v - base
        if mode == "linear":
            raw = [(base, 1 - t), (base + 1, t)]
        else:
            coeffs = _cubic_coeffs(t)
            raw = [(base + (k - 1), coeffs[k]) for k in range(4)]
    taps = []
    for pos, weight in raw:
        valid = None
        if padding_mode == "zeros":
            valid = (pos >= 0) & (pos < size)
            idx = np.where(valid, pos, 0)
        elif padding_mode == "border":
            idx = np.clip(pos, 0, size - 1)
        else:
            idx = np.clip(np.trunc(_reflect(pos, lo, hi)), 0, size - 1)
        idx = idx.astype(np.intp)
        if weight is not None:
            weight = weight.astype(wdt, copy=False)
        taps.append((idx, weight, valid))
    return taps


def grid_sample_nd(x, grid, mode: str, padding_mode: str, align_corners: bool):
    """GridSample of ``x`` (N, C, *spatial) at ``grid`` (N, *out_spatial, r)."""
    mode_name = _as_str(mode)
    if mode_name not in _MODE_ALIASES:
        raise NodeInputError(f"GridSample mode {mode_name!r} is not one of linear/bilinear, nearest, cubic/bicubic")
    mode = _MODE_ALIASES[mode_name]
    padding_mode = _as_str(padding_mode)
    if padding_mode not in ("zeros", "border", "reflection"):
        raise NodeInputError(f"GridSample padding_mode {padding_mode!r} is not one of zeros, border, reflection")
    x = np.asarray(x)
    grid = np.asarray(grid)
    if x.ndim < 3:
        raise NodeInputError(f"GridSample input X must have rank >= 3, got shape {x.shape}")
    r = x.ndim - 2
    if grid.ndim != r + 2 or grid.shape[-1] != r or grid.shape[0] != x.shape[0]:
        raise NodeInputError(f"GridSample grid shape {grid.shape} does not match input shape {x.shape}")
    N, C = x.shape[:2]
    in_sp = x.shape[2:]
    out_sp = grid.shape[1:-1]
    out_shape = (N, C, *out_sp)
    P = math.prod(out_sp)
    if N * C * P == 0:
        return np.zeros(out_shape, dtype=x.dtype)
    if math.prod(in_sp) == 0:
        raise NodeInputError(f"GridSample input X has an empty spatial shape {x.shape}")

    if mode != "nearest" and x.dtype.kind in "OSUb":
        raise NotImplementedError(f"GridSample mode {mode_name!r} does not support {x.dtype} inputs")
    vdt = _value_dtype(x.dtype) if x.dtype.kind not in "OSUb" else np.dtype(np.float32)
    cdt = np.float64 if (grid.dtype == np.float64 or x.dtype == np.float64) else np.float32
    wdt = vdt.type(0).real.dtype if vdt.kind == "c" else vdt
    g = grid.reshape(N, P, r).astype(cdt, copy=False)

    align = bool(align_corners)
    axes_taps = []
    for d in range(r):
        size = in_sp[d]
        n = g[:, :, r - 1 - d]  # grid lists the innermost axis first
        if align:
            v = (n + 1) / 2 * (size - 1)
            lo, hi = 0.0, float(size - 1)
        else:
            v = ((n + 1) * size - 1) / 2
            lo, hi = -0.5, size - 0.5
        if mode == "nearest":
            v = np.rint(v)
        if padding_mode == "reflection" or (padding_mode == "border" and mode != "cubic"):
            # cubic border only clamps each tap, as onnxruntime and PyTorch do
            outside = (v < lo) | (v > hi)
            if outside.any():
                moved = np.clip(v, 0, size - 1) if padding_mode == "border" else _reflect(v, lo, hi)
                v = np.where(outside, moved, v)
        axes_taps.append(_axis_taps(v, size, mode, padding_mode, lo, hi, wdt))

    strides = [math.prod(in_sp[d + 1 :]) for d in range(r)]
    xf = x.reshape(N, C, -1)
    if mode == "nearest":
        idx = sum(taps[0][0] * strides[d] for d, taps in enumerate(axes_taps))
        out = np.empty((N, C, P), dtype=x.dtype)
        for n in range(N):
            out[n] = xf[n].take(idx[n], axis=1)
        if padding_mode == "zeros":
            valid = np.logical_and.reduce([taps[0][2] for taps in axes_taps])
            if not valid.all():
                zero = np.array("" if x.dtype.kind in "OSU" else 0, dtype=x.dtype)
                out = np.where(valid[:, None, :], out, zero)
        return out.reshape(out_shape)

    xv = xf.astype(vdt, copy=False)
    combos = []
    for combo in itertools.product(*axes_taps):
        idx = combo[0][0] * strides[0]
        weight = combo[0][1]
        valid = combo[0][2]
        for d in range(1, r):
            idx = idx + combo[d][0] * strides[d]
            weight = weight * combo[d][1]
            if combo[d][2] is not None:
                valid = combo[d][2] if valid is None else valid & combo[d][2]
        if valid is not None:
            weight = np.where(valid, weight, 0)
        combos.append((idx, weight))
    out = np.zeros((N, C, P), dtype=vdt)
    for n in range(N):
        acc = out[n]
        xn = xv[n]
        for idx, weight in combos:
            vals = xn.take(idx[n], axis=1)  # (C, P) gather, faster than take_along_axis
            vals *= weight[n]
            acc += vals
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        out = np.clip(np.trunc(out), info.min, info.max)
    return out.astype(x.dtype, copy=False).reshape(out_shape)


@op("GridSample", versions=(16,))
def grid_sample_16(x, grid, *, align_corners=0, mode="bilinear", padding_mode="zeros"):
    if np.ndim(x) != 4:
        raise NodeInputError(f"GridSample-16 supports 4-D inputs only, got shape {np.shape(x)}")
    return grid_sample_nd(x, grid, mode, padding_mode, align_corners)


@op("GridSample", versions=(20, 22))
def grid_sample(x, grid, *, align_corners=0, mode="linear", padding_mode="zeros"):
    return grid_sample_nd(x, grid, mode, padding_mode, align_corners)


# --------------------------------------------------------------------------- AffineGrid


def _base_positions(n: int, align_corners: bool, dtype) -> np.ndarray:
    """Normalised positions of ``n`` pixel centres: the corner pixels' centres are at -1 and 1 with
    ``align_corners``, otherwise the image edges are."""
    if align_corners:
        if n == 1:
            return np.ones(1, dtype=dtype)  # onnxruntime (Eigen LinSpaced) gives the end point
        return np.linspace(-1.0, 1.0, n, dtype=dtype)
    return ((np.arange(n, dtype=dtype) * 2 + 1) / n - 1).astype(dtype)


@op("AffineGrid", versions=(20,))
def affine_grid(theta, size, *, align_corners=0):
    dims = as_int_list(size)
    theta = np.asarray(theta)
    if len(dims) not in (4, 5):
        raise NodeInputError(f"AffineGrid size must have 4 (2-D) or 5 (3-D) values, got {dims}")
    r = len(dims) - 2
    N = dims[0]
    if theta.shape != (N, r, r + 1):
        raise NodeInputError(f"AffineGrid theta shape {theta.shape} does not match size {dims} (expected {(N, r, r + 1)})")
    cdt = np.float64 if theta.dtype == np.float64 else np.float32
    spatial = dims[2:]
    axes = [_base_positions(n, bool(align_corners), cdt) for n in spatial]
    # homogeneous positions, innermost axis first: (x, y[, z], 1)
    mesh = np.meshgrid(*axes, indexing="ij")
    pos = np.stack([m.reshape(-1) for m in reversed(mesh)] + [np.ones(math.prod(spatial), dtype=cdt)], axis=1)
    th = theta.astype(cdt, copy=False)
    out = np.matmul(pos[None], np.swapaxes(th, 1, 2))  # (N, P, r)
    return out.reshape(N, *spatial, r).astype(theta.dtype, copy=False)
