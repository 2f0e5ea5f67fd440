"""numba kernels for MatMulNBits that read the packed 4-/8-bit weights directly.

Imported only through ``jit.LazyModuleKernel`` (this module imports numba at its top, and
numba is optional). Every kernel covers column tiles ``[t0, t1)`` so the caller may split N
over threads, and releases the GIL.

Layout (made once by ``nbits.pack_tiles``): the weight is cut into tiles of ``TILE`` output
columns, and within a tile the packed byte of (block, byte j, column c) is at
``b[tile, block, j, c]``, so the inner loop runs over ``TILE`` contiguous columns with the
A element a broadcast scalar: one and/shift, one convert and one multiply-add per weight, a
constant trip count that vectorizes fully. The weight of column n, block blk is
``scale * (q - zp)``; the dot product is formed as ``scale * sum(q * a) - (scale * zp) *
sum(a)`` per block, so no float weight is ever written. The result differs from a
dequantize-then-dot product by float rounding only.

The nibbles are split in float arithmetic (``high = floor(byte / 16)``, ``low = byte - 16 *
high``): numba widens integer ``&``/``>>`` on uint8 to int64, which LLVM then vectorizes 8 lanes
wide through 64-bit conversions, at half the speed (measured).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types

from ..native_sgemm import NO_TRANS, _call
from ..native_tasks import float32_array, int64_array, uint8_array

TILE = 64  # output columns per tile: a compile-time constant, so the column loops vectorize fully
_jit = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
_f = np.float32


@numba.njit(**_jit)
def q4_tiles(a_even, a_odd, a_sum, b, scales, scaled_zp, y, t0, t1):
    """``y[m, tile*TILE + c]`` for tiles [t0, t1) of a 4-bit weight.

    a_even, a_odd: (M, KB, H) float32, elements 2j and 2j+1 of each block of A's rows (H =
    block/2, the low and high nibble of byte j); a_sum: (M, KB) float32; b: (NT, KB, H, TILE)
    uint8; scales, scaled_zp: (NT, KB, TILE) float32; y: (M, NT*TILE) float32.
    """
    M, KB, H = a_even.shape
    s = np.empty((M, TILE), dtype=np.float32)
    acc = np.empty((M, TILE), dtype=np.float32)
    for t in range(t0, t1):
        acc[:] = 0
        for blk in range(KB):
            s[:] = 0
            for j in range(H):
                for m in range(M):
                    lo = a_even[m, blk, j]
                    hi = a_odd[m, blk, j]
                    for c in range(TILE):
                        byte = _f(b[t, blk, j, c])
                        high = np.floor(byte * _f(0.0625))
                        s[m, c] += (byte - _f(16.0) * high) * lo + high * hi
            for m in range(M):
                total = a_sum[m, blk]
                for c in range(TILE):
                    acc[m, c] += scales[t, blk, c] * s[m, c] - scaled_zp[t, blk, c] * total
        for m in range(M):
            for c in range(TILE):
                y[m, t * TILE + c] = acc[m, c]


@numba.njit(**_jit)
def q8_tiles(a, a_sum, b, scales, scaled_zp, y, t0, t1):
    """As :func:`q4_tiles` for 8-bit weights: a (M, KB, block) float32, b (NT, KB, block, TILE) uint8."""
    M, KB, BS = a.shape
    s = np.empty((M, TILE), dtype=np.float32)
    acc = np.empty((M, TILE), dtype=np.float32)
    for t in range(t0, t1):
        acc[:] = 0
        for blk in range(KB):
            s[:] = 0
            for j in range(BS):
                for m in range(M):
                    v = a[m, blk, j]
                    for c in range(TILE):
                        s[m, c] += _f(b[t, blk, j, c]) * v
            for m in range(M):
                total = a_sum[m, blk]
                for c in range(TILE):
                    acc[m, c] += scales[t, blk, c] * s[m, c] - scaled_zp[t, blk, c] * total
        for m in range(M):
            for c in range(TILE):
                y[m, t * TILE + c] = acc[m, c]


(_BITS, _M, _KB, _H, _NT, _A_EVEN, _A_ODD, _A_SUM, _B, _SCALES, _SCALED_ZP, _Y, _ARGS) = range(13)


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def direct_part(args, part, parts):
    """Native task (``framework.native_spin``): tiles [NT * part / parts, NT * (part + 1) / parts) of
    :func:`q4_tiles` or :func:`q8_tiles` as :func:`direct_args` describes them."""
    d = int64_array(args, _ARGS)
    m, kb, h, nt = d[_M], d[_KB], d[_H], d[_NT]
    t0, t1 = nt * part // parts, nt * (part + 1) // parts
    a_sum = float32_array(d[_A_SUM], m * kb).reshape((m, kb))
    b = uint8_array(d[_B], nt * kb * h * TILE).reshape((nt, kb, h, TILE))
    scales = float32_array(d[_SCALES], nt * kb * TILE).reshape((nt, kb, TILE))
    scaled_zp = float32_array(d[_SCALED_ZP], nt * kb * TILE).reshape((nt, kb, TILE))
    y = float32_array(d[_Y], m * nt * TILE).reshape((m, nt * TILE))
    a_even = float32_array(d[_A_EVEN], m * kb * h).reshape((m, kb, h))
    if d[_BITS] == 4:
        q4_tiles(a_even, float32_array(d[_A_ODD], m * kb * h).reshape((m, kb, h)), a_sum, b, scales, scaled_zp, y,
                 t0, t1)
    else:
        q8_tiles(a_even, a_sum, b, scales, scaled_zp, y, t0, t1)


@numba.njit(cache=True)
def direct_args(bits, a_even, a_odd, a_sum, b, scales, scaled_zp, y):
    """:func:`direct_part`'s arguments (C-contiguous arrays as :func:`q4_tiles` / :func:`q8_tiles` take them;
    ``a_odd`` unread for 8 bits). Compiled: reading addresses through numpy's ``ndarray.ctypes`` costs ~1 us
    each."""
    args = np.empty(_ARGS, np.int64)
    args[_BITS], args[_M], args[_KB], args[_H], args[_NT] = bits, a_even.shape[0], a_even.shape[1], b.shape[2], b.shape[0]
    args[_A_EVEN], args[_A_ODD], args[_A_SUM] = a_even.ctypes.data, a_odd.ctypes.data, a_sum.ctypes.data
    args[_B], args[_SCALES], args[_SCALED_ZP], args[_Y] = b.ctypes.data, scales.ctypes.data, scaled_zp.ctypes.data, y.ctypes.data
    return args


@numba.njit(**_jit)
def dequantize_q4_tiles(b, scales, scaled_zp, w, t0, t1):
    """Columns of tiles [t0, t1) of the float (KB*block, N) weight into ``w`` ((KB*block, (t1-t0)*TILE)).

    (Here the nibbles are split with integer ``&`` and ``>>`` on the byte widened to int32, and each row written
    through a row view: 3.7x faster than the float split :func:`q4_tiles` uses, with the same values.)"""
    NT, KB, H, _ = b.shape
    for t in range(t0, t1):
        base = (t - t0) * TILE
        for blk in range(KB):
            scale, shift = scales[t, blk], scaled_zp[t, blk]
            for j in range(H):
                k = blk * 2 * H + 2 * j
                low_row, high_row, packed = w[k, base:base + TILE], w[k + 1, base:base + TILE], b[t, blk, j]
                for c in range(TILE):
                    v = np.int32(packed[c])
                    low_row[c] = _f(v & 15) * scale[c] - shift[c]
                    high_row[c] = _f(v >> 4) * scale[c] - shift[c]


@numba.njit(**_jit)
def dequantize_q8_tiles(b, scales, scaled_zp, w, t0, t1):
    """As :func:`dequantize_q4_tiles` for 8-bit weights."""
    NT, KB, BS, _ = b.shape
    for t in range(t0, t1):
        base = (t - t0) * TILE
        for blk in range(KB):
            scale, shift = scales[t, blk], scaled_zp[t, blk]
            for j in range(BS):
                row, values = w[blk * BS + j, base:base + TILE], b[t, blk, j]
                for c in range(TILE):
                    row[c] = _f(values[c]) * scale[c] - shift[c]


(_P_BITS, _P_M, _P_KP, _P_NT, _P_KB, _P_H, _P_PER, _P_A, _P_B, _P_SCALES, _P_SCALED_ZP, _P_Y, _P_SCRATCH, _P_FN,
 _P_WIDE, _P_ARGS) = range(16)


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def prefill_part(args, part, parts):
    """Native task: the column tiles [NT * part / parts, NT * (part + 1) / parts) of ``y = a @ W`` for many rows:
    ``per`` tiles at a time dequantized into this part's scratch (:func:`dequantize_q4_tiles` /
    :func:`dequantize_q8_tiles`), then multiplied by a single-threaded ``cblas_sgemm`` into y's columns, while
    they are in cache. :func:`prefill_args` describes the operands."""
    d = int64_array(args, _P_ARGS)
    m, kp, nt, kb, h, per = d[_P_M], d[_P_KP], d[_P_NT], d[_P_KB], d[_P_H], d[_P_PER]
    b = uint8_array(d[_P_B], nt * kb * h * TILE).reshape((nt, kb, h, TILE))
    scales = float32_array(d[_P_SCALES], nt * kb * TILE).reshape((nt, kb, TILE))
    scaled_zp = float32_array(d[_P_SCALED_ZP], nt * kb * TILE).reshape((nt, kb, TILE))
    width = per * TILE
    scratch_address = d[_P_SCRATCH] + part * kp * width * 4
    scratch = float32_array(scratch_address, kp * width).reshape((kp, width))
    t1 = nt * (part + 1) // parts
    for c0 in range(nt * part // parts, t1, per):
        c1 = min(t1, c0 + per)
        if d[_P_BITS] == 4:
            dequantize_q4_tiles(b, scales, scaled_zp, scratch, c0, c1)
        else:
            dequantize_q8_tiles(b, scales, scaled_zp, scratch, c0, c1)
        _call(d[_P_WIDE], d[_P_FN], NO_TRANS, m, (c1 - c0) * TILE, kp, d[_P_A], kp, scratch_address, width,
              d[_P_Y] + c0 * TILE * 4, nt * TILE)


@numba.njit(cache=True)
def prefill_args(bits, a, b, scales, scaled_zp, y, scratch, fn, wide):
    """:func:`prefill_part`'s arguments: ``a`` (M, KP) float32 C-contiguous, the tiled weight, ``y`` (M, NT *
    TILE) and ``scratch`` (parts, KP, per * TILE) float32 C-contiguous, ``fn`` the address of cblas_sgemm
    (``wide``: 64-bit integers)."""
    args = np.empty(_P_ARGS, np.int64)
    args[_P_BITS], args[_P_M], args[_P_KP], args[_P_NT] = bits, a.shape[0], a.shape[1], b.shape[0]
    args[_P_KB], args[_P_H], args[_P_PER] = b.shape[1], b.shape[2], scratch.shape[2] // TILE
    args[_P_A], args[_P_B], args[_P_SCALES], args[_P_SCALED_ZP] = a.ctypes.data, b.ctypes.data, scales.ctypes.data, scaled_zp.ctypes.data
    args[_P_Y], args[_P_SCRATCH], args[_P_FN], args[_P_WIDE] = y.ctypes.data, scratch.ctypes.data, fn, wide
    return args
