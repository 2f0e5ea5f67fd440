"""Channels-last (NHWC) formulations of 2-D convolution and pooling with numpy/BLAS, measured
against onyxrt's NCHW kernels by ``benchmarks/layout.py`` (not part of the package: the
measurement found no end-to-end gain, see benchmarks/layout.md).

With the channels innermost every spatial position is one contiguous row of C values:

* a 1x1 stride-1 convolution is one GEMM, (N*H*W, C) @ (C, M), on the input as it is;
* a kxk convolution copies each kernel tap's window (whole channel rows) into a
  (N*OH*OW, K*C) column matrix, then one GEMM with the (K*C, M) filter;
* a depthwise convolution reads the zero-padded input split into stride phases, where
  every kernel tap's window is a contiguous run of whole rows: per band of output rows,
  either one flat multiply-add per tap against the weights tiled along the band, or
  (stride 1, many channels) one ``einsum`` over a (rows, kh, kw, C) strided view;
* a small-channel stem (RGB input) builds its column matrix channels-first instead.

Filters are laid out once (``NhwcConvWeights``): (kh, kw, C/group, M) for GEMMs,
(kh*kw, C) for depthwise ones. float16/bfloat16 are computed in float32.
"""

from __future__ import annotations

import numpy as np

from onyxrt.errors import NodeInputError, NodeInputTypeError
from onyxrt.providers.cpu.nn.conv_core import _axis_range, _im2col_plan, compute_dtype, conv_pads, copy_stride2, frozen, pairs_ok, spatial_defaults


def output_shape_2d(H, W, k, strides, dilations, pads) -> tuple[int, int]:
    OH = (H + pads[0] + pads[2] - (k[0] - 1) * dilations[0] - 1) // strides[0] + 1
    OW = (W + pads[1] + pads[3] - (k[1] - 1) * dilations[1] - 1) // strides[1] + 1
    if OH <= 0 or OW <= 0:
        raise NodeInputError(f"NHWC window output would be empty: input {H}x{W}, kernel {k}, pads {pads}")
    return OH, OW


def _tap_plan(H, W, k, strides, dilations, pads):
    """conv_core's per-tap copy plan (the NCHW kernel's own), without its stride-2 pair copies."""
    return _im2col_plan(H, W, tuple(k), tuple(strides), tuple(dilations), tuple(pads), False)


# Group-1 kxk convolutions with fewer input channels than this (an RGB stem) copy columns
# too short to be fast in channels-last order: ``_channel_major_conv`` builds them from
# the channels-first input instead (the input is small: few channels).
_MIN_CHANNEL_ROW = 8


class NhwcConvWeights:
    """A constant OIHW filter (and bias) laid out once for the NHWC core.

    ``gemm``: (G, kh*kw*C/G, M/G) (tap-major, then input channel; ``channel_major``: (1, C*kh*kw,
    M), channel-major, for ``_channel_major_conv``); ``depthwise``:
    (kh*kw, C) when the filter is depthwise (one input channel per group, M == C), else None.
    """

    __slots__ = ("ct", "shape", "group", "gemm", "depthwise", "channel_major", "b")

    def __init__(self, w: np.ndarray, b, group: int):
        if w.ndim != 4:
            raise NodeInputError(f"NHWC Conv: 2-D filters only, got shape {w.shape}")
        self.ct = ct = np.dtype(compute_dtype(w.dtype))
        self.shape = w.shape
        self.group = group = int(group)
        M, Cg, kh, kw = w.shape
        if group <= 0 or M % group:
            raise NodeInputError(f"NHWC Conv: filter {w.shape} and group {group} are inconsistent")
        wc = np.asarray(w, dtype=ct)
        self.depthwise = None
        self.channel_major = group == 1 and kh * kw > 1 and Cg < _MIN_CHANNEL_ROW
        if Cg == 1 and group == M:
            self.depthwise = frozen(np.ascontiguousarray(wc.reshape(M, kh * kw).T))
            self.gemm = None
        elif self.channel_major:
            self.gemm = frozen(np.ascontiguousarray(wc.reshape(M, Cg * kh * kw).T)[None])
        else:
            g = wc.reshape(group, M // group, Cg, kh, kw).transpose(0, 3, 4, 2, 1)
            self.gemm = frozen(np.ascontiguousarray(g).reshape(group, kh * kw * Cg, M // group))
        self.b = None if b is None else frozen(np.ascontiguousarray(b, dtype=ct).reshape(-1))


def _columns(x: np.ndarray, k, strides, dilations, pads, OH, OW) -> np.ndarray:
    """The (N, OH, OW, kh*kw, C) column tensor of ``x`` (N, H, W, C)."""
    N, H, W, C = x.shape
    K = k[0] * k[1]
    plan = _tap_plan(H, W, k, strides, dilations, pads)
    cols = np.empty((N, OH, OW, K, C), dtype=x.dtype)
    for t, rows, cols_ in plan.zeros:
        cols[:, rows, cols_, t] = 0
    for t, dr, dc, rows, cols_, _ in plan.copies:
        cols[:, dr, dc, t] = x[:, rows, cols_]
    return cols


def _channel_major_conv(x, gemm, k, strides, dilations, pads, OH, OW) -> np.ndarray:
    """(N, OH, OW, M) of a group-1 convolution through a (N, C*K, OH*OW) column matrix
    of the channels-first input, multiplied transposed (BLAS reads it in place)."""
    N, H, W, C = x.shape
    K = k[0] * k[1]
    xn = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    plan = _tap_plan(H, W, k, strides, dilations, pads)
    cols = np.empty((N, C, K, OH, OW), dtype=x.dtype)
    for t, rows, cols_ in plan.zeros:
        cols[:, :, t, rows, cols_] = 0
    pairs = strides[1] == 2 and pairs_ok(xn)
    for t, dr, dc, rows, cols_, _ in plan.copies:
        if pairs:
            copy_stride2(cols[:, :, t, dr, dc], xn[:, :, rows], cols_.start, dc.stop - dc.start)
        else:
            cols[:, :, t, dr, dc] = xn[:, :, rows, cols_]
    cols = cols.reshape(N, C * K, OH * OW)
    y = np.matmul(cols.transpose(0, 2, 1), gemm[0])
    return y.reshape(N, OH, OW, gemm.shape[2])


def _gemm_conv(x, gemm, group, k, strides, dilations, pads, OH, OW) -> np.ndarray:
    """(N, OH, OW, M) of a convolution through one GEMM per group."""
    N, H, W, C = x.shape
    K = k[0] * k[1]
    G, KC, Mg = gemm.shape
    P = N * OH * OW
    if K == 1 and pads == [0, 0, 0, 0]:
        xs = x if strides == [1, 1] else x[:, :: strides[0], :: strides[1]]
        xs = xs[:, :OH, :OW]
        cols = np.ascontiguousarray(xs).reshape(P, C)
    else:
        cols = _columns(x, k, strides, dilations, pads, OH, OW).reshape(P, K, C)
        if G == 1:
            cols = cols.reshape(P, K * C)
    if G == 1:
        return np.matmul(cols, gemm[0]).reshape(N, OH, OW, Mg)
    Cg = C // G
    # (G, P, K*Cg) per group: its channels of every tap
    cg = cols.reshape(P, K, G, Cg).transpose(2, 0, 1, 3).reshape(G, P, K * Cg)
    y = np.matmul(cg, gemm)  # (G, P, Mg)
    return np.ascontiguousarray(y.transpose(1, 0, 2)).reshape(N, OH, OW, G * Mg)


# Elements of one depthwise band (its accumulator, product buffer and tiled weights stay
# in L2 while the taps go over it).
_DW_BAND_ELEMENTS = 1 << 15


def _phase_images(x, pads, strides, Hq, Wq):
    """Zero-padded ``x`` (N, H, W, C) split into its stride phases: (s0, s1, N, Hq, Wq, C),
    phase (a, b) holding padded rows a, a+s0, ... and columns b, b+s1, ..."""
    N, H, W, C = x.shape
    s0, s1 = strides
    buf = np.zeros((s0, s1, N, Hq, Wq, C), dtype=x.dtype)
    for a in range(s0):
        r0, nr, xr0 = _axis_range(H, Hq, a, s0, pads[0])
        for b in range(s1):
            q0, nq, xc0 = _axis_range(W, Wq, b, s1, pads[1])
            if nr and nq:
                buf[a, b, :, r0 : r0 + nr, q0 : q0 + nq] = x[:, xr0 : xr0 + s0 * (nr - 1) + 1 : s0, xc0 : xc0 + s1 * (nq - 1) + 1 : s1]
    return buf


def _depthwise_conv(x, taps, b, k, strides, dilations, pads, OH, OW, activation) -> np.ndarray:
    """(N, OH, OW, C) depthwise convolution; ``taps`` (kh*kw, C) per-tap channel weights.

    The padded input is split into stride phases of width Wq, so every tap reads a
    contiguous run of whole phase rows; each band of output rows is computed Wq wide
    (the Wq - OW extra columns are dropped when the last tap writes the result) with
    flat, contiguous multiply-adds against weights tiled to the band's length."""
    N, H, W, C = x.shape
    s0, s1 = strides
    d0, d1 = dilations
    kh, kw = k
    # phase image extent: every tap's rows/cols of every output (band reads may run to Hq)
    Hq = OH + ((kh - 1) * d0) // s0 + 1
    Wq = max(OW + ((kw - 1) * d1) // s1, -(-(W + pads[1] + pads[3]) // s1))
    ph = _phase_images(x, pads, strides, Hq, Wq)
    row = Wq * C
    flat = ph.reshape(s0, s1, N, Hq * row)
    if s0 == s1 == 1 and C >= _DW_EINSUM_MIN_CHANNELS:
        return _depthwise_einsum(flat[0, 0], taps.reshape(kh, kw, C), b, (d0 * row, d1 * C), OH, OW, Wq, activation, x.dtype)
    band = max(1, min(OH, _DW_BAND_ELEMENTS // row))
    L = band * row
    tiled = np.tile(taps, (1, band * Wq))  # (K, L): each tap's weights along a band
    acc = np.empty(L, dtype=x.dtype)
    tmp = np.empty(L, dtype=x.dtype)
    y = np.empty((N, OH, OW, C), dtype=x.dtype)
    K = kh * kw
    offsets = []
    for t in range(K):
        i, j = divmod(t, kw)
        ri, rj = i * d0, j * d1
        offsets.append((ri % s0, rj % s1, (ri // s0) * row + (rj // s1) * C))
    for n in range(N):
        for r0 in range(0, OH, band):
            nb = min(band, OH - r0)
            n_el = nb * row
            a_ = acc[:n_el]
            t_ = tmp[:n_el]
            base = r0 * row
            for t, (a, bb, off) in enumerate(offsets):
                src = flat[a, bb, n, base + off : base + off + n_el]
                if t == 0:
                    np.multiply(src, tiled[t, :n_el], out=a_)
                else:
                    np.multiply(src, tiled[t, :n_el], out=t_)
                    a_ += t_
            out = y[n, r0 : r0 + nb]
            out[...] = a_.reshape(nb, Wq, C)[:, :OW]
            if b is not None:
                out += b
            if activation is not None:
                activation(out)
    return y


# From this many channels, numpy's einsum (one pass, summing the taps per channel row)
# beats the per-tap multiply-adds on stride-1 depthwise convolutions.
_DW_EINSUM_MIN_CHANNELS = 64
_DW_EINSUM_BAND_ELEMENTS = 1 << 17


def _depthwise_einsum(flat, w3, b, tap_strides, OH, OW, Wq, activation, dtype) -> np.ndarray:
    """Stride-1 depthwise convolution over the flat padded images ``flat`` (N, Hq*Wq*C):
    per band of output rows, a (rows, kh, kw, C) strided view of the input summed against
    the (kh, kw, C) weights by ``einsum``."""
    N = flat.shape[0]
    kh, kw, C = w3.shape
    item = flat.itemsize
    row = Wq * C
    y = np.empty((N, OH, OW, C), dtype=dtype)
    band = max(1, min(OH, _DW_EINSUM_BAND_ELEMENTS // row))
    acc = np.empty((band * Wq, C), dtype=dtype)
    for n in range(N):
        for r0 in range(0, OH, band):
            nb = min(band, OH - r0)
            start = flat[n, r0 * row :]
            view = np.lib.stride_tricks.as_strided(
                start, (nb * Wq, kh, kw, C), (C * item, tap_strides[0] * item, tap_strides[1] * item, item), writeable=False
            )
            a_ = acc[: nb * Wq]
            np.einsum("pijc,ijc->pc", view, w3, out=a_)
            out = y[n, r0 : r0 + nb]
            out[...] = a_.reshape(nb, Wq, C)[:, :OW]
            if b is not None:
                out += b
            if activation is not None:
                activation(out)
    return y


def nhwc_conv(x: np.ndarray, w: np.ndarray, b, group, strides, dilations, pads, auto_pad, kernel_shape,
              packed: NhwcConvWeights | None = None, activation=None) -> np.ndarray:
    """Conv of ``x`` (N, H, W, C) with the OIHW filter ``w`` (M, C/group, kh, kw): (N, OH, OW, M).

    ``packed``: ``w`` and ``b`` laid out beforehand; ``activation``: an in-place function of the
    result (applied in the compute dtype when that is the input's)."""
    if x.ndim != 4 or w.ndim != 4:
        raise NodeInputError(f"NHWC Conv: 2-D convolutions only, got input {x.shape} and filter {w.shape}")
    if not np.issubdtype(x.dtype, np.floating) and x.dtype.kind != "V":
        raise NodeInputTypeError(f"NHWC Conv does not support dtype {x.dtype}")
    if kernel_shape and [int(v) for v in kernel_shape] != list(w.shape[2:]):
        raise NodeInputError(f"kernel_shape {list(kernel_shape)} does not match the weight shape {w.shape}")
    N, H, W, C = x.shape
    M, Cg, kh, kw = w.shape
    group = int(group)
    if group <= 0 or Cg * group != C or M % group:
        raise NodeInputError(f"input channels {C}, weight shape {w.shape} and group {group} are inconsistent")
    k = (kh, kw)
    s, d = spatial_defaults(2, strides, dilations)
    p = conv_pads((H, W), k, s, d, pads, auto_pad)
    if any(v < 0 for v in p):
        raise NodeInputError(f"NHWC Conv: negative pads {p} are not supported")
    OH, OW = output_shape_2d(H, W, k, s, d, p)
    ct = np.dtype(compute_dtype(x.dtype))
    if packed is None or packed.ct != ct or packed.shape != w.shape or packed.group != group or (b is None) != (packed.b is None):
        packed = NhwcConvWeights(w, b, group)
    xc = x if x.dtype == ct else x.astype(ct)
    fn = activation if xc is x else None
    if packed.depthwise is not None:
        y = _depthwise_conv(np.ascontiguousarray(xc), packed.depthwise, packed.b, k, s, d, p, OH, OW, fn)
    else:
        if packed.channel_major:
            y = _channel_major_conv(xc, packed.gemm, k, s, d, p, OH, OW)
        else:
            y = _gemm_conv(np.ascontiguousarray(xc), packed.gemm, group, k, s, d, p, OH, OW)
        if packed.b is not None:
            y += packed.b
        if fn is not None:
            fn(y)
    return y if y.dtype == x.dtype else y.astype(x.dtype)


def nhwc_max_pool_2d(x: np.ndarray, k, strides, dilations, pads) -> np.ndarray:
    """Max over 2-D windows of ``x`` (N, H, W, C) (float; explicit non-negative pads):
    one ``np.maximum`` per kernel tap over whole channel rows."""
    N, H, W, C = x.shape
    OH, OW = output_shape_2d(H, W, k, strides, dilations, pads)
    plan = _tap_plan(H, W, k, strides, dilations, pads)
    y = np.full((N, OH, OW, C), -np.inf, dtype=x.dtype)
    for _, dr, dc, rows, cols in plan.copies:
        np.maximum(y[:, dr, dc], x[:, rows, cols], out=y[:, dr, dc])
    return y


def global_average_nhwc(x: np.ndarray) -> np.ndarray:
    """(N, 1, 1, C) mean over the spatial axes of ``x`` (N, H, W, C)."""
    N, H, W, C = x.shape
    return x.reshape(N, H * W, C).mean(axis=1, dtype=compute_dtype(x.dtype)).astype(x.dtype, copy=False).reshape(N, 1, 1, C)


def nchwc_conv_1x1(xb: np.ndarray, wb: np.ndarray, b) -> np.ndarray:
    """A 1x1 stride-1 convolution in blocked channels (NCHWc, onnxruntime's NchwcTransformer
    layout): ``xb`` (C/bs, H*W, bs), ``wb`` (C/bs, bs, M) the filter rows of each input block;
    one (H*W, bs) @ (bs, M) GEMM per input block (batched), summed over the blocks, then
    the (H*W, M) result put back into (M/bs, H*W, bs) blocks."""
    y = np.matmul(xb, wb).sum(axis=0)
    if b is not None:
        y += b
    hw, m = y.shape
    bs = xb.shape[2]
    return np.ascontiguousarray(y.reshape(hw, m // bs, bs).transpose(1, 0, 2))


def nchwc_blocks(x: np.ndarray, w: np.ndarray, bs: int) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (1, C, H, W) and a 1x1 filter ``w`` (M, C, 1, 1) in ``nchwc_conv_1x1``'s layout."""
    _, C, H, W = x.shape
    M = w.shape[0]
    xb = np.ascontiguousarray(x.reshape(C // bs, bs, H * W).transpose(0, 2, 1))
    wb = np.ascontiguousarray(w.reshape(M, C // bs, bs).transpose(1, 2, 0))
    return xb, wb
