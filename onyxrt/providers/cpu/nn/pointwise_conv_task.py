"""A float32 pointwise convolution (1x1 filter, stride 1, no padding, group 1) with its epilogue, as one
native task (``framework.native_spin``) on the pool's spinning workers, without the GIL.

Each image's product Y (M x P) = W (M x C) @ X (C x P) is cut into blocks; a worker computes a block with
a single-threaded ``cblas_sgemm`` (``native_sgemm``) and, while the block is still in its cache, adds the
bias and the residual and applies the activation (``jit_rows.epilogue_row``). Large images are cut into
column blocks of about :data:`BLOCK_BYTES` of output, small ones into one block of rows per thread. Done as
a product split over the pool and then a separate epilogue pass, the output would be read and written
twice from memory and the pool handed work twice (measured on 2 AVX2 cores in the split-GEMM mode, fused /
unfused: 64x14x14 -> 384 with Clip 85 / 144 us, 8x32x32x32 -> 32 with Relu 174 / 315, 8x16x16x16 -> 48 with
QuickGelu 110 / 148, 16x112x112 -> 96 with Clip 458 / 492; ``/tmp`` script in the stop-29 note). Sessions that
leave products to BLAS's own threads (the default) keep the product and the epilogue pass. On AVX-512 CPUs, images
of ``conv_core.OWN_GEMM_MIN_PIXELS`` or more (every size by default) take onyxrt's own GEMM with the epilogue in its
registers instead (``conv_core._own_gemm_runner``); this task runs the other epilogues and other CPUs.

Imported by ``conv_core`` on first use (it imports numba at its top). Task arguments (:func:`pack`): an
int64 array of addresses and sizes, see the ``_*`` indices below.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types

from ..jit_rows import epilogue_row
from ..native_sgemm import NO_TRANS, SGEMM, _call
from ..native_tasks import float32_array, int64_array

# Output bytes a column block aims at (held in a core's L2 while its epilogue runs).
BLOCK_BYTES = 128 << 10
# Pixels below which an image is cut into blocks of rows instead (too few columns for column blocks).
MIN_COLUMN_SPLIT_PIXELS = 1024
_MIN_BLOCK, _MAX_BLOCK, _ALIGN = 64, 1024, 16
_F32_BYTES = 4
(_FN, _WIDE, _IMAGES, _M, _P, _C, _W, _X, _Y, _BIAS, _RESIDUAL, _PARAMS, _ACT, _BLOCK, _UNITS, _ARGS) = range(16)


# (the epilogue is inlined here, so its compile options must be this function's: with Python's error
# model the division in sigmoid gets a zero test and the loops do not vectorize)
@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True, fastmath={"contract"},
             error_model="numpy")
def pointwise_part(args, part, parts):
    """Native task: units [U * part / parts, U * (part + 1) / parts) of the convolution at ``args`` (a unit: a
    column block of one image, or a block of rows where ``_BLOCK`` is 0)."""
    d = int64_array(args, _ARGS)
    fn, wide, m, p, c = d[_FN], d[_WIDE], d[_M], d[_P], d[_C]
    units = d[_UNITS]
    block = d[_BLOCK]
    per_image = units // d[_IMAGES]
    params = float32_array(d[_PARAMS], 2)
    act, a, b = d[_ACT], params[0], params[1]
    biased = d[_BIAS] != 0
    summed = d[_RESIDUAL] != 0
    bias = float32_array(d[_BIAS], m if biased else 0)
    for unit in range(units * part // parts, units * (part + 1) // parts):
        image, index = unit // per_image, unit % per_image
        x = d[_X] + image * c * p * _F32_BYTES
        y_offset = image * m * p
        if block > 0:
            r0, r1, c0, c1 = 0, m, index * block, min(p, (index + 1) * block)
        else:
            r0, r1, c0, c1 = m * index // per_image, m * (index + 1) // per_image, 0, p
        if r1 <= r0 or c1 <= c0:
            continue
        y = d[_Y] + (y_offset + r0 * p + c0) * _F32_BYTES
        _call(wide, fn, NO_TRANS, r1 - r0, c1 - c0, c, d[_W] + r0 * c * _F32_BYTES, c, x + c0 * _F32_BYTES, p, y, p)
        for r in range(r0, r1):
            row = float32_array(d[_Y] + (y_offset + r * p + c0) * _F32_BYTES, c1 - c0)
            extra = float32_array(d[_RESIDUAL] + (y_offset + r * p + c0) * _F32_BYTES, c1 - c0) if summed else row
            epilogue_row(row, bias[r] if biased else np.float32(0.0), extra, summed, act, a, b)


@numba.njit(cache=True)
def _pack(sgemm, wide, w, x, y, bias, residual, act, params, threads):
    images, m, p = y.shape
    if p >= MIN_COLUMN_SPLIT_PIXELS:
        block = min(_MAX_BLOCK, max(_MIN_BLOCK, BLOCK_BYTES // (_F32_BYTES * m))) // _ALIGN * _ALIGN
        per_image = -(-p // block)
    else:
        block, per_image = 0, max(1, min(m, threads))
    args = np.empty(_ARGS, np.int64)
    args[_FN], args[_WIDE], args[_IMAGES], args[_M], args[_P], args[_C] = sgemm, wide, images, m, p, w.shape[1]
    args[_W], args[_X], args[_Y] = w.ctypes.data, x.ctypes.data, y.ctypes.data
    args[_BIAS] = bias.ctypes.data if bias.shape[0] > 0 else 0
    args[_RESIDUAL] = residual.ctypes.data if residual.shape[0] > 0 else 0
    args[_PARAMS], args[_ACT], args[_BLOCK], args[_UNITS] = params.ctypes.data, act, block, images * per_image
    return args, images * per_image


_NO_BIAS = np.zeros(0, np.float32)
_NO_RESIDUAL = np.zeros((0, 0, 0), np.float32)


def pack(w: np.ndarray, x: np.ndarray, y: np.ndarray, bias: np.ndarray | None, residual: np.ndarray | None,
         act: int, params: np.ndarray, threads: int) -> tuple[np.ndarray, int]:
    """The task's arguments and its number of units, for ``y`` (N, M, P) = act(``w`` (M, C) @ ``x`` (N, C, P)
    + bias[:, None] + residual): C-contiguous float32 arrays (``residual`` of y's shape), ``params`` the
    activation's two float32 parameters. The caller keeps them all alive while the task runs. (Compiled: an
    ``ndarray.ctypes`` address costs ~0.8 us in Python, most of a small layer's set-up.)"""
    return _pack(SGEMM.address, SGEMM.wide, w, x, y, _NO_BIAS if bias is None else bias,
                 _NO_RESIDUAL if residual is None else residual, act, params, threads)
