"""float32 depthwise convolutions eight channels at a time (one vector per pixel): small planes and
strided layers (``depthwise_conv._vector_blocks`` chooses).

For planes of a few hundred pixels, per-plane loops are too short to pay for themselves: every
row of a 14x14 plane starts and ends a loop; a strided layer's planar loops also split each row
into column phases first. Here a block of eight channels is transposed into
(pixels, 8) (an 8x8 register transpose per eight pixels), each output pixel is accumulated over
the filter taps in one vector register (one multiply-add per tap, the eight channels' weights
a vector too), the bias and the activation applied there, and the block transposed back into
the eight output planes. onnxruntime's NCHWc kernels work the same way, with the blocked
layout kept between operators; here the blocks exist only inside the kernel, so the model's
tensors stay NCHW. Measured on 2 AVX2 cores (``benchmarks/depthwise.md``).

The kernels are LLVM IR written with explicit ``<8 x float>`` vectors (LLVM lowers them to what
the CPU has: two SSE registers, one AVX register, or half an AVX-512 one; a multiply-add
contracts to FMA where the CPU has it); taps falling outside the input are skipped (zero
padding). Activations: none, Relu, LeakyRelu, Clip and HardSigmoid (``row_kernels``'s codes 0,
1, 2, 5, 6) in the vector registers (:data:`IN_REGISTERS`), with NaN kept as the planar kernel keeps
it; the other epilogue codes (Tanh, Sigmoid, HardSwish, QuickGelu) by ``jit_rows.channel_epilogue``
over each block's eight output planes just written, while they are in cache (:data:`ACTIVATIONS`).

Imported by ``depthwise_conv`` on first use (it imports numba at its top).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

from ..ir_vectors import IN_REGISTERS, activation, splat
from ..jit_rows import channel_epilogue
from ..native_tasks import float32_array, int64_array

LANES = 8
ACTIVATIONS = tuple(range(9))  # those and the rest of ``row_kernels``'s epilogue codes, per block after it
_F = ir.FloatType()
_V = ir.VectorType(_F, LANES)
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_BYTES = 4
# the 8x8 transpose: within pairs of rows, pairs of pairs, then halves
_STAGES = (
    ((0, 8, 1, 9, 4, 12, 5, 13), (2, 10, 3, 11, 6, 14, 7, 15)),
    ((0, 1, 8, 9, 4, 5, 12, 13), (2, 3, 10, 11, 6, 7, 14, 15)),
    ((0, 1, 2, 3, 8, 9, 10, 11), (4, 5, 6, 7, 12, 13, 14, 15)),
)


def _constant(value: int) -> ir.Constant:
    return ir.Constant(_I64, value)


def _transpose(builder: ir.IRBuilder, rows: list) -> list:
    """The columns of the 8x8 matrix whose rows are ``rows`` (eight <8 x float> values)."""

    def shuffle(a, b, mask):
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, LANES), list(mask)))

    low, high = _STAGES[0]
    a = []
    for r in range(0, 8, 2):
        a += [shuffle(rows[r], rows[r + 1], low), shuffle(rows[r], rows[r + 1], high)]
    # a[2q], a[2q+1]: rows 2q, 2q+1 interleaved (columns 0,1,4,5 and 2,3,6,7)
    low, high = _STAGES[1]
    b = []
    for half in (0, 4):  # rows 0-3, rows 4-7
        for part in (0, 1):
            x, y = a[half + part], a[half + 2 + part]
            b += [shuffle(x, y, low), shuffle(x, y, high)]
    # b[half + 2*part + q]: columns (2*part + q) and (2*part + q) + 4 of rows half..half+3
    low, high = _STAGES[2]
    columns = [None] * 8
    for c in range(4):
        columns[c] = shuffle(b[c], b[4 + c], low)
        columns[c + 4] = shuffle(b[c], b[4 + c], high)
    return columns


def _vector_at(builder, base, index):
    return builder.bitcast(builder.gep(base, [index]), _V.as_pointer())


def _emit_transpose_copy(builder, sources, source_step, destinations, destination_step, count):
    """IR moving ``count`` pixels of eight channels between eight planes and a (pixels, 8) block (see
    :func:`_emit_planes_and_block`): eight pixels at a time as one 8x8 transpose, where
    ``sources(c, p)`` points at row c of the 8x8 read at pixel p and ``destinations(c, p)`` at where its
    column c goes; the remaining pixels one element at a time, ``source_step(c, p)`` to
    ``destination_step(c, p)`` for channel c of pixel p."""
    whole = builder.mul(builder.sdiv(count, _constant(LANES)), _constant(LANES))
    with cgutils.for_range_slice(builder, _constant(0), whole, _constant(LANES)) as (p, _):
        rows = [builder.load(builder.bitcast(sources(c, p), _V.as_pointer()), align=_BYTES) for c in range(LANES)]
        for c, column in enumerate(_transpose(builder, rows)):
            builder.store(column, builder.bitcast(destinations(c, p), _V.as_pointer()), align=_BYTES)
    with cgutils.for_range_slice(builder, whole, count, _constant(1)) as (p, _):
        for c in range(LANES):
            builder.store(builder.load(source_step(c, p)), destination_step(c, p))


def _emit_planes_and_block(builder, planes_address, block_address, count, to_block: bool) -> None:
    """IR copying ``count`` pixels of eight channels from the eight planes whose addresses (int64) are
    stored at ``planes_address`` into the (pixels, 8) block at ``block_address``, or back (``to_block``
    False)."""
    table = builder.inttoptr(planes_address, _I64.as_pointer())
    plane = [builder.inttoptr(builder.load(builder.gep(table, [_constant(c)])), _F.as_pointer()) for c in range(LANES)]
    block = builder.inttoptr(block_address, _F.as_pointer())

    def in_plane(c, p):  # plane c at pixel p: row c of the 8x8 read from the planes
        return builder.gep(plane[c], [p])

    def block_row(c, p):  # pixel p + c's eight channels: row c of the 8x8 in the block
        return builder.gep(block, [builder.mul(builder.add(p, _constant(c)), _constant(LANES))])

    def in_block(c, p):  # channel c of pixel p in the block
        return builder.gep(block, [builder.add(builder.mul(p, _constant(LANES)), _constant(c))])

    if to_block:
        _emit_transpose_copy(builder, in_plane, in_plane, block_row, in_block, count)
    else:
        _emit_transpose_copy(builder, block_row, in_block, in_plane, in_plane, count)


def _copy_intrinsic(to_block: bool):
    """``copy(first, count, second)``: with ``to_block``, first = the address of 8 plane addresses and
    second = the block (block[p * 8 + c] = plane c's element p, for p < count); else the other way round."""

    def codegen(context, builder, signature, args):
        first, count, second = args
        planes, block = (first, second) if to_block else (second, first)
        _emit_planes_and_block(builder, planes, block, count, to_block)
        return context.get_dummy_value()

    @intrinsic
    def copy(typingctx, first, count, second):
        return types.void(first, count, second), codegen

    return copy


_gather = _copy_intrinsic(True)  # _gather(planes, count, block)
_scatter = _copy_intrinsic(False)  # _scatter(block, count, planes)


def _convolver(kh: int, kw: int):
    """The intrinsic ``convolve(pixels, taps, bias, params, out, shape, act)`` for a kh x kw filter (taps
    unrolled, their weights loaded once): out[(oh * OW + ow) * 8 + c] = act(bias[c] + sum over the taps
    inside the input of taps[(i * kw + j) * 8 + c] * pixels[(ih * W + iw) * 8 + c]). ``shape``: the address
    of the int64 values H, W, OH, OW, kh, kw, s0, s1, d0, d1, pt, pl; ``params``: the activation's a and b.
    Outputs whose taps all fall inside the input skip the bounds tests."""

    def codegen(context, builder, signature, args):
        pixels_address, taps_address, bias_address, params_address, out_address, shape_address, act = args
        pointer = _F.as_pointer()
        pixels = builder.inttoptr(pixels_address, pointer)
        taps = builder.inttoptr(taps_address, pointer)
        out = builder.inttoptr(out_address, pointer)
        table = builder.inttoptr(shape_address, _I64.as_pointer())
        H, W, OH, OW, _, _, s0, s1, d0, d1, pt, pl = (builder.load(builder.gep(table, [_constant(i)]))
                                                      for i in range(12))
        params = builder.inttoptr(params_address, pointer)
        a, b = (splat(builder, builder.load(builder.gep(params, [_constant(i)])), _V) for i in (0, 1))
        bias = builder.load(builder.bitcast(builder.inttoptr(bias_address, pointer), _V.as_pointer()), align=_BYTES)
        weights = [builder.load(_vector_at(builder, taps, _constant(t * LANES)), align=_BYTES) for t in range(kh * kw)]
        # each tap's pixel offset (in floats) from the window's first pixel
        offsets = [builder.mul(builder.add(builder.mul(builder.mul(_constant(i), d0), W), builder.mul(_constant(j), d1)),
                               _constant(LANES)) for i in range(kh) for j in range(kw)]

        def first_inside(pad, stride):  # the first output whose window starts inside the input
            return builder.sdiv(builder.add(pad, builder.sub(stride, _constant(1))), stride)

        def past_inside(size, pad, stride, dilation, taps_count, outputs):  # one past the last whose window ends inside
            reach = builder.sub(builder.add(builder.sub(size, _constant(1)), pad),
                                builder.mul(_constant(taps_count - 1), dilation))
            last = builder.select(builder.icmp_signed("<", reach, _constant(0)), _constant(-1), builder.sdiv(reach, stride))
            end = builder.add(last, _constant(1))
            return builder.select(builder.icmp_signed("<", end, outputs), end, outputs)

        row_lo, row_hi = first_inside(pt, s0), past_inside(H, pt, s0, d0, kh, OH)
        col_lo, col_hi = first_inside(pl, s1), past_inside(W, pl, s1, d1, kw, OW)
        with cgutils.for_range(builder, OH) as oh:
            row0 = builder.sub(builder.mul(oh.index, s0), pt)
            inside_rows = builder.and_(builder.icmp_signed(">=", oh.index, row_lo), builder.icmp_signed("<", oh.index, row_hi))
            with cgutils.for_range(builder, OW) as ow:
                column0 = builder.sub(builder.mul(ow.index, s1), pl)
                inside = builder.and_(inside_rows, builder.and_(builder.icmp_signed(">=", ow.index, col_lo),
                                                                builder.icmp_signed("<", ow.index, col_hi)))
                position = builder.add(builder.mul(oh.index, OW), ow.index)
                target = _vector_at(builder, out, builder.mul(position, _constant(LANES)))
                with builder.if_else(inside) as (fast, checked):
                    with fast:
                        window = builder.mul(builder.add(builder.mul(row0, W), column0), _constant(LANES))
                        total = bias
                        for t in range(kh * kw):
                            pixel = builder.load(_vector_at(builder, pixels, builder.add(window, offsets[t])), align=_BYTES)
                            total = builder.fadd(total, builder.fmul(weights[t], pixel, flags=["contract"]),
                                                 flags=["contract"])
                        builder.store(activation(builder, total, act, a, b), target, align=_BYTES)
                    with checked:
                        total = cgutils.alloca_once_value(builder, bias)
                        for i in range(kh):
                            ih = builder.add(row0, builder.mul(_constant(i), d0))
                            for j in range(kw):
                                iw = builder.add(column0, builder.mul(_constant(j), d1))
                                seen = builder.and_(builder.icmp_unsigned("<", ih, H), builder.icmp_unsigned("<", iw, W))
                                with builder.if_then(seen):  # (unsigned: also >= 0)
                                    pixel = builder.load(_vector_at(builder, pixels, builder.mul(
                                        builder.add(builder.mul(ih, W), iw), _constant(LANES))), align=_BYTES)
                                    product = builder.fmul(weights[i * kw + j], pixel, flags=["contract"])
                                    builder.store(builder.fadd(builder.load(total), product, flags=["contract"]), total)
                        builder.store(activation(builder, builder.load(total), act, a, b), target, align=_BYTES)
        return context.get_dummy_value()

    @intrinsic
    def convolve(typingctx, pixels, taps, bias, params, out, shape, act):
        return types.void(pixels, taps, bias, params, out, shape, act), codegen

    return convolve


# filters with unrolled taps (depthwise filters are square and odd in practice); others fall back
# to the planar kernel
FILTERS = (1, 3, 5, 7)
_convolve1, _convolve3, _convolve5, _convolve7 = (_convolver(k, k) for k in FILTERS)


@numba.njit(cache=True, nogil=True)
def channels_last_planes(x, w, bias, params, out, M, OH, OW, multiplier, s0, s1, d0, d1, pt, pl, act, p0, p1):
    """Planes p0..p1 of ``out`` (N*M, OH*OW) = the depthwise convolution of float32 ``x`` (N, C, H, W)
    with ``w`` (M, kh, kw), ``bias`` (M,), begin pads (pt, pl); output channel m reads input channel
    m // multiplier; ``act`` one of :data:`ACTIVATIONS` with parameters ``params[:2]``; square filters of a
    size in :data:`FILTERS` only. The arguments of ``depthwise_conv._depthwise_planes``, less its
    padded-plane sizes."""
    N, C, H, W = x.shape
    kh, kw = w.shape[1], w.shape[2]
    taps = kh * kw
    pixels = np.empty(H * W * LANES, np.float32)
    results = np.empty(OH * OW * LANES, np.float32)
    weights = np.empty(taps * LANES, np.float32)
    biases = np.empty(LANES, np.float32)
    zeros = np.zeros(H * W, np.float32)  # the input of a block's missing channels
    discard = np.empty(OH * OW, np.float32)  # and their output
    sources = np.empty(LANES, np.int64)
    targets = np.empty(LANES, np.int64)
    shape = np.array([H, W, OH, OW, kh, kw, s0, s1, d0, d1, pt, pl], np.int64)
    in_registers = act in IN_REGISTERS
    inner = act if in_registers else 0
    no_bias = np.empty(0, np.float32)
    no_residual = np.empty((0, 0), np.float32)
    p = p0
    while p < p1:
        n, m0 = p // M, p % M
        count = min(LANES, p1 - p, M - m0)  # (a block stays within one image)
        for c in range(LANES):
            if c < count:
                m = m0 + c
                sources[c] = x[n, m // multiplier].ctypes.data
                targets[c] = out[p + c].ctypes.data
                biases[c] = bias[m]
                for i in range(kh):
                    for j in range(kw):
                        weights[(i * kw + j) * LANES + c] = w[m, i, j]
            else:
                sources[c] = zeros.ctypes.data
                targets[c] = discard.ctypes.data
                biases[c] = 0
                for t in range(taps):
                    weights[t * LANES + c] = 0
        _gather(sources.ctypes.data, H * W, pixels.ctypes.data)
        arguments = (pixels.ctypes.data, weights.ctypes.data, biases.ctypes.data, params.ctypes.data,
                     results.ctypes.data, shape.ctypes.data, inner)
        if kh == 3:
            _convolve3(*arguments)
        elif kh == 5:
            _convolve5(*arguments)
        elif kh == 7:
            _convolve7(*arguments)
        else:
            _convolve1(*arguments)
        _scatter(results.ctypes.data, OH * OW, targets.ctypes.data)
        if not in_registers:
            channel_epilogue(out, M, no_bias, no_residual, act, params[0], params[1], p, p + count)
        p += count


_TASK_ARGS = 24  # (``depthwise_conv.native_task_args``'s layout)


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def planes_part(args, part, parts):
    """Native task (``framework.native_spin``): blocks of eight planes, about P * part / parts to P * (part + 1) / parts
    of the P, of the convolution ``depthwise_conv.native_task_args`` describes (a square filter); a part starts and
    ends on a block of eight within an image, so that every block is whole."""
    d = int64_array(args, _TASK_ARGS)
    n, c, h, w, k, m, oh, ow = d[5], d[6], d[7], d[8], d[9], d[11], d[12], d[13]
    x = float32_array(d[0], n * c * h * w).reshape((n, c, h, w))
    taps = float32_array(d[1], m * k * k).reshape((m, k, k))
    bias = float32_array(d[2], m)
    params = float32_array(d[3], 4)
    out = float32_array(d[4], n * m * oh * ow).reshape((n * m, oh * ow))
    blocks_per_image = (m + LANES - 1) // LANES
    blocks = n * blocks_per_image
    b0, b1 = blocks * part // parts, blocks * (part + 1) // parts
    p0 = (b0 // blocks_per_image) * m + (b0 % blocks_per_image) * LANES
    p1 = (b1 // blocks_per_image) * m + (b1 % blocks_per_image) * LANES
    channels_last_planes(x, taps, bias, params, out, m, oh, ow, d[14], d[15], d[16], d[17], d[18], d[19], d[20],
                         d[23], p0, p1)
