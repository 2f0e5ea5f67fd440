"""Convolutions whose windows tile the input (kernel = strides, no padding or dilation, group 1): a ConvNeXt-like
4x4/4 stem and 2x2/2 downsampling layers, a Swin-like patch merge, a vision transformer's patch embedding of few
channels, computed by ``patch_conv_kernels``' implicit-GEMM tiles (output channels in a vector's lanes, each tap's
input read where it lies).

Their column matrix is the input rearranged (one copy of runs of kw floats: as long as its product for the few
channels such layers have) and the product's rows or columns are too few for a GEMM's panels. Measured on 2 Zen 4
cores, one layer alone: 8x3x32x32 -> 16 4x4/4 110 -> 12 us (the column route's phase images and a product an image),
8x16x8x8 -> 32 2x2/2 24 -> 7 us (the patch rows' copy and product), 8x3x32x32 -> 64 8x8/8 45 -> 31 us, 1x3x224x224 ->
96 4x4/4 1664 -> 381 us on one thread. Layers whose weights exceed :data:`MAX_WEIGHT_FLOATS` (a ViT-B/16 embedding's
768 x 768) keep the column routes: each tile streams all of the weights, which a GEMM's blocking reuses.

Where numba is missing or disabled (``patch_route`` returns None) the column routes run.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ....framework.thread_mode import note_pool_product
from ....framework.thread_pool import current_pool
from .. import row_kernels
from ..jit import optional_module, read_only
from .direct_conv import SPLIT_MACS_WAKING, blocked_filter, split_threshold

# The most weights (output channels x taps) a layer may have to take this route: 128 KB of float32, which each tile
# of pixels reads once (L2 holds them).
MAX_WEIGHT_FLOATS = 1 << 15


def applies(shape, dtype, w_shape, group: int, strides, dilations, pads) -> bool:
    """Whether ``patch_route`` takes this convolution: float32 2-D, group 1, kernel = strides (windows that tile the
    input), no padding or dilation, at most :data:`MAX_WEIGHT_FLOATS` weights."""
    return (len(shape) == 4 and dtype == np.float32 and group == 1 and shape[0] > 0 and shape[1] > 0
            and list(w_shape[2:]) == list(strides) and math.prod(strides) > 1 and not any(pads)
            and all(d == 1 for d in dilations) and math.prod(w_shape) <= MAX_WEIGHT_FLOATS)


def patch_route(shape, w: np.ndarray, b: np.ndarray | None, activation, out_sp,
                finish: Callable) -> Callable | None:
    """The convolution of inputs of ``shape`` (N, C, H, W) by float32 ``w`` (M, C, kh, kw) with strides (kh, kw),
    bias ``b`` (M,) or None, output size ``out_sp``, as a function ``(x, residual) -> y`` applying ``activation`` to
    the sum (``conv_core``'s order) in the tiles where it can, else by ``finish`` (the route's epilogue, given the
    product with its bias); None where the compiled kernel is unusable."""
    kernels = optional_module("onyxrt.providers.cpu.nn.patch_conv_kernels")
    if kernels is None:
        return None
    N, C, H, W = shape
    M, _, kh, kw = w.shape
    OH, OW = out_sp
    P = OH * OW
    taps = C * kh * kw
    weights, bias = blocked_filter(w, b, kernels.LANES)
    tap_offsets = np.array([(c * H + i) * W + j for c in range(C) for i in range(kh) for j in range(kw)], np.int64)
    pixel_offsets = np.array([oh * kh * W + ow * kw for oh in range(OH) for ow in range(OW)], np.int64)
    code = row_kernels.activation_code(activation)
    in_registers = code is not None and code[0] in row_kernels.IN_REGISTERS
    act, (alpha, beta) = code if in_registers else (0, (0.0, 0.0))
    params = np.array([alpha, beta], np.float32)
    weights, bias, tap_offsets, pixel_offsets, params = map(read_only, (weights, bias, tap_offsets, pixel_offsets,
                                                                        params))
    template = kernels.task_template(N, C * H * W, M, P, weights, bias, tap_offsets, pixel_offsets, params)
    units = N * -(-P // kernels.PIXELS)
    macs = N * P * taps * M
    y_shape = (N, M, OH, OW)
    # (tells a session learning its thread mode that the split mode runs it faster, as ``direct_conv``)
    faster_split = macs >= SPLIT_MACS_WAKING

    def run(x: np.ndarray, z: np.ndarray | None) -> np.ndarray:
        if faster_split:
            note_pool_product()
        x = np.ascontiguousarray(x)
        y = np.empty(y_shape, np.float32)
        fused = in_registers and z is None
        kind = act if fused else 0
        pool = current_pool()
        if pool.runs_native_tasks and macs >= split_threshold(pool) and units > 1:
            pool.run_native(kernels.rows_part.address, kernels.task_args(template, x, y, kind),
                            min(pool.num_threads, units))
        else:
            kernels.patch_rows(read_only(x.reshape(N, C * H * W)), weights, bias, tap_offsets, pixel_offsets, params,
                               y.reshape(N, M, P), kind, 0, units)
        return y if fused else finish(y, z)

    return run
