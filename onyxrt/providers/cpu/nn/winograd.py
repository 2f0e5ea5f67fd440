"""3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3).

The output is cut into 2x2 tiles; each tile's 4x4 input patch d becomes V = B^T d B, each filter g becomes
U = G g G^T (once, at the first run), and the tile's output is A^T M A with M[xi] = sum over input channels of
U[xi] * V[xi] for each of the 16 positions xi: sixteen products (M x C) @ (C x tiles) instead of one
(M x 9C) @ (9C x pixels), 2.25x fewer multiply-adds, and a 4x expansion of the input (V) instead of the
column matrix's 9x. Measured on 2 Zen 5 cores with OpenBLAS, Conv + bias + Relu, against the column-matrix
route: resnet50's 64-channel 56x56 layer 771 -> 604 us, 256-channel 14x14 741 -> 481 us, resnet50 end to end
0.92x (``benchmarks/winograd.md``).

The transforms' constants are 0, +-1 and +-1/2, so V and the output transform are exact sums and
differences and U is G's halves applied to the filter: results differ from the direct convolution by
float rounding of the reordered sums (relative error ~1e-6 on random data, within onnxruntime's 1e-4).

The input and output transforms are numba kernels (``winograd_kernels``, the output's with the convolution's
bias, residual and activation); where numba is missing or disabled (``winograd_route`` returns None) the
column-matrix route runs. In the split mode a layer with a small transformed filter runs as bands of tile rows,
each thread's band transformed, multiplied and transformed back while it is in L2 (see BAND_BYTES).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ....framework.thread_mode import note_pool_product
from ....framework.thread_pool import current_pool
from ..gemm import matmul as pool_matmul
from ..gemm import own_sgemm_usable
from .. import row_kernels
from ..jit import optional_module, read_only

# The smallest input and output channel counts taking this route: below them the sixteen products are too
# thin to beat one product over the column matrix.
MIN_CHANNELS = 32
# The fewest output tiles taking this route: with fewer, each transformed filter (16/9 the filter's size) is read
# for too little work (resnet50's 512-channel 7x7 layers, 16 tiles: 0.94x warm, slower with the weights cold).
MIN_TILES = 32
_TILE = 2  # output pixels per tile side
# The products' multiply-adds from which the route tells a session learning its thread mode
# (``framework.thread_mode``) that the pool's split mode runs it faster: there the transforms run on every core as
# native tasks and the sixteen products are shared out whole, here the transforms on the calling thread beside
# BLAS's threads. Measured on 2 Zen 5 cores: resnet50 (its 53-58M-multiply-add layers) 35.0 -> 31.0 ms split.
_POOL_MODE_MACS = 1 << 25
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
# Where the pool splits products and onyxrt's GEMM runs, a convolution whose transformed filter takes at most
# BANDS_MAX_FILTER_BYTES runs as bands of tile rows, each thread transforming its band's inputs, taking the sixteen
# products and transforming them to the output while the band's BAND_BYTES of transformed inputs and products stay in
# L2 (``winograd_bands.bands_part``); the whole convolution's pass through L3 each took most of resnet50's
# 64-channel 56x56 layers' time in a run. Measured on 2 Zen 5 cores alone: 587 -> 391 us warm, 713 -> 526 with the
# caches flushed (another run: 398 -> 420 warm, 539 -> 523 flushed); in resnet50's runs 731-833 -> 456-712 us, the
# model 0.976 paired. A larger filter would be read again for every band (its 256-channel 14x14 layers' 4 MB); one
# band a thread for those was neutral in resnet50 (0.977), and is not taken.
BANDS_MAX_FILTER_BYTES = 1 << 19
BAND_BYTES = 1 << 19


def applies(shape, dtype, w_shape, group: int, strides, dilations, pads) -> bool:
    """Whether ``winograd_route`` takes this convolution: float32 2-D, group 1, 3x3 filter, stride and dilation
    1, non-negative pads, at least :data:`MIN_CHANNELS` input and output channels and :data:`MIN_TILES` tiles."""
    if not (len(shape) == 4 and dtype == np.float32 and group == 1 and tuple(w_shape[2:]) == (3, 3)
            and list(strides) == [1, 1] and list(dilations) == [1, 1] and all(p >= 0 for p in pads)
            and shape[1] >= MIN_CHANNELS and w_shape[0] >= MIN_CHANNELS):
        return False
    out_h, out_w = shape[2] + pads[0] + pads[2] - 2, shape[3] + pads[1] + pads[3] - 2
    return out_h > 0 and out_w > 0 and shape[0] * -(-out_h // 2) * -(-out_w // 2) >= MIN_TILES


def transformed_filter(w: np.ndarray) -> np.ndarray:
    """U = G g G^T of each filter g of ``w`` (M, C, 3, 3): (16, M, C) float32, position xi = 4 * row + column."""
    u = np.einsum("ri,mcij,sj->rsmc", _G, w.astype(np.float64), _G)
    return np.ascontiguousarray(u.reshape(16, w.shape[0], w.shape[1]), dtype=np.float32)


def winograd_route(shape, u: np.ndarray, b: np.ndarray | None, activation, pads, out_sp,
                   finish: Callable) -> Callable | None:
    """The convolution of inputs of ``shape`` (N, C, H, W) by the transformed filter ``u`` (16, M, C), bias ``b``
    (M,) or None, explicit ``pads``, output size ``out_sp``, as a function ``(x, residual) -> y`` applying
    ``activation`` to the sum (``conv_core``'s order) in the output transform where its kernels can, else by
    ``finish`` (the route's epilogue, given the bias-free product); None where the compiled transforms are
    unusable."""
    kernels = optional_module("onyxrt.providers.cpu.nn.winograd_kernels")
    if kernels is None:
        return None
    N, C = shape[:2]
    M = u.shape[1]
    OH, OW = out_sp
    th, tw = -(-OH // _TILE), -(-OW // _TILE)
    tiles = N * th * (tw + 1)  # (a junk tile past each tile row's last, see winograd_kernels.input_transform)
    pt, pl = pads[0], pads[1]
    y_shape = (N, M, OH, OW)
    code = row_kernels.activation_code(activation)
    act, (alpha, beta) = code if code is not None else (0, (0.0, 0.0))
    no_bias = np.zeros(0, np.float32)
    bias = no_bias if b is None else np.ascontiguousarray(b, np.float32).reshape(M)
    alpha, beta = np.float32(alpha), np.float32(beta)
    no_residual = np.zeros((0, 0), np.float32)
    params = np.array([alpha, beta], np.float32)
    faster_split = 16 * M * C * tiles >= _POOL_MODE_MACS
    # bands of tile rows, each thread's own, where the transformed filter stays in L2 beside a band (see BAND_BYTES)
    bands = (optional_module("onyxrt.providers.cpu.nn.winograd_bands")
             if 16 * M * C * 4 <= BANDS_MAX_FILTER_BYTES and own_sgemm_usable() else None)
    band_rows, band_tiles, band_floats = bands.band_shape(C, M, th, tw, BAND_BYTES) if bands else (0, 0, 0)

    def run(x: np.ndarray, z: np.ndarray | None) -> np.ndarray:
        if faster_split:
            note_pool_product()
        pool = current_pool()
        x = np.ascontiguousarray(x)
        y = np.empty(y_shape, np.float32)
        fused = code is not None and (z is None or z.shape == y_shape and z.dtype == np.float32)
        residual = np.ascontiguousarray(z).reshape(N * M, OH * OW) if fused and z is not None else no_residual
        if bands and fused and pool.splits_gemms and pool.runs_native_tasks:
            scratch = np.empty(pool.num_threads * band_floats, np.float32)
            args = bands.bands_args(x, u, y, bias, residual, params, scratch, pt, pl, th, tw, act, band_rows,
                                    band_tiles, band_floats)
            pool.run_native(bands.bands_task.address, args, pool.num_threads)
            return y
        v = np.empty((16, C, tiles), np.float32)
        if pool.splits_gemms and pool.runs_native_tasks:  # (the pool owns the cores: transforms on all of them)
            args = kernels.task_args(x, v, v, y, bias if fused else no_bias, residual, params, pt, pl, th, tw,
                                     act if fused else 0)
            pool.run_native(kernels.input_part.address, args, pool.num_threads)
            products = pool_matmul(u, v)
            args[2] = products.ctypes.data
            pool.run_native(kernels.output_part.address, args, pool.num_threads)
        else:
            kernels.input_transform(read_only(x), v, pt, pl, th, tw, 0, C)
            products = pool_matmul(u, v)
            if fused:
                kernels.output_transform(products, y, th, tw, bias, residual, act, alpha, beta, 0, M)
            else:
                kernels.output_transform(products, y, th, tw, no_bias, no_residual, 0, alpha, beta, 0, M)
        return y if fused else finish(y, z)

    return run
