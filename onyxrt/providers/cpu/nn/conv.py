"""Convolution kernels: Conv, ConvTranspose, ConvInteger, QLinearConv, DeformConv,
CausalConvWithState.

Conv is computed as im2col + one large BLAS matmul per call (groups are batched
into a single ``np.matmul``):

* 1x1 convolutions (any stride) need no im2col: the (strided) input is the
  column matrix itself;
* depthwise convolutions (groups == C_in, one input channel per group) accumulate
  the kernel taps with vectorised multiply-adds instead of many tiny matmuls. In
  2-D the padded input is split into stride phases and flattened, so each tap is
  one contiguous window (output rows carry a few junk columns, dropped at the
  end); large ones split their channels over a small thread pool, small images
  with many channels use a (pixels, channels) layout;
* other 2-D convolutions on wide images build the im2col rows the same way (one
  contiguous copy per tap and channel); everything else copies each kernel tap's
  strided window of the padded input into a (N, C*K, P) column buffer.

float16/bfloat16 are computed in float32, float64 in float64; 8-bit integer
convolutions in float64 (exact), then converted.
"""

from __future__ import annotations

import itertools
import math
import os
import threading

import numpy as np

from ..registry import op

# --------------------------------------------------------------------------- geometry helpers
# (also used by pool.py)


def compute_dtype(dtype) -> type:
    """The numpy dtype arithmetic is done in for a floating input dtype."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def spatial_defaults(nd: int, strides, dilations) -> tuple[list[int], list[int]]:
    s = [int(v) for v in strides] if strides else [1] * nd
    d = [int(v) for v in dilations] if dilations else [1] * nd
    if len(s) != nd or len(d) != nd:
        raise ValueError(f"strides {s} / dilations {d} do not match {nd} spatial dimensions")
    if any(v <= 0 for v in s) or any(v <= 0 for v in d):
        raise ValueError(f"strides {s} and dilations {d} must be positive")
    return s, d


def _auto_pad_name(auto_pad) -> str:
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    auto_pad = auto_pad or "NOTSET"
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise ValueError(f"unsupported auto_pad value {auto_pad!r}")
    return auto_pad


def conv_pads(in_sp, kernel, strides, dilations, pads, auto_pad) -> list[int]:
    """Explicit [begin..., end...] pads of a Conv / pooling window (SAME: out = ceil(in / stride))."""
    nd = len(in_sp)
    auto_pad = _auto_pad_name(auto_pad)
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
        raise ValueError(f"pads {pads} must have {2 * nd} values")
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


def _check_kernel_shape(kernel_shape, w):
    if kernel_shape and [int(k) for k in kernel_shape] != list(w.shape[2:]):
        raise ValueError(f"kernel_shape {list(kernel_shape)} does not match the weight shape {w.shape}")


_POOL = None
_PARALLEL_MIN_ELEMENTS = 1 << 17


_POOL_LOCK = threading.Lock()


def _thread_pool():
    """A small lazily created pool for splitting large elementwise work across cores.

    Tasks submitted to it never wait on other tasks, so concurrent callers cannot deadlock.
    """
    global _POOL
    if _POOL is None:
        with _POOL_LOCK:
            if _POOL is None:
                from concurrent.futures import ThreadPoolExecutor

                _POOL = ThreadPoolExecutor(max_workers=max(1, _WORKERS - 1), thread_name_prefix="onyxrt-conv")
    return _POOL


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


_WORKERS = min(4, _cpu_count())


def _run_chunks(fn, rows: int, elements: int) -> None:
    """Call fn(r0, r1) over row chunks, in parallel threads when the work is large."""
    workers = _WORKERS
    if workers < 2 or elements < _PARALLEL_MIN_ELEMENTS or rows < 2:
        fn(0, rows)
        return
    n = min(workers, rows)
    bounds = [rows * i // n for i in range(n + 1)]
    futures = [_thread_pool().submit(fn, bounds[i], bounds[i + 1]) for i in range(1, n)]
    fn(bounds[0], bounds[1])
    for f in futures:
        f.result()


def phase_images_2d(x: np.ndarray, pads, strides, max_tail: int, channels_last: bool = False):
    """Zero-padded ``x`` (N, C, H, W) split into stride phases, flattened per image.

    Returns ``(buf, Wq)`` with ``buf`` of shape (s0, s1, N*C, Hq*Wq + tail): phase
    (a, b) holds padded rows a, a+s0, ... and columns b, b+s1, ... as an Hq x Wq
    row-major image, followed by ``max_tail`` (rounded up to whole rows) zeros so
    flat windows may run past the last row. Padded position (a + s0*r, b + s1*q)
    sits at ``buf[a, b, :, r*Wq + q]``. With ``channels_last`` the last two axes
    are swapped: (s0, s1, Hq*Wq + tail, N*C).
    """
    N, C, H, W = x.shape
    s0, s1 = strides
    pt, pl, pb, pr = pads
    Hp, Wp = H + pt + pb, W + pl + pr
    Hq, Wq = -(-Hp // s0), -(-Wp // s1)
    extra = -(-max_tail // Wq) if max_tail > 0 else 0
    if channels_last:
        buf = np.zeros((s0, s1, Hq + extra, Wq, N * C), dtype=x.dtype)
        xr = x.reshape(N * C, H, W).transpose(1, 2, 0)
    else:
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
    if channels_last:
        for a, b, dr, dc, rows, cols in copies:
            buf[a, b, dr, dc, :] = xr[rows, cols, :]
    else:
        def fill(c0, c1):
            for a, b, dr, dc, rows, cols in copies:
                buf[a, b, c0:c1, dr, dc] = xr[c0:c1, rows, cols]

        # strided (stride > 1) gathers are slow enough to be worth splitting across threads
        if s0 * s1 > 1:
            _run_chunks(fill, N * C, x.size)
        else:
            fill(0, N * C)
    flat = (Hq + extra) * Wq
    if channels_last:
        return buf.reshape(s0, s1, flat, N * C), Wq
    return buf.reshape(s0, s1, N * C, flat), Wq


def _depthwise(x, w, b, strides, dilations, pads, out_sp):
    """Depthwise conv (+ bias): ``x`` (N, C, ...) unpadded, ``w`` (C, 1, *k). Returns a contiguous array."""
    N, C = x.shape[:2]
    nd = x.ndim - 2
    k = w.shape[2:]
    K = math.prod(k)
    wf = w.reshape(C, K)
    dtype = x.dtype
    if nd == 2 and all(p >= 0 for p in pads):
        # Each tap is one contiguous window of a flattened (phase) image: long
        # contiguous rows for every numpy call; junk columns are dropped at the end.
        OH, OW = out_sp
        taps = _flat_taps(k, strides, dilations)
        max_qj = max(t[3] for t in taps)
        R = N * C
        wcol = wf if N == 1 else np.tile(wf, (N, 1))
        bflat = None if b is None else np.asarray(b, dtype=dtype).reshape(-1)
        if bflat is not None and N > 1:
            bflat = np.tile(bflat, N)
        Wq = -(-(x.shape[3] + pads[1] + pads[3]) // strides[1])
        if OH * Wq < 4 * R:
            return _depthwise_channels_last(x, wcol, bflat, pads, strides, taps, max_qj, out_sp)
        buf, Wq = phase_images_2d(x, pads, strides, max_qj)
        L = OH * Wq
        bcol = None if bflat is None else bflat.reshape(R, 1, 1)
        y = np.empty((R, OH, OW), dtype=dtype)

        def work(r0, r1):
            out = np.empty((r1 - r0, L), dtype=dtype)
            tmp = np.empty((r1 - r0, L), dtype=dtype)
            for t, (pa, pb, qi, qj) in enumerate(taps):
                off = qi * Wq + qj
                src = buf[pa, pb, r0:r1, off : off + L]
                if t == 0:
                    np.multiply(src, wcol[r0:r1, t : t + 1], out=out)
                else:
                    np.multiply(src, wcol[r0:r1, t : t + 1], out=tmp)
                    out += tmp
            res = out.reshape(r1 - r0, OH, Wq)[:, :, :OW]
            if bcol is None:
                y[r0:r1] = res
            else:
                np.add(res, bcol[r0:r1], out=y[r0:r1])

        _run_chunks(work, R, R * L * K)
        return y.reshape(N, C, OH, OW)
    xp = pad_spatial(x, pads[:nd], pads[nd:])
    out = np.empty((N, C) + tuple(out_sp), dtype=dtype)
    tmp = np.empty_like(out)
    wb = wf.reshape((1, C, K) + (1,) * nd)
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


def _depthwise_channels_last(x, wcol, bflat, pads, strides, taps, max_qj, out_sp):
    """Depthwise 2-D conv for small images with many channels: (pixels, channels) layout,
    so every numpy call runs over long contiguous channel rows."""
    N, C = x.shape[:2]
    R = N * C
    OH, OW = out_sp
    dtype = x.dtype
    buf, Wq = phase_images_2d(x, pads, strides, max_qj, channels_last=True)
    L = OH * Wq
    wt = np.ascontiguousarray(wcol.T)  # (K, R)
    out = np.empty((L, R), dtype=dtype)
    tmp = np.empty((L, R), dtype=dtype)
    for t, (pa, pb, qi, qj) in enumerate(taps):
        off = qi * Wq + qj
        src = buf[pa, pb, off : off + L]
        if t == 0:
            np.multiply(src, wt[t], out=out)
        else:
            np.multiply(src, wt[t], out=tmp)
            out += tmp
    if bflat is not None:
        out += bflat
    res = out.reshape(OH, Wq, R)[:, :OW, :]
    return np.ascontiguousarray(res.transpose(2, 0, 1)).reshape(N, C, OH, OW)


def _flat_taps(k, strides, dilations):
    """(phase row, phase col, row offset, col offset) of each 2-D kernel tap in phase images."""
    taps = []
    for i in range(k[0]):
        for j in range(k[1]):
            ri, rj = i * dilations[0], j * dilations[1]
            taps.append((ri % strides[0], rj % strides[1], ri // strides[0], rj // strides[1]))
    return taps


def _conv2d_flat(x, w, group, strides, dilations, pads, out_sp):
    """2-D conv whose im2col rows are contiguous windows of flattened phase images.

    The GEMM then also computes a few junk columns per output row (dropped at the
    end); returns None when those would waste too much work.
    """
    N, C = x.shape[:2]
    M, Cg = w.shape[:2]
    k = w.shape[2:]
    K = k[0] * k[1]
    OH, OW = out_sp
    Wq = -(-(x.shape[3] + pads[1] + pads[3]) // strides[1])
    if Wq > OW * 1.1:
        return None
    taps = _flat_taps(k, strides, dilations)
    buf, Wq = phase_images_2d(x, pads, strides, max(t[3] for t in taps))
    L = OH * Wq
    cols = np.empty((N * C, K, L), dtype=x.dtype)
    for t, (a, b, qi, qj) in enumerate(taps):
        off = qi * Wq + qj
        cols[:, t, :] = buf[a, b, :, off : off + L]
    cols = cols.reshape(N, C * K, L)
    if group == 1:
        w2 = w.reshape(M, Cg * K)
        y = np.matmul(w2, cols[0])[None] if N == 1 else np.matmul(w2, cols)
    else:
        y = np.matmul(w.reshape(group, M // group, Cg * K), cols.reshape(N, group, Cg * K, L))
    return y.reshape(N, M, OH, Wq)[:, :, :, :OW]


def conv_core(x: np.ndarray, w: np.ndarray, group: int, strides, dilations, pads, b=None) -> np.ndarray:
    """N-D cross-correlation of ``x`` (N, C, *spatial) with ``w`` (M, C/group, *k), same dtype.

    ``pads`` is the explicit [begin..., end...] list; ``b`` an optional bias (M,).
    Returns a contiguous (N, M, *out_spatial) array.
    """
    N, C = x.shape[:2]
    nd = x.ndim - 2
    M, Cg = w.shape[:2]
    k = tuple(w.shape[2:])
    group = int(group)
    if group <= 0 or Cg * group != C or M % group:
        raise ValueError(f"input channels {C}, weight shape {w.shape} and group {group} are inconsistent")
    if len(k) != nd:
        raise ValueError(f"weight shape {w.shape} does not match input rank {x.ndim}")
    padded = [x.shape[2 + i] + pads[i] + pads[nd + i] for i in range(nd)]
    out_sp = [(padded[i] - (k[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(nd)]
    if any(o <= 0 for o in out_sp):
        raise ValueError(f"convolution output would be empty: input {x.shape}, kernel {k}, pads {pads}")
    P = math.prod(out_sp)
    K = math.prod(k)
    Mg = M // group

    if Cg == 1 and group == C and N * C * P > 0:
        if M != C:
            # channel multiplier: output channel m reads input channel m // (M // C)
            x = np.repeat(x, M // C, axis=1)
        return _depthwise(x, w, b, strides, dilations, pads, out_sp)

    if nd == 2 and K > 1 and all(p >= 0 for p in pads) and N * C > 0:
        y = _conv2d_flat(x, w, group, strides, dilations, pads, out_sp)
        if y is not None:
            return _add_bias(y, b, nd)

    if K == 1:
        xp = pad_spatial(x, pads[:nd], pads[nd:])
        xs = xp[(slice(None), slice(None)) + tuple(slice(0, strides[i] * (out_sp[i] - 1) + 1, strides[i]) for i in range(nd))]
        cols = xs.reshape(N, C, P)
    else:
        xp = pad_spatial(x, pads[:nd], pads[nd:])
        cols = np.empty((N, C) + k + tuple(out_sp), dtype=x.dtype)
        for tap in itertools.product(*(range(kk) for kk in k)):
            src = xp[(slice(None), slice(None)) + tuple(window_slice(tap[i], dilations[i], strides[i], out_sp[i]) for i in range(nd))]
            cols[(slice(None), slice(None)) + tap] = src
        cols = cols.reshape(N, C * K, P)
    if group == 1:
        w2 = w.reshape(M, Cg * K)
        y = np.matmul(w2, cols[0])[None] if N == 1 else np.matmul(w2, cols)
    else:
        wg = w.reshape(group, Mg, Cg * K)
        y = np.matmul(wg, cols.reshape(N, group, Cg * K, P))
    return _add_bias(y.reshape((N, M) + tuple(out_sp)), b, nd)


def _add_bias(y: np.ndarray, b, nd: int) -> np.ndarray:
    if b is None:
        return np.ascontiguousarray(y)
    b = np.asarray(b, dtype=y.dtype).reshape((1, -1) + (1,) * nd)
    if y.flags.c_contiguous and y.flags.writeable:  # y is always a fresh result here
        y += b
        return y
    return y + b


def _float_conv(x, w, b, group, strides, dilations, pads, auto_pad, kernel_shape):
    if x.ndim < 3:
        raise ValueError(f"Conv input must have rank >= 3, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating) and x.dtype.kind != "V":
        raise TypeError(f"Conv does not support dtype {x.dtype}")
    _check_kernel_shape(kernel_shape, w)
    nd = x.ndim - 2
    s, d = spatial_defaults(nd, strides, dilations)
    p = conv_pads(x.shape[2:], w.shape[2:], s, d, pads, auto_pad)
    ct = compute_dtype(x.dtype)
    xc = x if x.dtype == ct else x.astype(ct)
    wc = w if w.dtype == ct else w.astype(ct)
    bc = None if b is None else np.asarray(b).astype(ct, copy=False)
    y = conv_core(xc, wc, group, s, d, p, bc)
    return y if y.dtype == x.dtype else y.astype(x.dtype)


@op("Conv", versions=(1, 11, 22))
def conv(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    return _float_conv(x, w, b, group, strides, dilations, pads, auto_pad, kernel_shape)


# --------------------------------------------------------------------------- ConvTranspose


def conv_transpose_pads(in_sp, kernel, strides, dilations, pads, auto_pad, output_padding, output_shape):
    """(begin, end, output_padding) for ConvTranspose per the ONNX spec."""
    nd = len(in_sp)
    auto_pad = _auto_pad_name(auto_pad)
    op_ = [int(v) for v in output_padding] if output_padding else [0] * nd
    if len(op_) != nd:
        raise ValueError(f"output_padding {op_} must have {nd} values")
    full = [strides[i] * (in_sp[i] - 1) + op_[i] + (kernel[i] - 1) * dilations[i] + 1 for i in range(nd)]
    target = None
    if output_shape:
        target = [int(v) for v in output_shape]
        if len(target) == nd + 2:
            target = target[2:]
        if len(target) != nd:
            raise ValueError(f"output_shape {list(output_shape)} must have {nd} values")
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = [in_sp[i] * strides[i] for i in range(nd)]
    if target is not None:
        # Like onnxruntime, a negative total padding is clamped to 0: SAME then yields
        # the uncropped size, an explicit output_shape is reached by zeros at the end.
        begin, end = [], []
        for i in range(nd):
            total = max(0, full[i] - target[i])
            b = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begin.append(b)
            end.append(full[i] - b - (target[i] if output_shape else full[i] - total))
        return begin, end, op_
    if auto_pad == "VALID" or not pads:
        return [0] * nd, [0] * nd, op_
    pads = [int(p) for p in pads]
    if len(pads) != 2 * nd:
        raise ValueError(f"pads {pads} must have {2 * nd} values")
    return pads[:nd], pads[nd:], op_


def conv_transpose_core(x, w, group, strides, dilations, begin, end, output_padding):
    N, C = x.shape[:2]
    nd = x.ndim - 2
    in_sp = x.shape[2:]
    k = tuple(w.shape[2:])
    Cw, Mg = w.shape[:2]
    group = int(group)
    if Cw != C or group <= 0 or C % group:
        raise ValueError(f"input channels {C}, weight shape {w.shape} and group {group} are inconsistent")
    Cg = C // group
    M = Mg * group
    K = math.prod(k)
    P = math.prod(in_sp)
    wt = w.reshape(group, Cg, Mg * K).transpose(0, 2, 1)  # (G, Mg*K, Cg)
    xg = x.reshape(N, group, Cg, P)
    cols = np.matmul(wt, xg).reshape((N, M) + k + tuple(in_sp))
    full = [strides[i] * (in_sp[i] - 1) + (k[i] - 1) * dilations[i] + 1 + output_padding[i] for i in range(nd)]
    out = np.zeros((N, M) + tuple(full), dtype=x.dtype)
    for tap in itertools.product(*(range(kk) for kk in k)):
        dst = out[(slice(None), slice(None)) + tuple(window_slice(tap[i], dilations[i], strides[i], in_sp[i]) for i in range(nd))]
        dst += cols[(slice(None), slice(None)) + tap]
    return pad_spatial(out, [-b for b in begin], [-e for e in end])


@op("ConvTranspose", versions=(1, 11, 22))
def conv_transpose(
    x,
    w,
    b=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    output_padding=None,
    output_shape=None,
    pads=None,
    strides=None,
):
    if x.ndim < 3:
        raise ValueError(f"ConvTranspose input must have rank >= 3, got shape {x.shape}")
    _check_kernel_shape(kernel_shape, w)
    nd = x.ndim - 2
    s, d = spatial_defaults(nd, strides, dilations)
    begin, end, op_ = conv_transpose_pads(x.shape[2:], w.shape[2:], s, d, pads, auto_pad, output_padding, output_shape)
    ct = compute_dtype(x.dtype)
    xc = x if x.dtype == ct else x.astype(ct)
    wc = w if w.dtype == ct else w.astype(ct)
    y = conv_transpose_core(xc, wc, group, s, d, begin, end, op_)
    y = _add_bias(y, b, nd)
    return y if y.dtype == x.dtype else y.astype(x.dtype)


# --------------------------------------------------------------------------- quantized


def _zero_point_shift(v: np.ndarray, zp, per_channel_axis_len: int | None = None) -> np.ndarray:
    """``v - zp`` in float64 (exact for 8-bit data); ``zp`` may be per output channel (axis 0)."""
    out = v.astype(np.float64)
    if zp is None:
        return out
    zp = np.asarray(zp)
    if zp.size == 1:
        z = float(zp.reshape(-1)[0])
        if z:
            out -= z
        return out
    if per_channel_axis_len is None or zp.size != per_channel_axis_len:
        raise ValueError(f"zero point of shape {zp.shape} is not per-tensor or per-output-channel")
    out -= zp.astype(np.float64).reshape((-1,) + (1,) * (v.ndim - 1))
    return out


def _int_conv(x, w, x_zero_point, w_zero_point, group, strides, dilations, pads, auto_pad, kernel_shape):
    if x.ndim < 3:
        raise ValueError(f"input must have rank >= 3, got shape {x.shape}")
    for name, t in (("x", x), ("w", w)):
        if t.dtype not in (np.int8, np.uint8):
            raise TypeError(f"{name} must be int8 or uint8, got {t.dtype}")
    _check_kernel_shape(kernel_shape, w)
    nd = x.ndim - 2
    s, d = spatial_defaults(nd, strides, dilations)
    p = conv_pads(x.shape[2:], w.shape[2:], s, d, pads, auto_pad)
    if x_zero_point is not None and np.asarray(x_zero_point).size != 1:
        raise ValueError("x_zero_point must be a scalar (per-tensor)")
    xc = _zero_point_shift(x, x_zero_point)
    wc = _zero_point_shift(w, w_zero_point, w.shape[0])
    return conv_core(xc, wc, group, s, d, p)  # exact integers in float64


@op("ConvInteger", versions=10)
def conv_integer(
    x, w, x_zero_point=None, w_zero_point=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None
):
    y = _int_conv(x, w, x_zero_point, w_zero_point, group, strides, dilations, pads, auto_pad, kernel_shape)
    return np.ascontiguousarray(y).astype(np.int32)


def requantize(acc: np.ndarray, multiplier: np.ndarray, y_zero_point, out_dtype) -> np.ndarray:
    """round_half_even(acc * multiplier) + zero point, saturated to ``out_dtype`` (int8/uint8)."""
    info = np.iinfo(out_dtype)
    y = acc.astype(np.float32) * multiplier
    np.rint(y, out=y)
    if y_zero_point is not None:
        y += np.float32(np.asarray(y_zero_point).reshape(-1)[0])
    np.clip(y, info.min, info.max, out=y)
    return y.astype(out_dtype)


@op("QLinearConv", versions=10)
def qlinear_conv(
    x,
    x_scale,
    x_zero_point,
    w,
    w_scale,
    w_zero_point,
    y_scale,
    y_zero_point,
    b=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    pads=None,
    strides=None,
):
    acc = _int_conv(x, w, x_zero_point, w_zero_point, group, strides, dilations, pads, auto_pad, kernel_shape)
    nd = x.ndim - 2
    M = w.shape[0]
    if b is not None:
        acc = acc + np.asarray(b, dtype=np.float64).reshape((1, -1) + (1,) * nd)
    ws = np.asarray(w_scale, dtype=np.float32).reshape(-1)
    if ws.size not in (1, M):
        raise ValueError(f"w_scale must be per-tensor or per-output-channel, got shape {np.shape(w_scale)}")
    mult = (np.float32(np.asarray(x_scale).reshape(-1)[0]) * ws) / np.float32(np.asarray(y_scale).reshape(-1)[0])
    mult = mult.astype(np.float32).reshape((1, -1) + (1,) * nd) if ws.size > 1 else mult.astype(np.float32)[0]
    out_dtype = np.asarray(y_zero_point).dtype if y_zero_point is not None else np.uint8
    return requantize(acc, mult, y_zero_point, out_dtype)


# --------------------------------------------------------------------------- CausalConvWithState


@op("CausalConvWithState", versions=27, multi_output=True)
def causal_conv_with_state(x, w, b=None, past_state=None, *, activation="none"):
    """Stateful causal depthwise 1-D conv: (output, present_state = last k-1 padded positions)."""
    if isinstance(activation, bytes):
        activation = activation.decode()
    activation = (activation or "none").lower()
    if activation not in ("none", "silu", "swish"):
        raise ValueError(f"unsupported activation {activation!r}")
    if x.ndim != 3 or w.ndim != 3 or w.shape[1] != 1 or w.shape[0] != x.shape[1]:
        raise ValueError(f"CausalConvWithState expects input (B, C, L) and weight (C, 1, k); got {x.shape}, {w.shape}")
    B, C, L = x.shape
    k = w.shape[2]
    ct = compute_dtype(x.dtype)
    xc = x.astype(ct, copy=False)
    if past_state is None:
        past = np.zeros((B, C, k - 1), dtype=ct)
    else:
        past = np.asarray(past_state).astype(ct, copy=False)
        if past.shape != (B, C, k - 1):
            raise ValueError(f"past_state shape {past.shape} must be {(B, C, k - 1)}")
    padded = np.concatenate([past, xc], axis=2)
    wc = w.astype(ct, copy=False).reshape(1, C, k)
    y = padded[:, :, 0:L] * wc[:, :, 0:1]
    for j in range(1, k):
        y += padded[:, :, j : j + L] * wc[:, :, j : j + 1]
    if b is not None:
        y += np.asarray(b).astype(ct, copy=False).reshape(1, C, 1)
    if activation in ("silu", "swish"):
        y = y / (1 + np.exp(-y))
    present = np.ascontiguousarray(padded[:, :, L:]) if k > 1 else np.zeros((B, C, 0), dtype=ct)
    return y.astype(x.dtype, copy=False), present.astype(x.dtype, copy=False)


# --------------------------------------------------------------------------- DeformConv


def _bilinear_gather(img: np.ndarray, ph: np.ndarray, pw: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``img`` (C, H, W) at float positions (P,), zero outside the image."""
    C, H, W = img.shape
    flat = img.reshape(C, H * W)
    inside = (ph > -1) & (ph < H) & (pw > -1) & (pw < W)
    h0 = np.floor(ph)
    w0 = np.floor(pw)
    lh = ph - h0
    lw = pw - w0
    h0 = h0.astype(np.int64)
    w0 = w0.astype(np.int64)
    out = np.zeros((C, ph.size), dtype=img.dtype)
    for dh, dw, weight in ((0, 0, (1 - lh) * (1 - lw)), (0, 1, (1 - lh) * lw), (1, 0, lh * (1 - lw)), (1, 1, lh * lw)):
        hh = h0 + dh
        ww = w0 + dw
        ok = inside & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        idx = np.where(ok, hh * W + ww, 0)
        out += flat[:, idx] * np.where(ok, weight, 0).astype(img.dtype)
    return out


@op("DeformConv", versions=(19, 22))
def deform_conv(
    x, w, offset, b=None, mask=None, *, dilations=None, group=1, kernel_shape=None, offset_group=1, pads=None, strides=None
):
    if x.ndim != 4:
        raise NotImplementedError(f"DeformConv supports 2-D inputs only, got shape {x.shape}")
    _check_kernel_shape(kernel_shape, w)
    s, d = spatial_defaults(2, strides, dilations)
    p = [int(v) for v in pads] if pads else [0, 0, 0, 0]
    ct = compute_dtype(x.dtype)
    xc = x.astype(ct, copy=False)
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    K = kh * kw
    group, G = int(group), int(offset_group)
    if Cg * group != C or M % group or C % G:
        raise ValueError(f"DeformConv: channels {C}, weight {w.shape}, group {group}, offset_group {G} are inconsistent")
    oH = (H + p[0] + p[2] - ((kh - 1) * d[0] + 1)) // s[0] + 1
    oW = (W + p[1] + p[3] - ((kw - 1) * d[1] + 1)) // s[1] + 1
    P = oH * oW
    off = np.asarray(offset).astype(ct, copy=False).reshape(N, G, K, 2, P)
    msk = None if mask is None else np.asarray(mask).astype(ct, copy=False).reshape(N, G, K, P)
    base_h = np.repeat(np.arange(oH, dtype=ct) * s[0] - p[0], oW)
    base_w = np.tile(np.arange(oW, dtype=ct) * s[1] - p[1], oH)
    Cog = C // G
    cols = np.empty((N, C, K, P), dtype=ct)
    for n in range(N):
        for g in range(G):
            img = xc[n, g * Cog : (g + 1) * Cog]
            for k in range(K):
                i, j = divmod(k, kw)
                v = _bilinear_gather(img, base_h + i * d[0] + off[n, g, k, 0], base_w + j * d[1] + off[n, g, k, 1])
                if msk is not None:
                    v *= msk[n, g, k]
                cols[n, g * Cog : (g + 1) * Cog, k] = v
    wg = w.astype(ct, copy=False).reshape(group, M // group, Cg * K)
    y = np.matmul(wg, cols.reshape(N, group, Cg * K, P)).reshape(N, M, oH, oW)
    if b is not None:
        y += np.asarray(b).astype(ct, copy=False).reshape(1, M, 1, 1)
    return y.astype(x.dtype, copy=False)
