"""The Winograd F(2x2, 3x3) transforms (``winograd``): the input's into the sixteen products' right operands, the
products' into the output, with the convolution's epilogue.

Imported by ``winograd`` on first use (it imports numba at its top).
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types

from ..jit_rows import epilogue_row
from ..math.sgemm_avx512 import gemm
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
def output_transform(m, y, th, tw, bias, residual, act, alpha, beta, k0, k1):
    """Output channels k0..k1 of ``y`` (N, K, OH, OW) from the products ``m`` (16, K, T), tiles laid out as
    :func:`input_transform` lays them: each tile's A^T M A, cropped where OH or OW is odd; then, while the
    plane is in cache, y = act(y + bias[k] + residual) (``jit_rows.epilogue_row``: ``bias`` with 0 or K
    entries, ``residual`` (N * K, OH * OW) or 0 rows, ``act`` its code with parameters alpha, beta)."""
    N, K, OH, OW = y.shape
    T = m.shape[2]
    half = tw + 1
    tiles = th * half
    mf = m.reshape(-1)
    yf = y.reshape(-1)
    corners = np.empty((4, tiles), m.dtype)  # each tile's outputs (0, 0), (0, 1), (1, 0), (1, 1)
    c00, c01, c10, c11 = corners[0], corners[1], corners[2], corners[3]
    step = K * T
    biased = bias.shape[0] > 0
    summed = residual.shape[0] > 0
    for n in range(N):
        for k in range(k0, k1):
            r0 = k * T + n * tiles  # m[0, k, t0]; m[j, k, t0] is j * K * T further
            for f in range(tiles):
                c00[np.uintp(f)], c01[np.uintp(f)], c10[np.uintp(f)], c11[np.uintp(f)] = _tile_corners(mf, r0 + f,
                                                                                                        step)
            plane = (n * K + k) * OH * OW
            _interleave_rows(yf, plane, 0, OH, OW, 0, half, c00, c01, c10, c11)
            row = n * K + k
            outputs = y.reshape(N * K, OH * OW)[np.uintp(row)]
            add = bias[np.uintp(k)] if biased else m.dtype.type(0)
            epilogue_row(outputs, add, residual[np.uintp(row)] if summed else outputs, summed, act, alpha, beta)


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


# --------------------------------------------------------------------------- the pipeline over tile-row bands


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
        for j in range(4):
            out0 = (j * C + c) * T
            out1, out2, out3 = out0 + 4 * C * T, out0 + 8 * C * T, out0 + 12 * C * T
            for f in range(tiles, T):  # (the columns past the band's tiles: zeros for the products' panels)
                vf[np.uintp(out0 + f)] = 0.0
                vf[np.uintp(out1 + f)] = 0.0
                vf[np.uintp(out2 + f)] = 0.0
                vf[np.uintp(out3 + f)] = 0.0


@numba.njit(fastmath={"contract"}, **_jit)
def _output_band(m, y, n, a0, rows, tw, bias, residual, act, alpha, beta, corners):
    """Output rows 2 * a0 .. of image ``n`` (every channel) from the band's products ``m`` (16, K, T) as
    :func:`_input_band` lays its tiles, cropped at OH and OW, then y = act(y + bias[k] + residual) over those rows
    (``jit_rows.epilogue_row``); ``corners`` (4, rows * (tw + 1)) scratch."""
    N, K, OH, OW = y.shape
    T = m.shape[2]
    half = tw + 1
    tiles = rows * half
    mf = m.reshape(-1)
    yf = y.reshape(-1)
    c00, c01, c10, c11 = corners[0], corners[1], corners[2], corners[3]
    step = K * T
    biased = bias.shape[0] > 0
    summed = residual.shape[0] > 0
    row0 = 2 * a0
    row1 = min(OH, 2 * (a0 + rows))
    for k in range(K):
        for f in range(tiles):
            c00[np.uintp(f)], c01[np.uintp(f)], c10[np.uintp(f)], c11[np.uintp(f)] = _tile_corners(mf, k * T + f, step)
        plane = (n * K + k) * OH * OW
        _interleave_rows(yf, plane, row0, row1, OW, a0, half, c00, c01, c10, c11)
        start = plane + row0 * OW
        outputs = yf[start:start + (row1 - row0) * OW]
        add = bias[np.uintp(k)] if biased else m.dtype.type(0)
        if summed:
            extra = residual[n * K + k][row0 * OW:row1 * OW]
            epilogue_row(outputs, add, extra, True, act, alpha, beta)
        else:
            epilogue_row(outputs, add, outputs, False, act, alpha, beta)


# Band task arguments (int64): x, u, y, bias, residual, params, scratch addresses; N, C, H, W, M, OH, OW, pt, pl, th,
# tw, bias entries, residual rows, act, band rows, band tiles (a multiple of 32: the products' panels), scratch floats
# a part
(_BX, _BU, _BY, _BBIAS, _BRES, _BPARAMS, _BSCRATCH, _BN, _BC, _BH, _BW, _BM, _BOH, _BOW, _BPT, _BPL, _BTH, _BTW,
 _BBIASED, _BSUMMED, _BACT, _BROWS, _BTILES, _BPART, _BARGS) = range(25)


@numba.njit(fastmath={"contract"}, **_jit)
def bands_part(d, part, parts):
    """Part ``part`` of ``parts`` of the convolution as bands of tile rows (the images' tile rows shared out in
    order): per band the input transform, the sixteen products (``sgemm_avx512.gemm``) and the output transform with
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
    panels = tiles // 32
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
    """(tile rows a band, its tiles rounded up to a multiple of 32, scratch floats a part) for bands whose
    transformed inputs and products take about ``budget`` bytes."""
    half = tw + 1
    rows = max(1, min(th, budget // (16 * (c + m) * 4 * half)))
    tiles = -(-rows * half // 32) * 32
    return rows, tiles, 16 * (c + m) * tiles + 4 * ((rows + 1) * half + 1)


def bands_args(x, u, y, bias, residual, params, scratch, pt, pl, th, tw, act, rows, tiles, per_part) -> np.ndarray:
    """The band task's arguments (C-contiguous float32 arrays kept alive by the caller until the task returns;
    ``scratch`` per_part floats for each part)."""
    n, c, h, w = x.shape
    return np.array([x.ctypes.data, u.ctypes.data, y.ctypes.data, bias.ctypes.data, residual.ctypes.data,
                     params.ctypes.data, scratch.ctypes.data, n, c, h, w, y.shape[1], y.shape[2], y.shape[3], pt, pl,
                     th, tw, bias.shape[0], residual.shape[0], act, rows, tiles, per_part], np.int64)
