"""Depthwise convolutions (group == C_in, one input channel per group) by a numba kernel.

Per output plane, the kernel copies the input channel into a zero-padded plane (each row
split into its column-stride phases, so that every tap reads a contiguous run), then
computes each output element from all its taps at once where the filter is 3x3 (one
kernel row at a time for 5-wide rows, one tap at a time otherwise), adding the bias and
applying the fused activation in the same pass. At stride 1 the taps run over whole
padded rows, the plane as one long vector. numpy needs a pass over the output per tap
instead (see ``conv_core._depthwise_2d`` for the numpy path).

On AVX-512 CPUs float32 3x3 filters with a pixel of begin padding at stride 1 or 2 run on the planes' rows
instead where the rows are wide (``depthwise_rows``, ``_planar_rows``), and other float32 filters in the
channels-last vector blocks (``depthwise_channels_last``, ``_vector_blocks``).

numba is optional (the ``fast`` extra). The kernel is compiled on the first depthwise
convolution a process runs, not at import or session creation, and cached on disk
(``cache=True``: numba writes next to this file when that is writable, else in its
user-wide cache directory; ``NUMBA_CACHE_DIR`` overrides both; with no writable directory,
it compiles in each process). Where numba is missing, fails to import or fails to compile,
or ``ONYXRT_DISABLE_NUMBA=1``, ``depthwise_conv`` returns None and the numpy path runs.

The kernel releases the GIL (``nogil``): sessions running in several threads run it
concurrently; one convolution's planes are split over the session pool only where no BLAS
thread spins beside it (see ``_PARALLEL``). numba's own threading layer is not involved.
fastmath stays off: results are within float rounding of the numpy path (the sums are only
ordered differently).
"""

from __future__ import annotations

import math

import numpy as np

from ....framework.thread_mode import note_pool_product
from ....framework.thread_pool import current_pool
from ....framework.cpu_features import has_flags
from ..jit import LazyKernel, optional_module
from .. import row_kernels
from ..row_kernels import MLAS_CODES, activation_code


# Output widths up to which the kernel works channels-last (see ``_depthwise_planes``):
# measured on mobilenet_v2's and EfficientNet's layers, faster at 7 columns (up to 2.5x at
# stride 2), slower at 14 and wider.
_CHANNELS_LAST_MAX_WIDTH = 8
# float32 convolutions run in ``depthwise_channels_last`` (a vector of channels per pixel, taps unrolled)
# where it applies; on CPUs without AVX-512 (eight channels a vector) except stride-1 outputs at least this wide,
# where the planar loops were as fast (measured on 2 AVX2 cores, channels-last / planar: 0.55 at 384x14x14, 0.84 at
# 28x28, 1.02 at 56x56, 1.15 at 112x112; at stride 2 0.22-0.49 for every width; benchmarks/depthwise.md). With
# sixteen channels a vector they are faster at every width (2 Zen 5 cores, split over both, 3x3: 0.79 at 32x112x112,
# 0.81 at 144x56x56, 0.87 at 16x112x112; 7x7 0.43 at 32x112x112).
_PLANAR_MIN_WIDTH = 48

# The kernel runs on the calling thread unless the pool owns the cores (``splits_gemms``):
# measured in mobilenet_v2 sessions on 2 cores, splitting the planes over the pool beside
# BLAS's threads made the model slower (the pool thread competes with the BLAS threads still
# spinning after the previous GEMM, as for the numpy convolutions: conv_core._PARALLEL_CONV),
# although a layer alone runs up to 1.5x faster. Where the pool splits, float32 planes run as a
# native task (``depthwise_conv_task``: no GIL on the workers; 144x56x56: 0.38 -> 0.30 ms), others
# as Python tasks. ``_PARALLEL`` forces the split (tests).
_PARALLEL = False
# Output elements times taps below which the planes are not split over threads.
_PARALLEL_MIN_WORK = 1 << 18
# As a native task handed to spinning workers (a hand-off costs ~2.3 us): in one process, blocks alternating, on the
# 2-vCPU Zen 4 VM, the EfficientNet-like net (batch 8 at 32x32; its 48-channel 3x3/2 layer 221K, ~20 us on one core)
# 0.965x and the MobileNetV3-like 0.95x in the split mode against 1 << 18; 1 << 14 no faster (ShuffleNet-like 1.02x).
_PARALLEL_MIN_WORK_SPINNING = 1 << 16


def _shares_planes(pool, work: int, planes: int) -> bool:
    """Whether a convolution of ``work`` output elements times taps over ``planes`` planes is split over ``pool``."""
    return ((_PARALLEL or pool.splits_gemms) and planes > 1
            and work >= (_PARALLEL_MIN_WORK_SPINNING if pool.workers_spin else _PARALLEL_MIN_WORK))
# Output elements times taps from which a float32 convolution tells a session learning its thread mode
# (``framework.thread_mode``) that the pool's split mode runs it faster: there its planes run on every core as a
# native task, here on the calling thread alone. Measured on 2 Zen 5 cores: mobilenet_v2 at 224x224 (its 32- and
# 96-channel 112x112 and 144-channel 56x56 layers, 2.7-4.1M) 4.65 -> 4.19 ms split; the unseen MobileNetV3- and
# EfficientNet-like nets at 32x32 (their layers below 0.6M) 0.36 -> 0.53 ms split.
_POOL_MODE_WORK = 1 << 21


def _depthwise_planes(x, w, bias, params, out, M, OH, OW, multiplier, s0, s1, d0, d1, pt, pl, Hp, Wp, act,
                      channels_last, p0, p1):
    """Planes p0..p1 of ``out`` (N*M, OH*OW) = depthwise conv of ``x`` (N, C, H, W) with
    ``w`` (M, kh, kw) and ``bias`` (M,); output channel m reads input channel m // multiplier;
    the padded image is Hp x Wp with x at (pt, pl). ``act``: an activation code; ``params``:
    its two parameters, 0 and 1, in the dtype of ``x`` (numba would compute in float64 with
    Python float constants).

    Indices are cast to ``uintp``: numba then emits no negative-index wrap-around test, and
    the loops vectorize. Each padded row is stored split into its ``s1`` column phases
    (columns ph, ph + s1, ...: ``Wq`` entries each), so that every tap reads a contiguous
    run of the plane whatever the column stride.

    ``channels_last`` (for small planes, where per-plane loops are too short): blocks of
    channels are transposed to (H, W, channels) and each output position is computed over
    the block's channels as one vector."""
    H, W = x.shape[2], x.shape[3]
    kh, kw = w.shape[1], w.shape[2]
    a, b, zero, one = params[0], params[1], params[2], params[3]

    def activate(buf, count):
        """buf[:count] = the activation of buf[:count], in place (one array: the loops vectorize, where
        two arrays that might overlap would get a run-time overlap test and the scalar loop)."""
        # comparisons rather than min/max so that NaN stays NaN, as with numpy
        if act == 1:
            for k in range(count):
                v = buf[np.uintp(k)]
                buf[np.uintp(k)] = zero if v < zero else v
        elif act == 2:
            for k in range(count):
                v = buf[np.uintp(k)]
                buf[np.uintp(k)] = v * a if v < zero else v
        elif act == 3:
            for k in range(count):
                buf[np.uintp(k)] = np.tanh(buf[np.uintp(k)])
        elif act == 4:
            for k in range(count):
                buf[np.uintp(k)] = one / (one + np.exp(-buf[np.uintp(k)]))
        elif act == 5:
            for k in range(count):
                v = buf[np.uintp(k)]
                buf[np.uintp(k)] = a if v < a else (b if v > b else v)
        elif act == 6:
            for k in range(count):
                v = buf[np.uintp(k)] * a + b
                buf[np.uintp(k)] = zero if v < zero else (one if v > one else v)

    if channels_last:
        block = min(p1 - p0, max(16, 32768 // max(1, H * W)))  # the block's pixels: ~128 KiB of float32
        pixels = np.empty(H * W * block, dtype=x.dtype)
        weights = np.empty(kh * kw * block, dtype=x.dtype)
        acc = np.empty(block, dtype=x.dtype)
        p = p0
        while p < p1:
            n, m0 = p // M, p % M
            count = min(p1 - p, M - m0, block)  # (a block stays within one image)
            for c in range(count):
                m = m0 + c
                channel = x[n, m // multiplier]
                for h in range(H):
                    for q in range(W):
                        pixels[np.uintp((h * W + q) * count + c)] = channel[h, q]
                for i in range(kh):
                    for j in range(kw):
                        weights[np.uintp((i * kw + j) * count + c)] = w[m, i, j]
            for oh in range(OH):
                for ow in range(OW):
                    for c in range(count):
                        acc[np.uintp(c)] = bias[m0 + c]
                    for i in range(kh):
                        ih = oh * s0 - pt + i * d0
                        if ih < 0 or ih >= H:
                            continue
                        for j in range(kw):
                            iw = ow * s1 - pl + j * d1
                            if iw < 0 or iw >= W:
                                continue
                            xo = (ih * W + iw) * count
                            wo = (i * kw + j) * count
                            for c in range(count):
                                acc[np.uintp(c)] += weights[np.uintp(wo + c)] * pixels[np.uintp(xo + c)]
                    activate(acc, count)
                    o = oh * OW + ow
                    for c in range(count):
                        out[np.uintp(p + c), np.uintp(o)] = acc[np.uintp(c)]
            p += count
        return

    Wq = (Wp + s1 - 1) // s1
    Wrow = s1 * Wq  # a padded row in the plane
    # Stride 1: the output is computed over whole padded rows (Wp - OW junk columns each),
    # so every tap is one long contiguous pass over the plane; else row by row.
    flat = s0 == 1 and s1 == 1
    pitch = Wp if flat else OW
    length = (OH - 1) * Wp + OW if flat else OW
    # the padded plane (its border stays zero: only the interior is rewritten), with slack
    # for the junk columns' reads past the last row
    plane = np.zeros(Hp * Wrow + Wrow + (kw - 1) * d1, dtype=x.dtype)
    acc = np.empty(OH * pitch, dtype=x.dtype)
    r_lo, r_hi = max(0, pt), min(Hp, H + pt)
    c_lo, c_hi = max(0, pl), min(Wp, W + pl)
    for p in range(p0, p1):
        n, m = p // M, p % M
        image = x[n, m // multiplier]
        for r in range(r_lo, r_hi):
            src = image[r - pt]
            if s1 == 1:
                base = r * Wrow + c_lo
                first = c_lo - pl
                for t in range(c_hi - c_lo):
                    plane[np.uintp(base + t)] = src[np.uintp(first + t)]
            elif s1 == 2 and pl >= 0 and W + pl <= Wp:
                # image columns 2u, 2u + 1 in one loop: both loads of each pair are used,
                # which vectorizes (one phase at a time does not)
                row = r * Wrow
                even = row + (pl % 2) * Wq + pl // 2  # where column 2u goes, + u
                odd = row + ((pl + 1) % 2) * Wq + (pl + 1) // 2
                for u in range(W // 2):
                    plane[np.uintp(even + u)] = src[np.uintp(2 * u)]
                    plane[np.uintp(odd + u)] = src[np.uintp(2 * u + 1)]
                if W % 2:
                    plane[np.uintp(even + W // 2)] = src[np.uintp(W - 1)]
            else:
                for ph in range(s1):
                    # padded columns q = ph + s1 * t inside the image
                    t0 = max(0, (c_lo - ph + s1 - 1) // s1)
                    t1 = (c_hi - 1 - ph) // s1 + 1
                    base = r * Wrow + ph * Wq
                    first = ph + s1 * t0 - pl
                    for t in range(t1 - t0):
                        plane[np.uintp(base + t0 + t)] = src[np.uintp(first + s1 * t)]
        taps = w[m]
        bm = bias[m]
        for block in range(1 if flat else OH):
            start = block * OW  # (0 when flat)
            in_base = block * s0 * Wrow
            if kh == 3 and kw == 3:  # the common case: all taps in one pass
                r0, r1, r2 = in_base, in_base + d0 * Wrow, in_base + 2 * d0 * Wrow
                c1 = (d1 % s1) * Wq + d1 // s1
                c2 = (2 * d1 % s1) * Wq + 2 * d1 // s1
                # the taps in locals: read from the array, they would be reloaded after every
                # store to acc (which might alias them), and the loop would not vectorize
                w00, w01, w02 = taps[0, 0], taps[0, 1], taps[0, 2]
                w10, w11, w12 = taps[1, 0], taps[1, 1], taps[1, 2]
                w20, w21, w22 = taps[2, 0], taps[2, 1], taps[2, 2]
                for k in range(length):
                    acc[np.uintp(start + k)] = (
                        bm
                        + (w00 * plane[np.uintp(r0 + k)] + w01 * plane[np.uintp(r0 + c1 + k)]
                           + w02 * plane[np.uintp(r0 + c2 + k)])
                        + (w10 * plane[np.uintp(r1 + k)] + w11 * plane[np.uintp(r1 + c1 + k)]
                           + w12 * plane[np.uintp(r1 + c2 + k)])
                        + (w20 * plane[np.uintp(r2 + k)] + w21 * plane[np.uintp(r2 + c1 + k)]
                           + w22 * plane[np.uintp(r2 + c2 + k)])
                    )
                continue
            for k in range(length):
                acc[np.uintp(start + k)] = bm
            for i in range(kh):
                row = in_base + i * d0 * Wrow
                if kw == 5:  # (EfficientNet, MobileNetV3): one pass per kernel row
                    q0 = row
                    q1 = row + (d1 % s1) * Wq + d1 // s1
                    q2 = row + (2 * d1 % s1) * Wq + 2 * d1 // s1
                    q3 = row + (3 * d1 % s1) * Wq + 3 * d1 // s1
                    q4 = row + (4 * d1 % s1) * Wq + 4 * d1 // s1
                    w0, w1, w2, w3, w4 = taps[i, 0], taps[i, 1], taps[i, 2], taps[i, 3], taps[i, 4]
                    for k in range(length):
                        acc[np.uintp(start + k)] += (w0 * plane[np.uintp(q0 + k)] + w1 * plane[np.uintp(q1 + k)]
                                                     + w2 * plane[np.uintp(q2 + k)] + w3 * plane[np.uintp(q3 + k)]
                                                     + w4 * plane[np.uintp(q4 + k)])
                    continue
                for j in range(kw):
                    tap = taps[i, j]
                    qj = row + (j * d1 % s1) * Wq + j * d1 // s1
                    for k in range(length):
                        acc[np.uintp(start + k)] += tap * plane[np.uintp(qj + k)]
        activate(acc, OH * pitch)  # (the junk columns too: one pass over the whole buffer)
        result = out[p]
        for oh in range(OH):
            src, dst = oh * pitch, oh * OW
            for k in range(OW):
                result[np.uintp(dst + k)] = acc[np.uintp(src + k)]


_KERNEL = LazyKernel(_depthwise_planes)


def enabled() -> bool:
    """Whether depthwise convolutions may use the compiled kernel (numba importable, not disabled)."""
    return _KERNEL.enabled()


def _vector_blocks(dtype, kernel_shape, code: int, strides, pads, out_sp):
    """The ``depthwise_channels_last`` module where it runs this convolution (float32, a square filter of
    a size it unrolls, an activation it applies, no negative pads; with eight-channel vectors, not a wide stride-1
    output), else None."""
    if dtype != np.float32 or kernel_shape[0] != kernel_shape[1] or min(pads) < 0:
        return None
    module = optional_module("onyxrt.providers.cpu.nn.depthwise_channels_last")
    if module is None or kernel_shape[0] not in module.FILTERS or code not in module.ACTIVATIONS:
        return None
    if module.LANES < 16 and strides[0] == strides[1] == 1 and out_sp[1] >= _PLANAR_MIN_WIDTH:
        return None
    return module


def _planar_rows(dtype, kernel_shape, one_per_channel: bool, strides, dilations, pads, width: int):
    """The ``depthwise_rows`` module where it runs this convolution (float32 3x3 filters, one per input channel,
    stride 1 or 2 both ways, no dilation, a pixel of begin padding, rows at least :data:`_ROWS_MIN_WIDTH` wide, an
    AVX-512 CPU), else None."""
    if (dtype != np.float32 or tuple(kernel_shape) != (3, 3) or not one_per_channel or strides[0] != strides[1]
            or strides[0] not in (1, 2) or tuple(dilations) != (1, 1) or tuple(pads[:2]) != (1, 1) or min(pads) < 0
            or width < _ROWS_MIN_WIDTH or not has_flags("avx512f")):
        return None
    return optional_module("onyxrt.providers.cpu.nn.depthwise_rows")


def _rows_runner(rows, shape, taps: np.ndarray, b, code: int, params: tuple, step: int, out_sp, after: bool,
                 activation):
    """``depthwise_runner``'s function on ``depthwise_rows``: the planes shared out as one native task over a pool that
    splits products where the work is large; the activation ``code`` in the kernel (``after``: ``activation``
    applied to the result instead, one the kernels do not know)."""
    N, C, H, W = shape
    planes = N * C
    y_shape = (N, C) + tuple(out_sp)
    bias = np.zeros(C, np.float32) if b is None else np.ascontiguousarray(b, dtype=np.float32).reshape(C)
    values = np.array(params, np.float32)
    zeros = np.zeros(W, np.float32)  # the rows above and below a plane
    work = math.prod(y_shape) * 9

    def run(x: np.ndarray) -> np.ndarray:
        if work >= _POOL_MODE_WORK:
            note_pool_product()
        planes_in = np.ascontiguousarray(x).reshape(planes, H, W)
        y = np.empty(y_shape, np.float32)
        out = y.reshape((planes,) + tuple(out_sp))
        pool = current_pool()
        if _shares_planes(pool, work, planes) and pool.runs_native_tasks:
            args = rows.task_args(planes_in, out, taps, bias, values, zeros, step, code)
            pool.run_native(rows.depthwise_part.address, args, min(planes, pool.num_threads))
        else:
            rows.depthwise_rows(planes_in, out, taps, bias, values, zeros, step, code, 0, planes)
        if after:
            activation(y)
        return y

    return run


# Input row widths from which float32 3x3 filters run on the planes' rows (``depthwise_rows``) rather than in the
# channels-last blocks: measured alone on one Zen 5 core (rows / blocks, with Clip; benchmarks/depthwise_rows.md),
# stride 1 0.61 at 32x112x112, 0.86 at 144x56x56, 0.93 at 192x28x28, 1.05-1.13 at 14 and 16 columns, 1.57 at 7;
# stride 2 0.67 at 96x112x112, 0.64 at 144x56x56, 0.73 at 192x28x28, 1.18-1.25 at 14 and 16. AVX-512 CPUs only: with
# AVX2's eight outputs a vector (every load masked) mobilenet_v2 ran 1.15-1.17x the time of the other kernels on 2 Zen 3
# cores (stop 48, in-process A/B of two sessions); with ``ir_vectors``' plain loads and stores where a mask is all on,
# the rows still took 1.0-2.6x the blocks' time per layer on one Zen 3 core (stop 50, benchmarks/depthwise_rows.py).
_ROWS_MIN_WIDTH = 24


def depthwise_conv(x, w, b, strides, dilations, pads, out_sp, activation=None) -> np.ndarray | None:
    """The 1-D or 2-D depthwise conv of ``x`` (N, C, *spatial) with ``w`` (M, 1, *k), M a
    multiple of C, float32/float64, explicit [begin..., end...] ``pads`` (any sign), ``b``
    (M,) or None; ``activation`` as ``conv_core`` takes it. None when the kernel cannot run
    it (the caller then computes it with numpy)."""
    run = depthwise_runner(x.shape, x.dtype, w, b, strides, dilations, pads, out_sp, activation)
    return None if run is None else run(x)


def native_task_args(kernel_args: tuple) -> np.ndarray:
    """The arguments of the native tasks (``depthwise_conv_task.depthwise_part``,
    ``depthwise_channels_last.planes_part``) from ``_depthwise_planes``'s (without its plane range), an int64 array:
    the addresses of its C-contiguous float32 arrays (x, taps, bias, params, out; the caller keeps them alive until
    the task returns), x's and the taps' shapes, then its integer parameters (M, OH, OW, multiplier, s0, s1, d0, d1,
    pt, pl, Hp, Wp, act); channels-last is not taken."""
    x, taps, bias, params, out = kernel_args[:5]
    return np.array([x.ctypes.data, taps.ctypes.data, bias.ctypes.data, params.ctypes.data, out.ctypes.data,
                     *x.shape, taps.shape[1], taps.shape[2], *kernel_args[5:18]], np.int64)


def depthwise_runner(shape, dtype, w, b, strides, dilations, pads, out_sp, activation=None):
    """``depthwise_conv`` for inputs of ``shape`` and ``dtype``: a function of x alone, with the filter's
    taps, bias and the kernel's arguments prepared once (a convolution's route, cached per input shape
    where the weights are constant); None when the kernel cannot run it."""
    nd = len(shape) - 2
    if nd not in (1, 2) or dtype not in (np.float32, np.float64) or w.dtype != dtype or not enabled():
        return None
    if nd == 1:  # as a 2-D conv over one row
        run_2d = depthwise_runner((shape[0], shape[1], 1, shape[2]), dtype, w[:, :, None, :], b, [1] + list(strides),
                                  [1] + list(dilations), [0, pads[0], 0, pads[1]], [1] + list(out_sp), activation)
        if run_2d is None:
            return None

        def run_1d(x: np.ndarray) -> np.ndarray:
            y = run_2d(x[:, :, None, :])
            return y.reshape(y.shape[:2] + (y.shape[3],))

        return run_1d
    N, C, H, W = shape
    M = w.shape[0]
    if (M == C and w.shape[2:] == (1, 1) and tuple(strides) == (1, 1) and not any(pads) and dtype == np.float32
            and (b is None or b.dtype == dtype)):
        # a per-channel scale and shift (an inference BatchNormalization, see optimizer/batch_norm_depthwise.py):
        # one pass over rows, where the planar kernel's loops cost more than the arithmetic
        affine = row_kernels.prepared_channel_affine(M, w.reshape(M), np.zeros(M, dtype) if b is None else b.reshape(M),
                                                     activation)
        if affine is not None:
            return affine
    fused = activation_code(activation)
    code, params = fused if fused is not None else (0, (0.0, 0.0))
    taps = np.ascontiguousarray(w.reshape(M, w.shape[2], w.shape[3]))
    rows = _planar_rows(dtype, taps.shape[1:], M == C, strides, dilations, pads, W)
    if rows is not None:
        return _rows_runner(rows, shape, taps, b, code, params, strides[0], out_sp,
                            fused is None and activation is not None, activation)
    blocks = _vector_blocks(dtype, taps.shape[1:], code, strides, pads, out_sp)
    if fused is not None and code not in MLAS_CODES and blocks is None:  # (HardSwish, QuickGelu: applied after)
        fused, code, params = None, 0, (0.0, 0.0)
    bias = np.zeros(M, dtype=dtype) if b is None else np.ascontiguousarray(b, dtype=dtype).reshape(M)
    # (writable copies: numba types read-only arrays apart, so a constant's read-only weights compiled the planar
    # kernel again, once per combination)
    taps, bias = np.array(taps), np.array(bias)
    values = np.array(params + (0.0, 1.0), dtype=dtype)
    y_shape = (N, M, out_sp[0], out_sp[1])
    Hp, Wp = H + pads[0] + pads[2], W + pads[1] + pads[3]
    channels_last = out_sp[1] <= _CHANNELS_LAST_MAX_WIDTH
    geometry = (M, out_sp[0], out_sp[1], M // C, strides[0], strides[1], dilations[0], dilations[1], pads[0],
                pads[1], Hp, Wp, code, channels_last)
    kernel = None
    if blocks is None:
        # the planar kernel compiles (or loads) only where it runs: a cold cache pays for it per kernel
        probe = np.zeros(shape, dtype)
        kernel = _KERNEL.compiled_for(dtype, probe, taps, bias, values, np.empty((N * M, 0), dtype), *geometry, 0, 0)
        if kernel is None:
            return None
    planes = N * M
    work = math.prod(y_shape) * taps.shape[1] * taps.shape[2]
    faster_split = dtype == np.float32 and work >= _POOL_MODE_WORK
    if blocks is not None:
        weights, biases = blocks.pack_filters(taps, bias)
        block_geometry = geometry[:10] + (code,)
        block_count = N * weights.shape[0]
        template = blocks.task_template(shape, weights, biases, values, *block_geometry)

    def run(x: np.ndarray) -> np.ndarray:
        if faster_split:
            note_pool_product()
        x = np.ascontiguousarray(x)
        y = np.empty(y_shape, dtype=dtype)
        pool = current_pool()
        split = _shares_planes(pool, work, planes)
        if blocks is not None:
            out = y.reshape(planes, -1)
            packed = blocks.task_args(template, x, out)
            if split and not pool.runs_native_tasks:
                # a Python task per thread, each calling the native task a block at a time (it releases the GIL)
                part, address = blocks.planes_part.ctypes, packed.ctypes.data

                def blocks_part(b0: int, b1: int) -> None:
                    for block in range(b0, b1):
                        part(address, block, block_count)

                pool.run_chunks(blocks_part, block_count, work, _PARALLEL_MIN_WORK)
            else:  # (on this thread too through the native task: the kernel compiles for the task's signature alone)
                pool.run_native(blocks.planes_part.address, packed, pool.num_threads if split else 1)
            if fused is None:
                activation(y)
            return y
        args = (x, taps, bias, values, y.reshape(planes, -1)) + geometry
        if split:
            native = dtype == np.float32 and not channels_last and pool.runs_native_tasks
            task = optional_module("onyxrt.providers.cpu.nn.depthwise_conv_task") if native else None
            if task is not None:
                packed = native_task_args(args)
                pool.run_native(task.depthwise_part.address, packed, min(planes, pool.num_threads))
            else:
                pool.run_chunks(lambda p0, p1: kernel(*args, p0, p1), planes, work, _PARALLEL_MIN_WORK)
        else:
            kernel(*args, 0, planes)
        if fused is None:
            activation(y)
        return y

    if blocks is not None:
        run.operands = (weights, biases, values)  # (alive while the template holding their addresses is used)
    return run
