"""The Winograd F(2x2, 3x3) transforms (``winograd``): the input's into the sixteen products' right operands, the
products' into the output, with the convolution's epilogue.

Imported by ``winograd`` on first use (it imports numba at its top).
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types

from ..jit_rows import epilogue_run
from ..native_tasks import float32_array, int64_array

_jit = dict(cache=True, nogil=True, error_model="numpy")


@numba.njit(inline="always", **_jit)
def _parity_row(xf, source, W, images, r, row, pl, half):
    """Padded row ``r`` (x's row at ``source``) into the parity images' image row ``row``: its columns of each
    parity, where x has them."""
    for q in range(2):
        image = images[r % 2, q]
        base = row * half
        w0 = (q - pl) % 2  # first column of x at padded column parity q
        first = (w0 + pl) // 2
        count = max(0, min((W - w0 + 1) // 2, half - first))
        for u in range(count):
            image[np.uintp(base + first + u)] = xf[np.uintp(source + w0 + 2 * u)]


@numba.njit(inline="always", **_jit)
def _column_steps(images, steps, length):
    """d B: each row-parity image's elements combined with their right neighbours (the column step)."""
    for p in range(2):
        even, odd = images[p, 0], images[p, 1]
        s0, s1, s2, s3 = steps[p, 0], steps[p, 1], steps[p, 2], steps[p, 3]
        for f in range(length):
            e0, e1 = even[np.uintp(f)], even[np.uintp(f + 1)]
            o0, o1 = odd[np.uintp(f)], odd[np.uintp(f + 1)]
            s0[np.uintp(f)] = e0 - e1
            s1[np.uintp(f)] = o0 + e1
            s2[np.uintp(f)] = e1 - o0
            s3[np.uintp(f)] = o0 - o1


@numba.njit(inline="always", **_jit)
def _row_steps(steps, vf, out0, stride, tiles, half):
    """B^T (d B): the column steps' rows combined with the next's into v's four rows of each column j, from
    ``out0`` (v[j, c, t0]), the next rows ``stride`` apart (4 * C * T)."""
    for j in range(4):
        top, bottom = steps[0, j], steps[1, j]  # padded rows 2a (2a + 2) and 2a + 1 (2a + 3)
        first = out0 + j * (stride // 4)
        out1, out2, out3 = first + stride, first + 2 * stride, first + 3 * stride
        for f in range(tiles):
            d0, d1 = top[np.uintp(f)], bottom[np.uintp(f)]
            d2, d3 = top[np.uintp(f + half)], bottom[np.uintp(f + half)]
            vf[np.uintp(first + f)] = d0 - d2
            vf[np.uintp(out1 + f)] = d1 + d2
            vf[np.uintp(out2 + f)] = d2 - d1
            vf[np.uintp(out3 + f)] = d1 - d3


@numba.njit(inline="always", fastmath={"contract"}, **_jit)
def _tile_corners(mf, i, step):
    """A^T M A of the tile whose products start at ``mf[i]`` (the sixteen ``step`` apart): its outputs (0, 0), (0, 1),
    (1, 0), (1, 1)."""
    m0, m1, m2, m3 = mf[np.uintp(i)], mf[np.uintp(i + step)], mf[np.uintp(i + 2 * step)], mf[np.uintp(i + 3 * step)]
    m4, m5, m6, m7 = (mf[np.uintp(i + 4 * step)], mf[np.uintp(i + 5 * step)], mf[np.uintp(i + 6 * step)],
                      mf[np.uintp(i + 7 * step)])
    m8, m9, m10, m11 = (mf[np.uintp(i + 8 * step)], mf[np.uintp(i + 9 * step)], mf[np.uintp(i + 10 * step)],
                        mf[np.uintp(i + 11 * step)])
    m12, m13, m14, m15 = (mf[np.uintp(i + 12 * step)], mf[np.uintp(i + 13 * step)], mf[np.uintp(i + 14 * step)],
                          mf[np.uintp(i + 15 * step)])
    q00, q01 = m0 + m1 + m2, m1 - m2 - m3
    q10, q11 = m4 + m5 + m6, m5 - m6 - m7
    q20, q21 = m8 + m9 + m10, m9 - m10 - m11
    q30, q31 = m12 + m13 + m14, m13 - m14 - m15
    return q00 + q10 + q20, q01 + q11 + q21, q10 - q20 - q30, q11 - q21 - q31


@numba.njit(inline="always", **_jit)
def _interleave_rows(yf, plane, row0, row1, OW, a0, half, c00, c01, c10, c11):
    """Output rows row0..row1 of the plane at ``plane`` from the tiles' corners (tile row a0 the first's)."""
    evens, odds = (OW + 1) // 2, OW // 2
    for row in range(row0, row1):
        left, right = (c00, c01) if row % 2 == 0 else (c10, c11)
        target = plane + row * OW
        source = (row // 2 - a0) * half
        for u in range(evens):
            yf[np.uintp(target + 2 * u)] = left[np.uintp(source + u)]
        for u in range(odds):
            yf[np.uintp(target + 2 * u + 1)] = right[np.uintp(source + u)]


@numba.njit(**_jit)
def input_transform(x, v, pt, pl, th, tw, c0, c1):
    """v[xi, c, t] = (B^T d B)[xi] for channels c0..c1 of ``x`` (N, C, H, W), tile t = (n * th + a) * (tw + 1) + b
    whose patch d is x's rows 2a - pt .. 2a - pt + 3 and columns 2b - pl .. 2b - pl + 3 (zero outside x). Each
    tile row has one junk tile past its last (b = tw): every step below is then one long loop over a plane.

    The padded plane is split into its four row and column parity images ((th + 1) x (tw + 1) each); the column
    step (d B) combines an image's element with its right neighbour, the row step (B^T) an image's row with
    the next, each a contiguous run. Indices are ``uintp``: no wrap-around tests, and the loops vectorize."""
    N, C, H, W = x.shape
    T = v.shape[2]
    half = tw + 1
    length = (th + 1) * half  # a parity image
    tiles = th * half  # an image's tiles
    xf = x.reshape(-1)
    vf = v.reshape(-1)
    # parity images [row parity][column parity], one slack element each; their padding stays zero
    images = np.zeros((2, 2, length + 1), x.dtype)
    steps = np.empty((2, 4, length), x.dtype)  # column steps of the row-parity images
    for n in range(N):
        for c in range(c0, c1):
            plane = (n * C + c) * H * W
            for h in range(H):
                r = h + pt  # padded row
                if r >= 2 * (th + 1):
                    break
                _parity_row(xf, plane + h * W, W, images, r, r // 2, pl, half)
            _column_steps(images, steps, length)
            _row_steps(steps, vf, (c * T) + n * tiles, 4 * C * T, tiles, half)


@numba.njit(fastmath={"contract"}, **_jit)
def _output_rows(mf, yf, first, step, tiles, corners, plane, row0, row1, OW, a0, half, add, residual_rows, summed, act,
                 alpha, beta):
    """Output rows row0..row1 of the plane at ``plane`` in ``yf`` from ``tiles`` tiles whose products start at
    ``mf[first]`` (tile row a0 the first's; ``corners`` (4, tiles) scratch), then act(y + add + residual_rows) over
    those rows (``jit_rows.epilogue_run``; ``residual_rows`` those rows' residual, read only where ``summed``)."""
    c00, c01, c10, c11 = corners[0], corners[1], corners[2], corners[3]
    for f in range(tiles):
        c00[np.uintp(f)], c01[np.uintp(f)], c10[np.uintp(f)], c11[np.uintp(f)] = _tile_corners(mf, first + f, step)
    _interleave_rows(yf, plane, row0, row1, OW, a0, half, c00, c01, c10, c11)
    start = plane + row0 * OW
    outputs = yf[start:start + (row1 - row0) * OW]
    epilogue_run(outputs, add, residual_rows, summed, act, alpha, beta)


@numba.njit(fastmath={"contract"}, **_jit)
def output_transform(m, y, th, tw, bias, residual, act, alpha, beta, k0, k1):
    """Output channels k0..k1 of ``y`` (N, K, OH, OW) from the products ``m`` (16, K, T), tiles laid out as
    :func:`input_transform` lays them: each tile's A^T M A, cropped where OH or OW is odd; then, while the
    plane is in cache, y = act(y + bias[k] + residual) (``jit_rows.epilogue_run``: ``bias`` with 0 or K
    entries, ``residual`` (N * K, OH * OW) or 0 rows, ``act`` its code with parameters alpha, beta)."""
    N, K, OH, OW = y.shape
    T = m.shape[2]
    half = tw + 1
    tiles = th * half
    mf = m.reshape(-1)
    yf = y.reshape(-1)
    corners = np.empty((4, tiles), m.dtype)  # each tile's outputs (0, 0), (0, 1), (1, 0), (1, 1)
    step = K * T
    biased = bias.shape[0] > 0
    summed = residual.shape[0] > 0
    for n in range(N):
        for k in range(k0, k1):
            row = n * K + k
            add = bias[np.uintp(k)] if biased else m.dtype.type(0)
            # (m[0, k, t0] at k * T + n * tiles; m[j, k, t0] j * K * T further)
            _output_rows(mf, yf, k * T + n * tiles, step, tiles, corners, row * OH * OW, 0, OH, OW, 0, half, add,
                         residual[np.uintp(row)] if summed else yf[:0], summed, act, alpha, beta)


# Task arguments (int64): x, v, products, y, bias, residual, params addresses; N, C, H, W, M, T, OH, OW, pt, pl, th,
# tw, bias entries, residual rows, act
(_X, _V, _PRODUCTS, _Y, _BIAS, _RESIDUAL, _PARAMS, _N, _C, _H, _W, _M, _T, _OH, _OW, _PT, _PL, _TH, _TW, _BIASED,
 _SUMMED, _ACT, _ARGS) = range(23)


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def input_part(args, part, parts):
    """Native task (``framework.native_spin``): channels [C * part / parts, C * (part + 1) / parts) of
    :func:`input_transform` for the convolution :func:`task_args` describes."""
    d = int64_array(args, _ARGS)
    n, c = d[_N], d[_C]
    x = float32_array(d[_X], n * c * d[_H] * d[_W]).reshape((n, c, d[_H], d[_W]))
    v = float32_array(d[_V], 16 * c * d[_T]).reshape((16, c, d[_T]))
    input_transform(x, v, d[_PT], d[_PL], d[_TH], d[_TW], c * part // parts, c * (part + 1) // parts)


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True, fastmath={"contract"},
             error_model="numpy")
def output_part(args, part, parts):
    """Native task: output channels [M * part / parts, M * (part + 1) / parts) of :func:`output_transform`."""
    d = int64_array(args, _ARGS)
    n, m, oh, ow = d[_N], d[_M], d[_OH], d[_OW]
    products = float32_array(d[_PRODUCTS], 16 * m * d[_T]).reshape((16, m, d[_T]))
    y = float32_array(d[_Y], n * m * oh * ow).reshape((n, m, oh, ow))
    bias = float32_array(d[_BIAS], d[_BIASED])
    residual = float32_array(d[_RESIDUAL], d[_SUMMED] * oh * ow).reshape((d[_SUMMED], oh * ow))
    params = float32_array(d[_PARAMS], 2)
    output_transform(products, y, d[_TH], d[_TW], bias, residual, d[_ACT], params[0], params[1], m * part // parts,
                     m * (part + 1) // parts)


def task_args(x, v, products, y, bias, residual, params, pt, pl, th, tw, act) -> np.ndarray:
    """The tasks' arguments (C-contiguous float32 arrays, kept alive by the caller until the tasks return):
    ``products`` and ``y`` may be placeholders for the input task."""
    n, c, h, w = x.shape
    return np.array([x.ctypes.data, v.ctypes.data, products.ctypes.data, y.ctypes.data, bias.ctypes.data,
                     residual.ctypes.data, params.ctypes.data, n, c, h, w, y.shape[1], v.shape[2], y.shape[2],
                     y.shape[3], pt, pl, th, tw, bias.shape[0], residual.shape[0], act], np.int64)
