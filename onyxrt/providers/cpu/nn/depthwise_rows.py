"""float32 3x3 depthwise convolutions with one pixel of begin padding, stride 1 or 2, on NCHW planes as they lie:
two output rows a pass from the input rows they read (:data:`BAND`: four at stride 1, five at stride 2, each loaded
once), sixteen outputs a vector.

Each tap is one multiply-add of a vector of input columns by the tap's weight, summed per filter row and the three
sums added at the end (one chain of nine multiply-adds bounded the kernel by its latency). At stride 1 the columns
left and right of sixteen outputs are their own columns moved by one lane (the previous and next chunks' columns
coming in, two shuffles); at stride 2, 32 input columns are split into their even and odd columns by two shuffles
(output j reads columns 2j - 1, 2j and 2j + 1: the odd vector moved one lane, the even, the odd), as
``max_pool_rows`` splits them. Columns past a row's end load as 0 under a lane mask, the first column's left
neighbour is the padding (0), and a row above or below the plane is a row of zeros; an output row past the plane's
last (a band's second) is stored under an empty mask. The bias starts the sum; the activations
``row_kernels.IN_REGISTERS`` are applied in the registers (``ir_vectors.activation``), Tanh over each output plane
just written (``jit_rows.epilogue_run``, while it is in cache).

The channels-last blocks (``depthwise_channels_last``) transpose each block of sixteen channels into (pixels,
channels) and back, which costs more than the taps on wide rows; here nothing is moved. ``depthwise_conv`` chooses
this kernel for rows at least ``depthwise_conv._ROWS_MIN_WIDTH`` wide on AVX-512 CPUs (``_planar_rows``).

Imported by ``depthwise_conv`` on first use (it imports numba at its top).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

from ..ir_vectors import activation, lanes_below, masked_load, masked_store, splat, switch_codegen
from ..jit_rows import epilogue_run
from ..native_tasks import float32_array, int64_array
from ..row_kernels import IN_REGISTERS

LANES = 16
STRIDES = (1, 2)
BAND = {1: 2, 2: 2}  # output rows a pass computes per stride (at stride 1 two share two of their input rows)
_F = ir.FloatType()
_V = ir.VectorType(_F, LANES)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _constant(value: int) -> ir.Constant:
    return ir.Constant(_I64, value)


def _plane_body(stride: int):
    """The codegen of one output plane at ``stride``: ``y`` (OH, OW) = act(bias + the 3x3 taps at ``taps`` over ``x``
    (H, W), float32 at byte addresses; rows above or below it read from ``zeros``)."""

    def codegen(context, builder, signature, args):
        y_addr, x_addr, taps_addr, zeros_addr, height, width, out_height, outputs, bias, act, a, b = args
        pointer = _V.as_pointer()
        zero = ir.Constant(_V, [0.0] * LANES)
        weights = builder.inttoptr(taps_addr, _F.as_pointer())
        taps = [[splat(builder, builder.load(builder.gep(weights, [_constant(3 * r + t)])), _V) for t in range(3)]
                for r in range(3)]
        start_sum, low, high = splat(builder, bias, _V), splat(builder, a, _V), splat(builder, b, _V)
        row_bytes = builder.mul(width, _constant(4))

        def load(row, column):  # 16 columns from ``column`` of a row, 0 past its end
            address = builder.add(row, builder.mul(column, _constant(4)))
            return masked_load(builder, builder.inttoptr(address, pointer),
                               lanes_below(builder, builder.sub(width, column), LANES), zero)

        def shuffle(first, second, indices):
            return builder.shuffle_vector(first, second, ir.Constant(ir.VectorType(_I32, LANES), indices))

        def multiply_add(total, weight, values):
            return builder.fadd(total, builder.fmul(weight, values, flags=["contract"]), flags=["contract"])

        def input_row(index):  # the address of input row ``index``, the zeros outside the plane
            inside = builder.and_(builder.icmp_signed(">=", index, _constant(0)),
                                  builder.icmp_signed("<", index, height))
            return builder.select(inside, builder.add(x_addr, builder.mul(index, row_bytes)), zeros_addr)

        shifted_in = [LANES - 1] + list(range(LANES, 2 * LANES - 1))  # the previous vector's last lane, then 0..14
        band = BAND[stride]
        reads = stride * (band - 1) + 3  # the input rows a band of output rows reads
        before = [cgutils.alloca_once_value(builder, zero) for _ in range(reads)]
        current = [cgutils.alloca_once_value(builder, zero) for _ in range(reads)]
        chunks = builder.udiv(builder.add(outputs, _constant(LANES - 1)), _constant(LANES))
        bands = builder.udiv(builder.add(out_height, _constant(band - 1)), _constant(band))
        with cgutils.for_range(builder, bands) as bands_loop:
            first_output = builder.mul(bands_loop.index, _constant(band))
            top = builder.sub(builder.mul(first_output, _constant(stride)), _constant(1))
            rows = [input_row(builder.add(top, _constant(r))) for r in range(reads)]
            out_rows = [builder.add(y_addr, builder.mul(builder.add(first_output, _constant(i)),
                                                        builder.mul(outputs, _constant(4)))) for i in range(band)]
            # an output row past the plane's last (a band's second at an odd height) is stored under an empty mask
            widths = [builder.select(builder.icmp_signed("<", builder.add(first_output, _constant(i)), out_height),
                                     outputs, _constant(0)) for i in range(band)]
            # per input row: the previous chunk's columns moved into the left neighbours (stride 1: its own columns;
            # stride 2: its odd ones), 0 before the first (the padding); at stride 1 the chunk's own, loaded ahead
            for r, row in enumerate(rows):
                builder.store(zero, before[r])
                if stride == 1:
                    builder.store(load(row, _constant(0)), current[r])
            with cgutils.for_range(builder, chunks) as loop:
                start = builder.mul(loop.index, _constant(LANES))  # the chunk's first output
                columns = []  # per input row: the columns left of, at and right of each output's (0 outside the row)
                for r, row in enumerate(rows):
                    if stride == 1:
                        centre = builder.load(current[r])
                        following = load(row, builder.add(start, _constant(LANES)))
                        left = shuffle(builder.load(before[r]), centre, shifted_in)
                        right = shuffle(centre, following, list(range(1, LANES + 1)))
                        builder.store(centre, before[r])
                        builder.store(following, current[r])
                    else:
                        first = builder.mul(start, _constant(2))
                        halves = [load(row, builder.add(first, _constant(half * LANES))) for half in (0, 1)]
                        centre = shuffle(halves[0], halves[1], list(range(0, 2 * LANES, 2)))
                        right = shuffle(halves[0], halves[1], list(range(1, 2 * LANES, 2)))
                        left = shuffle(builder.load(before[r]), right, shifted_in)
                        builder.store(right, before[r])
                    columns.append((left, centre, right))
                for i in range(band):
                    partials = []  # a sum per filter row, added at the end: three short chains, not one long one
                    for r in range(3):
                        left, centre, right = columns[stride * i + r]
                        partial = builder.fmul(taps[r][0], left)
                        partial = multiply_add(partial, taps[r][1], centre)
                        partials.append(multiply_add(partial, taps[r][2], right))
                    total = builder.fadd(builder.fadd(start_sum, partials[0]), builder.fadd(partials[1], partials[2]))
                    result = activation(builder, total, act, low, high)
                    target = builder.inttoptr(builder.add(out_rows[i], builder.mul(start, _constant(4))), pointer)
                    masked_store(builder, result, target, lanes_below(builder, builder.sub(widths[i], start), LANES))
        return context.get_dummy_value()

    return codegen


@intrinsic
def _conv_plane(typingctx, y_addr, x_addr, taps_addr, zeros_addr, height, width, out_height, outputs, bias, act, a, b,
                stride):
    signature = types.void(*([types.int64] * 8), types.float32, types.int64, types.float32, types.float32,
                           types.int64)
    return signature, switch_codegen({s: _plane_body(s) for s in STRIDES})


@numba.njit(cache=True, nogil=True, inline="always")
def _planes(x_addr, y_addr, taps_addr, bias_addr, params_addr, zeros_addr, channels, H, W, OH, OW, stride, act,
            p0, p1):
    """Planes p0..p1 of the convolution (see :func:`depthwise_rows`), the tensors at byte addresses."""
    bias = float32_array(bias_addr, channels)
    params = float32_array(params_addr, 2)
    a, b = params[0], params[1]
    held = act if act in IN_REGISTERS else 0  # (the others over each plane after it)
    for p in range(p0, p1):
        channel = p % channels
        out = y_addr + p * OH * OW * 4
        _conv_plane(out, x_addr + p * H * W * 4, taps_addr + channel * 36, zeros_addr, H, W, OH, OW, bias[channel],
                    held, a, b, stride)
        if held != act:
            values = float32_array(out, OH * OW)
            epilogue_run(values, np.float32(0.0), values, False, act, a, b)


@numba.njit(cache=True, nogil=True)
def depthwise_rows(x, y, taps, bias, params, zeros, stride, act, p0, p1):
    """Planes p0..p1 of ``y`` (P, OH, OW) = act(the 3x3 depthwise convolution of ``x`` (P, H, W), begin padding 1,
    ``stride`` 1 or 2, plane p by filter ``taps[p % C]`` (C, 3, 3) + ``bias[p % C]``), float32, C-contiguous;
    ``params`` the activation's two parameters (``act`` a ``row_kernels`` epilogue code), ``zeros`` at least W
    zeros."""
    _planes(x.ctypes.data, y.ctypes.data, taps.ctypes.data, bias.ctypes.data, params.ctypes.data, zeros.ctypes.data,
            taps.shape[0], x.shape[1], x.shape[2], y.shape[1], y.shape[2], stride, act, p0, p1)


_TASK_ARGS = 15


@numba.njit(cache=True)
def task_args(x, y, taps, bias, params, zeros, stride, act):
    """:func:`depthwise_part`'s arguments for :func:`depthwise_rows`' (the caller keeps the arrays alive until the
    task returns)."""
    args = np.empty(_TASK_ARGS, np.int64)
    args[0], args[1], args[2], args[3] = x.ctypes.data, y.ctypes.data, taps.ctypes.data, bias.ctypes.data
    args[4], args[5], args[6] = params.ctypes.data, zeros.ctypes.data, taps.shape[0]
    args[7], args[8], args[9], args[10] = x.shape[1], x.shape[2], y.shape[1], y.shape[2]
    args[11], args[12], args[13] = stride, act, x.shape[0]
    return args


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def depthwise_part(args, part, parts):
    """Native task (``framework.native_spin``): the planes [P * part / parts, P * (part + 1) / parts) of the
    convolution at ``args`` (:func:`task_args`)."""
    d = int64_array(args, _TASK_ARGS)
    planes = d[13]
    _planes(d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], d[9], d[10], d[11], d[12], planes * part // parts,
            planes * (part + 1) // parts)
