"""The convolution core shared by the Conv-like kernels (Conv, ConvInteger, QLinearConv,
com.microsoft FusedConv, the NCHWc Conv) and the window geometry pooling uses too.

A convolution is computed as im2col + one large BLAS matmul per call (groups are batched
into a single ``np.matmul``):

* 1-D and 2-D depthwise convolutions run the compiled kernel of ``depthwise_conv`` where
  numba is installed (the ``fast`` extra), else the numpy forms below;
* 2-D depthwise convolutions (groups == C_in, one input channel per group) become, per
  channel, one small GEMM over the kernel columns plus kh-1 additions (see
  ``_DepthwisePlan``), in cache-sized blocks of channels;
* 1x1 convolutions (stride 1) need no im2col: the input is the column matrix itself;
* other 2-D convolutions copy each kernel tap's window of the unpadded input into a
  (N, C*K, P) column matrix (``_Im2colPlan``; stride-2 columns read as float32 pairs,
  see ``copy_stride2``), or, without prepared weights, flatten the padded input's stride
  phases so each tap is one contiguous window (``_conv2d_flat``);
* other ranks pad the input and copy each tap's strided window.

Constant weights are prepared once (``conv_prepack`` -> ``ConvWeights``): cast to the
compute dtype, the depthwise GEMM weights, and [W | bias] so that a row of ones in the
column matrix adds the bias inside the GEMM. The numpy work runs on the calling
thread (see ``_PARALLEL_CONV``). A float32 1x1 filter with many zeros may run on the sparse
kernels of ``math.sparse_gemm`` (chosen at session creation by measurement).

float16/bfloat16 are computed in float32, float64 in float64.
"""

from __future__ import annotations

import itertools
import math
import sys
from typing import Callable

import numpy as np

from ....framework.thread_pool import current_pool
from .. import row_kernels
from ..gemm import fused_product, own_sgemm_fits, own_sgemm_parts, own_sgemm_usable
from ..gemm import matmul as pool_matmul
from ..math.sparse_gemm import SparseWeight, sparse_prepack
from ..jit import LazyKernel, optional_module, read_only
from . import direct_conv, patch_conv, winograd
from .depthwise_conv import depthwise_runner
from ....errors import NodeInputError, NodeInputTypeError

_F32 = np.dtype(np.float32)

# --------------------------------------------------------------------------- window geometry
# (shared with pooling)


def compute_dtype(dtype) -> type:
    """The numpy dtype arithmetic is done in for a floating input dtype."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def spatial_defaults(nd: int, strides, dilations) -> tuple[list[int], list[int]]:
    s = [int(v) for v in strides] if strides else [1] * nd
    d = [int(v) for v in dilations] if dilations else [1] * nd
    if len(s) != nd or len(d) != nd:
        raise NodeInputError(f"strides {s} / dilations {d} do not match {nd} spatial dimensions")
    if any(v <= 0 for v in s) or any(v <= 0 for v in d):
        raise NodeInputError(f"strides {s} and dilations {d} must be positive")
    return s, d


def auto_pad_name(auto_pad) -> str:
    """The ``auto_pad`` attribute as a checked string (NOTSET when empty)."""
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    auto_pad = auto_pad or "NOTSET"
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise NodeInputError(f"unsupported auto_pad value {auto_pad!r}")
    return auto_pad


def conv_pads(in_sp, kernel, strides, dilations, pads, auto_pad) -> list[int]:
    """Explicit [begin..., end...] pads of a Conv / pooling window (SAME: out = ceil(in / stride))."""
    nd = len(in_sp)
    auto_pad = auto_pad_name(auto_pad)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(nd):
            out = -(-in_sp[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_sp[i])
            small, big = total // 2, total - total // 2
            if auto_pad == "SAME_UPPER":
                begin.append(small)
                end.append(big)
            else:
                begin.append(big)
                end.append(small)
        return begin + end
    if auto_pad == "VALID" or not pads:
        return [0] * (2 * nd)
    pads = [int(p) for p in pads]
    if len(pads) != 2 * nd:
        raise NodeInputError(f"pads {pads} must have {2 * nd} values")
    return pads


def pad_spatial(x: np.ndarray, begin, end, value=0, extra_last_rows: int = 0) -> np.ndarray:
    """Pad (positive) or crop (negative) the spatial axes (2...) of ``x`` with ``value``.

    ``extra_last_rows`` appends that many more padding entries to the first spatial
    axis' end (slack for reading flat windows past the last row).
    """
    nd = x.ndim - 2
    if not any(begin) and not any(end) and not extra_last_rows:
        return x
    if any(b < 0 for b in begin) or any(e < 0 for e in end):
        crop = tuple(slice(max(0, -b), x.shape[2 + i] - max(0, -e)) for i, (b, e) in enumerate(zip(begin, end)))
        x = x[(slice(None), slice(None)) + crop]
        begin = [max(0, b) for b in begin]
        end = [max(0, e) for e in end]
        if not any(begin) and not any(end) and not extra_last_rows:
            return x
    shape = list(x.shape[:2]) + [x.shape[2 + i] + begin[i] + end[i] for i in range(nd)]
    if nd:
        shape[2] += extra_last_rows
    if value == 0:
        out = np.zeros(shape, dtype=x.dtype)
    else:
        out = np.full(shape, value, dtype=x.dtype)
    out[(slice(None), slice(None)) + tuple(slice(b, b + n) for b, n in zip(begin, x.shape[2:]))] = x
    return out


def window_slice(tap: int, dilation: int, stride: int, count: int) -> slice:
    """Positions ``tap*dilation + stride*o`` for o in [0, count) as a slice."""
    start = tap * dilation
    return slice(start, start + stride * (count - 1) + 1, stride)


# --------------------------------------------------------------------------- core


def check_kernel_shape(kernel_shape, w) -> None:
    """Raise when the ``kernel_shape`` attribute disagrees with the filter's spatial shape."""
    if kernel_shape and [int(k) for k in kernel_shape] != list(w.shape[2:]):
        raise NodeInputError(f"kernel_shape {list(kernel_shape)} does not match the weight shape {w.shape}")


# The convolutions run their own numpy work (column matrices, depthwise blocks) on the
# calling thread: measured on 2 cores, splitting it over the pool as Python tasks made whole
# models slower, beside BLAS's spinning threads (mobilenet_v2 by ~20%, resnet50 by ~12%) and in
# the pool's own split mode alike (numpy's copies hold the GIL). ``_PARALLEL_CONV`` forces the
# split (tests).
_PARALLEL_CONV = False
_PARALLEL_MIN_ELEMENTS = 1 << 17


def _conv_chunks(fn, rows: int, elements: int, releases_gil: bool = False) -> None:
    """``fn(r0, r1)`` over ``range(rows)``: on the calling thread, or split over the pool where forced or where the
    pool owns the cores and ``fn`` releases the GIL (the compiled column-matrix kernel: in the split-GEMM mode on 2
    Zen 5 cores, resnet50 25.3 -> 25.0 ms, mobilenet_v2 3.92 -> 3.86)."""
    pool = current_pool()
    if _PARALLEL_CONV or releases_gil and pool.splits_gemms:
        pool.run_chunks(fn, rows, elements, _PARALLEL_MIN_ELEMENTS)
    else:
        fn(0, rows)


def phase_images_2d(x: np.ndarray, pads, strides, max_tail: int):
    """Zero-padded ``x`` (N, C, H, W) split into stride phases, flattened per image.

    Returns ``(buf, Wq)`` with ``buf`` of shape (s0, s1, N*C, Hq*Wq + tail): phase
    (a, b) holds padded rows a, a+s0, ... and columns b, b+s1, ... as an Hq x Wq
    row-major image, followed by ``max_tail`` (rounded up to whole rows) zeros so
    flat windows may run past the last row. Padded position (a + s0*r, b + s1*q)
    sits at ``buf[a, b, :, r*Wq + q]``.
    """
    N, C, H, W = x.shape
    s0, s1 = strides
    pt, pl, pb, pr = pads
    Hp, Wp = H + pt + pb, W + pl + pr
    Hq, Wq = -(-Hp // s0), -(-Wp // s1)
    extra = -(-max_tail // Wq) if max_tail > 0 else 0
    buf = np.zeros((s0, s1, N * C, Hq + extra, Wq), dtype=x.dtype)
    xr = x.reshape(N * C, H, W)
    copies = []
    for a in range(s0):
        # padded rows a + s0*r that fall inside x: x row = a + s0*r - pt in [0, H)
        r0 = max(0, -(-(pt - a) // s0))
        xr0 = a + s0 * r0 - pt
        if xr0 >= H:
            continue
        nr = (H - 1 - xr0) // s0 + 1
        rows = slice(xr0, xr0 + s0 * (nr - 1) + 1, s0)
        for b in range(s1):
            q0 = max(0, -(-(pl - b) // s1))
            xc0 = b + s1 * q0 - pl
            if xc0 >= W:
                continue
            nq = (W - 1 - xc0) // s1 + 1
            cols = slice(xc0, xc0 + s1 * (nq - 1) + 1, s1)
            copies.append((a, b, slice(r0, r0 + nr), slice(q0, q0 + nq), rows, cols))

    def fill(c0, c1):
        for a, b, dr, dc, rows, cols in copies:
            buf[a, b, c0:c1, dr, dc] = xr[c0:c1, rows, cols]

    _conv_chunks(fill, N * C, x.size)
    return buf.reshape(s0, s1, N * C, (Hq + extra) * Wq), Wq


# --------------------------------------------------------------------------- column matrices


def _axis_range(n_in: int, n_out: int, offset: int, stride: int, pad: int) -> tuple[int, int, int]:
    """(first output, count, first input) of the outputs o whose position o*stride + offset - pad
    falls inside [0, n_in)."""
    o0 = max(0, -(-(pad - offset) // stride))
    x0 = o0 * stride + offset - pad
    count = 0 if x0 >= n_in or o0 >= n_out else min(n_out - o0, (n_in - 1 - x0) // stride + 1)
    return o0, count, x0


class _Im2colPlan:
    """Per kernel tap of a 2-D convolution: the copy filling its (OH, OW) column image from
    the unpadded input, and the padding regions that stay zero."""

    __slots__ = ("copies", "zeros")

    def __init__(self, H, W, k, strides, dilations, pads, pairs):
        kh, kw = k
        s0, s1 = strides
        OH = (H + pads[0] + pads[2] - (kh - 1) * dilations[0] - 1) // s0 + 1
        OW = (W + pads[1] + pads[3] - (kw - 1) * dilations[1] - 1) // s1 + 1
        pairs = pairs and s1 == 2 and sys.byteorder == "little"
        self.copies, self.zeros = [], []
        for i in range(kh):
            r0, nr, xr0 = _axis_range(H, OH, i * dilations[0], s0, pads[0])
            for j in range(kw):
                q0, nq, xc0 = _axis_range(W, OW, j * dilations[1], s1, pads[1])
                t = i * kw + j
                if nr == 0 or nq == 0:
                    self.zeros.append((t, slice(0, OH), slice(0, OW)))
                    continue
                rows = slice(xr0, xr0 + s0 * (nr - 1) + 1, s0)
                cols = xc0 if pairs else slice(xc0, xc0 + s1 * (nq - 1) + 1, s1)
                self.copies.append((t, slice(r0, r0 + nr), slice(q0, q0 + nq), rows, cols, nq))
                for rr in (slice(0, r0), slice(r0 + nr, OH)):
                    if rr.stop > rr.start:
                        self.zeros.append((t, rr, slice(0, OW)))
                for cc in (slice(0, q0), slice(q0 + nq, OW)):
                    if cc.stop > cc.start:
                        self.zeros.append((t, slice(r0, r0 + nr), cc))


_im2col_plan_cache: dict = {}


def _im2col_plan(H, W, k, strides, dilations, pads, pairs: bool) -> _Im2colPlan:
    key = (H, W, tuple(k), tuple(strides), tuple(dilations), tuple(pads), pairs)
    plan = _im2col_plan_cache.get(key)
    if plan is None:
        if len(_im2col_plan_cache) > 256:
            _im2col_plan_cache.clear()
        plan = _im2col_plan_cache[key] = _Im2colPlan(*key)
    return plan


def _im2col_fill(x: np.ndarray, taps: np.ndarray, plan: _Im2colPlan, c0: int, c1: int) -> None:
    """Channels c0..c1 of the column images ``taps`` (N, C, K, OH, OW) of ``x`` (N, C, H, W)."""
    for t, rows, cols in plan.zeros:
        taps[:, c0:c1, t, rows, cols] = 0
    xs = x[:, c0:c1]
    for t, dr, dc, rows, cols, count in plan.copies:
        if isinstance(cols, slice):
            taps[:, c0:c1, t, dr, dc] = xs[:, :, rows, cols]
        else:
            copy_stride2(taps[:, c0:c1, t, dr, dc], xs[:, :, rows], cols, count)


def _im2col_rows(x, cols, kh, kw, s0, s1, d0, d1, pt, pl, OH, OW, c0, c1):
    """The numba form of ``_im2col_fill`` for channels c0..c1 of a contiguous ``x``: ``cols[n, (c*kh + i)*kw + j,
    oh*OW + ow] = x[n, c, oh*s0 + i*d0 - pt, ow*s1 + j*d1 - pl]``, 0 where that falls in the padding. One
    call instead of a numpy copy per tap and padding strip (most of a small convolution's time)."""
    N, C, H, W = x.shape
    P = OH * OW
    rows = cols.shape[1]
    xf = x.reshape(-1)
    cf = cols.reshape(-1)
    zero = cf.dtype.type(0)
    for n in range(N):
        for c in range(c0, c1):
            plane = (n * C + c) * H
            for i in range(kh):
                for j in range(kw):
                    row = (n * rows + (c * kh + i) * kw + j) * P
                    offset = j * d1 - pl
                    lo = min(OW, max(0, (s1 - 1 - offset) // s1))
                    hi = max(lo, min(OW, (W - 1 - offset) // s1 + 1)) if W - 1 - offset >= 0 else lo
                    for oh in range(OH):
                        h = oh * s0 + i * d0 - pt
                        d = row + oh * OW
                        if h < 0 or h >= H:
                            for ow in range(OW):
                                cf[np.uintp(d + ow)] = zero
                            continue
                        for ow in range(lo):
                            cf[np.uintp(d + ow)] = zero
                        for ow in range(hi, OW):
                            cf[np.uintp(d + ow)] = zero
                        src = (plane + h) * W + offset
                        if s1 == 1:
                            for ow in range(lo, hi):
                                cf[np.uintp(d + ow)] = xf[np.uintp(src + ow)]
                        else:
                            for ow in range(lo, hi):
                                cf[np.uintp(d + ow)] = xf[np.uintp(src + ow * s1)]


_IM2COL = LazyKernel(_im2col_rows)


def _compiled_im2col(x: np.ndarray):
    """The compiled ``_im2col_rows`` for ``x``'s dtype (float32, float64; x C-contiguous), else None."""
    if x.dtype not in _FLOATS or not x.flags.c_contiguous:
        return None
    probe = np.zeros((0, 0, 0, 0), x.dtype)
    return _IM2COL.compiled_for(x.dtype, read_only(probe), np.zeros((0, 0, 0), x.dtype), 1, 1, 1, 1, 1, 1, 0, 0, 0, 0,
                                0, 0)


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _patch_rows(x, rows, kh, kw, OH, OW):
    """``rows[(n * OH + oh) * OW + ow, (c * kh + i) * kw + j] = x[n, c, oh * kh + i, ow * kw + j]``: the patches of
    a convolution whose windows tile the input (kernel = strides), one per row, from a contiguous ``x``; each input
    row's windows copied as runs of ``kw`` (flat offsets: indexing by four coordinates cost 2.5x the time)."""
    N, C, H, W = x.shape
    K = rows.shape[1]
    xf = x.reshape(-1)
    rf = rows.reshape(-1)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for i in range(kh):
                    src = ((n * C + c) * H + oh * kh + i) * W
                    dst = (n * OH + oh) * OW * K + (c * kh + i) * kw
                    for ow in range(OW):
                        for j in range(kw):
                            rf[np.uintp(dst + ow * K + j)] = xf[np.uintp(src + ow * kw + j)]


_PATCH_ROWS = LazyKernel(_patch_rows)
# Patches per image below which a patch convolution runs as one product of the batch's patches (``_patch_route``):
# a GEMM panel's columns. Measured on 2 Zen 5 cores, alternating processes: a ViT-like model of 8x8/8 patches of
# 32x32 images (16 an image) 0.95x the time; a ConvNeXt-like 4x4/4 stem of 64 patches an image 1.01x (its copy of
# runs of 4 and a 16-column product no faster than the column route).
PATCH_MAX_PIXELS = 32


def _patch_route(shape, dtype, w: np.ndarray, out_sp, finish: Callable) -> Route | None:
    """A 2-D convolution whose windows tile the input (kernel = strides, no padding or dilation, group 1: a vision
    transformer's patch embedding, a ConvNeXt stem) as one product of the batch's patches: rows (N*OH*OW, C*kh*kw)
    gathered by a compiled copy, times W^T, the (N*OH*OW, M) result transposed to (N, M, OH, OW) and ``finish``ed
    (bias, activation, residual): for images of fewer than :data:`PATCH_MAX_PIXELS` patches, whose column route
    runs a product per image narrower than a GEMM's panel (8x3x32x32 8x8/8 -> 64: 16 columns). None where the
    compiled copy is unusable (the column route runs)."""
    if dtype not in _FLOATS:
        return None
    probe = np.zeros((0, 0, 0, 0), dtype)
    kernel = _PATCH_ROWS.compiled_for(dtype, read_only(probe), np.zeros((0, 0), dtype), 1, 1, 0, 0)
    if kernel is None:
        return None
    N, C = shape[:2]
    M, _, kh, kw = w.shape
    OH, OW = out_sp
    w_t = frozen(np.ascontiguousarray(w.reshape(M, C * kh * kw).T))

    def patches(x: np.ndarray, z: np.ndarray | None) -> np.ndarray:
        rows = np.empty((N * OH * OW, C * kh * kw), dtype)
        kernel(read_only(np.ascontiguousarray(x)), rows, kh, kw, OH, OW)
        y = pool_matmul(rows, w_t).reshape(N, OH * OW, M).transpose(0, 2, 1)
        return finish(np.ascontiguousarray(y).reshape((N, M, OH, OW)), z)

    return patches


def pairs_ok(x: np.ndarray) -> bool:
    """Whether ``copy_stride2`` may read ``x`` as uint64 pairs (4-byte items, contiguous rows)."""
    return x.dtype.itemsize == 4 and x.dtype.kind in "fiu" and x.strides[-1] == 4 and sys.byteorder == "little"


def copy_stride2(dst: np.ndarray, src: np.ndarray, start: int, count: int) -> None:
    """``dst[..., :count] = src[..., start : start + 2*count - 1 : 2]`` for 4-byte items (``pairs_ok``).

    Reads the pairs starting at the wanted columns as uint64 and keeps their low halves
    (the first item on little-endian machines) by a truncating cast: bit-exact and about
    twice as fast as numpy's stride-2 copy.
    """
    npairs = min(count, (src.shape[-1] - start) // 2)
    if npairs > 0:
        np.copyto(dst[..., :npairs].view(np.uint32), src[..., start : start + 2 * npairs].view(np.uint64), casting="unsafe")
    if npairs < count:
        c = start + 2 * npairs
        dst[..., npairs:count] = src[..., c : c + 2 * (count - npairs - 1) + 1 : 2]


# --------------------------------------------------------------------------- 2-D depthwise
#
# Each output channel c is  sum over kernel rows i of  sum over kernel columns j of
# w[c, i, j] * x_pad[c, i*d0 + s0*oh, j*d1 + s1*ow].  Kernel rows whose padded row
# offsets i*d0 fall in the same stride phase a = (i*d0) % s0 read the same rows of the
# input, shifted by whole output rows qi = (i*d0) // s0. So, per phase, the image
#   Z[a, j][r, q] = x_pad[a + s0*r, j*d1 + s1*q]     (r < Hq, q < OW)
# gathered once per kernel column j (plus a row of ones carrying the bias) turns the
# per-channel work into one small GEMM  Y[a] = W[a] (rows_a x kw+1) @ Z[a] (kw+1 x Hq*OW)
# and kh-1 contiguous additions of the output-sized windows Y[a][k, qi*OW : qi*OW + OH*OW].
# Every output row of a GEMM only combines real taps (and the bias times ones): phases
# with a single kernel row get a zero dummy row so that numpy calls GEMM, not a
# (possibly multi-threaded) GEMV, and that row's values are never read.



class _DepthwisePlan:
    """Index geometry of one 2-D depthwise convolution (a pure function of the shapes)."""

    __slots__ = ("OH", "OW", "phases", "terms", "fills", "zeros", "rows_per_phase")

    def __init__(self, H, W, kh, kw, strides, dilations, pads, pairs):
        s0, s1 = strides
        d0, d1 = dilations
        pt, pl, pb, pr = pads
        self.OH = OH = (H + pt + pb - (kh - 1) * d0 - 1) // s0 + 1
        self.OW = OW = (W + pl + pr - (kw - 1) * d1 - 1) // s1 + 1
        order = []
        for i in range(kh):
            if (i * d0) % s0 not in order:
                order.append((i * d0) % s0)
        # phases: (phase a, [(kernel row i, row shift qi)], Hq)
        self.phases = []
        self.terms = []  # per kernel row: (phase index, row within the phase's GEMM output, qi)
        for pi, a in enumerate(order):
            rows = [(i, (i * d0) // s0) for i in range(kh) if (i * d0) % s0 == a]
            self.phases.append((a, rows, OH + max(qi for _, qi in rows)))
        for i in range(kh):
            a = (i * d0) % s0
            pi = order.index(a)
            k = [r for r, _ in self.phases[pi][1]].index(i)
            self.terms.append((pi, k, (i * d0) // s0))
        self.rows_per_phase = tuple(max(2, len(rows)) for _, rows, _ in self.phases)
        # Per phase, how each kernel column j's image Z[j] is filled per block:
        #   ("x", j, dst rows, dst cols, x rows, x cols): a copy from the input;
        #   ("p", j, dst rows, dst cols, x rows, first x col, count): the same with column
        #     stride 2, through ``copy_stride2``;
        #   ("f", j, j2, shift): for narrow images, Z[j] is Z[j2] (same input columns) shifted
        #     by `shift` columns: one long contiguous copy of the flattened image (rows wrap
        #     around: the edge columns are then rewritten by the "x"/"p"/"0" entries after it);
        #   ("0", j, rows, cols): zeros written after such a shift.
        # `zeros` lists the padding regions that are the same for every block (set once).
        pairs = pairs and s1 == 2 and sys.byteorder == "little"
        self.fills, self.zeros = [], []
        for a, _, Hq in self.phases:
            r0 = max(0, -(-(pt - a) // s0))
            xr0 = a + s0 * r0 - pt
            nr = 0 if xr0 >= H or r0 >= Hq else min(Hq - r0, (H - 1 - xr0) // s0 + 1)
            rows = slice(xr0, xr0 + s0 * (nr - 1) + 1, s0) if nr > 0 else None

            def columns(j, qa, qb):
                """(fills, zeros) writing columns [qa, qb) of Z[j]."""
                c = j * d1
                q0 = max(qa, -(-(pl - c) // s1))
                xc0 = c + s1 * q0 - pl
                nq = 0 if xc0 >= W or q0 >= qb else min(qb - q0, (W - 1 - xc0) // s1 + 1)
                if nr <= 0 or nq <= 0:
                    return [], [(j, slice(0, Hq), slice(qa, qb))]
                zr = slice(r0, r0 + nr)
                if pairs:
                    fills = [("p", j, zr, slice(q0, q0 + nq), rows, xc0, nq)]
                else:
                    fills = [("x", j, zr, slice(q0, q0 + nq), rows, slice(xc0, xc0 + s1 * (nq - 1) + 1, s1))]
                zeros = []
                for rr in (slice(0, r0), slice(r0 + nr, Hq)):
                    if rr.stop > rr.start:
                        zeros.append((j, rr, slice(qa, qb)))
                for cc in (slice(qa, q0), slice(q0 + nq, qb)):
                    if cc.stop > cc.start:
                        zeros.append((j, zr, cc))
                return fills, zeros

            fills, zeros = [], []
            refs = {j: j for j in range(kw)}
            if kw > 1 and nr > 0 and OW <= _DW_SHIFT_MAX_WIDTH:
                # Kernel columns reading the same input columns (j*d1 equal modulo s1): the
                # one reading the most input columns is gathered, the others are shifted
                # copies of it.
                counts = [_axis_range(W, OW, j * d1, s1, pl)[1] for j in range(kw)]
                for res in {(j * d1) % s1 for j in range(kw)}:
                    group = [j for j in range(kw) if (j * d1) % s1 == res]
                    ref = max(group, key=lambda j: (counts[j], -abs(2 * j - (kw - 1))))
                    for j in group:
                        refs[j] = ref
            order = sorted(range(kw), key=lambda j: refs[j] != j)  # gathered columns first
            for j in order:
                ref = refs[j]
                shift = None if j == ref else (j - ref) * d1 // s1
                if shift is None or abs(shift) >= OW:
                    f, z = columns(j, 0, OW)
                    fills += f
                    zeros += z
                    continue
                fills.append(("f", j, ref, shift))
                f, z = columns(j, OW - shift, OW) if shift > 0 else columns(j, 0, -shift)
                fills += f
                fills += [("0",) + e for e in z]
            self.fills.append(tuple(fills))
            self.zeros.append(tuple(zeros))


# Shifted copies beat gathers from the input for narrow images only (short rows make
# numpy's 2-D copies slow); measured on mobilenet_v2's layers: better at 7 and 14
# columns, worse from 28 on.
_DW_SHIFT_MAX_WIDTH = 16

_dw_plan_cache: dict = {}


def _depthwise_plan(H, W, kh, kw, strides, dilations, pads, pairs: bool) -> _DepthwisePlan:
    """The (cached) plan; ``pairs``: the input is float32 with contiguous rows (see "p" fills)."""
    key = (H, W, kh, kw, tuple(strides), tuple(dilations), tuple(pads), pairs)
    plan = _dw_plan_cache.get(key)
    if plan is None:
        if len(_dw_plan_cache) > 256:
            _dw_plan_cache.clear()
        plan = _dw_plan_cache[key] = _DepthwisePlan(*key)
    return plan


def depthwise_weights(w: np.ndarray, b, strides, dilations) -> tuple:
    """Per stride phase, the (C, rows, kw + 1) GEMM weights of a (C, 1, kh, kw) depthwise filter;
    column kw holds the bias (in the first kernel row only). Kernel geometry only, no input shape."""
    C, _, kh, kw = w.shape
    s0, d0 = strides[0], dilations[0]
    order = []
    for i in range(kh):
        if (i * d0) % s0 not in order:
            order.append((i * d0) % s0)
    out = []
    for a in order:
        rows = [i for i in range(kh) if (i * d0) % s0 == a]
        m = np.zeros((C, max(2, len(rows)), kw + 1), dtype=w.dtype)
        for k, i in enumerate(rows):
            m[:, k, :kw] = w[:, 0, i, :]
            if i == 0 and b is not None:
                m[:, k, kw] = b
        out.append(m)
    return tuple(out)


_DW_BLOCK_BYTES = 1 << 20


def _depthwise_2d(x, weights, plan: _DepthwisePlan, activation=None) -> np.ndarray:
    """2-D depthwise conv of ``x`` (N, C, H, W) with ``depthwise_weights`` (bias included)."""
    N, C, H, W = x.shape
    R = N * C
    OH, OW = plan.OH, plan.OW
    L = OH * OW
    dtype = x.dtype
    kw = weights[0].shape[2] - 1
    if N > 1:
        weights = tuple(np.tile(m, (N, 1, 1)) for m in weights)
    xr = x.reshape(R, H, W)
    y = np.empty((R, L), dtype=dtype)
    per_channel = sum((kw + 1 + m) * Hq * OW for (_, _, Hq), m in zip(plan.phases, plan.rows_per_phase)) * dtype.itemsize
    cb = max(1, min(R, _DW_BLOCK_BYTES // max(1, per_channel)))
    terms = plan.terms

    def work(r0, r1):
        with np.errstate(invalid="ignore"):  # a dummy row's 0 * inf is never read
            _depthwise_rows(xr, y, weights, plan, kw, cb, r0, r1, activation)

    _conv_chunks(work, R, R * L * len(terms) * kw)
    return y.reshape(N, C, OH, OW)


def _depthwise_rows(xr, y, weights, plan, kw, cb, r0, r1, activation):
    """Rows (channels) r0..r1 of ``_depthwise_2d``, in blocks of ``cb`` channels."""
    OW, L = plan.OW, plan.OH * plan.OW
    dtype = y.dtype
    n = min(cb, r1 - r0)
    Z, Y = [], []
    for pi, (_, _, Hq) in enumerate(plan.phases):
        z = np.empty((n, kw + 1, Hq, OW), dtype=dtype)
        z[:, kw] = 1
        for j, rows, cols in plan.zeros[pi]:
            z[:, j, rows, cols] = 0
        Z.append(z)
        Y.append(np.empty((n, plan.rows_per_phase[pi], Hq * OW), dtype=dtype))
    for c0 in range(r0, r1, cb):
        c1 = min(r1, c0 + cb)
        m = c1 - c0
        for pi, fills in enumerate(plan.fills):
            z = Z[pi]
            zf = z.reshape(z.shape[0], kw + 1, -1)
            for f in fills:
                kind = f[0]
                if kind == "x":
                    _, j, zr, zc, xrows, xcols = f
                    z[:m, j, zr, zc] = xr[c0:c1, xrows, xcols]
                elif kind == "p":
                    _, j, zr, zc, xrows, xc0, count = f
                    copy_stride2(z[:m, j, zr, zc], xr[c0:c1, xrows], xc0, count)
                elif kind == "f":
                    _, j, j2, shift = f
                    dst, src = zf[:m, j], zf[:m, j2]
                    if shift > 0:
                        dst[:, :-shift] = src[:, shift:]
                    else:
                        dst[:, -shift:] = src[:, :shift]
                else:
                    _, j, zr, zc = f
                    z[:m, j, zr, zc] = 0
            np.matmul(weights[pi][c0:c1], zf[:m], out=Y[pi][:m])
        out = y[c0:c1]
        views = [Y[pi][:m, k, qi * OW : qi * OW + L] for pi, k, qi in plan.terms]
        if len(views) == 1:
            out[...] = views[0]
        else:
            np.add(views[0], views[1], out=out)
            for v in views[2:]:
                out += v
        if activation is not None:
            activation(out)


def _depthwise(x, w, b, strides, dilations, pads, out_sp):
    """Depthwise conv (+ bias) of any rank (``_depthwise_2d`` does 2-D without negative pads):
    ``x`` (N, C, ...) unpadded, ``w`` (C, 1, *k). Returns a contiguous array."""
    N, C = x.shape[:2]
    nd = x.ndim - 2
    k = w.shape[2:]
    K = math.prod(k)
    dtype = x.dtype
    xp = pad_spatial(x, pads[:nd], pads[nd:])
    out = np.empty((N, C) + tuple(out_sp), dtype=dtype)
    tmp = np.empty_like(out)
    wb = w.reshape((1, C, K) + (1,) * nd)
    for t, tap in enumerate(itertools.product(*(range(kk) for kk in k))):
        src = xp[(slice(None), slice(None)) + tuple(window_slice(tap[i], dilations[i], strides[i], out_sp[i]) for i in range(nd))]
        wt = wb[:, :, t]
        if t == 0:
            np.multiply(src, wt, out=out)
        else:
            np.multiply(src, wt, out=tmp)
            out += tmp
    if b is not None:
        out += np.asarray(b, dtype=dtype).reshape((1, C) + (1,) * nd)
    return out


def _flat_taps(k, strides, dilations):
    """(phase row, phase col, row offset, col offset) of each 2-D kernel tap in phase images."""
    taps = []
    for i in range(k[0]):
        for j in range(k[1]):
            ri, rj = i * dilations[0], j * dilations[1]
            taps.append((ri % strides[0], rj % strides[1], ri // strides[0], rj // strides[1]))
    return taps


def _flat_fits(shape, pads, strides, out_sp) -> bool:
    """Whether ``_conv2d_flat``'s junk columns (a padded row's phase width beyond the output's) waste little."""
    Wq = -(-(shape[3] + pads[1] + pads[3]) // strides[1])
    return Wq <= out_sp[1] * 1.1


# A group-1 convolution of at most _TAP_PRODUCTS_MAX_OUTPUTS output channels and at least
# _TAP_PRODUCTS_MIN_RATIO input channels per output channel sums one product per tap instead of building the
# column matrix (K times the input, written and read back for a product of few rows). Measured on 2 AVX2
# cores, 3x3: 32 -> 8 channels over 8x32x32 (DenseNet's growth layers) 1.38-1.90 -> 1.14-1.29 ms, 40 -> 8
# 2.0-2.2 -> 1.4-1.5, 64 -> 16 over 56x56 1.08 -> 0.81-0.92; with 32 or more outputs (128 -> 32 over
# 28x28, 256 -> 64 over 14x14) the column matrix's one product was as fast or faster.
_TAP_PRODUCTS_MAX_OUTPUTS = 16
_TAP_PRODUCTS_MIN_RATIO = 4


def _tap_weights(w: np.ndarray, group: int) -> np.ndarray | None:
    """(K, M, C) contiguous: W's matrix for each tap, where the convolution sums one product per tap (see
    ``_TAP_PRODUCTS_MAX_OUTPUTS``), else None."""
    M, C = w.shape[:2]
    if group != 1 or M > _TAP_PRODUCTS_MAX_OUTPUTS or M * _TAP_PRODUCTS_MIN_RATIO > C:
        return None
    return np.ascontiguousarray(w.reshape(M, C, -1).transpose(2, 0, 1))


def _tap_products(buf: np.ndarray, tap_weights: np.ndarray, taps, N: int, Wq: int, L: int) -> np.ndarray:
    """(N, M, L) = sum over the taps of the tap's weights @ its window of the flattened phase images ``buf``
    (``phase_images_2d``): each window a strided view BLAS reads in place, no column matrix."""
    M, C = tap_weights.shape[1:]
    y = np.empty((N, M, L), dtype=buf.dtype)
    part = np.empty_like(y)
    for t, (a, b, qi, qj) in enumerate(taps):
        off = qi * Wq + qj
        window = buf[a, b].reshape(N, C, -1)[:, :, off: off + L]
        if t == 0:
            np.matmul(tap_weights[t], window, out=y)
        else:
            y += np.matmul(tap_weights[t], window, out=part)
    return y


def _conv2d_flat(x, w, group, strides, dilations, pads, out_sp, tap_weights=None):
    """2-D conv whose im2col rows are contiguous windows of flattened phase images (``_flat_fits``), or, with
    ``tap_weights`` (``_tap_weights``), one product per tap of those images.

    The GEMM then also computes a few junk columns per output row (dropped at the end).
    """
    N, C = x.shape[:2]
    M, Cg = w.shape[:2]
    k = w.shape[2:]
    K = k[0] * k[1]
    OH, OW = out_sp
    taps = _flat_taps(k, strides, dilations)
    buf, Wq = phase_images_2d(x, pads, strides, max(t[3] for t in taps))
    L = OH * Wq
    if tap_weights is not None:
        return _tap_products(buf, tap_weights, taps, N, Wq, L).reshape(N, M, OH, Wq)[:, :, :, :OW]
    cols = np.empty((N * C, K, L), dtype=x.dtype)
    for t, (a, b, qi, qj) in enumerate(taps):
        off = qi * Wq + qj
        cols[:, t, :] = buf[a, b, :, off : off + L]
    cols = cols.reshape(N, C * K, L)
    if group == 1:
        w2 = w.reshape(M, Cg * K)
        y = pool_matmul(w2, cols[0])[None] if N == 1 else np.matmul(w2, cols)
    else:
        y = np.matmul(w.reshape(group, M // group, Cg * K), cols.reshape(N, group, Cg * K, L))
    return y.reshape(N, M, OH, Wq)[:, :, :, :OW]


def conv_core(x: np.ndarray, w: np.ndarray, group: int, strides, dilations, pads, b=None, dw_weights=None,
              bias_weights=None, activation=None, residual=None, sparse: SparseWeight | None = None) -> np.ndarray:
    """N-D cross-correlation of ``x`` (N, C, *spatial) with ``w`` (M, C/group, *k), same dtype.

    ``pads`` is the explicit [begin..., end...] list; ``b`` an optional bias (M,).
    Weights prepared beforehand (``ConvWeights``), both optional: ``dw_weights``, the
    ``depthwise_weights(w, b, ...)`` of a 2-D depthwise filter; ``bias_weights``, the
    (M, C*K + 1) matrix [w | b] of a group-1 convolution with a bias. ``activation``: an
    in-place function applied to the result (by 2-D depthwise convolutions per block of
    channels, while in cache); ``residual``, an array of the output's shape added before the
    activation (FusedConv's Z); ``sparse``, the sparse products of a group-1 1x1 filter.
    Returns a contiguous (N, M, *out_spatial) array.
    """
    route = conv_route(x.shape, x.dtype, w, group, strides, dilations, pads, b, dw_weights, bias_weights, activation,
                       residual is not None, sparse)
    return route(x, residual)


Route = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


def conv_route(shape, dtype, w: np.ndarray, group: int, strides, dilations, pads, b=None, dw_weights=None,
               bias_weights=None, activation=None, residual: bool = False, sparse: SparseWeight | None = None,
               winograd_filter: np.ndarray | None = None) -> Route:
    """``conv_core`` for inputs of ``shape`` and ``dtype`` as a function ``(x, residual) -> y``: the checks,
    the output geometry and the choice of kernels made once, so that a convolution whose weights are
    constant keeps it for each input shape it sees (``float_conv``). ``residual`` says whether one is given.
    Raises conv_core's errors for a shape the filter cannot convolve."""
    N, C = shape[:2]
    nd = len(shape) - 2
    M, Cg = w.shape[:2]
    k = tuple(w.shape[2:])
    group = int(group)
    if group <= 0 or Cg * group != C or M % group:
        raise NodeInputError(f"input channels {C}, weight shape {w.shape} and group {group} are inconsistent")
    if len(k) != nd:
        raise NodeInputError(f"weight shape {w.shape} does not match input rank {len(shape)}")
    padded = [shape[2 + i] + pads[i] + pads[nd + i] for i in range(nd)]
    out_sp = [(padded[i] - (k[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(nd)]
    if any(o <= 0 for o in out_sp):
        raise NodeInputError(f"convolution output would be empty: input {tuple(shape)}, kernel {k}, pads {pads}")
    P = math.prod(out_sp)
    K = math.prod(k)
    y_shape = (N, M) + tuple(out_sp)

    if sparse is None and patch_conv.applies(shape, dtype, w.shape, group, strides, dilations, pads):
        route = patch_conv.patch_route(shape, w, b, activation, out_sp, epilogue_finisher(M, None, activation, nd))
        if route is not None:
            return route

    if winograd_filter is None and direct_conv.applies(shape, dtype, w.shape, group, strides, pads):
        route = direct_conv.direct_route(shape, w, b, activation, strides, dilations, pads, out_sp,
                                         epilogue_finisher(M, None, activation, nd))
        if route is not None:
            return route

    if Cg == 1 and group == C and N * C * P > 0:
        if residual:  # the depthwise kernels below apply an activation but add no residual
            inner = conv_route(shape, dtype, w, group, strides, dilations, pads, b, dw_weights)
            finish = epilogue_finisher(M, None, activation, nd)
            return lambda x, z: finish(inner(x, None), z)
        run = depthwise_runner(shape, dtype, w, b, strides, dilations, pads, out_sp, activation)
        if run is not None:
            return lambda x, z: run(x)
        return lambda x, z: _numpy_depthwise(x, w, b, strides, dilations, pads, out_sp, dw_weights, activation)

    # With the bias as an extra weight column (``w_aug``), a row of ones appended to the
    # column matrix makes the GEMM add it: no pass over the output. For 1x1 convolutions
    # that costs a copy of the input, worth it when the output is the larger (M >= 2C) and
    # no activation or residual needs a pass over the output anyway (which adds the bias
    # for free: mobilenet_v2's expansions with Clip 10-30% faster without the copy).
    w_aug = bias_weights if group == 1 and bias_weights is not None and bias_weights.shape[1] == C * K + 1 else None
    finish = epilogue_finisher(M, b, activation, nd)
    if (nd == 2 and group == 1 and K > 1 and list(k) == list(strides) and not any(pads) and P < PATCH_MAX_PIXELS
            and all(d == 1 for d in dilations) and sparse is None):
        route = _patch_route(shape, dtype, w, out_sp, finish)
        if route is not None:
            return route
    if winograd_filter is not None:  # (``winograd.applies``, checked by the caller)
        route = winograd.winograd_route(shape, winograd_filter, b, activation, pads, out_sp, finish)
        if route is not None:
            return route

    if (nd == 2 and K > 1 and all(p >= 0 for p in pads) and N * C > 0 and w_aug is None
            and _flat_fits(shape, pads, strides, out_sp)):
        # (with w_aug, the exact column matrix below is as fast: no junk columns to crop)
        tap_weights = _tap_weights(w, group)
        return lambda x, z: finish(_conv2d_flat(x, w, group, strides, dilations, pads, out_sp, tap_weights), z)
    if K == 1 and (w_aug is None or M < 2 * C or activation is not None or residual or sparse is not None):
        w_aug = None
    columns = _column_route(shape, dtype, k, strides, dilations, pads, out_sp, 0 if w_aug is None else 1)
    if w_aug is not None:
        finish_biased = epilogue_finisher(M, None, activation, nd)

        def with_bias_row(x, z):
            cols = columns(x)
            cols[:, C * K] = 1
            y = pool_matmul(w_aug, cols[0])[None] if N == 1 else np.matmul(w_aug, cols)
            return finish_biased(y.reshape(y_shape), z)

        return with_bias_row
    if group == 1:
        w2 = w.reshape(M, Cg * K)
        product = (lambda cols: pool_matmul(w2, cols[0])[None]) if N == 1 else (lambda cols: np.matmul(w2, cols))
    else:
        wg = w.reshape(group, M // group, Cg * K)
        product = lambda cols: np.matmul(wg, cols.reshape(N, group, Cg * K, P))  # noqa: E731
    if sparse is not None and group == 1 and K == 1:
        def sparse_or_dense(x, z):
            cols = columns(x)
            y = _sparse_conv(sparse, cols)
            return finish((product(cols) if y is None else y).reshape(y_shape), z)

        return sparse_or_dense
    return lambda x, z: finish(product(columns(x)).reshape(y_shape), z)


def _numpy_depthwise(x, w, b, strides, dilations, pads, out_sp, dw_weights, activation) -> np.ndarray:
    """A depthwise convolution (+ bias, activation) by numpy, where the compiled kernel is not usable."""
    C, M = x.shape[1], w.shape[0]
    if M != C:
        # channel multiplier: output channel m reads input channel m // (M // C)
        x = np.repeat(x, M // C, axis=1)
    if x.ndim == 4 and all(p >= 0 for p in pads):
        x = np.ascontiguousarray(x)
        k = w.shape[2:]
        plan = _depthwise_plan(x.shape[2], x.shape[3], k[0], k[1], strides, dilations, pads, x.dtype == np.float32)
        weights = dw_weights if dw_weights is not None else depthwise_weights(w, b, strides, dilations)
        return _depthwise_2d(x, weights, plan, activation)
    return _activate(_depthwise(x, w, b, strides, dilations, pads, out_sp), activation)


def _column_route(shape, dtype, k, strides, dilations, pads, out_sp, extra: int) -> Callable[[np.ndarray], np.ndarray]:
    """x -> its (N, C*K + extra, P) column matrix (the ``extra`` rows left for the caller), or for a 1x1
    filter without extra rows a view of x where it is one."""
    N, C = shape[:2]
    nd = len(shape) - 2
    K, P = math.prod(k), math.prod(out_sp)
    cols_shape = (N, C * K + extra, P)
    if nd == 2 and all(p >= 0 for p in pads) and N * C > 0 and (K > 1 or extra or list(strides) != [1, 1]):
        # the column matrix straight from the unpadded input
        compiled = _compiled_im2col(np.empty((0,) * 4, dtype))
        geometry = (k[0], k[1], strides[0], strides[1], dilations[0], dilations[1], pads[0], pads[1], *out_sp)
        plan = _im2col_plan(shape[2], shape[3], k, strides, dilations, pads, dtype.itemsize == 4)
        work = N * C * K * P
        vector_runs = dtype == _F32 and strides[1] in (1, 2)  # (the column strides ``im2col_rows`` copies)
        rows = optional_module("onyxrt.providers.cpu.nn.im2col_rows") if vector_runs else None

        def unpadded(x):
            cols = np.empty(cols_shape, dtype=dtype)
            if rows is not None and x.flags.c_contiguous:
                # the matrix's runs copied a vector at a time (``im2col_rows``: resnet50's 512-channel 7x7 3x3 layer
                # 142 -> 80 us on one Zen 5 core), its channels shared out as a native task over a pool that splits
                pool = current_pool()
                if pool.splits_gemms and pool.runs_native_tasks and work >= _PARALLEL_MIN_ELEMENTS and C > 1:
                    pool.run_native(rows.im2col_part.address, rows.task_args(x, cols, *geometry),
                                    min(pool.num_threads, C))
                else:
                    rows.im2col_rows(x, cols, *geometry, 0, C)
            elif compiled is not None and x.flags.c_contiguous:
                xr = read_only(x)
                _conv_chunks(lambda c0, c1: compiled(xr, cols, *geometry, c0, c1), C, work, releases_gil=True)
            else:
                taps = cols[:, : C * K].reshape(N, C, K, out_sp[0], out_sp[1])
                if not pairs_ok(x):
                    x = np.ascontiguousarray(x)
                _conv_chunks(lambda c0, c1: _im2col_fill(x, taps, plan, c0, c1), C, work)
            return cols

        return unpadded
    if K == 1:
        strided = (slice(None), slice(None)) + tuple(slice(0, strides[i] * (out_sp[i] - 1) + 1, strides[i])
                                                      for i in range(nd))

        def one_tap(x):
            xs = pad_spatial(x, pads[:nd], pads[nd:])[strided]
            if not extra:
                return xs.reshape(N, C, P)
            cols = np.empty(cols_shape, dtype=dtype)
            cols[:, :C].reshape(xs.shape)[...] = xs
            return cols

        return one_tap

    def windows(tap, axes):
        spans = (window_slice(tap[i], dilations[i], strides[i], out_sp[i]) for i in range(axes))
        return (slice(None), slice(None)) + tuple(spans)

    def padded(x):
        xp = pad_spatial(x, pads[:nd], pads[nd:])
        cols = np.empty(cols_shape, dtype=dtype)
        taps = cols[:, : C * K].reshape((N, C) + tuple(k) + tuple(out_sp))
        pairs = strides[-1] == 2 and pairs_ok(xp)
        for tap in itertools.product(*(range(kk) for kk in k)):
            dst = taps[(slice(None), slice(None)) + tap]
            if pairs:  # the last axis through copy_stride2
                copy_stride2(dst, xp[windows(tap, nd - 1)], tap[-1] * dilations[-1], out_sp[-1])
            else:
                dst[...] = xp[windows(tap, nd)]
        return cols

    return padded


def _sparse_conv(sparse: SparseWeight, cols: np.ndarray) -> np.ndarray | None:
    """W @ cols[i] for each image by the sparse kernels (None where the dense GEMM was measured faster)."""
    first = sparse.transposed_product(cols[0])
    if first is None:
        return None
    return np.stack([first] + [sparse.transposed_product(image) for image in cols[1:]])


def epilogue_finisher(channels: int, b, activation, nd: int) -> Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]:
    """A route's epilogue as a function ``(y, residual) -> y``: activation(y + b + residual) with ``b`` per
    channel (each part optional), contiguous; in one pass over y by the compiled epilogue, set up once
    (``prepared_channel_epilogue``), where it can, else by numpy."""
    idle = b is None and activation is None
    epilogue = row_kernels.prepared_channel_epilogue(channels, b, activation)

    def finish(y: np.ndarray, z: np.ndarray | None) -> np.ndarray:
        y = np.ascontiguousarray(y)  # a GEMM's fresh result, or a cropped view of one
        if (idle and z is None) or (epilogue is not None and epilogue(y, z)):  # (idle: the GEMM added the bias)
            return y
        y = add_bias(y, b, nd)
        if z is not None:
            add_residual(y, z)
        return _activate(y, activation)

    return finish


def add_residual(y: np.ndarray, residual: np.ndarray) -> None:
    """``y += residual`` (FusedConv's Z, cast to y's dtype), which must broadcast to y's shape."""
    if np.broadcast_shapes(residual.shape, y.shape) != y.shape:
        raise NodeInputError(f"FusedConv: Z of shape {residual.shape} does not match the output {y.shape}")
    y += residual.astype(y.dtype, copy=False)


def _activate(y: np.ndarray, activation) -> np.ndarray:
    if activation is not None:
        activation(y)
    return y


def add_bias(y: np.ndarray, b, nd: int) -> np.ndarray:
    """``y`` (N, M, *spatial) plus the per-channel bias ``b`` (None: none), contiguous."""
    if b is None:
        return np.ascontiguousarray(y)
    b = np.asarray(b, dtype=y.dtype).reshape((1, -1) + (1,) * nd)
    if y.flags.c_contiguous and y.flags.writeable:  # y is always a fresh result here
        y += b
        return y
    return y + b


class ConvWeights:
    """A Conv's constant weights prepared once (``conv_prepack``): cast to the compute dtype
    and, for 2-D depthwise filters, the GEMM weights of ``depthwise_weights``. Runs share
    it; nothing in it is ever written."""

    __slots__ = ("ct", "w", "b", "has_bias", "dw", "w_aug", "sparse", "pointwise", "winograd", "routes")

    def __init__(self, w: np.ndarray, b, group: int, strides, dilations, pointwise: bool = False):
        self.ct = ct = np.dtype(compute_dtype(w.dtype))
        self.w = frozen(np.ascontiguousarray(w, dtype=ct))
        self.has_bias = b is not None
        self.b = None if b is None else frozen(np.ascontiguousarray(b, dtype=ct).reshape(-1))
        self.dw = self.w_aug = None
        if w.ndim == 4 and w.shape[1] == 1 and int(group) >= 1 and w.shape[0] % int(group) == 0:
            self.dw = tuple(frozen(m) for m in depthwise_weights(self.w, self.b, strides, dilations))
        if int(group) == 1 and self.b is not None:
            M = w.shape[0]
            self.w_aug = frozen(np.concatenate([self.w.reshape(M, -1), self.b.reshape(M, 1)], axis=1))
        # a 1x1 filter is the GEMM's left operand W (M x C): the sparse products hold W^T
        one_by_one = int(group) == 1 and w.ndim >= 3 and all(k == 1 for k in w.shape[2:])
        self.sparse = sparse_prepack(self.w.reshape(w.shape[:2]).T, w.shape, convolution=True) if one_by_one else None
        # W (M x C) for a pointwise convolution (1x1 filter, stride 1, no padding, group 1): see ``float_conv``
        self.pointwise = frozen(self.w.reshape(w.shape[:2])) if pointwise and one_by_one and self.sparse is None else None
        self.winograd: np.ndarray | None = None  # the Winograd-transformed filter, made by the first route taking it
        self.routes: dict = {}  # (input shape, dtype, ...) -> float_conv's route for it


def frozen(a: np.ndarray) -> np.ndarray:
    """``a`` made read-only (prepared weights that runs share)."""
    a.flags.writeable = False
    return a


def pack_conv_weights(w, b, attributes) -> ConvWeights | None:
    """``ConvWeights`` for a constant float filter ``w`` (and bias ``b``, constant or None), or
    None when they do not look valid (the kernel then reports the problem at run time)."""
    if not isinstance(w, np.ndarray) or w.ndim < 3 or not (np.issubdtype(w.dtype, np.floating) or w.dtype.kind == "V"):
        return None
    if b is not None and (not isinstance(b, np.ndarray) or b.size != w.shape[0]):
        return None
    try:
        s, d = spatial_defaults(w.ndim - 2, attributes.get("strides"), attributes.get("dilations"))
        pads, kernel_shape = attributes.get("pads"), attributes.get("kernel_shape")
        # stride 1 and no explicit padding: a 1x1 filter then pads nothing under any auto_pad
        pointwise = all(v == 1 for v in s) and not any(pads or ()) and (
            kernel_shape is None or list(kernel_shape) == list(w.shape[2:]))
        return ConvWeights(w, b, int(attributes.get("group", 1)), s, d, pointwise)
    except (ValueError, TypeError):
        return None


def conv_prepack(inputs, attributes):
    """Prepack of Conv-like kernels whose inputs start with X, W, B."""
    w = inputs[1] if len(inputs) > 1 else None
    b = inputs[2] if len(inputs) > 2 else None
    return pack_conv_weights(w, b, attributes)


def float_conv(x, w, b, group, strides, dilations, pads, auto_pad, kernel_shape, packed: ConvWeights | None = None,
                activation=None, residual=None):
    """Conv in the compute dtype; ``activation`` (in place) and ``residual`` (added before it, see
    ``conv_core``) only apply when that is the input's dtype (callers apply them afterwards otherwise).

    With prepared weights (``packed``) the route for each input shape is kept (``ConvWeights.routes``):
    a repeated shape skips the checks and geometry, most of a small convolution's time."""
    if packed is None:
        return _float_route(x, w, b, group, strides, dilations, pads, auto_pad, kernel_shape, None, activation,
                            residual is not None)(x, residual)
    spec = None if activation is None else getattr(activation, "mlas", None)
    key = (x.shape, x.dtype, w.shape, b is None, spec, residual is None)
    route = packed.routes.get(key)
    if route is None:
        route = _float_route(x, w, b, group, strides, dilations, pads, auto_pad, kernel_shape, packed, activation,
                             residual is not None)
        if activation is None or spec is not None:  # (an activation is known by its spec, a new function each call)
            keep_route(packed.routes, key, route)
    return route(x, residual)


def prepared_route_path(slow: Callable, packed, spec) -> Callable | None:
    """A Conv or FusedConv node's ``fast_path`` (see ``kernel_registry``): a function of (x, w, b, z) taking the route
    ``float_conv`` prepared for x's shape straight from the node's prepared weights (``packed``: None where there are
    none), float32 only, with the activation of ``spec`` (its ``mlas`` spec, or None) in it; ``slow`` (the kernel with
    its keywords) for the first input of a shape and anything else."""
    if not isinstance(packed, ConvWeights):
        return None
    routes = packed.routes

    def prepared(x, w, b=None, z=None):
        route = routes.get((x.shape, x.dtype, w.shape, b is None, spec, z is None))
        if route is None or x.dtype != _F32 or (z is not None and z.dtype != _F32):
            return slow(x, w, b) if z is None else slow(x, w, b, z)
        return route(x, z)

    return prepared


_MAX_ROUTES = 16  # input shapes a convolution keeps routes for


def keep_route(routes: dict, key, route) -> None:
    """Store a route prepared for ``key`` (input shapes and the like) in a kernel's prepared weights' ``routes``,
    which hold at most :data:`_MAX_ROUTES` (all dropped when full)."""
    if len(routes) >= _MAX_ROUTES:
        routes.clear()
    routes[key] = route


def _float_route(x, w, b, group, strides, dilations, pads, auto_pad, kernel_shape, packed: ConvWeights | None,
                 activation, residual: bool) -> Route:
    """``float_conv`` for inputs of x's shape and dtype as a function ``(x, residual) -> y``, after its checks."""
    if packed is not None and packed.pointwise is not None and _pointwise_fits(x, w, b, packed):
        return _pointwise_route(x.shape, packed, activation, residual)
    if x.ndim < 3:
        raise NodeInputError(f"Conv input must have rank >= 3, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating) and x.dtype.kind != "V":
        raise NodeInputTypeError(f"Conv does not support dtype {x.dtype}")
    check_kernel_shape(kernel_shape, w)
    nd = x.ndim - 2
    s, d = spatial_defaults(nd, strides, dilations)
    p = conv_pads(x.shape[2:], w.shape[2:], s, d, pads, auto_pad)
    ct = np.dtype(compute_dtype(x.dtype))
    dw = w_aug = sparse = None
    if packed is not None and packed.ct == ct and packed.w.shape == w.shape and (packed.has_bias or b is None):
        wc, bc, dw, w_aug, sparse = packed.w, packed.b, packed.dw, packed.w_aug, packed.sparse
    else:
        wc = w if w.dtype == ct else w.astype(ct)
        bc = None if b is None else np.asarray(b).astype(ct, copy=False)
    if x.dtype == ct:
        transformed = None
        if packed is not None and winograd.applies(x.shape, ct, wc.shape, group, s, d, p):
            if packed.winograd is None:
                packed.winograd = frozen(winograd.transformed_filter(wc))
            transformed = packed.winograd
        return conv_route(x.shape, ct, wc, group, s, d, p, bc, dw, w_aug, activation, residual, sparse, transformed)
    core = conv_route(x.shape, ct, wc, group, s, d, p, bc, dw, w_aug, None, False, sparse)
    return lambda x, z: core(x.astype(ct), None).astype(x.dtype)


def _pointwise_fits(x: np.ndarray, w: np.ndarray, b, packed: ConvWeights) -> bool:
    """Whether ``_pointwise`` computes what ``conv_core`` would, bit for bit: packed weights of ``x``'s
    dtype and its channels."""
    c = x.shape[1] if x.ndim == w.ndim else -1
    return (x.dtype == packed.ct and c == w.shape[1] and packed.w.shape == w.shape and x.size > 0
            and (packed.has_bias or b is None))


def _pointwise_route(shape: tuple, packed: ConvWeights, activation, residual: bool) -> Route:
    """A pointwise convolution of inputs of ``shape`` as one product W (M x C) @ x (C x pixels) per image,
    then the epilogue: what ``conv_core`` does for it (the same products, bit for bit), without its general
    set-up (~20-30 us a call, most of a small layer's time)."""
    n, c = shape[:2]
    m = packed.pointwise.shape[0]
    nd = len(shape) - 2
    pixels = math.prod(shape[2:])
    y_shape = (n, m) + tuple(shape[2:])
    # conv_core's choice for a widening layer with a bias and no epilogue: [W | b] @ [x ; 1]
    widen = packed.w_aug is not None and m >= 2 * c and activation is None and not residual
    finish = epilogue_finisher(m, None if widen else packed.b, activation, nd)
    w2 = packed.w_aug if widen else packed.pointwise

    # the fused epilogue's (code, parameters) as the native kernels take it, None where they cannot apply it
    code = row_kernels.activation_code(activation)
    epilogue = None if code is None else (code[0], np.array(code[1], _F32))
    own_gemm = (epilogue is not None and epilogue[0] in row_kernels.IN_REGISTERS and pixels >= OWN_GEMM_MIN_PIXELS
                and own_sgemm_fits(c, pixels) and own_sgemm_usable())
    if pixels == 1 and n > 1:
        return _batch_rows_route(n, c, m, y_shape, packed, epilogue if own_gemm else None,
                                 epilogue_finisher(m, packed.b, activation, nd))
    own_runner = _own_gemm_runner(shape, packed, epilogue) if own_gemm else None

    def pointwise(x: np.ndarray, z: np.ndarray | None) -> np.ndarray:
        pool = current_pool()
        if pool.splits_gemms and x.dtype == _F32 and pool.runs_native_tasks and epilogue is not None:
            y = own_runner(x, z, pool) if own_runner is not None else None
            if y is None:
                y = _pointwise_task(x, packed, epilogue, z, pool)
            if y is not None:
                return y
        if widen:
            cols = np.empty((n, c + 1, pixels), x.dtype)
            cols[:, :c] = x.reshape(n, c, pixels)
            cols[:, c] = 1
        else:
            cols = x.reshape(n, c, pixels)
        y = pool_matmul(w2, cols[0])[None] if n == 1 else np.matmul(w2, cols)
        return finish(y.reshape(y_shape), z)

    return pointwise


def _batch_rows_route(n: int, c: int, m: int, y_shape: tuple, packed: ConvWeights, epilogue: tuple | None,
                      finish: Callable) -> Route:
    """A pointwise convolution of 1-pixel images (a squeeze-and-excitation block's reduce and expand layers) as one
    product of the batch's rows, x (N x C) @ W^T (C x M), instead of N products of one column: on onyxrt's GEMM with
    the bias per column and the ``epilogue`` in its registers where the pool splits products, else BLAS's and
    ``finish`` (the bias, residual and activation after). Equal to the per-image products to float rounding
    (BLAS's GEMM and GEMV sum in other orders)."""
    w_t = frozen(np.ascontiguousarray(packed.pointwise.T))

    def batch_rows(x: np.ndarray, z: np.ndarray | None) -> np.ndarray:
        x2 = np.ascontiguousarray(x).reshape(n, c)
        if epilogue is not None and x.dtype == _F32 and current_pool().splits_gemms:
            y = np.empty(y_shape, _F32)
            z2 = None if z is None else np.ascontiguousarray(z).reshape(n, m)
            if (z2 is None or z2.dtype == _F32) and fused_product(x2, w_t, y.reshape(n, m), packed.b, z2, *epilogue,
                                                                  column_bias=True):
                return y
        return finish((x2 @ w_t).reshape(y_shape), z)

    return batch_rows


# Multiply-adds below which a pointwise task runs on the calling thread alone (gemm.MIN_PARALLEL_MACS).
_POINTWISE_PARALLEL_MACS = 1 << 19
# Pixels from which a pool that splits products runs a pointwise convolution on onyxrt's GEMM with the epilogue in
# its registers (``_own_gemm_runner``); fewer, on BLAS per block (``_pointwise_task``). Measured on 2 Zen 5 cores
# once the GEMM's last panel ran under a lane mask, alternating processes: mobilenet_v2 0.976x and resnet50 0.991x
# with every size on the GEMM (its 14x14 and 7x7 layers had been 1.05-1.15x BLAS's blocks with the narrow panel
# copied through a scratch tile).
OWN_GEMM_MIN_PIXELS = 0


def _pointwise_operands(x: np.ndarray, packed: ConvWeights, residual) -> tuple | None:
    """(x as (N, C, P), the output y (N, M, *spatial) and its (N, M, P) view, the residual as (N, M, P) or None),
    C-contiguous float32, for the pointwise routes' kernels; None where the residual does not match y."""
    n, c = x.shape[:2]
    m = packed.pointwise.shape[0]
    y = np.empty((n, m) + x.shape[2:], _F32)
    if residual is not None:
        if residual.shape != y.shape or residual.dtype != _F32:
            return None
        residual = np.ascontiguousarray(residual).reshape(n, m, -1)
    return np.ascontiguousarray(x).reshape(n, c, -1), y, y.reshape(n, m, -1), residual


def _own_gemm_runner(shape: tuple, packed: ConvWeights, epilogue: tuple) -> Callable | None:
    """The pointwise route on onyxrt's own GEMM for inputs of ``shape``: a function ``(x, residual, pool) -> y`` (None
    where a residual does not match y) running the batch's images as one native task over ``pool`` (B, each image's
    channels x pixels, read where it lies; the bias, residual and the ``epilogue``'s activation, one of
    ``row_kernels.IN_REGISTERS``, applied in the tile's registers), its arguments but the operands' addresses set up
    once; None where that GEMM does not run here."""
    module = optional_module("onyxrt.providers.cpu.math.sgemm_tiles") if own_sgemm_usable() else None
    if module is None:
        return None
    n, c = shape[:2]
    m = packed.pointwise.shape[0]
    pixels = math.prod(shape[2:])
    y_shape = (n, m) + tuple(shape[2:])
    act, params = epilogue
    bias = packed.b if packed.b is not None else _NO_VALUES
    template = module.task_template(packed.pointwise, pixels, n, bias, act, params, False)
    macs = n * m * c * pixels
    units = module.units(m, pixels, n)
    address = module.gemm_part.address

    def run(x: np.ndarray, z: np.ndarray | None, pool) -> np.ndarray | None:
        if z is None:
            residual = _NO_RESIDUAL3
        elif z.shape == y_shape and z.dtype == _F32:
            residual = np.ascontiguousarray(z).reshape(n, m, pixels)
        else:
            return None
        y = np.empty(y_shape, _F32)
        # images each contiguous are read where they lie, apart or not (a channel Slice's view: ShuffleNet's split);
        # anything else strided is copied, and the copy must live in a variable until the task has run, as the task
        # reads it by its address alone (a temporary was freed first, and the task read freed memory)
        images = x.reshape(n, c, pixels)
        if images.strides[1:] != (pixels * 4, 4):
            images = np.ascontiguousarray(images)
        args = module.operand_args(template, images, y.reshape(n, m, pixels), residual)
        # (``template``, ``bias`` and ``params`` stay referenced by this closure while the task runs)
        pool.run_native(address, args, own_sgemm_parts(pool, macs, units))
        return y

    return run


_NO_VALUES = np.zeros(0, _F32)
_NO_RESIDUAL3 = np.zeros((0, 0, 0), _F32)


def _pointwise_task(x: np.ndarray, packed: ConvWeights, epilogue: tuple, residual, pool) -> np.ndarray | None:
    """The pointwise route as one native task over the pool (``pointwise_conv_task``: each block's product and
    ``epilogue`` (code, parameters) together), for pools that split products; None where it does not apply (no
    compiled kernel or BLAS entry point, a residual the epilogue does not take)."""
    task = optional_module("onyxrt.providers.cpu.nn.pointwise_conv_task")
    operands = _pointwise_operands(x, packed, residual) if task is not None and task.SGEMM is not None else None
    if operands is None:
        return None
    x3, y, y3, residual3 = operands
    act, values = epilogue
    args, units = task.pack(packed.pointwise, x3, y3, packed.b, residual3, act, values, pool.num_threads)
    parts = min(units, pool.num_threads) if y3.size * x3.shape[1] >= _POINTWISE_PARALLEL_MACS else 1
    pool.run_native(task.pointwise_part.address, args, parts)
    return y
