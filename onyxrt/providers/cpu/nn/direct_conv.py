"""Convolutions computed directly, without a column matrix: a network's stem (RGB images, 3x3 to 7x7 filters, stride 1
to 4), strided layers of any width and layers of few output channels.

The column matrix (C x kh x kw rows by the output's pixels) costs a pass writing and a pass reading kh x kw / (s0 x
s1) times the input (7.4 MB for resnet50's 7x7 stem at 224x224), and with three input channels its K (27 for a 3x3
filter) is too short for a GEMM to run near its peak. ``direct_conv_kernels`` instead keeps a tile of output
channels by output pixels in registers over all the taps, reading the input's column phases where they lie
(onnxruntime's NCHWc kernels tile the same way). Measured on 2 Zen 5 cores (``benchmarks/direct_conv.md``): stems
0.13-0.6x the column route's time, resnet50's 128-channel stride-2 3x3 layer 0.83-0.91x alone and 0.71x inside a run
(1068 -> 760 us), a DenseNet-like 32 -> 8 growth layer 0.32-0.53x.

Where numba is missing or disabled (``direct_route`` returns None) the column-matrix route runs.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ....framework.thread_mode import note_pool_product
from ....framework.thread_pool import current_pool
from .. import row_kernels
from ..jit import optional_module, read_only

# The most input channels a stride-1 convolution may have to take this route (an image's RGB or RGBA channels).
MAX_CHANNELS = 4
# Or the most output channels (a DenseNet-like layer's growth: the column route's GEMM is as thin, one product per
# tap no better): 8x32 -> 8 at 32x32 3x3 0.32-0.53x, 1x64 -> 16 at 56x56 0.34-0.55x the time on 2 Zen 5 cores.
MAX_STRIDE1_OUTPUTS = 16
# Multiply-adds from which the rows are shared over the pool: where its workers spin between tasks (a hand-off costs
# microseconds; an EfficientNet-like net's 8x3x32x32 -> 16 3x3/2 stem, 0.88M, 32 -> 21 us split on 2 Zen 5 cores), and
# where they sleep (waking one costs 50-80 us on a VM).
SPLIT_MACS_SPINNING = 1 << 19
SPLIT_MACS_WAKING = 1 << 24


def blocked_filter(w: np.ndarray, b: np.ndarray | None, block: int) -> tuple[np.ndarray, np.ndarray]:
    """A (M, C, kh, kw) filter as a register tile reads it, (blocks, taps, ``block``) float32 (a block of output
    channels' weights for each tap together), and its bias (blocks * ``block``,) (zero for None); zero past M."""
    M = w.shape[0]
    taps = math.prod(w.shape[1:])
    blocks = -(-M // block)
    weights = np.zeros((blocks * block, taps), np.float32)
    weights[:M] = w.reshape(M, taps)
    bias = np.zeros(blocks * block, np.float32)
    if b is not None:
        bias[:M] = np.asarray(b).reshape(M)
    return np.ascontiguousarray(weights.reshape(blocks, block, taps).transpose(0, 2, 1)), bias


def split_threshold(pool) -> int:
    """The multiply-adds from which a direct or patch convolution shares its rows out over ``pool``: fewer where its
    workers spin between tasks than where a hand-off wakes one."""
    return SPLIT_MACS_SPINNING if pool.workers_spin else SPLIT_MACS_WAKING


def applies(shape, dtype, w_shape, group: int, strides, pads) -> bool:
    """Whether ``direct_route`` takes this convolution: float32 2-D, group 1, non-negative pads, windows that overlap
    (more taps than the strides' product: a column matrix larger than the input; a ConvNeXt-like 4x4/4 patchify
    stem's is the input rearranged, and its GEMM as fast), and a stride above 1, at most :data:`MAX_CHANNELS` input
    channels or at most :data:`MAX_STRIDE1_OUTPUTS` output channels. Stride-1 layers of more channels in and out
    keep the column matrix (or Winograd): it is at most kh x kw times the input, and its GEMM deep and wide."""
    return (len(shape) == 4 and dtype == np.float32 and group == 1 and shape[1] > 0 and shape[0] > 0
            and math.prod(w_shape[2:]) > math.prod(strides) and all(p >= 0 for p in pads)
            and (shape[1] <= MAX_CHANNELS or w_shape[0] <= MAX_STRIDE1_OUTPUTS or any(s > 1 for s in strides)))


def direct_route(shape, w: np.ndarray, b: np.ndarray | None, activation, strides, dilations, pads, out_sp,
                 finish: Callable) -> Callable | None:
    """The convolution of inputs of ``shape`` (N, C, H, W) by float32 ``w`` (M, C, kh, kw), bias ``b`` (M,) or None,
    explicit ``pads``, output size ``out_sp``, as a function ``(x, residual) -> y`` applying ``activation`` to the
    sum (``conv_core``'s order) in the kernel where it can, else by ``finish`` (the route's epilogue, given the
    product with its bias); None where the compiled kernel is unusable."""
    kernels = optional_module("onyxrt.providers.cpu.nn.direct_conv_kernels")
    if kernels is None:
        return None
    N, C, H, W = shape
    M, _, kh, kw = w.shape
    OH, OW = out_sp
    if -(-OW // kernels.LANES) * kernels.LANES * 4 > 5 * OW:
        return None  # rows too short for the vectors: a quarter of their work or more would be discarded
    if C > MAX_CHANNELS and OW <= kernels.LANES:
        # rows of one vector: its tiles load as much as they multiply, and with a deep column matrix the GEMM is the
        # faster (resnet50's 256-channel 3x3/2 layer, 14 outputs a row: 1.1-1.2x the column route)
        return None
    s0, s1 = strides
    d0, d1 = dilations
    pt, pl, pb, _ = pads
    Hp = H + pt + pb
    # each phase row holds every tile's reach: whole tiles of outputs plus the filter's widest shift
    Wq = -(-OW // kernels.TILE) * kernels.TILE + (kw - 1) * d1 // s1
    taps = C * kh * kw
    weights, bias = blocked_filter(w, b, kernels.BLOCK)
    offsets = np.array([((c * s1 + j * d1 % s1) * Hp + i * d0) * Wq + j * d1 // s1
                        for c in range(C) for i in range(kh) for j in range(kw)], np.int64)
    code = row_kernels.activation_code(activation)
    act, (alpha, beta) = code if code is not None else (0, (0.0, 0.0))
    params = np.array([alpha, beta], np.float32)
    no_residual = np.zeros((0, 0), np.float32)
    y_shape = (N, M, OH, OW)
    units = N * OH
    macs = N * M * OH * OW * taps
    weights, bias, offsets, params = map(read_only, (weights, bias, offsets, params))
    template = kernels.task_template(shape, weights, bias, offsets, params, y_shape, s0, s1, pt, pl, Hp, Wq)

    # a convolution this large tells a session learning its thread mode (``framework.thread_mode``) that the pool's
    # split mode runs it faster (its rows over spinning workers): a DenseNet-like net's 8x32x32x32 -> 8 3x3 layers
    # (19M multiply-adds) 175 -> 102 us, the net 1.38 -> 0.90 ms in alternating processes, on 2 Zen 5 cores
    faster_split = macs >= SPLIT_MACS_WAKING

    def run(x: np.ndarray, z: np.ndarray | None) -> np.ndarray:
        if faster_split:
            note_pool_product()
        x = np.ascontiguousarray(x)
        y = np.empty(y_shape, np.float32)
        fused = code is not None and (z is None or z.shape == y_shape and z.dtype == np.float32)
        residual = np.ascontiguousarray(z).reshape(N * M, OH * OW) if fused and z is not None else no_residual
        pool = current_pool()
        kind = act if fused else 0
        if pool.runs_native_tasks:
            parts = min(pool.num_threads, units) if macs >= split_threshold(pool) else 1
            pool.run_native(kernels.rows_part.address, kernels.task_args(template, x, y, residual, kind), parts)
        else:
            kernels.direct_rows(read_only(x), weights, bias, offsets, params, y, residual, s0, s1, pt, pl, Hp, Wq,
                                kind, 0, units)
        return y if fused else finish(y, z)

    return run
