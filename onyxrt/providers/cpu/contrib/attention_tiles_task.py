"""Scaled dot-product attention head by head on onyxrt's GEMM tiles (``math/sgemm_tiles``), as one
native task: ``attention_heads_task`` with its two ``cblas_sgemm`` calls per head replaced by the tiles.

Why: a head's products are small (a ViT-like net's 17 x 17 x 16, an encoder's 64 x 64 x 16); BLAS spends more on
each call (argument checks, packing both operands) than on the multiply-adds, and numpy's batched products call
it once per head. Here the keys are transposed into a per-part buffer (so the scores' tiles read them as rows) and
the tiles read Q, the weights and V where they lie. Measured on 2 Zen 5 cores, on one thread against
``_attend``'s batched products on two: 8 x 4 heads of 17 x 16 32 -> 19 us, 4 x 4 of 64 x 16 77 -> 56, 1 x 12 of
128 x 32 247 -> 208, 1 x 12 of 128 x 64 ~620 -> 285.

The weights' rows are made as ``attention_heads_task.weigh_rows`` makes them (scale, additive mask, causal rule,
softmax); the arguments are ``attention_heads_task.pack``'s. The value size must be a multiple of the vectors'
lanes (the tiles read whole vectors of V's rows; see :func:`fits`).

Imported by ``attention`` on first use where ``gemm.own_sgemm_usable`` (AVX-512 or AVX2, numba compiling for the host).
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types

from ..math.sgemm_tiles import LANES, MAX_ROWS, PANEL, _tile
from ..native_tasks import float32_array, int64_array
from .attention_heads_task import (_ARGS, _BATCH, _HEAD_SIZE, _HEADS, _K, _K_BATCH, _K_HEAD, _K_ROW, _KEYS,
                                   _KV_HEADS, _OUT, _Q, _Q_BATCH, _Q_HEAD, _Q_ROW, _ROWS, _SCALE, _SCRATCH, _V,
                                   _V_BATCH, _V_HEAD, _V_ROW, _VALUE_SIZE, weigh_rows)

_F32_BYTES = 4
_NO_EPILOGUE = (0, 0, 0, 0, 0, 0)
VALUE_MULTIPLE = LANES  # the tiles load V's rows in whole vectors


def fits(value_size: int) -> bool:
    """Whether heads of ``value_size`` values run here (V's rows are read in whole vectors)."""
    return value_size > 0 and value_size % VALUE_MULTIPLE == 0


@numba.njit(cache=True)
def padded_keys(keys: int) -> int:
    """The row length of the scores and transposed keys (a whole panel: the tiles read B's rows a panel wide)."""
    return -(-keys // PANEL) * PANEL


@numba.njit(cache=True)
def scratch_size(rows: int, keys: int, head_size: int) -> int:
    """float32 values of scratch one part needs: its scores (rows x padded keys) and transposed keys."""
    return (rows + head_size) * padded_keys(keys)


@numba.njit(inline="always", cache=True, nogil=True, error_model="numpy")
def _product(c, ldc, a, lda, b, ldb, depth, rows, columns):
    """C[rows, columns] = A[rows, depth] @ B[depth, columns] by tiles (byte addresses, row strides in bytes)."""
    for m in range(0, rows, MAX_ROWS):
        tile_rows = min(MAX_ROWS, rows - m)
        for c0 in range(0, columns, PANEL):
            _tile(c + m * ldc + c0 * _F32_BYTES, ldc, a + m * lda, lda, b + c0 * _F32_BYTES, ldb, depth, tile_rows,
                  0, _NO_EPILOGUE, min(PANEL, columns - c0))


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True,
             fastmath={"reassoc", "contract"}, error_model="numpy")
def attention_tiles_part(args, part, parts):
    """Native task: the (batch, head) pairs [U * part / parts, U * (part + 1) / parts) of the attention at ``args``
    (``attention_heads_task.pack``), U = batch * heads; part ``part`` uses its own block of the scratch buffer
    (:func:`scratch_size`)."""
    d = int64_array(args, _ARGS)
    heads, group = d[_HEADS], d[_HEADS] // d[_KV_HEADS]
    rows, keys, head_size, value_size = d[_ROWS], d[_KEYS], d[_HEAD_SIZE], d[_VALUE_SIZE]
    width = padded_keys(keys)
    scale = float32_array(d[_SCALE], 1)[0]
    scores_at = d[_SCRATCH] + part * scratch_size(rows, keys, head_size) * _F32_BYTES
    scores = float32_array(scores_at, rows * width)
    keys_at = scores_at + rows * width * _F32_BYTES
    transposed = float32_array(keys_at, head_size * width)
    for c in range(head_size):  # (the padding lanes are computed and never stored: zeros keep them cheap)
        for j in range(keys, width):
            transposed[np.uintp(c * width + j)] = 0
    k_row, units = d[_K_ROW], d[_BATCH] * heads
    for unit in range(units * part // parts, units * (part + 1) // parts):
        b, h = unit // heads, unit % heads
        kv = h // group
        q = d[_Q] + (b * d[_Q_BATCH] + h * d[_Q_HEAD]) * _F32_BYTES
        k = float32_array(d[_K] + (b * d[_K_BATCH] + kv * d[_K_HEAD]) * _F32_BYTES, (keys - 1) * k_row + head_size)
        v = d[_V] + (b * d[_V_BATCH] + kv * d[_V_HEAD]) * _F32_BYTES
        for j in range(keys):
            for c in range(head_size):
                transposed[np.uintp(c * width + j)] = k[np.uintp(j * k_row + c)]
        _product(scores_at, width * _F32_BYTES, q, d[_Q_ROW] * _F32_BYTES, keys_at, width * _F32_BYTES, head_size,
                 rows, keys)
        weigh_rows(d, b, h, scores, width, scale)
        out = d[_OUT] + (b * rows * heads + h) * value_size * _F32_BYTES
        _product(out, heads * value_size * _F32_BYTES, scores_at, width * _F32_BYTES, v, d[_V_ROW] * _F32_BYTES,
                 keys, rows, value_size)
