"""Pooling kernels: MaxPool, AveragePool, LpPool, the Global* pools, MaxUnpool, MaxRoiPool.

Windows are reduced one spatial axis at a time (max and sum over a box are
separable), each axis as a short loop over its kernel taps of strided views of the
padded input, so every numpy call is vectorised over the whole tensor (a stride-2
last axis of 4-byte items is first split into its even and odd positions, which
makes every tap a contiguous window). Small 2-D MaxPools (no Indices) run a compiled kernel over
the windows instead, where numba is usable (``_compiled_max_pool``: ``max_pool_rows`` for float32 stride-2 2x2
and 3x3 windows). MaxPool with the Indices output
loops over all kernel taps and tracks the argmax.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable

import numpy as np

from ....framework.thread_pool import current_pool
from ..jit import LazyKernel, optional_module, read_only
from ..kernel_table import op
from .conv_core import auto_pad_name, compute_dtype, copy_stride2, pad_spatial, pairs_ok, spatial_defaults, window_slice
from ....errors import NodeInputError, NodeInputTypeError

# --------------------------------------------------------------------------- geometry


def _trunc_div(a: int, b: int) -> int:
    """C-style integer division (rounds toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def pool_geometry(in_sp, kernel, strides, dilations, pads, auto_pad, ceil_mode):
    """(begin pads, end pads, extra end padding for ceil windows, output spatial shape).

    Follows onnxruntime's pooling geometry: SAME pads are computed from the
    undilated kernel (and may be negative, i.e. crop), ``ceil_mode`` applies to
    every auto_pad mode, and a ceil-mode window that would start in the end
    padding is dropped. Negative pads crop the input.
    """
    nd = len(in_sp)
    auto_pad = auto_pad_name(auto_pad)
    begin, end, out = [], [], []
    if auto_pad == "NOTSET" and pads:
        p = [int(v) for v in pads]
        if len(p) != 2 * nd:
            raise NodeInputError(f"pads {p} must have {2 * nd} values")
    else:
        p = [0] * (2 * nd)
    for i in range(nd):
        k, s, d, n = kernel[i], strides[i], dilations[i], in_sp[i]
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            target = -(-n // s)
            needed = (target - 1) * s + k - n
            b = _trunc_div(needed + 1, 2) if auto_pad == "SAME_LOWER" else _trunc_div(needed, 2)
            e = needed - b
        else:
            b, e = p[i], p[nd + i]
        span = n + b + e - d * (k - 1) - 1
        if ceil_mode:
            o = math.ceil(span / s + 1)
            if o > 1 and (o - 1) * s >= n + b:
                o -= 1  # the last window would start in the end padding
        else:
            o = math.trunc(span / s + 1)
        begin.append(b)
        end.append(e)
        out.append(o)
    extra = [max(0, (out[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - (in_sp[i] + begin[i] + end[i])) for i in range(nd)]
    return begin, end, extra, out


def _kernel_shape(kernel_shape, nd):
    if not kernel_shape:
        raise NodeInputError("kernel_shape is required")
    k = [int(v) for v in kernel_shape]
    if len(k) != nd:
        raise NodeInputError(f"kernel_shape {k} does not match {nd} spatial dimensions")
    if any(v <= 0 for v in k):
        raise NodeInputError(f"kernel_shape {k} must only contain positive values")
    return k


def _reachable_taps(n: int, b: int, k: int, s: int, d: int, o: int) -> tuple[int, int]:
    """(first tap, tap count) of a ``k``-tap axis whose taps can reach the input for some output.

    Taps that only ever read padding contribute nothing to a max or a sum, so a
    kernel far larger than the padded input reduces to the taps near it: the work is
    bounded by the input's extent, not the attribute's. The first kept tap is at most
    one before the first reaching tap, which keeps the trimmed begin pad non-negative.
    """
    first = min(k - 1, max(0, (b - (o - 1) * s) // d))
    last = min(k - 1, (b + n - 1) // d)
    return first, last - first + 1


def _lowest(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        return np.iinfo(dtype).min
    return -np.inf


def _separable_reduce(x, ufunc, init, kernel, strides, dilations, begin, out_sp):
    """Reduce each pooling window of ``x`` with ``ufunc`` (maximum / add), one spatial axis at a time.

    Works on the unpadded input: along each axis every kernel tap updates the
    contiguous range of outputs whose window position for that tap falls inside the
    input, so padding (``begin`` pads, ceil-mode windows) never needs a padded copy;
    outputs no tap reaches keep ``init``.
    """
    cur = x
    nd = len(kernel)
    for i in range(nd):
        ax = 2 + i
        n, O, st, dl, b = cur.shape[ax], out_sp[i], strides[i], dilations[i], begin[i]
        if kernel[i] == 1 and st == 1 and b == 0 and n == O:
            continue
        ranges = []
        for t in range(kernel[i]):
            off = t * dl - b  # input position of output 0 for this tap
            lo = max(0, -(-(-off) // st))
            hi = min(O, (n - 1 - off) // st + 1) if n - 1 - off >= 0 else 0
            if lo < hi:
                ranges.append((lo, hi, off + lo * st))
        shape = list(cur.shape)
        shape[ax] = O
        full = [r for r in ranges if r[0] == 0 and r[1] == O]
        idx = [slice(None)] * cur.ndim
        phases = None
        if st == 2 and ax == cur.ndim - 1 and n > 1 and pairs_ok(cur):
            # stride 2 along the contiguous last axis: split the even and odd positions
            # into two contiguous arrays once (fast pair copies), then read windows of them
            phases = []
            for first in (0, 1):
                ph = np.empty(cur.shape[:-1] + ((n - first + 1) // 2,), dtype=cur.dtype)
                copy_stride2(ph, cur, first, ph.shape[-1])
                phases.append(ph)

        def src(lo, hi, start):
            if phases is not None:
                idx[ax] = slice(start // 2, start // 2 + hi - lo)
                return phases[start % 2][tuple(idx)]
            idx[ax] = slice(start, start + (hi - lo - 1) * st + 1, st)
            return cur[tuple(idx)]

        if full:
            acc = np.array(src(*full[0]), copy=True)
            rest = [r for r in ranges if r is not full[0]]
        else:
            acc = np.full(shape, init, dtype=cur.dtype)
            rest = ranges
        for lo, hi, start in rest:
            idx[ax] = slice(lo, hi)
            dst = acc[tuple(idx)]
            ufunc(dst, src(lo, hi, start), out=dst)
        cur = acc
    if cur is x:
        cur = np.array(cur, copy=True)
    return cur


def _prepare(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode, crop_end=True):
    """(x cropped by negative pads, nd, kernel, strides, dilations, begin pads, end pads, ceil extra, output shape);
    the geometry computed once per input shape and attributes (``_geometry``)."""
    if x.ndim < 3:
        raise NodeInputError(f"pooling input must have rank >= 3, got shape {x.shape}")
    crop, *geometry = _geometry(x.shape, _hashable(kernel_shape), _hashable(strides), _hashable(dilations),
                                _hashable(pads), auto_pad, ceil_mode, crop_end)
    return (x if crop is None else x[crop], *geometry)


def _hashable(values):
    """A list attribute as a tuple (None as it is), for ``_geometry``'s cache."""
    return None if values is None else tuple(values)


@functools.lru_cache(maxsize=1024)
def _geometry(shape, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode, crop_end):
    """``_prepare``'s geometry for an input of ``shape`` (rank 3 or more), with the index cropping negative pads
    (None where none is negative) in place of the cropped input; raises for invalid attributes."""
    nd = len(shape) - 2
    k = _kernel_shape(kernel_shape, nd)
    s, d = spatial_defaults(nd, strides, dilations)
    if auto_pad_name(auto_pad) == "NOTSET" and pads and any(int(p) >= k[i % nd] for i, p in enumerate(pads)):
        # as onnxruntime: a pad as wide as the kernel only adds windows of padding
        raise NodeInputError(f"pads {list(pads)} must be smaller than kernel_shape {k}")
    begin, end, extra, out = pool_geometry(shape[2:], k, s, d, pads, auto_pad, ceil_mode)
    if any(o <= 0 for o in out):
        raise NodeInputError(f"pooling output would be empty for input {shape}")
    if not crop_end:
        # (onnxruntime's max/lp windows ignore a negative end pad)
        end = [max(0, e) for e in end]
    crop = None
    if any(b < 0 for b in begin) or any(e < 0 for e in end):
        # negative pads crop the input
        crop = (slice(None), slice(None)) + tuple(slice(max(0, -b), n - max(0, -e))
                                                  for b, e, n in zip(begin, end, shape[2:]))
        begin = [max(0, b) for b in begin]
        end = [max(0, e) for e in end]
    return crop, nd, *map(tuple, (k, s, d, begin, end, extra, out))  # (tuples: callers share them)


def _trim_kernel(in_sp, k, s, d, begin, out_sp) -> tuple[list[int], list[int]]:
    """Kernel and begin pads with the taps that never reach the input dropped (see _reachable_taps)."""
    trimmed, shifted = [], []
    for n, kk, ss, dd, b, o in zip(in_sp, k, s, d, begin, out_sp):
        first, count = _reachable_taps(n, b, kk, ss, dd, o)
        trimmed.append(count)
        shifted.append(b - first * dd)
    return trimmed, shifted


# --------------------------------------------------------------------------- MaxPool


def _max_pool_planes(x, y, kh, kw, s0, s1, d0, d1, b0, b1, low):
    """``y[n, c, oh, ow]`` = the largest ``x[n, c, oh*s0 + i*d0 - b0, ow*s1 + j*d1 - b1]`` over the taps that fall
    inside the input (``low`` where none does), NaN where any is NaN, as ``np.maximum``: the 2-D windows of
    ``_separable_reduce`` in one pass (its numpy calls per tap are most of a small pool's time). Per output
    row, the kernel rows' maximum first (contiguous: vectorized) into a row padded with ``low``, then the
    window columns' maximum along it (vectorized too for stride 2, the common case)."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    # the padded row: ``b1`` elements of ``low`` before the input's columns, as many as the last window needs after
    width = max(W + b1, (OW - 1) * s1 + (kw - 1) * d1 + 1)
    rows = np.full(width, low)
    for p in range(N * C):
        for oh in range(OH):
            h0 = oh * s0 - b0
            first = True
            for i in range(kh):
                h = h0 + i * d0
                if h < 0 or h >= H:
                    continue
                src = (p * H + h) * W
                if first:
                    for w in range(W):
                        rows[np.uintp(b1 + w)] = xf[np.uintp(src + w)]
                    first = False
                else:
                    for w in range(W):  # (np.maximum: NaN wins; unlike a conditional, it vectorizes)
                        rows[np.uintp(b1 + w)] = np.maximum(xf[np.uintp(src + w)], rows[np.uintp(b1 + w)])
            out = (p * OH + oh) * OW
            if first:  # no kernel row inside the input
                for ow in range(OW):
                    yf[np.uintp(out + ow)] = low
                continue
            if s1 == 2 and d1 == 1:  # (constant strides: LLVM loads the pairs as vectors)
                for ow in range(OW):
                    yf[np.uintp(out + ow)] = rows[np.uintp(2 * ow)]
                for j in range(1, kw):
                    for ow in range(OW):
                        yf[np.uintp(out + ow)] = np.maximum(rows[np.uintp(2 * ow + j)], yf[np.uintp(out + ow)])
                continue
            for ow in range(OW):
                at = ow * s1
                best = rows[np.uintp(at)]
                for j in range(1, kw):
                    best = np.maximum(rows[np.uintp(at + j * d1)], best)
                yf[np.uintp(out + ow)] = best


_MAX_POOL_2D = LazyKernel(_max_pool_planes)
# Window taps up to which the kernel runs: its kernel rows' maximum is vectorized, and its window columns'
# for stride 2, while numpy's whole-tensor calls per tap cost ~5 us each but stream (measured on 2 AVX2
# cores, float32 3x3 stride-2 windows: 24x16x16 inputs 8 vs 57 us, 64x56x56 94 vs 362, 64x112x112 262 vs 631).
_COMPILED_MAX_POOL_TAPS = 1 << 23
_COMPILED_POOL_DTYPES = frozenset(np.dtype(t) for t in (np.float32, np.float64, np.uint8, np.int8))


def _compiled_max_pool(x, k, s, d, begin, out_sp) -> np.ndarray | None:
    """2-D MaxPool (no indices) by the compiled kernel; None where it does not apply (the numpy path runs).

    float32 3x3 / 2 windows with a pixel of begin padding and 2x2 / 2 windows without run on the planes' rows in
    vectors (``max_pool_rows``: measured on 2 Zen 5 cores, 8x24x16x16 3x3/2 23 -> 14 us alone, resnet50's
    64x112x112 in the split mode 112 -> 62 us; a ShuffleNet-like net 0.917 paired); other float32 2x2 and 3x3
    windows in the depthwise convolutions' vector blocks (a block of channels transposed into (pixels, channels), one
    vector maximum per tap: 8x24x16x16 3x3/2 67 -> 27 us alone, resnet50's 64x112x112 3x3/2 279 -> 198 us in a run
    against the planar kernel, whose rows of 16 or 112 columns are short)."""
    if (x.ndim == 4 and x.dtype == np.float32 and len(k) == 2 and k[0] == k[1] and k[0] in _ROW_POOL_WINDOWS
            and tuple(s) == (2, 2) and tuple(d) == (1, 1) and tuple(begin) == (k[0] - 2,) * 2 and x.size):
        rows = optional_module("onyxrt.providers.cpu.nn.max_pool_rows")
        if rows is not None:
            return _row_max_pool(rows, x, k[0], out_sp)
    if (x.ndim == 4 and x.dtype == np.float32 and len(k) == 2 and k[0] == k[1] and k[0] in _BLOCK_POOL_WINDOWS
            and min(begin) >= 0 and x.size):
        blocks = optional_module("onyxrt.providers.cpu.nn.depthwise_channels_last")
        if blocks is not None:
            return blocks.max_pool(x, k[0], s, d, begin, out_sp, current_pool())
    low = x.dtype.type(_lowest(x.dtype)) if x.dtype in _COMPILED_POOL_DTYPES else None
    return _compiled_pool(_MAX_POOL_2D, _COMPILED_POOL_DTYPES, _COMPILED_MAX_POOL_TAPS, x, k, s, d, begin, out_sp,
                          low, low)


_BLOCK_POOL_WINDOWS = (2, 3)  # the float32 windows the vector blocks run (``depthwise_channels_last.POOL_WINDOWS``)
_ROW_POOL_WINDOWS = (2, 3)  # the float32 stride-2 windows ``max_pool_rows`` runs on the planes (``WINDOWS``)


def _row_max_pool(rows, x: np.ndarray, k: int, out_sp) -> np.ndarray:
    """``max_pool_rows``' k x k / 2 MaxPool of float32 (N, C, H, W) ``x`` (begin padding k - 2), its planes shared out
    as one native task over a pool that splits products where the work is large."""
    N, C, H, W = x.shape
    planes = N * C
    y = np.empty((N, C) + tuple(out_sp), np.float32)
    xs = np.ascontiguousarray(x).reshape(planes, H, W)
    ys = y.reshape((planes,) + tuple(out_sp))
    pool = current_pool()
    native_work = _PARALLEL_POOL_WORK_SPINNING if pool.workers_spin else _PARALLEL_POOL_WORK
    if pool.splits_gemms and pool.runs_native_tasks and y.size * k * k >= native_work and planes > 1:
        pool.run_native(rows.max_pool_part.address, rows.task_args(xs, ys, k), min(pool.num_threads, planes))
    else:
        rows.max_pool_planes(xs, ys, k, 0, planes)
    return y


# Window taps from which a pool that splits products (its workers own the cores) shares a pooling kernel's planes
# out: resnet50's 3x3/2 MaxPool of 64x112x112 (1.8M taps) 301 -> ~170 us on 2 Zen 5 cores.
_PARALLEL_POOL_WORK = 1 << 18
# As a native task handed to spinning workers (a hand-off costs ~2.3 us): a ShuffleNet-like net's 3x3/2 MaxPool of
# 8x24x16x16 (110K taps, ~21 us on one Zen 4 core) is split too.
_PARALLEL_POOL_WORK_SPINNING = 1 << 16


def _compiled_pool(lazy: LazyKernel, dtypes, max_taps: int, x, k, s, d, begin, out_sp, last, probe_last
                   ) -> np.ndarray | None:
    """A 2-D pool kernel (``_max_pool_planes``, ``_average_pool_planes``) over ``x``, ``last`` its final argument
    (``probe_last`` that argument's form for compiling); None where it does not apply: not 4-D, a dtype not in
    ``dtypes``, more than ``max_taps`` window taps, no numba."""
    if x.ndim != 4 or x.dtype not in dtypes or x.shape[0] * x.shape[1] * math.prod(out_sp) * k[0] * k[1] > max_taps:
        return None
    probe = np.zeros((0, 0, 0, 0), x.dtype)
    kernel = lazy.compiled_for(x.dtype, read_only(probe), probe.copy(), 1, 1, 1, 1, 1, 1, 0, 0, probe_last)
    if kernel is None:
        return None
    y = np.empty(x.shape[:2] + tuple(out_sp), x.dtype)
    x = read_only(np.ascontiguousarray(x))
    geometry = (k[0], k[1], s[0], s[1], d[0], d[1], begin[0], begin[1], last)
    pool = current_pool()
    planes = x.shape[0] * x.shape[1]
    work = y.size * k[0] * k[1]
    if pool.splits_gemms and work >= _PARALLEL_POOL_WORK and planes > 1:
        # (the pool owns the cores: planes shared out, each part the kernel over its planes' views, without the GIL)
        xs, ys = x.reshape((planes, 1) + x.shape[2:]), y.reshape((planes, 1) + y.shape[2:])
        pool.run_chunks(lambda p0, p1: kernel(xs[p0:p1], ys[p0:p1], *geometry), planes, work, _PARALLEL_POOL_WORK)
    else:
        kernel(x, y, *geometry)
    return y


def _max_pool(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode, storage_order, want_indices):
    x_full = x
    x, nd, k, s, d, begin, end, extra, out_sp = _prepare(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode, False)
    crop = [x_full.shape[2 + i] - x.shape[2 + i] for i in range(nd)]
    dtype = x.dtype
    if dtype.kind == "V":  # bfloat16 & co: compute in float32
        y, ind = _max_pool(x_full.astype(np.float32), kernel_shape, strides, dilations, pads, auto_pad, ceil_mode, storage_order, want_indices)
        return y.astype(dtype), ind
    if dtype.kind not in "fiu":
        raise NodeInputTypeError(f"MaxPool does not support dtype {dtype}")
    low = _lowest(dtype)
    k, begin = _trim_kernel(x.shape[2:], k, s, d, begin, out_sp)
    if not want_indices:
        return _trimmed_max_pool(x, k, s, d, begin, out_sp), None
    # end padding the (trimmed) windows need past the input
    end_pad = [max(0, (out_sp[i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 - begin[i] - x.shape[2 + i]) for i in range(nd)]
    xp = pad_spatial(x, begin, end_pad, value=low)
    N, C = x.shape[:2]
    in_sp = x_full.shape[2:]
    # (a cropped input's begin crop shifts positions back into the full input)
    crop_begin = [0] * nd
    if any(crop):
        g_begin, _, _, _ = pool_geometry(x_full.shape[2:], _kernel_shape(kernel_shape, nd), s, d, pads, auto_pad, ceil_mode)
        crop_begin = [max(0, -b) for b in g_begin]
    best = None
    best_tap = np.zeros((N, C) + tuple(out_sp), dtype=np.int64)
    taps = list(itertools.product(*(range(kk) for kk in k)))
    for t, tap in enumerate(taps):
        v = xp[(slice(None), slice(None)) + tuple(window_slice(tap[i], d[i], s[i], out_sp[i]) for i in range(nd))]
        if best is None:
            best = np.array(v, copy=True)
            continue
        mask = v > best
        np.copyto(best, v, where=mask)
        np.copyto(best_tap, t, where=mask)
    # flat index of the winning element in the (unpadded) input
    tap_arr = np.array(taps, dtype=np.int64).reshape(len(taps), nd)
    if storage_order:
        mult = [math.prod(in_sp[:i]) for i in range(nd)]  # column-major over spatial axes
    else:
        mult = [math.prod(in_sp[i + 1 :]) for i in range(nd)]
    flat = np.zeros((1, 1) + tuple(out_sp), dtype=np.int64)
    for i in range(nd):
        shape = [1] * (nd + 2)
        shape[2 + i] = out_sp[i]
        pos = (np.arange(out_sp[i], dtype=np.int64) * s[i] - begin[i] + crop_begin[i]).reshape(shape)
        coord = pos + tap_arr[:, i][best_tap] * d[i]
        flat = flat + coord * mult[i]
    base = (np.arange(N * C, dtype=np.int64) * math.prod(in_sp)).reshape((N, C) + (1,) * nd)
    return best, flat + base


def _trimmed_max_pool(x: np.ndarray, k, s, d, begin, out_sp) -> np.ndarray:
    """MaxPool (no indices) of ``x`` (not cropped) with windows ``_trim_kernel`` trimmed: compiled where it applies."""
    y = _compiled_max_pool(x, k, s, d, begin, out_sp)
    return _separable_reduce(x, np.maximum, _lowest(x.dtype), k, s, d, begin, out_sp) if y is None else y


def _max_pool_route(x: np.ndarray, keywords: dict) -> Callable | None:
    """MaxPool of inputs of x's shape and dtype with the node's attributes ``keywords`` as a function of the input,
    its geometry worked out once (raising the kernel's errors for invalid attributes); None where the kernel itself
    runs (an input its negative pads crop, a dtype it converts)."""
    cropped, nd, k, s, d, begin, _, _, out_sp = _prepare(
        x, keywords.get("kernel_shape"), keywords.get("strides"), keywords.get("dilations"), keywords.get("pads"),
        keywords.get("auto_pad", "NOTSET"), keywords.get("ceil_mode", 0), False)
    if cropped is not x or x.dtype.kind not in "fiu":
        return None
    k, begin = _trim_kernel(x.shape[2:], k, s, d, begin, out_sp)
    k, begin = tuple(k), tuple(begin)
    if (x.ndim == 4 and x.dtype == np.float32 and k[0] == k[1] and k[0] in _ROW_POOL_WINDOWS and s == (2, 2)
            and d == (1, 1) and begin == (k[0] - 2,) * 2 and x.size):
        rows = optional_module("onyxrt.providers.cpu.nn.max_pool_rows")
        if rows is not None:
            return functools.partial(_row_max_pool, rows, k=k[0], out_sp=out_sp)
    return functools.partial(_trimmed_max_pool, k=k, s=s, d=d, begin=begin, out_sp=out_sp)


def _max_pool_fast_path(bound, keywords):
    """MaxPool's ``fast_path`` (``kernel_registry``) where only the pooled output is wanted: a route per input shape
    and dtype (``_max_pool_route``; ~5 us of a 3x3/2 pool of 8x24x16x16's 17 us was its per-call geometry)."""
    if keywords.get("_num_outputs", 1) > 1:
        return None
    single = bound.func is max_pool_1  # (the opset-1 kernel returns the array, the later ones a 1-tuple)
    routes: dict = {}

    def pooled(x):
        key = (x.shape, x.dtype)
        route = routes.get(key)
        if route is None:
            if len(routes) >= _MAX_ROUTES:
                routes.clear()
            route = routes[key] = _max_pool_route(x, keywords) or bound
        if route is bound:
            return bound(x)
        y = route(x)
        return y if single else (y,)

    return pooled


_MAX_ROUTES = 16  # input shapes a pooling node keeps routes for


@op("MaxPool", versions=1)
def max_pool_1(x, *, auto_pad="NOTSET", kernel_shape=None, pads=None, strides=None):
    y, _ = _max_pool(x, kernel_shape, strides, None, pads, auto_pad, 0, 0, False)
    return y


@op("MaxPool", versions=8, multi_output=True)
def max_pool_8(x, *, auto_pad="NOTSET", kernel_shape=None, pads=None, storage_order=0, strides=None, _num_outputs=1):
    y, ind = _max_pool(x, kernel_shape, strides, None, pads, auto_pad, 0, storage_order, _num_outputs > 1)
    return (y, ind) if _num_outputs > 1 else (y,)


@op("MaxPool", versions=(10, 11, 12, 22), multi_output=True)
def max_pool(
    x,
    *,
    auto_pad="NOTSET",
    ceil_mode=0,
    dilations=None,
    kernel_shape=None,
    pads=None,
    storage_order=0,
    strides=None,
    _num_outputs=1,
):
    y, ind = _max_pool(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode, storage_order, _num_outputs > 1)
    return (y, ind) if _num_outputs > 1 else (y,)


for _kernel in (max_pool_1, max_pool_8, max_pool):
    _kernel.fast_path = _max_pool_fast_path


# --------------------------------------------------------------------------- AveragePool / LpPool


def _axis_counts(in_len, b, e, k, s, d, o, include_pad):
    """Number of counted taps of each output window along one axis (arithmetic, not per tap)."""
    start = np.arange(o, dtype=np.int64) * s  # window starts in padded coordinates
    if include_pad:
        # taps t with start + t*d < in_len + b + e
        return np.clip(-((start - (in_len + b + e)) // d), 0, k)
    # taps t with b <= start + t*d < b + in_len
    lo = np.maximum(0, -((start - b) // d))
    hi = np.minimum(k - 1, (b + in_len - 1 - start) // d)
    return np.maximum(0, hi - lo + 1)


def _average_pool(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode, count_include_pad):
    x, nd, k, s, d, begin, end, extra, out_sp = _prepare(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    dtype = x.dtype
    ct = compute_dtype(dtype)
    xc = x if dtype == ct else x.astype(ct)
    k_reach, b_reach = _trim_kernel(x.shape[2:], k, s, d, begin, out_sp)
    counts = None
    for i in range(nd):
        c = _axis_counts(x.shape[2 + i], begin[i], end[i], k[i], s[i], d[i], out_sp[i], count_include_pad)
        counts = c if counts is None else np.multiply.outer(counts, c)
    counts = counts.astype(ct)
    y = _compiled_average_pool(xc, k_reach, s, d, b_reach, out_sp, counts)
    if y is None:
        y = _separable_reduce(xc, np.add, 0, k_reach, s, d, b_reach, out_sp)
        with np.errstate(divide="ignore", invalid="ignore"):
            if np.all(counts == counts.flat[0]):
                y /= counts.flat[0]
            else:
                y /= counts
    return y if dtype == ct else y.astype(dtype)


def _average_pool_planes(x, y, kh, kw, s0, s1, d0, d1, b0, b1, scale):
    """``y[n, c, oh, ow]`` = the sum of ``x[n, c, oh*s0 + i*d0 - b0, ow*s1 + j*d1 - b1]`` over the taps inside
    the input, times ``scale[oh, ow]`` (1 / the window's count): as ``_max_pool_planes``, the kernel rows'
    sum first (contiguous: vectorized) into a row padded with zeros, then the window columns' sum along it."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    sf = scale.reshape(-1)
    width = max(W + b1, (OW - 1) * s1 + (kw - 1) * d1 + 1)
    rows = np.zeros(width, dtype=xf.dtype)
    for p in range(N * C):
        for oh in range(OH):
            h0 = oh * s0 - b0
            for w in range(W):
                rows[np.uintp(b1 + w)] = 0
            for i in range(kh):
                h = h0 + i * d0
                if h < 0 or h >= H:
                    continue
                src = (p * H + h) * W
                for w in range(W):
                    rows[np.uintp(b1 + w)] += xf[np.uintp(src + w)]
            out = (p * OH + oh) * OW
            for ow in range(OW):
                at = ow * s1
                total = rows[np.uintp(at)]
                for j in range(1, kw):
                    total += rows[np.uintp(at + j * d1)]
                yf[np.uintp(out + ow)] = total * sf[np.uintp(oh * OW + ow)]


_AVERAGE_POOL_2D = LazyKernel(_average_pool_planes)
_COMPILED_AVERAGE_POOL_TAPS = 1 << 20  # (its window columns are not vectorized: numpy's passes may stream faster beyond)
_COMPILED_AVERAGE_POOL_DTYPES = frozenset(np.dtype(t) for t in (np.float32, np.float64))


def _compiled_average_pool(x, k, s, d, begin, out_sp, counts) -> np.ndarray | None:
    """2-D AveragePool by the compiled kernel (``_COMPILED_AVERAGE_POOL_TAPS`` window taps at most); None
    where it does not apply (the numpy path runs)."""
    if x.dtype not in _COMPILED_AVERAGE_POOL_DTYPES:
        return None
    with np.errstate(divide="ignore"):
        scale = read_only(np.ascontiguousarray(np.reciprocal(counts), dtype=x.dtype))
    return _compiled_pool(_AVERAGE_POOL_2D, _COMPILED_AVERAGE_POOL_DTYPES, _COMPILED_AVERAGE_POOL_TAPS, x, k, s, d,
                          begin, out_sp, scale, read_only(np.zeros((0, 0), x.dtype)))


@op("AveragePool", versions=1)
def average_pool_1(x, *, auto_pad="NOTSET", kernel_shape=None, pads=None, strides=None):
    return _average_pool(x, kernel_shape, strides, None, pads, auto_pad, 0, 0)


@op("AveragePool", versions=7)
def average_pool_7(x, *, auto_pad="NOTSET", count_include_pad=0, kernel_shape=None, pads=None, strides=None):
    return _average_pool(x, kernel_shape, strides, None, pads, auto_pad, 0, count_include_pad)


@op("AveragePool", versions=(10, 11))
def average_pool_10(x, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, kernel_shape=None, pads=None, strides=None):
    return _average_pool(x, kernel_shape, strides, None, pads, auto_pad, ceil_mode, count_include_pad)


@op("AveragePool", versions=(19, 22))
def average_pool(
    x, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape=None, pads=None, strides=None
):
    return _average_pool(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode, count_include_pad)


def _lp_pool(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode, p):
    x, nd, k, s, d, begin, end, extra, out_sp = _prepare(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode, False)
    dtype = x.dtype
    ct = compute_dtype(dtype)
    xc = np.abs(x.astype(ct))
    p = float(p)
    if p == 2.0:
        xc *= xc
    elif p != 1.0:
        xc = np.power(xc, ct(p))
    k, begin = _trim_kernel(x.shape[2:], k, s, d, begin, out_sp)
    y = _separable_reduce(xc, np.add, 0, k, s, d, begin, out_sp)
    if p == 2.0:
        np.sqrt(y, out=y)
    elif p != 1.0:
        y = np.power(y, ct(1.0 / p))
    return y if dtype == ct else y.astype(dtype)


@op("LpPool", versions=1)
def lp_pool_1(x, *, auto_pad="NOTSET", kernel_shape=None, p=2.0, pads=None, strides=None):
    return _lp_pool(x, kernel_shape, strides, None, pads, auto_pad, 0, p)


@op("LpPool", versions=(2, 11))
def lp_pool_2(x, *, auto_pad="NOTSET", kernel_shape=None, p=2, pads=None, strides=None):
    return _lp_pool(x, kernel_shape, strides, None, pads, auto_pad, 0, p)


@op("LpPool", versions=(18, 22))
def lp_pool(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, p=2, pads=None, strides=None):
    return _lp_pool(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode, p)


# --------------------------------------------------------------------------- global pools


def _spatial_axes(x):
    if x.ndim < 2:
        raise NodeInputError(f"global pooling input must have rank >= 2, got shape {x.shape}")
    return tuple(range(2, x.ndim))


# Elements from which a pool that splits products shares a global average pool's planes out as a native task.
_PARALLEL_MEAN_ELEMENTS = 1 << 15


def plane_means(planes: np.ndarray) -> np.ndarray:
    """The mean of each row of the C-contiguous float32 or float64 ``planes`` (rows, values): a global average
    pool's planes, or any mean over trailing axes (ReduceMean's)."""
    # each plane's sum as a GEMV against ones: 3-7x faster than numpy's reduction over short rows (mobilenet_v2's 1280
    # planes of 7x7: 37 -> 5 us), as accurate (BLAS accumulates in blocks)
    pool = current_pool()
    tasks = (optional_module("onyxrt.providers.cpu.row_tasks")
             if pool.splits_gemms and pool.runs_native_tasks and planes.dtype == np.float32
             and planes.size >= _PARALLEL_MEAN_ELEMENTS else None)
    if tasks is None:
        return planes @ mean_weights(planes.shape[1], planes.dtype)
    # each part the planes the same core's part of the convolution before wrote, still in its cache (the pointwise
    # GEMMs split their output channels likewise): mobilenet_v2's 1280 planes of 7x7 in a run, 32 -> 18 us on 2 Zen 5
    # cores, where one thread's GEMV read half of them from the other core's cache
    y = np.empty(planes.shape[0], np.float32)
    pool.run_native(tasks.means_part.address, tasks.means_args(planes, y), pool.num_threads)
    return y


@functools.lru_cache(maxsize=64)
def mean_weights(length: int, dtype: np.dtype) -> np.ndarray:
    """``length`` values of 1 / ``length`` (read-only, made once per length: a run's pools and gates reuse them)."""
    return read_only(np.full(length, 1.0 / length, dtype=dtype))


@op("GlobalAveragePool", versions=(1, 22))
def global_average_pool(x):
    axes = _spatial_axes(x)
    ct = compute_dtype(x.dtype)
    if x.dtype == ct and ct in (np.float32, np.float64) and x.flags.c_contiguous and x.size:
        y = plane_means(x.reshape(x.shape[0] * x.shape[1], -1))
        return y.reshape(x.shape[:2] + (1,) * len(axes))
    y = np.mean(x if x.dtype == ct else x.astype(ct), axis=axes, keepdims=True, dtype=ct)
    return np.asarray(y if x.dtype == ct else y.astype(x.dtype))


@op("GlobalMaxPool", versions=(1, 22))
def global_max_pool(x):
    axes = _spatial_axes(x)
    if x.dtype.kind == "V":
        return np.max(x.astype(np.float32), axis=axes, keepdims=True).astype(x.dtype)
    return np.asarray(np.max(x, axis=axes, keepdims=True))


def _global_lp(x, p):
    axes = _spatial_axes(x)
    ct = compute_dtype(x.dtype)
    xc = np.abs(x.astype(ct))
    p = float(p)
    if p == 2.0:
        y = np.sqrt(np.sum(xc * xc, axis=axes, keepdims=True))
    elif p == 1.0:
        y = np.sum(xc, axis=axes, keepdims=True)
    else:
        y = np.power(np.sum(np.power(xc, ct(p)), axis=axes, keepdims=True), ct(1.0 / p))
    return np.asarray(y.astype(x.dtype))


@op("GlobalLpPool", versions=1)
def global_lp_pool_1(x, *, p=2.0):
    return _global_lp(x, p)


@op("GlobalLpPool", versions=(2, 22))
def global_lp_pool(x, *, p=2):
    return _global_lp(x, p)


# --------------------------------------------------------------------------- MaxUnpool / MaxRoiPool


@op("MaxUnpool", versions=(9, 11, 22))
def max_unpool(x, i, output_shape=None, *, kernel_shape=None, pads=None, strides=None):
    if x.ndim < 3:
        raise NodeInputError(f"MaxUnpool input must have rank >= 3, got shape {x.shape}")
    nd = x.ndim - 2
    k = _kernel_shape(kernel_shape, nd)
    s, _ = spatial_defaults(nd, strides, None)
    p = [int(v) for v in pads] if pads else [0] * (2 * nd)
    default = list(x.shape[:2]) + [(x.shape[2 + j] - 1) * s[j] + k[j] - p[j] - p[nd + j] for j in range(nd)]
    shape = default
    if output_shape is not None:
        shape = [int(v) for v in np.asarray(output_shape).reshape(-1)]
        if len(shape) == nd:
            shape = list(x.shape[:2]) + shape
        if len(shape) != x.ndim:
            raise NodeInputError(f"output_shape {shape} must have rank {x.ndim}")
    if i.shape != x.shape:
        raise NodeInputError(f"indices shape {i.shape} does not match X {x.shape}")
    out = np.zeros(math.prod(shape), dtype=x.dtype)
    idx = np.asarray(i, dtype=np.int64).reshape(-1)
    if shape != default:
        # indices address the pooled-from (default-shaped) tensor: move them to output_shape
        if idx.size and (idx.min() < 0 or idx.max() >= math.prod(default)):
            raise NodeInputError("MaxUnpool indices are out of range")
        coords = np.unravel_index(idx, default)
        if any((c >= n).any() for c, n in zip(coords, shape)):
            raise NodeInputError(f"MaxUnpool indices do not fit output_shape {shape}")
        idx = np.ravel_multi_index(coords, shape)
    if idx.size and (idx.min() < 0 or idx.max() >= out.size):
        raise NodeInputError("MaxUnpool indices are out of range for the output shape")
    out[idx] = x.reshape(-1)
    return out.reshape(shape)


@op("MaxRoiPool", versions=(1, 22))
def max_roi_pool(x, rois, *, pooled_shape=None, spatial_scale=1.0):
    if x.ndim != 4:
        raise NodeInputError(f"MaxRoiPool input must be 4-D, got shape {x.shape}")
    if not pooled_shape or len(pooled_shape) != 2:
        raise NodeInputError("pooled_shape must have 2 values")
    ph_n, pw_n = (int(v) for v in pooled_shape)
    N, C, H, W = x.shape
    rois = np.asarray(rois)
    out = np.zeros((rois.shape[0], C, ph_n, pw_n), dtype=x.dtype)
    for r in range(rois.shape[0]):
        b = int(rois[r, 0])
        x1, y1, x2, y2 = (int(np.round(float(v) * spatial_scale)) for v in rois[r, 1:5])
        roi_h = max(y2 - y1 + 1, 1)
        roi_w = max(x2 - x1 + 1, 1)
        bin_h = roi_h / ph_n
        bin_w = roi_w / pw_n
        img = x[b]
        for ph in range(ph_n):
            hs = min(max(int(math.floor(ph * bin_h)) + y1, 0), H)
            he = min(max(int(math.ceil((ph + 1) * bin_h)) + y1, 0), H)
            for pw in range(pw_n):
                ws = min(max(int(math.floor(pw * bin_w)) + x1, 0), W)
                we = min(max(int(math.ceil((pw + 1) * bin_w)) + x1, 0), W)
                if he > hs and we > ws:
                    out[r, :, ph, pw] = img[:, hs:he, ws:we].max(axis=(1, 2))
    return out
