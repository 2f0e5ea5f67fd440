"""The Winograd F(2x2, 3x3) convolution as bands of tile rows (``winograd``, the split mode): each thread transforms
its band's inputs, takes the sixteen products on onyxrt's GEMM (``math/sgemm_tiles``) and transforms them to the
output with the epilogue, while the band's transformed inputs and products are in its L2.

Imported by ``winograd`` on first use, where onyxrt's GEMM runs (AVX-512 or AVX2; it imports numba at its top).
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types

from ..math.sgemm_tiles import PANEL, gemm
from ..native_tasks import float32_array, int64_array
from .winograd_kernels import _column_steps, _jit, _output_rows, _parity_row, _row_steps


@numba.njit(**_jit)
def _input_band(x, v, n, a0, rows, pt, pl, tw, images, steps):
    """v[xi, c, t] for the tiles of tile rows a0 .. a0 + ``rows`` of image ``n`` (t = (a - a0) * (tw + 1) + b, a
    junk tile past each row's last), every channel: :func:`input_transform` over a band of the plane, its parity
    images (``images`` (2, 2, (rows + 1) * (tw + 1) + 1), their padding zero) and column steps (``steps``) given."""
    N, C, H, W = x.shape
    T = v.shape[2]
    half = tw + 1
    length = (rows + 1) * half
    tiles = rows * half
    xf = x.reshape(-1)
    vf = v.reshape(-1)
    first_row = 2 * a0  # the band's first padded row
    for c in range(C):
        images[:] = 0
        plane = (n * C + c) * H * W
        for r in range(first_row, first_row + 2 * (rows + 1)):
            h = r - pt
            if 0 <= h < H:
                _parity_row(xf, plane + h * W, W, images, r, (r - first_row) // 2, pl, half)
        _column_steps(images, steps, length)
        _row_steps(steps, vf, c * T, 4 * C * T, tiles, half)
        v[:, c, tiles:] = 0.0  # (the columns past the band's tiles: zeros for the products' panels)


@numba.njit(fastmath={"contract"}, **_jit)
def _output_band(m, y, n, a0, rows, tw, bias, residual, act, alpha, beta, corners):
    """Output rows 2 * a0 .. of image ``n`` (every channel) from the band's products ``m`` (16, K, T) as
    :func:`_input_band` lays its tiles, cropped at OH and OW, then y = act(y + bias[k] + residual) over those rows
    (``jit_rows.epilogue_run``); ``corners`` (4, rows * (tw + 1)) scratch."""
    N, K, OH, OW = y.shape
    T = m.shape[2]
    half = tw + 1
    tiles = rows * half
    mf = m.reshape(-1)
    yf = y.reshape(-1)
    step = K * T
    biased = bias.shape[0] > 0
    summed = residual.shape[0] > 0
    row0 = 2 * a0
    row1 = min(OH, 2 * (a0 + rows))
    for k in range(K):
        add = bias[np.uintp(k)] if biased else m.dtype.type(0)
        extra = residual[n * K + k][row0 * OW:row1 * OW] if summed else yf[:0]
        _output_rows(mf, yf, k * T, step, tiles, corners, (n * K + k) * OH * OW, row0, row1, OW, a0, half, add, extra,
                     summed, act, alpha, beta)

# Band task arguments (int64): x, u, y, bias, residual, params, scratch addresses; N, C, H, W, M, OH, OW, pt, pl, th,
# tw, bias entries, residual rows, act, band rows, band tiles (a multiple of PANEL: the products' panels), scratch
# floats a part
(_BX, _BU, _BY, _BBIAS, _BRES, _BPARAMS, _BSCRATCH, _BN, _BC, _BH, _BW, _BM, _BOH, _BOW, _BPT, _BPL, _BTH, _BTW,
 _BBIASED, _BSUMMED, _BACT, _BROWS, _BTILES, _BPART, _BARGS) = range(25)


@numba.njit(fastmath={"contract"}, **_jit)
def bands_part(d, part, parts):
    """Part ``part`` of ``parts`` of the convolution as bands of tile rows (the images' tile rows shared out in
    order): per band the input transform, the sixteen products (``sgemm_tiles.gemm``) and the output transform with
    the epilogue, the band's transformed inputs and products in the part's own scratch (sized to stay in L2 between
    the three steps, where the whole convolution's pass through L3 each)."""
    n_images, c, h, w, m = d[_BN], d[_BC], d[_BH], d[_BW], d[_BM]
    oh, ow, th, tw = d[_BOH], d[_BOW], d[_BTH], d[_BTW]
    band, tiles = d[_BROWS], d[_BTILES]
    x = float32_array(d[_BX], n_images * c * h * w).reshape((n_images, c, h, w))
    u = float32_array(d[_BU], 16 * m * c).reshape((16, m, c))
    y = float32_array(d[_BY], n_images * m * oh * ow).reshape((n_images, m, oh, ow))
    bias = float32_array(d[_BBIAS], d[_BBIASED])
    residual = float32_array(d[_BRES], d[_BSUMMED] * oh * ow).reshape((d[_BSUMMED], oh * ow))
    params = float32_array(d[_BPARAMS], 2)
    half = tw + 1
    scratch = d[_BSCRATCH] + part * d[_BPART] * 4
    v = float32_array(scratch, 16 * c * tiles).reshape((16, c, tiles))
    products = float32_array(scratch + 16 * c * tiles * 4, 16 * m * tiles).reshape((16, m, tiles))
    images = float32_array(scratch + 16 * (c + m) * tiles * 4, 4 * ((band + 1) * half + 1)).reshape(
        (2, 2, (band + 1) * half + 1))
    steps = np.empty((2, 4, (band + 1) * half), np.float32)
    corners = np.empty((4, band * half), np.float32)
    no_tail = np.zeros((c, 0), np.float32)
    no_rest = np.zeros((0, c), np.float32)
    no_bias = np.zeros(0, np.float32)
    no_residual = np.zeros((0, tiles), np.float32)
    panels = tiles // PANEL
    per_image = (th + band - 1) // band
    count = n_images * per_image
    for index in range(count * part // parts, count * (part + 1) // parts):
        n, a0 = index // per_image, (index % per_image) * band
        rows = min(band, th - a0)
        _input_band(x, v, n, a0, rows, d[_BPT], d[_BPL], tw, images, steps)
        for xi in range(16):
            gemm(u[xi], v[xi], no_tail, no_rest, products[xi], 0, m, 0, panels, no_bias, no_residual, 0, params)
        _output_band(products, y, n, a0, rows, tw, bias, residual, d[_BACT], params[0], params[1], corners)


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True, fastmath={"contract"},
             error_model="numpy")
def bands_task(args, part, parts):
    """Native task (``framework.native_spin``): :func:`bands_part` of the arguments at ``args``."""
    bands_part(int64_array(args, _BARGS), part, parts)


def band_shape(c: int, m: int, th: int, tw: int, budget: int) -> tuple[int, int, int]:
    """(tile rows a band, its tiles rounded up to a multiple of PANEL, scratch floats a part) for bands whose
    transformed inputs and products take about ``budget`` bytes."""
    half = tw + 1
    rows = max(1, min(th, budget // (16 * (c + m) * 4 * half)))
    tiles = -(-rows * half // PANEL) * PANEL
    return rows, tiles, 16 * (c + m) * tiles + 4 * ((rows + 1) * half + 1)


def bands_args(x, u, y, bias, residual, params, scratch, pt, pl, th, tw, act, rows, tiles, per_part) -> np.ndarray:
    """The band task's arguments (C-contiguous float32 arrays kept alive by the caller until the task returns;
    ``scratch`` per_part floats for each part)."""
    n, c, h, w = x.shape
    return np.array([x.ctypes.data, u.ctypes.data, y.ctypes.data, bias.ctypes.data, residual.ctypes.data,
                     params.ctypes.data, scratch.ctypes.data, n, c, h, w, y.shape[1], y.shape[2], y.shape[3], pt, pl,
                     th, tw, bias.shape[0], residual.shape[0], act, rows, tiles, per_part], np.int64)
