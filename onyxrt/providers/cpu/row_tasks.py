"""The compiled row activations (``jit_rows``) as native tasks (``framework.native_spin``): rows split over the
pool's spinning workers without the GIL, where a plan's pool owns the cores (``ThreadPool.splits_gemms``).

As Python tasks each part had to win the GIL on a worker and the split bought little (erf GELU of 128 x 1536
on 2 Zen 5 cores: 42 us on one thread, 38 split as Python tasks). Imported by ``row_kernels`` on first use (it
imports numba at its top). Task arguments (:func:`activation_args`): an int64 array of addresses and sizes.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import types

from .jit_rows import gelu_erf_rows, gelu_tanh_rows, hard_swish_rows, sigmoid_rows, x_sigmoid_rows
from .native_tasks import float32_array, int64_array

(_X, _ROWS, _COLS, _BIAS, _BIAS_LENGTH, _OUT, _ALPHA, _ARGS) = range(8)


@numba.njit(cache=True, inline="always")
def _activation_operands(args, part, parts):
    """The operands of part ``part`` of ``parts`` of the activation ``activation_args`` describes: x, bias, out,
    alpha and its rows [R * part / parts, R * (part + 1) / parts)."""
    d = int64_array(args, _ARGS)
    rows, cols = d[_ROWS], d[_COLS]
    x = float32_array(d[_X], rows * cols).reshape((rows, cols))
    out = float32_array(d[_OUT], rows * cols).reshape((rows, cols))
    bias = float32_array(d[_BIAS], d[_BIAS_LENGTH])
    alpha = float32_array(d[_ALPHA], 1)[0]
    return x, bias, out, alpha, rows * part // parts, rows * (part + 1) // parts


# One native task per activation (row_kernels' kind: GELU_ERF, GELU_TANH, X_SIGMOID, SIGMOID, HARD_SWISH), each
# compiled on its first use (:func:`activation_part`): one task over all five compiled every kernel on import, and
# optimized their code again inside it (a cold cache's first split activation waited ~10 s for kernels it never ran).
def _gelu_erf_part(args, part, parts):
    gelu_erf_rows(*_activation_operands(args, part, parts))


def _gelu_tanh_part(args, part, parts):
    gelu_tanh_rows(*_activation_operands(args, part, parts))


def _x_sigmoid_part(args, part, parts):
    x_sigmoid_rows(*_activation_operands(args, part, parts))


def _sigmoid_part(args, part, parts):
    sigmoid_rows(*_activation_operands(args, part, parts))


def _hard_swish_part(args, part, parts):
    hard_swish_rows(*_activation_operands(args, part, parts))


_PARTS = (_gelu_erf_part, _gelu_tanh_part, _x_sigmoid_part, _sigmoid_part, _hard_swish_part)


@functools.lru_cache(maxsize=None)
def activation_part(kind: int) -> numba.core.ccallback.CFunc:
    """The native task (``void task(int64 args, int64 part, int64 parts)``, at its ``address``) running rows of the
    activation ``kind`` as :func:`activation_args` describes them: compiled, or loaded from numba's cache, on first
    use (and kept here: its code lives as long as it does)."""
    return numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True,
                       error_model="numpy")(_PARTS[kind])


@numba.njit(cache=True)
def activation_args(x, bias, out, alpha):
    """:func:`activation_part`'s arguments: C-contiguous float32 rows ``x`` and ``out`` (R, C), ``bias`` (0 or C),
    ``alpha`` a one-element float32 array; the caller keeps them alive until the task returns. (Compiled:
    numpy's ``ndarray.ctypes`` costs ~1 us an address.)"""
    args = np.empty(_ARGS, np.int64)
    args[_X], args[_ROWS], args[_COLS] = x.ctypes.data, x.shape[0], x.shape[1]
    args[_BIAS], args[_BIAS_LENGTH], args[_OUT], args[_ALPHA] = bias.ctypes.data, bias.shape[0], out.ctypes.data, alpha.ctypes.data
    return args


# (reassociation lets the sum run in vector lanes, as BLAS's GEMV does: in order, each add waits for the one before,
# and a plane of 16x16 took 4 cycles an element)
@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract", "reassoc"})
def row_means(x, out, r0, r1):
    """out[r] = the mean of x[r] (float32 rows (R, C), C-contiguous) for rows r0..r1."""
    cols = x.shape[1]
    scale = np.float32(1.0 / cols)
    for r in range(r0, r1):
        row = x[np.uintp(r)]
        total = np.float32(0.0)
        for c in range(cols):
            total += row[np.uintp(c)]
        out[np.uintp(r)] = total * scale


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def means_part(args, part, parts):
    """Native task: rows [R * part / parts, R * (part + 1) / parts) of :func:`row_means`, arguments (x, out, R, C)."""
    d = int64_array(args, 4)
    rows, cols = d[2], d[3]
    x = float32_array(d[0], rows * cols).reshape((rows, cols))
    out = float32_array(d[1], rows)
    row_means(x, out, rows * part // parts, rows * (part + 1) // parts)


@numba.njit(cache=True)
def means_args(x, out):
    """:func:`means_part`'s arguments for float32 rows ``x`` (R, C) into ``out`` (R,), both C-contiguous."""
    args = np.empty(4, np.int64)
    args[0], args[1], args[2], args[3] = x.ctypes.data, out.ctypes.data, x.shape[0], x.shape[1]
    return args
