"""The direct convolution (``direct_conv``): a register tile of output channels by output pixels accumulated over
every tap, the input read from its column phases.

An input row of a strided layer, split into its ``s1`` column phases (the padded plane's columns ph, ph + s1, ...),
makes a run of consecutive outputs read a contiguous run of each phase for every tap; so a tile of
:data:`VECTORS` x :data:`LANES` consecutive outputs of one row and :data:`BLOCK` output channels keeps its
BLOCK x VECTORS vectors of sums in registers while it walks the taps: per tap, VECTORS loads of the input, BLOCK
broadcasts of the weights and BLOCK x VECTORS multiply-adds (onnxruntime's NCHWc kernels for NCHW inputs tile the
same way, over output channels). The bias and the activations :data:`IN_REGISTERS` are applied in the registers;
the other epilogue codes and a residual by ``jit_rows.epilogue_run`` over each output row just written.

Rows of :data:`LANES` outputs or fewer (a 32x32 image's stride-2 stem) run two output rows a tile, so that each
weight's broadcast serves both; a stride-2 layer's column phases are split from the input rows 2 x LANES columns at a
time by two shuffles (``_deinterleave``: the phase copy of 8x3x32x32 10.4 -> 7.3 us; with the paired
rows an 8x3x32x32 -> 24 3x3/2 stem 26 -> 22 us on one Zen 5 core; on a Zen 3 with AVX2, 3x32x32 as fast as a scalar
loop, 3x224x224 50 against 54 us, once its vectors were eight floats and its masks' loads and stores plain where all on:
sixteen-float ones had been 2-3x slower).

The tile is LLVM IR with explicit vectors of :data:`LANES` floats: sixteen where the CPU has AVX-512, else eight (an
AVX2 register; LLVM lowers them to what the CPU has), with the block of output channels sized to the registers.

Imported by ``direct_conv`` on first use (it imports numba at its top).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic

from ....framework.cpu_features import has_flags
from ..ir_vectors import IN_REGISTERS, activation, lanes_below, masked_load, masked_store, splat
from ..jit_rows import epilogue_run
from ..native_tasks import float32_array, int64_array

WIDE = has_flags("avx512f")
LANES = 16 if WIDE else 8
VECTORS = 2  # vectors of consecutive outputs per tile
BLOCK = 8 if WIDE else 4  # output channels per tile: BLOCK * VECTORS sums held in registers
TILE = LANES * VECTORS  # outputs of a row per tile
_F = ir.FloatType()
_V = ir.VectorType(_F, LANES)
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_BYTES = 4
_jit = dict(cache=True, nogil=True, error_model="numpy")
_EPILOGUE_RUN = 2048  # outputs of a plane from which the epilogue after the tiles runs


def _constant(value: int) -> ir.Constant:
    return ir.Constant(_I64, value)


def _tiler(vectors: int):
    """The intrinsic ``tile(source, offsets, taps, weights, bias, params, act, out, out_stride, rows, valid, step,
    out_step, per_vector)`` (addresses and int64s) for tiles of ``vectors`` vectors of outputs, vector v reading the
    input ``v * step`` and writing ``v * out_step`` floats after the first's: for q < ``rows`` (at most BLOCK) and p <
    ``valid`` (at most vectors x LANES; with ``per_vector``, each vector's first ``valid`` lanes), out[q * out_stride +
    p] = act((sum over t < ``taps`` of weights[t * BLOCK + q] * source[offsets[t] + p]) + bias[q]); the sums past
    ``valid`` are computed (the input's planes reach that far) but not stored. With ``step`` = ``out_step`` = LANES the
    vectors are consecutive outputs of a row; with a row's steps and ``per_vector``, rows of LANES outputs or fewer
    (an output row a vector: each weight's broadcast then serves both). Each sum is one multiply-add chain over the
    taps in the column matrix's order, the bias added after it, as a GEMM over the column matrix and its epilogue
    compute it: the same rounding (deep networks can amplify a last-bit difference into another result)."""

    def codegen(context, builder, signature, args):
        source_address, offsets_address, taps, weights_address, bias_address, params_address, act, out_address, \
            out_stride, rows, valid, step, out_step, per_vector = args
        pointer = _F.as_pointer()
        source = builder.inttoptr(source_address, pointer)
        offsets = builder.inttoptr(offsets_address, _I64.as_pointer())
        weights = builder.inttoptr(weights_address, pointer)
        bias = builder.inttoptr(bias_address, pointer)
        params = builder.inttoptr(params_address, pointer)
        out = builder.inttoptr(out_address, pointer)
        sums = [[cgutils.alloca_once(builder, _V) for _ in range(vectors)] for _ in range(BLOCK)]
        for q in range(BLOCK):
            for v in range(vectors):
                builder.store(ir.Constant(_V, None), sums[q][v])
        with cgutils.for_range(builder, taps) as tap:
            at = builder.gep(source, [builder.load(builder.gep(offsets, [tap.index]))])
            pixels = [builder.load(builder.bitcast(builder.gep(at, [builder.mul(_constant(v), step)]),
                                                   _V.as_pointer()), align=_BYTES) for v in range(vectors)]
            row = builder.gep(weights, [builder.mul(tap.index, _constant(BLOCK))])
            for q in range(BLOCK):
                weight = splat(builder, builder.load(builder.gep(row, [_constant(q)])), _V)
                for v in range(vectors):
                    product = builder.fmul(weight, pixels[v], flags=["contract"])
                    builder.store(builder.fadd(builder.load(sums[q][v]), product, flags=["contract"]), sums[q][v])
        a, b = (splat(builder, builder.load(builder.gep(params, [_constant(i)])), _V) for i in (0, 1))
        for q in range(BLOCK):
            with builder.if_then(builder.icmp_signed("<", _constant(q), rows)):
                target = builder.gep(out, [builder.mul(_constant(q), out_stride)])
                shift = splat(builder, builder.load(builder.gep(bias, [_constant(q)])), _V)
                for v in range(vectors):
                    value = activation(builder, builder.fadd(builder.load(sums[q][v]), shift), act, a, b)
                    here = builder.gep(target, [builder.mul(_constant(v), out_step)])
                    left = builder.select(builder.icmp_signed("!=", per_vector, _constant(0)), valid,
                                          builder.sub(valid, _constant(v * LANES)))
                    with builder.if_else(builder.icmp_signed(">=", left, _constant(LANES))) as (whole, part):
                        with whole:
                            builder.store(value, builder.bitcast(here, _V.as_pointer()), align=_BYTES)
                        with part:  # the row's last outputs, one at a time (none where left <= 0)
                            with cgutils.for_range(builder, left) as lane:
                                builder.store(builder.extract_element(value, lane.index),
                                              builder.gep(here, [lane.index]))
        return context.get_dummy_value()

    @intrinsic
    def tile(typingctx, source, offsets, taps, weights, bias, params, act, out, out_stride, rows, valid, step,
             out_step, per_vector):
        return types.void(source, offsets, taps, weights, bias, params, act, out, out_stride, rows, valid, step,
                          out_step, per_vector), codegen

    return tile


_tile = _tiler(VECTORS)
_tile_narrow = _tiler(1)  # a row's last LANES outputs or fewer


_PAIR = ir.VectorType(_F, LANES)  # the column phases' vectors: 2 x LANES input columns split into their even and odd


def _deinterleave_codegen(context, builder, signature, args):
    """even[q] = row[2q - pl], odd[q] = row[2q + 1 - pl] for q < ``count`` (float32 at byte addresses), 0 where that
    column is outside the row's ``width``: 2 x LANES columns a step, loaded under a lane mask, split by two shuffles."""
    even_addr, odd_addr, row_addr, width, pl, count = args
    pointer = _PAIR.as_pointer()
    zero = ir.Constant(_PAIR, None)

    def address(base, index):
        return builder.inttoptr(builder.add(base, builder.mul(index, _constant(_BYTES))), pointer)

    steps = builder.udiv(builder.add(count, _constant(LANES - 1)), _constant(LANES))
    with cgutils.for_range(builder, steps) as loop:
        q = builder.mul(loop.index, _constant(LANES))
        halves = []
        for half in (0, 1):
            column = builder.sub(builder.add(builder.mul(q, _constant(2)), _constant(LANES * half)), pl)
            # the lanes whose columns lie in the row: from lane -column (column 0) to lane width - column
            inside = builder.and_(lanes_below(builder, builder.sub(width, column), LANES),
                                  builder.not_(lanes_below(builder, builder.neg(column), LANES)))
            halves.append(masked_load(builder, address(row_addr, column), inside, zero))
        stored = lanes_below(builder, builder.sub(count, q), LANES)
        for target, first in ((even_addr, 0), (odd_addr, 1)):
            part = builder.shuffle_vector(halves[0], halves[1], ir.Constant(ir.VectorType(_I32, LANES),
                                                                             list(range(first, 2 * LANES, 2))))
            masked_store(builder, part, address(target, q), stored)
    return context.get_dummy_value()


@intrinsic
def _deinterleave(typingctx, even_addr, odd_addr, row_addr, width, pl, count):
    return types.void(*([types.int64] * 6)), _deinterleave_codegen


@numba.njit(**_jit)
def phase_planes(x, planes, n, s1, pt, pl, channels, r0, r1):
    """planes[c, ph, r, q] = x[n, c, r - pt, q * s1 + ph - pl] for c < ``channels`` and the planes' rows r0 <= r < r1
    (zero outside x: ``planes`` (C, s1, Hp, Wq) float32 arrives zeroed and only x's positions are written, the same
    positions for every image, so the padding stays zero from one image to the next)."""
    H, W = x.shape[2], x.shape[3]
    Wq = planes.shape[3]
    if s1 == 2:  # (the commonest stride: both phases of a row at once, in vectors; zeros written at the padding)
        count = min(Wq, (W + pl + 1) // 2)  # the columns q either phase holds a column of the row at
        for c in range(channels):
            for r in range(max(0, r0 - pt), min(H, r1 - pt)):
                _deinterleave(planes[c, 0, r + pt].ctypes.data, planes[c, 1, r + pt].ctypes.data,
                              x[n, c, r].ctypes.data, W, pl, count)
        return
    for c in range(channels):
        for ph in range(s1):
            # the columns q whose input column q * s1 + ph - pl lies in [0, W)
            q0 = max(0, -(-(pl - ph) // s1))
            q1 = min(Wq, (W - 1 + pl - ph) // s1 + 1)
            for r in range(max(0, r0 - pt), min(H, r1 - pt)):
                dst = planes[c, ph, r + pt]
                src = x[n, c, r]
                for q in range(q0, q1):
                    dst[np.uintp(q)] = src[np.uintp(q * s1 + ph - pl)]


@numba.njit(**_jit)
def direct_rows(x, weights, bias, offsets, params, y, residual, s0, s1, pt, pl, Hp, Wq, act, u0, u1):
    """Output rows u0..u1 (u = n * OH + oh) of ``y`` (N, M, OH, OW) = act(conv(x) + bias + residual):
    ``weights`` (blocks, taps, BLOCK) and ``bias`` (blocks * BLOCK,) zero past M, ``offsets`` each tap's position
    in an image's phase planes (C, s1, Hp, Wq) relative to its window's first, ``residual`` (N * M, OH * OW) or
    no rows; ``act`` an epilogue code (``jit_rows.epilogue_run``), parameters ``params[:2]``."""
    N, C = x.shape[0], x.shape[1]
    M, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    blocks, taps = weights.shape[0], weights.shape[1]
    planes = np.zeros((C, s1, Hp, Wq), np.float32)
    summed = residual.shape[0] > 0
    after = summed or act not in IN_REGISTERS
    inner = 0 if after else act
    yr = y.reshape(N * M, OH * OW)
    reach = 0  # the planes' rows a window spans, less one: the taps' largest row offset
    for t in range(taps):
        reach = max(reach, (offsets[t] % (Hp * Wq)) // Wq)
    image = -1
    pending = 0  # the first row of the image not yet through the epilogue applied after the tiles
    # rows of one vector or fewer run two rows a tile (each weight's broadcast serving both)
    paired_rows = OW <= LANES
    u = u0
    while u < u1:
        n, oh = u // OH, u % OH
        if n != image:
            # only the rows this range's output rows of the image read (a part of a split image copies its share)
            last = min(OH, u1 - n * OH)  # (past this range's last output row of the image)
            phase_planes(x, planes, n, s1, pt, pl, C, oh * s0, (last - 1) * s0 + reach + 1)
            image = n
            pending = oh
        pair = paired_rows and oh + 1 < OH and u + 1 < u1
        done = oh + 1 if pair else oh  # the last output row this step writes
        source = planes.ctypes.data + (oh * s0 * Wq) * 4
        for blk in range(blocks):
            m0 = blk * BLOCK
            rows = min(BLOCK, M - m0)
            w_at = weights[blk].ctypes.data
            b_at = bias.ctypes.data + m0 * 4
            out_row = y[n, m0, oh]
            if pair:
                _tile(source, offsets.ctypes.data, taps, w_at, b_at, params.ctypes.data, inner, out_row.ctypes.data,
                      OH * OW, rows, OW, s0 * Wq, OW, 1)
                continue
            for ow0 in range(0, OW, TILE):
                valid = min(TILE, OW - ow0)
                if valid > LANES:
                    _tile(source + ow0 * 4, offsets.ctypes.data, taps, w_at, b_at, params.ctypes.data, inner,
                          out_row.ctypes.data + ow0 * 4, OH * OW, rows, valid, LANES, LANES, 0)
                else:
                    _tile_narrow(source + ow0 * 4, offsets.ctypes.data, taps, w_at, b_at, params.ctypes.data, inner,
                                 out_row.ctypes.data + ow0 * 4, OH * OW, rows, valid, LANES, LANES, 0)
        # the epilogue after the tiles runs over runs of rows of each plane (long loops), while they are in cache
        step_end = u + (done - oh)  # the last row index u this step wrote
        if after and (done == OH - 1 or step_end == u1 - 1 or (done + 1 - pending) * OW >= _EPILOGUE_RUN):
            for m in range(M):
                r = n * M + m
                line = yr[r, pending * OW:(done + 1) * OW]
                extra = residual[r, pending * OW:(done + 1) * OW] if summed else line
                epilogue_run(line, np.float32(0), extra, summed, act, params[0], params[1])
            pending = done + 1
        u = step_end + 1


# Task arguments (int64): x, weights, bias, offsets, params, y, residual addresses; N, C, H, W, M, OH, OW, blocks,
# taps, residual rows, s0, s1, pt, pl, Hp, Wq, act
(_X, _WEIGHTS, _BIAS, _OFFSETS, _PARAMS, _Y, _RESIDUAL, _N, _C, _H, _W, _M, _OH, _OW, _BLOCKS, _TAPS, _SUMMED, _S0,
 _S1, _PT, _PL, _HP, _WQ, _ACT, _ARGS) = range(25)


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def rows_part(args, part, parts):
    """Native task (``framework.native_spin``): output rows [R * part / parts, R * (part + 1) / parts) of the R = N * OH
    of :func:`direct_rows` for the convolution :func:`task_args` describes."""
    d = int64_array(args, _ARGS)
    n, c, m, oh, ow = d[_N], d[_C], d[_M], d[_OH], d[_OW]
    x = float32_array(d[_X], n * c * d[_H] * d[_W]).reshape((n, c, d[_H], d[_W]))
    weights = float32_array(d[_WEIGHTS], d[_BLOCKS] * d[_TAPS] * BLOCK).reshape((d[_BLOCKS], d[_TAPS], BLOCK))
    bias = float32_array(d[_BIAS], d[_BLOCKS] * BLOCK)
    offsets = int64_array(d[_OFFSETS], d[_TAPS])
    params = float32_array(d[_PARAMS], 2)
    y = float32_array(d[_Y], n * m * oh * ow).reshape((n, m, oh, ow))
    residual = float32_array(d[_RESIDUAL], d[_SUMMED] * oh * ow).reshape((d[_SUMMED], oh * ow))
    units = n * oh
    direct_rows(x, weights, bias, offsets, params, y, residual, d[_S0], d[_S1], d[_PT], d[_PL], d[_HP], d[_WQ],
                d[_ACT], units * part // parts, units * (part + 1) // parts)


def task_template(x_shape, weights, bias, offsets, params, y_shape, s0, s1, pt, pl, Hp, Wq) -> np.ndarray:
    """:func:`rows_part`'s arguments for inputs of ``x_shape`` into outputs of ``y_shape``, less the input's, the
    output's and the residual's addresses, the residual's rows and the activation (:func:`task_args` adds them per
    call); the caller keeps the arrays alive while the template is used."""
    n, c, h, w = x_shape
    return np.array([0, weights.ctypes.data, bias.ctypes.data, offsets.ctypes.data, params.ctypes.data, 0, 0, n, c, h,
                     w, y_shape[1], y_shape[2], y_shape[3], weights.shape[0], weights.shape[1], 0, s0, s1, pt, pl, Hp,
                     Wq, 0], np.int64)


@numba.njit(cache=True)
def task_args(template, x, y, residual, act):
    """The ``template``'s arguments with the input ``x``, the output ``y``, the ``residual`` (N * M, OH * OW) or no
    rows, and the activation ``act`` (compiled: ``ndarray.ctypes`` costs ~0.8 us an address in Python); the caller
    keeps the arrays alive until the task returns."""
    args = template.copy()
    args[_X], args[_Y], args[_RESIDUAL] = x.ctypes.data, y.ctypes.data, residual.ctypes.data
    args[_SUMMED], args[_ACT] = residual.shape[0], act
    return args
