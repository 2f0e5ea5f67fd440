"""The patch convolution (``patch_conv``): a register tile of :data:`PIXELS` output pixels by a vector of output
channels, accumulated over every tap, each tap's input read where it lies (an implicit GEMM: no column matrix).

A convolution whose windows tile the input (kernel = strides, no padding: a ConvNeXt-like stem or downsampling, a
vision transformer's patch embedding) reads each input element once, in runs of kw along a row: the column matrix's
gather costs as much as its product for the few channels such layers have, and vectors along a row of outputs would
read kw-strided columns. So the tile holds output *channels* in a vector's lanes: per tap one load of the tap's
weights for :data:`LANES` channels, one broadcast of each pixel's input and :data:`PIXELS` multiply-adds into
independent sums. A pixel's position in its image (``pixel_offsets``) and a tap's (``tap_offsets``) are added, so
the tiles run over an image's pixels in one flat range, across its rows. The bias and the activations
``row_kernels.IN_REGISTERS`` are applied in the registers; the sums are stored a channel's pixels at a time.

The tile is LLVM IR with explicit vectors of :data:`LANES` floats: sixteen where the CPU has AVX-512, else eight.
Imported by ``patch_conv`` on first use (it imports numba at its top).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic

from ....framework.cpu_features import has_flags
from ..ir_vectors import activation, splat
from ..native_tasks import float32_array, int64_array

LANES = 16 if has_flags("avx512f") else 8  # output channels per tile
PIXELS = 8  # output pixels per tile: independent sums per tap
_F = ir.FloatType()
_V = ir.VectorType(_F, LANES)
_I64 = ir.IntType(64)
_BYTES = 4
_jit = dict(cache=True, nogil=True, error_model="numpy")


def _constant(value: int) -> ir.Constant:
    return ir.Constant(_I64, value)


def _tile_codegen(context, builder, signature, args):
    """out[m * out_stride + p] = act(bias[m] + sum over t < taps of weights[t * LANES + m] * image[tap_offsets[t] +
    pixels[p]]) for m < ``rows`` and p < ``valid`` (float32 and int64 arrays at addresses); pixels past ``valid``
    repeat the last valid one's (computed, not stored). Each sum is one multiply-add chain over the taps in the
    column matrix's order, the bias added after it (a GEMM's rounding, then its epilogue's)."""
    image_address, tap_offsets_address, taps, weights_address, bias_address, params_address, act, pixels_address, \
        valid, out_address, out_stride, rows = args
    pointer = _F.as_pointer()
    image = builder.inttoptr(image_address, pointer)
    tap_offsets = builder.inttoptr(tap_offsets_address, _I64.as_pointer())
    weights = builder.inttoptr(weights_address, pointer)
    params = builder.inttoptr(params_address, pointer)
    pixels = builder.inttoptr(pixels_address, _I64.as_pointer())
    out = builder.inttoptr(out_address, pointer)
    last = builder.sub(valid, _constant(1))
    starts = []
    for p in range(PIXELS):
        index = builder.select(builder.icmp_signed("<", _constant(p), valid), _constant(p), last)
        starts.append(builder.gep(image, [builder.load(builder.gep(pixels, [index]))]))
    sums = [cgutils.alloca_once(builder, _V) for _ in range(PIXELS)]
    for total in sums:
        builder.store(ir.Constant(_V, None), total)
    with cgutils.for_range(builder, taps) as tap:
        offset = builder.load(builder.gep(tap_offsets, [tap.index]))
        row = builder.bitcast(builder.gep(weights, [builder.mul(tap.index, _constant(LANES))]), _V.as_pointer())
        weight = builder.load(row, align=_BYTES)
        for p in range(PIXELS):
            value = splat(builder, builder.load(builder.gep(starts[p], [offset])), _V)
            product = builder.fmul(value, weight, flags=["contract"])
            builder.store(builder.fadd(builder.load(sums[p]), product, flags=["contract"]), sums[p])
    shift = builder.load(builder.bitcast(builder.inttoptr(bias_address, pointer), _V.as_pointer()), align=_BYTES)
    a, b = (splat(builder, builder.load(builder.gep(params, [_constant(i)])), _V) for i in (0, 1))
    for p in range(PIXELS):
        with builder.if_then(builder.icmp_signed("<", _constant(p), valid)):
            result = activation(builder, builder.fadd(builder.load(sums[p]), shift), act, a, b)
            with cgutils.for_range(builder, rows) as lane:
                target = builder.gep(out, [builder.add(builder.mul(lane.index, out_stride), _constant(p))])
                builder.store(builder.extract_element(result, lane.index), target)
    return context.get_dummy_value()


@intrinsic
def _tile(typingctx, image, tap_offsets, taps, weights, bias, params, act, pixels, valid, out, out_stride, rows):
    return types.void(*([types.int64] * 12)), _tile_codegen


@numba.njit(**_jit)
def patch_rows(x, weights, bias, tap_offsets, pixel_offsets, params, y, act, u0, u1):
    """Units u0..u1 (u = n * tiles + pixel tile) of ``y`` (N, M, P) = act(conv(x) + bias) for ``x`` (N, image) flat
    images: ``weights`` (blocks, taps, LANES) and ``bias`` (blocks * LANES,) zero past M, ``tap_offsets`` (taps,)
    each tap's position relative to its window's first element, ``pixel_offsets`` (P,) each output pixel's window's
    first element in its image; ``act`` an activation of ``row_kernels.IN_REGISTERS``, parameters ``params[:2]``."""
    M, P = y.shape[1], y.shape[2]
    blocks, taps = weights.shape[0], weights.shape[1]
    tiles = (P + PIXELS - 1) // PIXELS
    for u in range(u0, u1):
        n, q0 = u // tiles, u % tiles * PIXELS
        image = x[n].ctypes.data
        valid = min(PIXELS, P - q0)
        for blk in range(blocks):
            m0 = blk * LANES
            _tile(image, tap_offsets.ctypes.data, taps, weights[blk].ctypes.data, bias.ctypes.data + m0 * _BYTES,
                  params.ctypes.data, act, pixel_offsets.ctypes.data + q0 * 8, valid,
                  y.ctypes.data + ((n * M + m0) * P + q0) * _BYTES, P, min(LANES, M - m0))


# Task arguments (int64): x, weights, bias, tap offsets, pixel offsets, params, y addresses; N, image size, M, P,
# blocks, taps, act
_X, _WEIGHTS, _BIAS, _TAPS_AT, _PIXELS_AT, _PARAMS, _Y, _N, _IMAGE, _M, _P, _BLOCKS, _TAPS, _ACT, _ARGS = range(15)


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def rows_part(args, part, parts):
    """Native task (``framework.native_spin``): units [U * part / parts, U * (part + 1) / parts) of the U = N x
    pixel tiles of :func:`patch_rows` for the convolution :func:`task_args` describes."""
    d = int64_array(args, _ARGS)
    n, m, p, blocks, taps = d[_N], d[_M], d[_P], d[_BLOCKS], d[_TAPS]
    x = float32_array(d[_X], n * d[_IMAGE]).reshape((n, d[_IMAGE]))
    weights = float32_array(d[_WEIGHTS], blocks * taps * LANES).reshape((blocks, taps, LANES))
    bias = float32_array(d[_BIAS], blocks * LANES)
    tap_offsets = int64_array(d[_TAPS_AT], taps)
    pixel_offsets = int64_array(d[_PIXELS_AT], p)
    params = float32_array(d[_PARAMS], 2)
    y = float32_array(d[_Y], n * m * p).reshape((n, m, p))
    units = n * ((p + PIXELS - 1) // PIXELS)
    patch_rows(x, weights, bias, tap_offsets, pixel_offsets, params, y, d[_ACT], units * part // parts,
               units * (part + 1) // parts)


def task_template(n: int, image: int, m: int, p: int, weights, bias, tap_offsets, pixel_offsets, params) -> np.ndarray:
    """:func:`rows_part`'s arguments for ``n`` images of ``image`` elements into (n, m, p) outputs, less the input's
    and the output's addresses and the activation (:func:`task_args` adds them per call); the caller keeps the arrays
    alive while the template is used."""
    return np.array([0, weights.ctypes.data, bias.ctypes.data, tap_offsets.ctypes.data, pixel_offsets.ctypes.data,
                     params.ctypes.data, 0, n, image, m, p, weights.shape[0], weights.shape[1], 0], np.int64)


@numba.njit(cache=True)
def task_args(template, x, y, act):
    """The ``template``'s arguments with the input ``x``, the output ``y`` and the activation ``act`` (compiled:
    ``ndarray.ctypes`` costs ~0.8 us an address in Python); the caller keeps the arrays alive until the task
    returns."""
    args = template.copy()
    args[_X], args[_Y], args[_ACT] = x.ctypes.data, y.ctypes.data, act
    return args
