"""float32 depthwise convolutions of channels-last tensors (N, H, W, C) in the vector blocks of
``depthwise_channels_last``: a pixel's block of :data:`LANES` channels is one contiguous run of the input and of the
output, so the blocks need no transposes. Runs com.microsoft NhwcFusedConv's depthwise route
(``contrib/nhwc_conv.py``).

A module of its own so that its compiled task is built (and its compile time paid: several seconds on a cold cache)
only by models that hold such a node. Imported on first use (it imports numba at its top).
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import cgutils, types
from numba.core.extending import intrinsic

from ..jit_rows import epilogue_run
from ..native_tasks import float32_array, int64_array
from .depthwise_channels_last import (_BYTES, _F, ACTIVATIONS, CLAMPED, FILTERS, LANES, _convolve, _vector_at,
                                      band_geometry, clamp_limits, pack_filters, task_args)

__all__ = ["ACTIVATIONS", "FILTERS", "LANES", "nhwc_blocks", "nhwc_part", "nhwc_template", "pack_filters",
           "task_args"]


@intrinsic
def _move_pixels(typingctx, source, source_step, target, target_step, count):
    """IR: ``count`` pixels of :data:`LANES` channels, one vector each, from ``source`` to ``target`` (float32
    addresses; the steps in floats from one pixel to the next)."""

    def codegen(context, builder, signature, args):
        src_address, src_step, dst_address, dst_step, count_ = args
        src = builder.inttoptr(src_address, _F.as_pointer())
        dst = builder.inttoptr(dst_address, _F.as_pointer())
        with cgutils.for_range(builder, count_) as loop:
            value = builder.load(_vector_at(builder, src, builder.mul(loop.index, src_step)), align=_BYTES)
            builder.store(value, _vector_at(builder, dst, builder.mul(loop.index, dst_step)), align=_BYTES)
        return context.get_dummy_value()

    return types.void(source, source_step, target, target_step, count), codegen


@numba.njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def nhwc_blocks(x, weights, biases, params, out, OH, OW, s0, s1, d0, d1, pt, pl, act, b0, b1, r0, r1):
    """Output rows r0..r1 of blocks b0..b1 (image-major, ceil(C / :data:`LANES`) per image) of ``out`` (N, OH, OW, C) =
    the depthwise convolution (one filter per channel) of float32 ``x`` (N, H, W, C) (both C-contiguous, channels
    last) with the filters ``weights``, ``biases`` as :func:`pack_filters` gives them, begin pads (pt, pl) (not
    negative); ``act`` one of :data:`ACTIVATIONS` with parameters ``params[:2]``.

    As :func:`channels_last_planes`, with no transposes: a pixel's block of channels is one contiguous run of the
    input and of the output."""
    N, H, W, C = x.shape
    k = int(np.sqrt(weights.shape[1]) + 0.5)
    reach, Wp, band, band_in = band_geometry(W, OH, OW, k, s0, s1, d0, d1, pl)
    padded = np.zeros(band_in * Wp * LANES, np.float32)
    results = np.empty(band * OW * LANES, np.float32)
    shape = np.array([Wp, band, OW, s0, s1, d0, d1], np.int64)
    column_step = s1 if d1 == 1 and s1 <= 2 else 0
    clamped = act in CLAMPED
    zero = np.float32(0.0)
    limits = clamp_limits(act, params)
    source = x.reshape(-1)
    target = out.reshape(-1)
    blocks_per_image = weights.shape[0]
    padded_address, results_address = padded.ctypes.data, results.ctypes.data
    x_address, out_address = x.ctypes.data, out.ctypes.data
    for b in range(b0, b1):
        n, block = b // blocks_per_image, b % blocks_per_image
        c0 = block * LANES
        count = min(LANES, C - c0)
        for oh0 in range(r0, r1, band):
            rows_out = min(band, r1 - oh0)
            rows_in = (rows_out - 1) * s0 + reach
            top = oh0 * s0 - pt
            for r in range(rows_in):
                h = top + r
                row = r * Wp * LANES
                if h < 0 or h >= H:
                    padded[row:row + Wp * LANES] = 0.0
                    continue
                if count == LANES:
                    _move_pixels(x_address + ((n * H + h) * W * C + c0) * 4, C, padded_address + (row + pl * LANES) * 4,
                                 LANES, W)
                    continue
                for w in range(W):
                    to = row + (pl + w) * LANES
                    fro = ((n * H + h) * W + w) * C + c0
                    for q in range(count):
                        padded[np.uintp(to + q)] = source[np.uintp(fro + q)]
                    for q in range(count, LANES):
                        padded[np.uintp(to + q)] = 0.0
            shape[1] = rows_out
            _convolve(k, column_step, padded_address, weights[block].ctypes.data, biases[block].ctypes.data,
                      limits.ctypes.data, results.ctypes.data, shape.ctypes.data)
            if not clamped:
                done = results[:rows_out * OW * LANES]
                epilogue_run(done, zero, done, False, act, params[0], params[1])
            if count == LANES:
                _move_pixels(results_address, LANES, out_address + ((n * OH + oh0) * OW * C + c0) * 4, C,
                             rows_out * OW)
                continue
            for o in range(rows_out * OW):
                fro = o * LANES
                to = ((n * OH + oh0) * OW + o) * C + c0
                for q in range(count):
                    target[np.uintp(to + q)] = results[np.uintp(fro + q)]


_NHWC_ARGS = 18


def nhwc_template(shape: tuple, weights: np.ndarray, biases: np.ndarray, params: np.ndarray, OH: int, OW: int, s0: int,
                  s1: int, d0: int, d1: int, pt: int, pl: int, act: int) -> np.ndarray:
    """:func:`nhwc_part`'s arguments for :func:`nhwc_blocks`'s on inputs of ``shape`` (N, H, W, C), without the
    input's and the output's addresses (:func:`task_args` adds them per call, at 0 and 4)."""
    args = np.zeros(_NHWC_ARGS, np.int64)
    args[1:4] = [weights.ctypes.data, biases.ctypes.data, params.ctypes.data]
    args[5:9] = shape
    args[9:18] = [weights.shape[0], weights.shape[1], OH, OW, s0, s1, d0, d1, pt | pl << 16 | act << 32]
    return args


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def nhwc_part(args, part, parts):
    """Native task: part ``part`` of ``parts`` of the convolution :func:`nhwc_template` describes: whole blocks of
    channels where there are at least as many blocks as parts, else the blocks' output rows cut in runs."""
    d = int64_array(args, _NHWC_ARGS)
    n, h, w, c, blocks_per_image, taps, oh, ow = d[5], d[6], d[7], d[8], d[9], d[10], d[11], d[12]
    pt, pl, act = d[17] & 0xFFFF, (d[17] >> 16) & 0xFFFF, d[17] >> 32
    x = float32_array(d[0], n * h * w * c).reshape((n, h, w, c))
    weights = float32_array(d[1], blocks_per_image * taps * LANES).reshape((blocks_per_image, taps, LANES))
    biases = float32_array(d[2], blocks_per_image * LANES).reshape((blocks_per_image, LANES))
    params = float32_array(d[3], 4)
    out = float32_array(d[4], n * oh * ow * c).reshape((n, oh, ow, c))
    blocks = n * blocks_per_image
    runs = (parts + blocks - 1) // blocks
    if runs > 1:
        units = blocks * runs
        for unit in range(units * part // parts, units * (part + 1) // parts):
            block, run = unit // runs, unit % runs
            nhwc_blocks(x, weights, biases, params, out, oh, ow, d[13], d[14], d[15], d[16], pt, pl, act, block,
                        block + 1, oh * run // runs, oh * (run + 1) // runs)
    else:
        nhwc_blocks(x, weights, biases, params, out, oh, ow, d[13], d[14], d[15], d[16], pt, pl, act,
                    blocks * part // parts, blocks * (part + 1) // parts, 0, oh)
