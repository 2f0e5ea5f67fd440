"""Fused float32 row kernels (``jit_rows``) behind numpy-shaped calls, with None where they cannot run.

Each function takes C-contiguous 2-D float32 rows and returns its results, or None when numba
is absent, disabled (``ONYXRT_DISABLE_NUMBA=1``) or failed to compile: the caller then runs
its numpy path.

Where the session's pool owns the cores (``ThreadPool.splits_gemms``: no BLAS thread spins), large
inputs are split by rows over it. Otherwise the kernels run on the calling thread: splitting was
measured to make minilm_l6's BiasGelu slower (331 -> 488 us a node on 2 cores), the pool thread
competing with OpenBLAS's threads, which spin after each GEMM.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ...framework.thread_pool import current_pool
from ..kernel_registry import Allocator
from ._helpers import wants_buffer
from .jit import LazyModuleKernel, numba_disabled, optional_module, read_only

_F32 = np.dtype(np.float32)
_MODULE = "onyxrt.providers.cpu.jit_rows"
_ACTIVATIONS = [LazyModuleKernel(_MODULE, name) for name in
                ("gelu_erf_rows", "gelu_tanh_rows", "x_sigmoid_rows", "sigmoid_rows", "hard_swish_rows")]
_LAYER_NORM = LazyModuleKernel(_MODULE, "layer_norm_rows")
_EPILOGUE = LazyModuleKernel(_MODULE, "channel_epilogue")
_AFFINE = LazyModuleKernel(_MODULE, "channel_affine")
_SOFTMAX = LazyModuleKernel(_MODULE, "softmax_rows")
_ROTARY = LazyModuleKernel(_MODULE, "rotary_rows")
_SWIGLU = LazyModuleKernel(_MODULE, "swiglu_rows")


_EMPTY = read_only(np.empty(0, _F32))  # an absent input
_EMPTY2 = read_only(np.empty((0, 0), _F32))
_NO_OUTPUT = np.empty((0, 0), _F32)  # an output not wanted, or a probe's
_NO_OUTPUT1 = np.empty(0, _F32)
_EMPTY3 = read_only(np.empty((0, 0, 0), _F32))
_NO_POSITIONS = read_only(np.empty(0, np.int64))
_NO_OUTPUT3 = np.empty((0, 0, 0), _F32)

# Arguments that do no work, with which each kernel compiles (or loads) its float32 form once (``compiled_for``).
_ACTIVATION_PROBE = (_EMPTY2, _EMPTY, _NO_OUTPUT, _F32.type(1), 0, 0)
_LAYER_NORM_PROBE = (_EMPTY2, _EMPTY2, _EMPTY, _EMPTY, _EMPTY, _F32.type(1), False, _NO_OUTPUT, _NO_OUTPUT, _NO_OUTPUT1,
                     _NO_OUTPUT1, 0, 0)
_EPILOGUE_PROBE = (_NO_OUTPUT, 1, _EMPTY, _EMPTY2, 0, _F32.type(0), _F32.type(0), 0, 0)
_AFFINE_PROBE = (_EMPTY2, _NO_OUTPUT, 1, _EMPTY, _EMPTY, 0, _F32.type(0), _F32.type(0), 0, 0)
_SOFTMAX_PROBE = (_NO_OUTPUT, 0, 0)
_ROTARY_PROBE = (_EMPTY3, _NO_POSITIONS, _EMPTY2, _EMPTY2, _NO_OUTPUT3, False, 0, 0)
_SWIGLU_PROBE = (_EMPTY2, 0, _EMPTY2, 0, _NO_OUTPUT, _F32.type(1), _F32.type(0), _F32.type(0), 0, 0)

# The FusedConv (MLAS) activations compiled kernels apply themselves; code 0 = none.
_ACTIVATION_CODES = {"Relu": 1, "LeakyRelu": 2, "Tanh": 3, "Sigmoid": 4, "Clip": 5, "HardSigmoid": 6}
# onyxrt's own FusedConv activations (optimizer/conv_epilogue_fusion.py), which only the epilogue applies
_EPILOGUE_CODES = {**_ACTIVATION_CODES, "HardSwish": 7, "QuickGelu": 8}
MLAS_CODES = frozenset({0, *_ACTIVATION_CODES.values()})  # the codes (0: none) the depthwise kernels apply
# The epilogue codes the kernels written with explicit vectors apply in their registers (``ir_vectors.activation``):
# none, Relu, LeakyRelu, Sigmoid, Clip, HardSigmoid, HardSwish, QuickGelu; Tanh after them, by ``jit_rows``.
IN_REGISTERS = (0, 1, 2, 4, 5, 6, 7, 8)
# Elements below which a kernel is not split over threads as a native task (a hand-off to a spinning worker costs
# microseconds).
_MIN_PARALLEL_ELEMENTS = 1 << 16
# Elements below which a kernel without a native task is not split by Python tasks: each brings a worker into the
# interpreter (tens of microseconds). Measured on 2 Zen 5 cores, a SkipSimplifiedLayerNorm of 128x512 19 us on one
# thread, 50 split (130 in a llama prefill's run); 512x768 95 -> 105 split, 1024x768 185 -> 149, 4096x768 1440 -> 820.
_MIN_PYTHON_SPLIT_ELEMENTS = 1 << 19
_FLAT_ROW = 4096  # the row length a bias-free activation is cut into
GELU_ERF, GELU_TANH, X_SIGMOID, SIGMOID, HARD_SWISH = range(5)  # the ``kind`` of :func:`activation`


def _over_rows(kernel, args: tuple, rows: int, elements: int) -> None:
    """``kernel(*args, r0, r1)`` over all rows: split over the pool where it owns the cores."""
    pool = current_pool()
    if pool.splits_gemms and elements >= _MIN_PYTHON_SPLIT_ELEMENTS:
        pool.run_chunks(lambda r0, r1: kernel(*args, r0, r1), rows, elements, _MIN_PYTHON_SPLIT_ELEMENTS)
    else:
        kernel(*args, 0, rows)


def _usable(a: np.ndarray | None) -> bool:
    return a is None or (a.dtype == _F32 and a.flags.c_contiguous)


def _packed_rows(a: np.ndarray | None) -> np.ndarray | None:
    """A float32 input made C-contiguous (a strided view, e.g. a Transpose's result, copied once: cheaper
    than the numpy path's passes); anything else as it is, for ``_usable`` to judge."""
    if a is not None and a.dtype == _F32 and not a.flags.c_contiguous:
        return np.ascontiguousarray(a)
    return a


def activation(x: np.ndarray, bias: np.ndarray | None, kind: int, alpha: float = 1.0,
               alloc: Allocator | None = None, out: np.ndarray | None = None) -> np.ndarray | None:
    """``act(x + bias)`` over the last axis of float32 ``x``; None when the kernel cannot run.

    ``kind``: GELU_ERF, GELU_TANH, X_SIGMOID (v * sigmoid(alpha v)), SIGMOID or HARD_SWISH. The
    result goes into ``out`` (C-contiguous float32 of x's shape, possibly x itself) where given, else
    into a buffer from the plan's ``alloc`` where it offers one (possibly x itself, a dying input),
    else into a fresh array.
    """
    if (out is None and type(x) is np.ndarray and x.dtype == _F32 and x.flags.c_contiguous
            and 0 < x.size < _MIN_PARALLEL_ELEMENTS and x.ndim
            and (bias is None or type(bias) is np.ndarray and bias.dtype == _F32 and bias.ndim == 1
                 and bias.flags.c_contiguous and bias.shape[0] == x.shape[-1])):
        # the common small case, without the general path's checks and splits (~2 us of a 512-value Sigmoid's 3;
        # a BiasGelu of 8 x 17 x 16 6.4 -> 5.1 us)
        kernel = _ACTIVATIONS[kind].compiled_for("f32", *_ACTIVATION_PROBE)
        if kernel is None:
            return None
        y = alloc(x.shape, _F32) if wants_buffer(alloc, x) else np.empty(x.shape, _F32)
        rows = x.reshape(1, -1) if bias is None else x.reshape(-1, x.shape[-1])
        kernel(read_only(rows), _EMPTY if bias is None else read_only(bias), y.reshape(rows.shape), _F32.type(alpha), 0,
               rows.shape[0])
        return y
    x, bias = _packed_rows(x), _packed_rows(bias)
    if x.ndim == 0 or not _usable(x) or (bias is not None and (bias.ndim != 1 or bias.shape[0] != x.shape[-1])):
        return None
    if bias is not None and not _usable(bias):
        return None
    kernel = _ACTIVATIONS[kind].compiled_for("f32", *_ACTIVATION_PROBE)
    if kernel is None:
        return None
    if out is None:
        out = alloc(x.shape, _F32) if wants_buffer(alloc, x) else np.empty(x.shape, _F32)
    y = out
    if not x.size:
        return y
    # without a bias the rows do not matter: long ones (short rows cost a loop setup each), several
    # of them where the pool may split them
    if bias is not None:
        rows = x.reshape(-1, x.shape[-1])
    elif x.size % _FLAT_ROW == 0:
        rows = x.reshape(-1, _FLAT_ROW)
    else:
        rows = x.reshape(1, -1)
    b = _EMPTY if bias is None else read_only(bias)
    if not _native_rows(kind, rows, b, y.reshape(rows.shape), alpha):
        _over_rows(kernel, (read_only(rows), b, y.reshape(rows.shape), _F32.type(alpha)), rows.shape[0], x.size)
    return y


def _native_rows(kind: int, rows: np.ndarray, bias: np.ndarray, out: np.ndarray, alpha: float) -> bool:
    """The activation over ``rows`` split over the pool as a native task (``row_tasks``), where the pool owns
    the cores and the input is large enough; False where it does not run (the caller runs the kernel)."""
    pool = current_pool()
    if not (pool.splits_gemms and pool.runs_native_tasks and rows.size >= _MIN_PARALLEL_ELEMENTS and rows.shape[0] > 1):
        return False
    tasks = optional_module("onyxrt.providers.cpu.row_tasks")
    if tasks is None:
        return False
    alpha32 = np.array([alpha], _F32)
    args = tasks.activation_args(rows, bias, out, alpha32)
    pool.run_native(tasks.activation_part(kind).address, args, min(pool.num_threads, rows.shape[0]))
    return True


def activation_in_place(x: np.ndarray, kind: int, alpha: float = 1.0) -> bool:
    """``act(x)`` (``activation``'s kinds) written over float32 ``x``; False, x untouched, when the kernel cannot."""
    if x.dtype != _F32 or not x.flags.c_contiguous or not x.flags.writeable or x.ndim == 0:
        return False
    return activation(x, None, kind, alpha, out=x) is not None


def layer_norm(x: np.ndarray, skip: np.ndarray | None, bias: np.ndarray | None, gamma: np.ndarray | None,
               beta: np.ndarray | None, epsilon: float, simplified: bool, keep_total: bool
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None:
    """(Skip)(Simplified)LayerNorm of the float32 rows ``x`` (2-D) plus ``skip`` (x's shape) and ``bias``, any of
    them strided (copied once): :func:`norm_last_axis` with the statistics of shape (rows,)."""
    x, skip, bias, gamma, beta = map(_packed_rows, (x, skip, bias, gamma, beta))
    done = norm_last_axis(x, skip, gamma, beta, bias, epsilon, simplified, keep_total)
    if done is None:
        return None
    y, mean, inv, total = done
    return y, mean.reshape(-1), inv.reshape(-1), total


def _fits(p: np.ndarray | None, cols: int) -> bool:
    """Whether a norm's parameter (None: absent) is one contiguous float32 value per column."""
    return p is None or (p.dtype == _F32 and p.shape == (cols,) and p.flags.c_contiguous)


def _layer_norm_kernel() -> Callable | None:
    """``layer_norm_rows`` compiled, looked up with the least work once it is (kernels of small rows ask per call)."""
    if "f32" in _LAYER_NORM.compiled and not numba_disabled():
        return _LAYER_NORM.kernel
    return _LAYER_NORM.compiled_for("f32", *_LAYER_NORM_PROBE)


def norm_last_axis(x: np.ndarray, skip: np.ndarray | None, gamma: np.ndarray | None, beta: np.ndarray | None,
                   bias: np.ndarray | None, epsilon: float, simplified: bool, keep_total: bool
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None:
    """(Skip)(Simplified)LayerNorm of float32 ``x`` plus ``skip`` (x's shape) and ``bias`` over the last axis, with the
    least set-up (a small model's or a decoding step's norm costs more in its set-up than in its rows; strided
    parameters are not copied here, see :func:`layer_norm`): (y, mean, inv_std, x + skip + bias where
    ``keep_total``), the statistics shaped x.shape[:-1] + (1,) (mean 0 when ``simplified``); None where the kernel
    cannot run or the operands do not fit."""
    norm = prepared_norm_last_axis(x.shape[-1], gamma, beta, bias, epsilon, simplified, keep_total)
    return None if norm is None else norm(x, skip)


def prepared_norm_last_axis(cols: int, gamma: np.ndarray | None, beta: np.ndarray | None, bias: np.ndarray | None,
                            epsilon: float, simplified: bool, keep_total: bool
                            ) -> Callable[[np.ndarray, np.ndarray | None], tuple | None] | None:
    """:func:`norm_last_axis` over rows of ``cols`` values with its parameters checked and made read-only once (a
    node's constants: kept for its runs), as a function ``(x, skip) -> result or None``; None where the kernel cannot
    run or the parameters do not fit."""
    if cols == 0 or not (_fits(gamma, cols) and _fits(beta, cols) and _fits(bias, cols)):
        return None
    kernel = _layer_norm_kernel()
    if kernel is None:
        return None
    parameters = tuple(_EMPTY if p is None else read_only(p) for p in (bias, gamma, beta))
    parameters += (_F32.type(epsilon), bool(simplified))

    def norm(x: np.ndarray, skip: np.ndarray | None) -> tuple | None:
        if (x.dtype != _F32 or x.ndim == 0 or x.shape[-1] != cols
                or (skip is not None and (skip.shape != x.shape or skip.dtype != _F32))):
            return None
        rows = x.size // cols
        y = np.empty(x.shape, _F32)
        total = np.empty(x.shape, _F32) if keep_total else None
        stats = np.empty((2,) + x.shape[:-1] + (1,), _F32)
        _over_rows(kernel, (read_only(np.ascontiguousarray(x).reshape(rows, cols)),
                            _EMPTY2 if skip is None else read_only(np.ascontiguousarray(skip).reshape(rows, cols)),
                            *parameters, y.reshape(rows, cols),
                            _NO_OUTPUT if total is None else total.reshape(rows, cols),
                            stats[0].reshape(rows), stats[1].reshape(rows)), rows, x.size)
        return y, stats[0], stats[1], total

    return norm


class ConstantParameters:
    """A prepared function of a node's parameters (weights it reads at run time, the same arrays each run), kept for
    the last parameters seen (compared by identity and held: an array of the same id is the same array; one
    attribute holds both, so that concurrent runs never pair one's parameters with another's preparation)."""

    __slots__ = ("_prepare", "_last")

    def __init__(self, prepare: Callable[..., Any]) -> None:
        self._prepare = prepare
        self._last: tuple[tuple, Any] = ((), None)

    def __call__(self, *parameters: Any) -> Any:
        held, prepared = self._last
        if len(held) != len(parameters) or any(a is not b for a, b in zip(held, parameters)):
            prepared = self._prepare(*parameters)
            self._last = (parameters, prepared)
        return prepared


def layer_norm_last_axis(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray | None, epsilon: float
                         ) -> np.ndarray | None:
    """LayerNormalization's result alone (:func:`norm_last_axis` without skip, bias or statistics)."""
    done = norm_last_axis(x, None, gamma, beta, None, epsilon, False, False)
    return None if done is None else done[0]


def activation_code(activation) -> tuple[int, tuple[float, float]] | None:
    """(code, params) of an in-place activation function that ``mlas_activation_fn`` made
    (its ``mlas`` attribute), (0, ...) for none, None for one the kernels cannot apply."""
    if activation is None:
        return 0, (0.0, 0.0)
    spec = getattr(activation, "mlas", None)
    if spec is None:
        return None
    name, params = spec
    values = list(params) + [0.0] * (2 - len(params))
    return _EPILOGUE_CODES[name], (values[0], values[1])


def prepared_channel_epilogue(channels: int, bias: np.ndarray | None, activation
                              ) -> Callable[[np.ndarray, np.ndarray | None], bool] | None:
    """In place, a function ``(y, residual) -> bool``: ``y`` (N, ``channels``, *spatial) float32 = activation(y +
    bias[channel] + residual), False (y untouched) where the kernel cannot do it all (the caller then uses
    numpy). What does not change between calls (the bias's form, the activation's code, the kernel) is settled
    once: a convolution's route keeps it. ``activation``: None or an ``mlas_activation_fn`` function. None
    where the kernel cannot apply at all."""
    prepared = _channel_kernel(_EPILOGUE, _EPILOGUE_PROBE, channels, bias, activation)
    if prepared is None:
        return None
    kernel, b, act, p, q = prepared

    def epilogue(y: np.ndarray, residual: np.ndarray | None) -> bool:
        if (y.dtype != _F32 or not y.flags.c_contiguous or not y.flags.writeable or y.ndim < 2
                or y.shape[1] != channels or numba_disabled()):
            return False
        rows = y.reshape(y.shape[0] * channels, -1)
        z = _EMPTY2
        if residual is not None:
            residual = _packed_rows(residual)
            if residual.shape != y.shape or not _usable(residual):
                return False
            z = read_only(residual.reshape(rows.shape))
        _over_rows(kernel, (rows, channels, b, z, act, p, q), rows.shape[0], y.size)
        return True

    return epilogue


def prepared_channel_affine(channels: int, scale: np.ndarray, bias: np.ndarray, activation
                            ) -> Callable[[np.ndarray], np.ndarray] | None:
    """A function of float32 ``x`` (N, ``channels``, *spatial) returning activation(x * scale[channel] +
    bias[channel]) in one pass (a 1x1 depthwise convolution's route, kept per input shape), or None where the
    kernel cannot apply. ``scale`` and ``bias``: float32, one per channel."""
    if scale.dtype != _F32 or scale.size != channels:
        return None
    prepared = _channel_kernel(_AFFINE, _AFFINE_PROBE, channels, bias, activation)
    if prepared is None:
        return None
    kernel, b, act, p, q = prepared
    s = read_only(np.ascontiguousarray(scale).reshape(channels))

    def affine(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x)
        y = np.empty(x.shape, _F32)
        rows = x.reshape(x.shape[0] * channels, -1)
        _over_rows(kernel, (read_only(rows), y.reshape(rows.shape), channels, s, b, act, p, q), rows.shape[0], x.size)
        return y

    return affine


def _channel_kernel(lazy: LazyModuleKernel, probe: tuple, channels: int, bias: np.ndarray | None, activation):
    """(kernel, bias as a read-only vector, activation code, its two parameters as float32) for the per-channel
    kernels above, or None where they cannot apply (a bias not float32 or not one per channel, an activation
    they do not take, no numba)."""
    if bias is not None and (bias.dtype != _F32 or bias.size != channels):
        return None
    code = activation_code(activation)
    if code is None:
        return None
    kernel = lazy.compiled_for("f32", *probe)
    if kernel is None:
        return None
    b = _EMPTY if bias is None else read_only(np.ascontiguousarray(bias).reshape(channels))
    act, (p, q) = code
    return kernel, b, act, _F32.type(p), _F32.type(q)


def softmax_in_place(x: np.ndarray) -> bool:
    """Softmax over the last axis of float32 ``x``, in place; False (x untouched) when the kernel cannot."""
    if x.dtype != _F32 or not x.flags.c_contiguous or not x.flags.writeable or x.ndim == 0 or x.shape[-1] == 0:
        return False
    kernel = _SOFTMAX.compiled_for("f32", *_SOFTMAX_PROBE)
    if kernel is None:
        return False
    rows = x.reshape(-1, x.shape[-1])
    _over_rows(kernel, (rows,), rows.shape[0], x.size)
    return True


def rotary(x: np.ndarray, positions: np.ndarray, cos: np.ndarray, sin: np.ndarray, interleaved: bool) -> np.ndarray | None:
    """RotaryEmbedding of float32 ``x`` (rows, heads, head_size), C-contiguous, with int64 ``positions``
    (rows,) already checked against the float32 (positions, half) caches; None when the kernel cannot."""
    if x.dtype != _F32 or cos.dtype != _F32 or sin.dtype != _F32 or x.ndim != 3 or not x.flags.c_contiguous:
        return None
    kernel = _ROTARY.compiled_for("f32", *_ROTARY_PROBE)
    if kernel is None:
        return None
    out = np.empty_like(x)
    kernel(read_only(x), read_only(np.ascontiguousarray(positions, np.int64)), read_only(np.ascontiguousarray(cos)),
           read_only(np.ascontiguousarray(sin)), out, bool(interleaved), 0, x.shape[0])
    return out


def swiglu(gate: np.ndarray, up: np.ndarray | None, alpha: float, beta: float, limit: float,
           alloc: Allocator | None = None) -> np.ndarray | None:
    """com.microsoft SwiGLU of float32 ``gate`` and ``up`` (same shape), or of ``gate`` alone holding both
    halves (gate first) along its last axis; None when the kernel cannot run (other dtypes, no numba)."""
    if gate.dtype != _F32 or gate.ndim == 0 or (up is not None and up.dtype != _F32):
        return None
    kernel = _SWIGLU.compiled_for("f32", *_SWIGLU_PROBE)
    if kernel is None:
        return None
    gate = np.ascontiguousarray(gate)
    if up is None:
        width = gate.shape[-1] // 2
        shape = gate.shape[:-1] + (width,)
        g = u = gate.reshape(-1, gate.shape[-1])
        up_at = width
    else:
        shape = gate.shape
        up = np.ascontiguousarray(up)
        g, u, up_at = gate.reshape(-1, max(1, gate.shape[-1])), up.reshape(-1, max(1, up.shape[-1])), 0
    out = alloc(shape, _F32) if up is not None and wants_buffer(alloc, gate) else np.empty(shape, _F32)
    if not out.size:
        return out
    rows = out.reshape(-1, shape[-1])
    _over_rows(kernel, (read_only(g), 0, read_only(u), up_at, rows, _F32.type(alpha), _F32.type(beta),
                        _F32.type(limit)), rows.shape[0], out.size)
    return out
