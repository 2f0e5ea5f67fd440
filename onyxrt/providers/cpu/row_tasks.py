"""The compiled row activations (``jit_rows``) as native tasks (``framework.native_spin``): rows split over the
pool's spinning workers without the GIL, where a plan's pool owns the cores (``ThreadPool.splits_gemms``).

As Python tasks each part had to win the GIL on a worker and the split bought little (erf GELU of 128 x 1536
on 2 Zen 5 cores: 42 us on one thread, 38 split as Python tasks). Imported by ``row_kernels`` on first use (it
imports numba at its top). Task arguments (:func:`activation_args`): an int64 array of addresses and sizes.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types

from .jit_rows import gelu_erf_rows, gelu_tanh_rows, hard_swish_rows, sigmoid_rows, x_sigmoid_rows
from .native_tasks import float32_array, int64_array

(_KIND, _X, _ROWS, _COLS, _BIAS, _BIAS_LENGTH, _OUT, _ALPHA, _ARGS) = range(9)


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True, error_model="numpy")
def activation_part(args, part, parts):
    """Native task: rows [R * part / parts, R * (part + 1) / parts) of the activation ``activation_args`` describes
    (its ``kind``: row_kernels' GELU_ERF, GELU_TANH, X_SIGMOID, SIGMOID or HARD_SWISH)."""
    d = int64_array(args, _ARGS)
    rows, cols = d[_ROWS], d[_COLS]
    r0, r1 = rows * part // parts, rows * (part + 1) // parts
    x = float32_array(d[_X], rows * cols).reshape((rows, cols))
    out = float32_array(d[_OUT], rows * cols).reshape((rows, cols))
    bias = float32_array(d[_BIAS], d[_BIAS_LENGTH])
    alpha = float32_array(d[_ALPHA], 1)[0]
    kind = d[_KIND]
    if kind == 0:
        gelu_erf_rows(x, bias, out, alpha, r0, r1)
    elif kind == 1:
        gelu_tanh_rows(x, bias, out, alpha, r0, r1)
    elif kind == 2:
        x_sigmoid_rows(x, bias, out, alpha, r0, r1)
    elif kind == 3:
        sigmoid_rows(x, bias, out, alpha, r0, r1)
    else:
        hard_swish_rows(x, bias, out, alpha, r0, r1)


@numba.njit(cache=True)
def activation_args(kind, x, bias, out, alpha):
    """:func:`activation_part`'s arguments: C-contiguous float32 rows ``x`` and ``out`` (R, C), ``bias`` (0 or C),
    ``alpha`` a one-element float32 array; the caller keeps them alive until the task returns. (Compiled:
    numpy's ``ndarray.ctypes`` costs ~1 us an address.)"""
    args = np.empty(_ARGS, np.int64)
    args[_KIND], args[_X], args[_ROWS], args[_COLS] = kind, x.ctypes.data, x.shape[0], x.shape[1]
    args[_BIAS], args[_BIAS_LENGTH], args[_OUT], args[_ALPHA] = bias.ctypes.data, bias.shape[0], out.ctypes.data, alpha.ctypes.data
    return args
