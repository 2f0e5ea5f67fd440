"""ai.onyxrt ChannelGate: a squeeze-and-excitation block's gate in one node.

``ChannelGate(X, W1, B1, W2, B2)`` is, per image n, ``act2(W2 @ act1(W1 @ mean(X[n]) + B1) + B2)`` shaped (N, C, 1, ...):
the spatial mean of each channel (GlobalAveragePool's kernel), a pointwise convolution of the C means down to R
values and one back up to C, each with a bias and one of FusedConv's activations (``activation1`` /
``activation2``, parameters ``activation1_params`` / ``activation2_params``). What
``optimizer/channel_gate_fusion.py`` makes of GlobalAveragePool (or ReduceMean over the spatial axes) and the two
1x1 convolutions after it: their work is a few thousand multiply-adds, three kernel calls' set-up most of their time
(~5 us each on a batch of 8 32-channel images, against ~1 us for each product here). The products are the
convolutions' own, of the images' rows at once: equal to theirs to float rounding.
"""

from __future__ import annotations

import numpy as np

from ....errors import NodeInputError, NodeInputTypeError
from ....graph.opsets import ONYXRT_DOMAIN
from ..contrib.fused import fast_path_activation, mlas_activation_fn
from ..jit import LazyModuleKernel, read_only
from ..kernel_table import op
from ..row_kernels import activation_code
from .conv_core import epilogue_finisher, keep_route
from .pool import mean_weights

_F32 = np.dtype(np.float32)


class GateWeights:
    """The two filters as the products take them, W1^T (C, R) and W2^T (R, C), and the biases (None: absent)."""

    __slots__ = ("first", "first_bias", "second", "second_bias", "routes")

    def __init__(self, w1: np.ndarray, b1: np.ndarray | None, w2: np.ndarray, b2: np.ndarray | None) -> None:
        self.first = _transposed_filter(w1)
        self.second = _transposed_filter(w2)
        reduced, channels = self.first.shape[1], self.second.shape[1]
        if self.second.shape[0] != reduced:
            raise NodeInputError(f"ChannelGate: W2 of shape {w2.shape} does not take W1's {reduced} outputs")
        self.first_bias = _bias(b1, reduced, "B1")
        self.second_bias = _bias(b2, channels, "B2")
        self.routes: dict = {}  # (pixels, activations) -> the gate's function of X


def _transposed_filter(w: np.ndarray) -> np.ndarray:
    if not isinstance(w, np.ndarray) or w.dtype != _F32:
        raise NodeInputTypeError(f"ChannelGate: the filters must be float32, got {getattr(w, 'dtype', type(w))}")
    if w.ndim < 3 or any(k != 1 for k in w.shape[2:]):
        raise NodeInputError(f"ChannelGate: a filter must be (M, C, 1, ...), got shape {w.shape}")
    return np.ascontiguousarray(w.reshape(w.shape[:2]).T)


def _bias(b: np.ndarray | None, size: int, name: str) -> np.ndarray | None:
    if b is None:
        return None
    if b.dtype != _F32 or b.size != size:
        raise NodeInputError(f"ChannelGate: {name} must be {size} float32 values, got {b.dtype} of shape {b.shape}")
    return np.ascontiguousarray(b.reshape(size))


def _prepack(inputs, attributes):
    """The filters and biases, prepared once where they are constants of a valid form (else at each call)."""
    values = list(inputs) + [None] * (5 - len(inputs))
    if not all(isinstance(values[i], np.ndarray) for i in (1, 3)):
        return None
    try:
        return GateWeights(values[1], values[2], values[3], values[4])
    except (NodeInputError, NodeInputTypeError):
        return None  # reported by the kernel's own checks


@op("ChannelGate", versions=1, domain=ONYXRT_DOMAIN, prepack=_prepack)
def channel_gate(x, w1, b1=None, w2=None, b2=None, *, activation1="", activation1_params=None, activation2="",
                 activation2_params=None, _packed=None):
    weights = _packed if isinstance(_packed, GateWeights) else GateWeights(w1, b1, w2, b2)
    if x.dtype != _F32:
        raise NodeInputTypeError(f"ChannelGate: X must be float32, got {x.dtype}")
    if x.ndim < 3 or x.shape[1] != weights.first.shape[0]:
        raise NodeInputError(f"ChannelGate: X of shape {x.shape} does not have W1's {weights.first.shape[0]} channels")
    n, c = x.shape[:2]
    pixels = x.size // (n * c) if n * c else 0
    first = mlas_activation_fn(activation1, activation1_params)
    second = mlas_activation_fn(activation2, activation2_params)
    key = (pixels, getattr(first, "mlas", None), getattr(second, "mlas", None))
    route = weights.routes.get(key)
    if route is None:
        route = _route(weights, pixels, first, second)
        keep_route(weights.routes, key, route)
    return route(x).reshape((n, c) + (1,) * (x.ndim - 2))


def _channel_gate_fast_path(bound, keywords):
    """``kernel_registry``'s fast path of a ChannelGate node: its prepared route for X's planes looked up directly."""
    weights = keywords.get("_packed")
    if not isinstance(weights, GateWeights):
        return None
    first, second = fast_path_activation(keywords, "activation1"), fast_path_activation(keywords, "activation2")
    if first is None or second is None:
        return None
    specs = (first[1], second[1])
    channels = weights.first.shape[0]
    routes = weights.routes

    def gate(x, w1=None, b1=None, w2=None, b2=None):
        if x.dtype == _F32 and x.ndim >= 3 and x.shape[1] == channels:
            n = x.shape[0]
            route = routes.get((x.size // (n * channels) if n else 0,) + specs)
            if route is not None:
                return route(x).reshape((n, channels) + (1,) * (x.ndim - 2))
        return bound(x, w1, b1, w2, b2)

    return gate


channel_gate.fast_path = _channel_gate_fast_path


def _route(weights: GateWeights, pixels: int, first, second):
    """The gate of X (N, C, ``pixels`` values a channel) as (N, C, 1, 1): where numba runs, in one compiled call per
    gate (``jit_rows.channel_gate_rows``: the means, both products, biases and activations; the separate products
    and passes cost ~7 us of set-up a gate); else the means as one GEMV of the planes (as GlobalAveragePool computes
    them on one thread; its split over the pool's workers was slower for a gate's planes, ~2 us a gate in an
    EfficientNet-like net), each product's bias and activation in one pass (``conv_core``'s epilogue)."""
    reduced, channels = weights.second.shape
    compiled = _compiled_gate(weights, pixels, first, second)
    if compiled is not None:
        return compiled
    finish_first = epilogue_finisher(reduced, weights.first_bias, first, 2)
    finish_second = epilogue_finisher(channels, weights.second_bias, second, 2)
    averaging = mean_weights(pixels, _F32) if pixels else None

    def gate(x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        if averaging is not None:
            means = np.ascontiguousarray(x).reshape(n * channels, pixels) @ averaging
        else:  # (no values to average: NaN, as GlobalAveragePool's mean of none)
            means = np.full(n * channels, np.nan, _F32)
        hidden = finish_first((means.reshape(n, channels) @ weights.first).reshape(n, reduced, 1, 1), None)
        return finish_second((hidden.reshape(n, reduced) @ weights.second).reshape(n, channels, 1, 1), None)

    return gate


_GATE = LazyModuleKernel("onyxrt.providers.cpu.jit_rows", "channel_gate_rows")
_NO_BIAS = read_only(np.zeros(0, _F32))


def _compiled_gate(weights: GateWeights, pixels: int, first, second):
    """The gate as one ``channel_gate_rows`` call, or None where it cannot run (no numba, no planes, an activation
    the compiled epilogue does not know)."""
    codes = (activation_code(first), activation_code(second))
    if not pixels or None in codes:
        return None
    (act1, (a1, b1)), (act2, (a2, b2)) = codes
    reduced, channels = weights.second.shape
    first_bias = _NO_BIAS if weights.first_bias is None else weights.first_bias
    second_bias = _NO_BIAS if weights.second_bias is None else weights.second_bias
    probe = (np.zeros((channels, 1), _F32), weights.first, first_bias, act1, _F32.type(a1), _F32.type(b1),
             weights.second, second_bias, act2, _F32.type(a2), _F32.type(b2), np.empty(channels, _F32),
             np.empty(reduced, _F32), np.empty((0, channels), _F32))
    kernel = _GATE.compiled_for("f32", *probe)
    if kernel is None:
        return None
    parameters = probe[1:11]

    def gate(x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        out = np.empty((n, channels), _F32)
        kernel(np.ascontiguousarray(x).reshape(n * channels, pixels), *parameters, np.empty(channels, _F32),
               np.empty(reduced, _F32), out)
        return out

    return gate
