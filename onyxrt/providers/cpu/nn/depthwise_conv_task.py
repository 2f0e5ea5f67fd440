"""The float32 depthwise convolution kernel (``depthwise_conv._depthwise_planes``) as a native task
(``framework.native_spin``): its planes shared out over the pool's spinning workers without the GIL.

Imported by ``depthwise_conv`` on first use (it imports numba at its top). Task arguments
(``depthwise_conv.native_task_args``): the addresses of x, the taps, the bias, the activation parameters and the
output, then the kernel's integer parameters.
"""

from __future__ import annotations

import numba
from numba.core import types

from ..native_tasks import float32_array, int64_array
from .depthwise_conv import _depthwise_planes

_planes = numba.njit(cache=True, nogil=True)(_depthwise_planes)
_ARGS = 24


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def depthwise_part(args, part, parts):
    """Native task: planes [P * part / parts, P * (part + 1) / parts) of the convolution at ``args``."""
    d = int64_array(args, _ARGS)
    n, c, h, w, kh, kw, m, oh, ow = d[5], d[6], d[7], d[8], d[9], d[10], d[11], d[12], d[13]
    x = float32_array(d[0], n * c * h * w).reshape((n, c, h, w))
    taps = float32_array(d[1], m * kh * kw).reshape((m, kh, kw))
    bias = float32_array(d[2], m)
    params = float32_array(d[3], 4)
    out = float32_array(d[4], n * m * oh * ow).reshape((n * m, oh * ow))
    planes = n * m
    _planes(x, taps, bias, params, out, m, oh, ow, d[14], d[15], d[16], d[17], d[18], d[19], d[20], d[21], d[22],
            d[23], False, planes * part // parts, planes * (part + 1) // parts)

