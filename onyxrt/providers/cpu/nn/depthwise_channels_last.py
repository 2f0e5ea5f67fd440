"""float32 depthwise convolutions a block of channels at a time (one vector per pixel): small planes and
strided layers (``depthwise_conv._vector_blocks`` chooses).

For planes of a few hundred pixels, per-plane loops are too short to pay for themselves: every
row of a 14x14 plane starts and ends a loop; a strided layer's planar loops also split each row
into column phases first. Here a block of :data:`LANES` channels (sixteen on AVX-512 CPUs, else eight) runs a band
of output rows at a time: the input rows the band reads are transposed into (pixels, LANES) (8x8 register transposes)
inside a zero-padded band, each output pixel is accumulated over the filter taps in one vector register (one
multiply-add per tap; no bounds tests: the padding is in the band; :data:`GROUP` outputs of a row at a time, the
taps' column offsets constants for column strides 1 and 2), the bias added first and the activation applied there,
and the band transposed back into the output planes. The filters are repacked once per convolution
(:func:`pack_filters`). onnxruntime's NCHWc kernels work the same way, with the blocked layout kept between
operators; here the blocks exist only inside the kernel, so the model's tensors stay NCHW. Measured on 2 Zen 5 cores
(split over both, 3x3 with Clip): 384x14x14 24 -> 16 us, 192x28x28 40 -> 24, 144x56x56 stride 2 44 -> 35, 96x112x112
stride 2 108 -> 88 against the eight-lane kernel with bounds tests before it (``benchmarks/depthwise.md`` for
the earlier measurements).

The kernels are LLVM IR written with explicit vectors (LLVM lowers them to what the CPU has; a multiply-add
contracts to FMA where the CPU has it). Activations: none, Relu and Clip (:data:`CLAMPED`) as a clamp in the
registers that keeps NaN as the planar kernel keeps it; the other epilogue codes (LeakyRelu, Tanh, Sigmoid,
HardSigmoid, HardSwish, QuickGelu) by ``jit_rows.epilogue_run`` over each band's outputs, one run of (pixels, LANES)
in cache, before they are transposed back (:data:`ACTIVATIONS`; per output plane's row of the band, the SiLU of
8x32x16x16 added 16.4 us on one Zen 4 core, now 14.9, HardSwish 5.5 -> 3.4, at 8x8 pixels 5.1 -> 2.3).

Imported by ``depthwise_conv`` on first use (it imports numba at its top).
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

from ....framework.cpu_features import has_flags
from ..ir_vectors import switch_codegen, transpose_8x8
from ..jit_rows import epilogue_run
from ..native_tasks import float32_array, int64_array, linked_kernel

# channels per block (one vector per pixel): sixteen where the CPU has AVX-512, else eight
LANES = 16 if has_flags("avx512f") else 8
GROUP = 4  # outputs of a row computed together
ACTIVATIONS = tuple(range(9))  # those and the rest of ``row_kernels``'s epilogue codes, per block after it
_F = ir.FloatType()
_V = ir.VectorType(_F, LANES)
_V8 = ir.VectorType(_F, 8)  # the transposes' vectors
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_BYTES = 4


def _constant(value: int) -> ir.Constant:
    return ir.Constant(_I64, value)


def _vector_at(builder, base, index):
    return builder.bitcast(builder.gep(base, [index]), _V.as_pointer())


def _emit_transpose_copy(builder, sources, source_step, destinations, destination_step, count):
    """IR moving ``count`` pixels of eight channels between eight planes and eight columns of a (pixels, LANES)
    block (see :func:`_emit_planes_and_block`): eight pixels at a time as one 8x8 transpose, where ``sources(c, p)``
    points at row c of the 8x8 read at pixel p and ``destinations(c, p)`` at where its column c goes; a last part of
    fewer than eight as one more transpose over the last eight pixels (rewriting some), or one element at a time
    where there are fewer than eight in all (``source_step(c, p)`` to ``destination_step(c, p)`` for channel c of
    pixel p)."""

    def transpose_at(p):
        rows = [builder.load(builder.bitcast(sources(c, p), _V8.as_pointer()), align=_BYTES) for c in range(8)]
        for c, column in enumerate(transpose_8x8(builder, rows)):
            builder.store(column, builder.bitcast(destinations(c, p), _V8.as_pointer()), align=_BYTES)

    whole = builder.mul(builder.sdiv(count, _constant(8)), _constant(8))
    with cgutils.for_range_slice(builder, _constant(0), whole, _constant(8)) as (p, _):
        transpose_at(p)
    with builder.if_else(builder.icmp_signed(">=", count, _constant(8))) as (overlapped, single):
        with overlapped:
            with builder.if_then(builder.icmp_signed("<", whole, count)):
                transpose_at(builder.sub(count, _constant(8)))
        with single:
            with cgutils.for_range_slice(builder, whole, count, _constant(1)) as (p, _):
                for c in range(8):
                    builder.store(builder.load(source_step(c, p)), destination_step(c, p))


def _emit_planes_and_block(builder, plane, block, count, to_block: bool) -> None:
    """IR copying ``count`` pixels of :data:`LANES` channels from the planes at the pointers ``plane`` into the
    (pixels, LANES) block at the pointer ``block``, or back (``to_block`` False), eight channels at a time."""
    for first in range(0, LANES, 8):
        def in_plane(c, p, first=first):  # plane first + c at pixel p: row c of the 8x8 read from the planes
            return builder.gep(plane[first + c], [p])

        def block_row(c, p, first=first):  # pixel p + c's channels first..first + 7: row c of the 8x8 in the block
            return builder.gep(block, [builder.add(builder.mul(builder.add(p, _constant(c)), _constant(LANES)),
                                                   _constant(first))])

        def in_block(c, p, first=first):  # channel first + c of pixel p in the block
            return builder.gep(block, [builder.add(builder.mul(p, _constant(LANES)), _constant(first + c))])

        if to_block:
            _emit_transpose_copy(builder, in_plane, in_plane, block_row, in_block, count)
        else:
            _emit_transpose_copy(builder, block_row, in_block, in_plane, in_plane, count)


def _copy_intrinsic(to_block: bool):
    """``copy(planes, offset, rows, count, block, pitch)``: with ``to_block``, for r < rows, the ``count`` pixels
    from ``offset + r * count`` of the :data:`LANES` planes whose addresses (int64) are at ``planes`` into the block
    at ``block`` from pixel ``r * pitch`` (block[(r * pitch + p) * LANES + c] = plane c's element offset + r * count
    + p); else the other way round (block to planes)."""

    def codegen(context, builder, signature, args):
        planes_address, offset, rows, count, block_address, pitch = args
        table = builder.inttoptr(planes_address, _I64.as_pointer())
        planes = [builder.inttoptr(builder.load(builder.gep(table, [_constant(c)])), _F.as_pointer())
                  for c in range(LANES)]
        block = builder.inttoptr(block_address, _F.as_pointer())
        with cgutils.for_range(builder, rows) as r:
            at = builder.add(offset, builder.mul(r.index, count))
            plane = [builder.gep(pointer, [at]) for pointer in planes]
            _emit_planes_and_block(builder, plane, builder.gep(block, [builder.mul(builder.mul(r.index, pitch),
                                                                                   _constant(LANES))]),
                                   count, to_block)
        return context.get_dummy_value()

    @intrinsic
    def copy(typingctx, planes, offset, rows, count, block, pitch):
        return types.void(planes, offset, rows, count, block, pitch), codegen

    return copy


_gather = _copy_intrinsic(True)  # _gather(planes, offset, rows, count, block, pitch)
_scatter = _copy_intrinsic(False)  # _scatter(planes, offset, rows, count, block, pitch)


def _convolver(k: int, column_step: int | None):
    """The IR of ``convolve(pixels, taps, bias, limits, out, shape)`` for a k x k filter (taps unrolled, their
    weights loaded once): out[(oh * OW + ow) * L + c] = clamp(bias[c] + sum over the taps of taps[(i * k + j) * L + c]
    * pixels[((oh * s0 + i * d0) * Wp + ow * s1 + j * d1) * L + c], limits[c], limits[L + c]), L = :data:`LANES`,
    ``pixels`` the zero-padded block (rows of Wp pixels), so that no tap needs a bounds test; the clamp keeps NaN.
    ``shape``: the address of the int64 values Wp, OH, OW, s0, s1, d0, d1. With ``column_step`` (1 or 2: the column
    stride, the column dilation 1) the taps' column offsets are constants, else s1 and d1 are read from ``shape``.
    :data:`GROUP` consecutive outputs of a row at a time: their independent multiply-add chains overlap."""

    def codegen(context, builder, signature, args):
        pixels_address, taps_address, bias_address, limits_address, out_address, shape_address = args
        pointer = _F.as_pointer()
        pixels = builder.inttoptr(pixels_address, pointer)
        taps = builder.inttoptr(taps_address, pointer)
        out = builder.inttoptr(out_address, pointer)
        table = builder.inttoptr(shape_address, _I64.as_pointer())
        Wp, OH, OW, s0, s1, d0, d1 = (builder.load(builder.gep(table, [_constant(i)])) for i in range(7))
        if column_step is not None:
            s1, d1 = _constant(column_step), _constant(1)
        limits = builder.inttoptr(limits_address, pointer)
        low, high = (builder.load(_vector_at(builder, limits, _constant(i * LANES)), align=_BYTES) for i in (0, 1))
        bias = builder.load(builder.bitcast(builder.inttoptr(bias_address, pointer), _V.as_pointer()), align=_BYTES)
        weights = [builder.load(_vector_at(builder, taps, _constant(t * LANES)), align=_BYTES) for t in range(k * k)]
        row_stride = builder.mul(builder.mul(d0, Wp), _constant(LANES))  # from one kernel row to the next
        step = builder.mul(s1, _constant(LANES))  # from one output to the next
        groups = builder.sdiv(OW, _constant(GROUP))

        def column(j, u):  # the tap's offset in its kernel row, for the u-th output of a group
            if column_step is not None:
                return _constant((j + u * column_step) * LANES)
            return builder.add(builder.mul(builder.mul(_constant(j), d1), _constant(LANES)),
                               builder.mul(_constant(u), step))

        def outputs(row_window, row_out, ow, count):
            window = builder.gep(pixels, [builder.add(row_window, builder.mul(ow, step))])
            rows = [builder.gep(window, [builder.mul(_constant(i), row_stride)]) for i in range(k)]
            totals = [bias] * count
            for i in range(k):
                for j in range(k):
                    for u in range(count):
                        pixel = builder.load(builder.bitcast(builder.gep(rows[i], [column(j, u)]), _V.as_pointer()),
                                             align=_BYTES)
                        totals[u] = builder.fadd(totals[u], builder.fmul(weights[i * k + j], pixel, flags=["contract"]),
                                                 flags=["contract"])
            for u in range(count):
                total = totals[u]
                clamped = builder.select(builder.fcmp_ordered("<", total, low), low,
                                         builder.select(builder.fcmp_ordered("<", high, total), high, total))
                target = _vector_at(builder, out, builder.mul(builder.add(row_out, builder.add(ow, _constant(u))),
                                                              _constant(LANES)))
                builder.store(clamped, target, align=_BYTES)

        with cgutils.for_range(builder, OH) as oh:
            row_window = builder.mul(builder.mul(builder.mul(oh.index, s0), Wp), _constant(LANES))
            row_out = builder.mul(oh.index, OW)
            with cgutils.for_range(builder, groups) as group:
                outputs(row_window, row_out, builder.mul(group.index, _constant(GROUP)), GROUP)
            with cgutils.for_range_slice(builder, builder.mul(groups, _constant(GROUP)), OW, _constant(1)) as (ow, _):
                outputs(row_window, row_out, ow, 1)
        return context.get_dummy_value()

    return codegen


# filters with unrolled taps (depthwise filters are square and odd in practice); others fall back
# to the planar kernel
FILTERS = (1, 3, 5, 7)
# activations applied as a clamp in the registers (none, Relu, Clip); the others after each block
CLAMPED = (0, 1, 5)
_STEPS = (None, 1, 2)  # the column step a code path is for (None: any stride and dilation, read at run time)
_CONVOLVERS = switch_codegen({k * 3 + index: _convolver(k, step) for k in FILTERS for index, step in enumerate(_STEPS)})


_CONVOLVE_SIGNATURE = types.void(*([types.int64] * 7))


@intrinsic
def _convolvers(typingctx, pixels, taps, bias, limits, out, shape, key):
    return _CONVOLVE_SIGNATURE, _CONVOLVERS


@numba.cfunc(_CONVOLVE_SIGNATURE, cache=True, nopython=True)
def convolve_kernel(pixels, taps, bias, limits, out, shape, key):
    """:func:`_convolver`'s code for the filter size and column step ``key`` (k * 3 + the step's index in
    ``_STEPS``): compiled once, called by the drivers through a linked symbol (``native_tasks.linked_kernel``)."""
    _convolvers(pixels, taps, bias, limits, out, shape, key)


_call_convolve = linked_kernel(f"onyxrt_depthwise_convolve_{LANES}", convolve_kernel, _CONVOLVE_SIGNATURE)


@numba.njit(inline="always")
def _convolve(k, column_step, pixels, taps, bias, limits, out, shape):
    """The convolver for a k x k filter and the column step (1, 2, or 0: any stride and dilation)."""
    _call_convolve((pixels, taps, bias, limits, out, shape, k * 3 + column_step))


def _max_pooler(k: int, column_step: int | None):
    """The IR of ``pool(pixels, out, shape)``: out[(oh * OW + ow) * L + c] = the largest of the k x k window's
    pixels[((oh * s0 + i * d0) * Wp + ow * s1 + j * d1) * L + c] (``llvm.maximum``: NaN wins, as ``np.maximum``),
    ``pixels`` the band padded with -inf; ``shape`` and ``column_step`` as :func:`_convolver`'s."""

    def codegen(context, builder, signature, args):
        pixels_address, out_address, shape_address = args
        pixels = builder.inttoptr(pixels_address, _F.as_pointer())
        out = builder.inttoptr(out_address, _F.as_pointer())
        table = builder.inttoptr(shape_address, _I64.as_pointer())
        Wp, OH, OW, s0, s1, d0, d1 = (builder.load(builder.gep(table, [_constant(i)])) for i in range(7))
        if column_step is not None:
            s1, d1 = _constant(column_step), _constant(1)
        maximum = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V, [_V, _V]),
                                                 f"llvm.maximum.v{LANES}f32")
        row_stride = builder.mul(builder.mul(d0, Wp), _constant(LANES))
        step = builder.mul(s1, _constant(LANES))

        def column(j):
            if column_step is not None:
                return _constant(j * LANES)
            return builder.mul(builder.mul(_constant(j), d1), _constant(LANES))

        with cgutils.for_range(builder, OH) as oh:
            row_window = builder.mul(builder.mul(builder.mul(oh.index, s0), Wp), _constant(LANES))
            row_out = builder.mul(oh.index, OW)
            with cgutils.for_range(builder, OW) as ow:
                window = builder.gep(pixels, [builder.add(row_window, builder.mul(ow.index, step))])
                total = None
                for i in range(k):
                    row = builder.gep(window, [builder.mul(_constant(i), row_stride)])
                    for j in range(k):
                        pixel = builder.load(builder.bitcast(builder.gep(row, [column(j)]), _V.as_pointer()),
                                             align=_BYTES)
                        total = pixel if total is None else builder.call(maximum, [total, pixel])
                builder.store(total, _vector_at(builder, out, builder.mul(builder.add(row_out, ow.index),
                                                                          _constant(LANES))), align=_BYTES)
        return context.get_dummy_value()

    return codegen


# max-pooling windows the blocks run (square)
POOL_WINDOWS = (2, 3)
_POOLERS = switch_codegen({k * 3 + index: _max_pooler(k, step) for k in POOL_WINDOWS
                            for index, step in enumerate(_STEPS)})


_POOL_SIGNATURE = types.void(*([types.int64] * 4))


@intrinsic
def _poolers(typingctx, pixels, out, shape, key):
    return _POOL_SIGNATURE, _POOLERS


@numba.cfunc(_POOL_SIGNATURE, cache=True, nopython=True)
def pool_kernel(pixels, out, shape, key):
    """:func:`_max_pooler`'s code for the window and column step ``key`` (as :func:`convolve_kernel`'s)."""
    _poolers(pixels, out, shape, key)


_call_pool = linked_kernel(f"onyxrt_depthwise_max_pool_{LANES}", pool_kernel, _POOL_SIGNATURE)


@numba.njit(inline="always")
def _max_pool(k, column_step, pixels, out, shape):
    """The max pooler for a k x k window and the column step (1, 2, or 0: any stride and dilation)."""
    _call_pool((pixels, out, shape, k * 3 + column_step))


# bytes of a block's zero-padded input rows convolved at a time (with their output rows: within L1)
BAND_BYTES = 32 << 10


def pack_filters(taps: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The filters ``taps`` (M, k, k) and ``bias`` (M,) as :func:`channels_last_planes` reads them: per block of
    :data:`LANES` output channels, each tap's weights as one vector (B, k * k, LANES), the bias (B, LANES); the last
    block's missing channels zero."""
    m, k = taps.shape[0], taps.shape[1]
    blocks = -(-m // LANES)
    weights = np.zeros((blocks * LANES, k * k), np.float32)
    weights[:m] = taps.reshape(m, k * k)
    biases = np.zeros(blocks * LANES, np.float32)
    biases[:m] = bias
    return (np.ascontiguousarray(weights.reshape(blocks, LANES, k * k).transpose(0, 2, 1)),
            biases.reshape(blocks, LANES))


@numba.njit(cache=True, nogil=True)
def band_geometry(W, OH, OW, k, s0, s1, d0, d1, pl):
    """(reach, Wp, band, band_in): the input rows one output row reads, a padded band row's pixels (every window
    inside it), the output rows a band of about :data:`BAND_BYTES` holds, and the input rows it reads."""
    reach = (k - 1) * d0 + 1
    Wp = max(W + pl, (OW - 1) * s1 + (k - 1) * d1 + 1)
    band = max(1, min(OH, (BAND_BYTES // (Wp * LANES * 4) - reach) // s0 + 1))
    return reach, Wp, band, (band - 1) * s0 + reach


@numba.njit(cache=True, nogil=True)
def clamp_limits(act, params):
    """The convolvers' clamp bounds (low, then high, :data:`LANES` each) for the activation ``act`` of
    :data:`CLAMPED` (none: -inf and inf; Relu: 0 and inf; Clip: its parameters)."""
    limits = np.empty(2 * LANES, np.float32)
    limits[:LANES] = params[0] if act == 5 else (0.0 if act == 1 else -np.inf)
    limits[LANES:] = params[1] if act == 5 else np.inf
    return limits


# (the epilogue is inlined here, so its compile options must be this function's: see ``pointwise_conv_task``)
@numba.njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def channels_last_planes(x, weights, biases, params, out, M, OH, OW, multiplier, s0, s1, d0, d1, pt, pl, act, p0, p1,
                         r0, r1, pooled=0):
    """Output rows r0..r1 of planes p0..p1 of ``out`` (N*M, OH*OW) = the depthwise convolution of float32 ``x``
    (N, C, H, W) (C-contiguous) with the filters ``weights``, ``biases`` as :func:`pack_filters` gives them (square,
    of a size in :data:`FILTERS`), begin pads (pt, pl) (not negative); output channel m reads input channel
    m // multiplier; ``act`` one of :data:`ACTIVATIONS` with parameters ``params[:2]``; p0 and p1 whole blocks of
    :data:`LANES` channels within an image (or an image's last channel). With ``pooled`` = k (2 or 3), a k x k MaxPool instead
    (the band padded with -inf; the filters, bias and activation unused).

    A block runs a band of output rows at a time: the input rows the band reads are transposed into the interior of
    a zero-padded band of (pixels, LANES) (its border stays zero, so that no tap needs a bounds test), convolved there,
    and the band's outputs transposed back into the output planes."""
    N, C, H, W = x.shape
    k = pooled if pooled else int(np.sqrt(weights.shape[1]) + 0.5)
    fill = -np.inf if pooled else 0.0  # the padding: what the window's taps outside the input contribute
    reach, Wp, band, band_in = band_geometry(W, OH, OW, k, s0, s1, d0, d1, pl)
    by_rows = W >= 8  # rows transposed straight into the padded band; narrower ones whole, then copied
    pixels = np.empty(0 if by_rows else band_in * W * LANES, np.float32)
    padded = np.full(band_in * Wp * LANES, fill, np.float32)
    results = np.empty(band * OW * LANES, np.float32)
    zeros = np.zeros(H * W, np.float32)  # the input of a block's missing channels
    discard = np.empty(OH * OW, np.float32)  # and their output
    sources = np.empty(LANES, np.int64)
    targets = np.empty(LANES, np.int64)
    shape = np.array([Wp, band, OW, s0, s1, d0, d1], np.int64)
    column_step = s1 if d1 == 1 and s1 <= 2 else 0
    clamped = act in CLAMPED
    zero = np.float32(0.0)
    limits = clamp_limits(act, params)
    x_address, out_address, zeros_address, discard_address = (x.ctypes.data, out.ctypes.data, zeros.ctypes.data,
                                                              discard.ctypes.data)
    padded_address, pixels_address, row = padded.ctypes.data, pixels.ctypes.data, W * LANES
    p = p0
    while p < p1:
        n, m0 = p // M, p % M
        count = min(LANES, p1 - p, M - m0)  # (a block stays within one image)
        for c in range(LANES):
            # (addresses by arithmetic: a view per channel would count references)
            sources[c] = x_address + (n * C + (m0 + c) // multiplier) * H * W * 4 if c < count else zeros_address
            targets[c] = out_address + (p + c) * OH * OW * 4 if c < count else discard_address
        block = m0 // LANES
        for oh0 in range(r0, r1, band):
            rows_out = min(band, r1 - oh0)
            rows_in = (rows_out - 1) * s0 + reach
            top = oh0 * s0 - pt  # the image row of the band's first padded row
            first, last = max(0, top), min(H, top + rows_in)
            for r in range(rows_in):  # rows above and below the image: padding
                if not first <= top + r < last:
                    padded[r * Wp * LANES:(r + 1) * Wp * LANES] = fill
            if last > first and by_rows:
                _gather(sources.ctypes.data, first * W, last - first, W,
                        padded_address + ((first - top) * Wp + pl) * LANES * 4, Wp)
            elif last > first:
                _gather(sources.ctypes.data, first * W, 1, (last - first) * W, pixels_address, 0)
                for h in range(first, last):
                    to = ((h - top) * Wp + pl) * LANES
                    fro = (h - first) * row
                    for q in range(row):
                        padded[np.uintp(to + q)] = pixels[np.uintp(fro + q)]
            shape[1] = rows_out
            if pooled:
                _max_pool(k, column_step, padded_address, results.ctypes.data, shape.ctypes.data)
            else:
                _convolve(k, column_step, padded_address, weights[block].ctypes.data, biases[block].ctypes.data,
                          limits.ctypes.data, results.ctypes.data, shape.ctypes.data)
            if not clamped and not pooled:  # the band's outputs in one run, in cache, before they are transposed back
                done = results[:rows_out * OW * LANES]
                epilogue_run(done, zero, done, False, act, params[0], params[1])
            for c in range(count, LANES):  # (a missing channel's output goes to the discard plane's start)
                targets[c] = discard_address - oh0 * OW * 4
            _scatter(targets.ctypes.data, oh0 * OW, 1, rows_out * OW, results.ctypes.data, 0)
        p += count


@numba.njit(cache=True)
def plane_range(b0: int, b1: int, channels: int, blocks_per_image: int) -> tuple[int, int]:
    """The planes (image-major, ``channels`` per image) of blocks b0..b1 of :data:`LANES` channels (an image's last
    block may be partial)."""
    return ((b0 // blocks_per_image) * channels + (b0 % blocks_per_image) * LANES,
            (b1 // blocks_per_image) * channels + (b1 % blocks_per_image) * LANES)


_TASK_ARGS = 22


def task_template(shape: tuple, weights: np.ndarray, biases: np.ndarray, params: np.ndarray, M: int, OH: int, OW: int,
                  multiplier: int, s0: int, s1: int, d0: int, d1: int, pt: int, pl: int, act: int,
                  pooled: int = 0) -> np.ndarray:
    """:func:`planes_part`'s arguments for :func:`channels_last_planes`'s (less its plane and row ranges) on inputs
    of ``shape``, without the input's and the output's addresses (:func:`task_args` adds them per call); the caller
    keeps the arrays alive while the template is used."""
    args = np.zeros(_TASK_ARGS, np.int64)
    args[1:4] = [weights.ctypes.data, biases.ctypes.data, params.ctypes.data]
    args[5:10] = [*shape, weights.shape[0]]
    args[10] = weights.shape[1] | act << 32
    args[11:21] = [M, OH, OW, multiplier, s0, s1, d0, d1, pt, pl]
    args[21] = pooled
    return args


@numba.njit(cache=True)
def task_args(template, x, out):
    """The ``template``'s arguments with the input ``x`` and the output ``out`` (compiled: ``ndarray.ctypes`` costs
    ~0.8 us an address in Python); the caller keeps them alive until the task returns."""
    args = template.copy()
    args[0], args[4] = x.ctypes.data, out.ctypes.data
    return args


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def planes_part(args, part, parts):
    """Native task (``framework.native_spin``): part ``part`` of ``parts`` of the convolution :func:`task_args`
    describes: whole blocks of :data:`LANES` channels where there are at least as many blocks as parts, else the
    blocks' output rows cut in ceil(parts / blocks) runs."""
    d = int64_array(args, _TASK_ARGS)
    n, c, h, w, blocks_per_image, m, oh, ow = d[5], d[6], d[7], d[8], d[9], d[11], d[12], d[13]
    taps, act = d[10] & 0xFFFFFFFF, d[10] >> 32
    x = float32_array(d[0], n * c * h * w).reshape((n, c, h, w))
    weights = float32_array(d[1], blocks_per_image * taps * LANES).reshape((blocks_per_image, taps, LANES))
    biases = float32_array(d[2], blocks_per_image * LANES).reshape((blocks_per_image, LANES))
    params = float32_array(d[3], 4)
    out = float32_array(d[4], n * m * oh * ow).reshape((n * m, oh * ow))
    blocks = n * blocks_per_image
    runs = (parts + blocks - 1) // blocks  # runs of output rows per block
    if runs > 1:
        units = blocks * runs
        for unit in range(units * part // parts, units * (part + 1) // parts):
            block, run = unit // runs, unit % runs
            p0, p1 = plane_range(block, block + 1, m, blocks_per_image)
            channels_last_planes(x, weights, biases, params, out, m, oh, ow, d[14], d[15], d[16], d[17], d[18], d[19],
                                 d[20], act, p0, p1, oh * run // runs, oh * (run + 1) // runs, d[21])
    else:
        p0, p1 = plane_range(blocks * part // parts, blocks * (part + 1) // parts, m, blocks_per_image)
        channels_last_planes(x, weights, biases, params, out, m, oh, ow, d[14], d[15], d[16], d[17], d[18], d[19],
                             d[20], act, p0, p1, 0, oh, d[21])


def max_pool(x: np.ndarray, k: int, strides, dilations, begin, out_sp, pool) -> np.ndarray:
    """A k x k MaxPool (k in :data:`POOL_WINDOWS`) of float32 ``x`` (N, C, H, W) in the vector blocks: begin pads
    ``begin`` (not negative; the end pads are implied by ``out_sp``), over ``pool``'s threads where it splits products
    and the work is large. No indices."""
    N, C = x.shape[:2]
    OH, OW = out_sp
    x = np.ascontiguousarray(x)
    y = np.empty((N, C, OH, OW), np.float32)
    weights, biases, params = _pool_operands(-(-C // LANES))
    geometry = (C, OH, OW, 1, strides[0], strides[1], dilations[0], dilations[1], begin[0], begin[1], 0)
    out = y.reshape(N * C, OH * OW)
    template = task_template(x.shape, weights, biases, params, *geometry, pooled=k)
    split = pool.splits_gemms and pool.runs_native_tasks and y.size * k * k >= POOL_SPLIT_WORK
    # (on this thread too through the native task: the driver compiles for the task's signature alone)
    pool.run_native(planes_part.address, task_args(template, x, out), pool.num_threads if split else 1)
    return y


@functools.lru_cache(maxsize=16)
def _pool_operands(blocks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The filters, biases and parameters a pooling block's driver takes (unread), for ``blocks`` blocks."""
    return np.zeros((blocks, 1, LANES), np.float32), np.zeros((blocks, LANES), np.float32), np.zeros(4, np.float32)


# Window taps from which :func:`max_pool` shares its blocks out over a pool that splits products.
POOL_SPLIT_WORK = 1 << 18
