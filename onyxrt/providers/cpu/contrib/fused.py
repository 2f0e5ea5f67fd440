"""com.microsoft fusions onnxruntime's graph optimizer writes: FusedConv, FusedGemm,
FusedMatMul (and its older name TransposeMatMul), FusedMatMulActivation, BiasAdd,
NhwcMaxPool, Trilu.

The fused activations follow onnxruntime:

* FusedConv (and the NCHWc Conv) take ``activation`` + ``activation_params``, as in
  MLAS: Relu, LeakyRelu [alpha], Tanh, Sigmoid, Clip [min, max], HardSigmoid [alpha, beta];
  a Conv's ``Z`` (sum) input is added *before* the activation. onyxrt's FusedConv also takes
  HardSwish and QuickGelu [alpha] (``optimizer/conv_epilogue_fusion.py`` writes them; onnxruntime
  does not run such a node);
* FusedGemm / FusedMatMulActivation take ``activation`` + ``activation_alpha/beta/gamma``
  (onnxruntime's element-wise functors): the ONNX activation names, their ONNX defaults
  when a parameter is absent.
"""

from __future__ import annotations

import numpy as np

from .. import row_kernels
from ..gemm import matmul as pool_matmul
from ..math import branch_free
from ..math.activations import sigmoid_values
from ..math.elementwise import erf_values
from ..math.matmul import gemm as _onnx_gemm
from ..math.matmul import gemm_prepack
from ..math.sparse_gemm import SparseWeight, sparse_prepack
from ..nn.conv_core import add_residual, conv_prepack, float_conv, prepared_route_path
from ..nn.pool import max_pool as _onnx_max_pool
from ..kernel_table import op
from ..tensor.indexing import trilu as _onnx_trilu
from ....errors import NodeInputError, NodeInputTypeError

_FLOAT_KINDS = (np.dtype(np.float32), np.dtype(np.float64))


def _name(value) -> str:
    if isinstance(value, bytes):
        value = value.decode()
    return value or ""


def _owned(y: np.ndarray, *inputs) -> np.ndarray:
    """``y`` if it is a fresh writable array, else a copy (so it may be changed in place)."""
    if not y.flags.writeable or not y.flags.c_contiguous or any(
        isinstance(i, np.ndarray) and np.may_share_memory(y, i) for i in inputs
    ):
        return np.array(y, copy=True, order="C")
    return y


def _in_float(y: np.ndarray, fn) -> np.ndarray:
    """Apply the in-place activation ``fn`` to a float32/float64 array (others via float32)."""
    if y.dtype in _FLOAT_KINDS:
        fn(y)
        return y
    t = y.astype(np.float32)
    fn(t)
    return t.astype(y.dtype)


# --------------------------------------------------------------------------- MLAS activations


def mlas_activation_fn(activation, params):
    """The FusedConv/NCHWc activation as an in-place function of a float32/float64 array
    (None for no activation); checks the name and parameters. The function's ``mlas``
    attribute, (name, parameters), lets a compiled kernel apply it itself. Kept per (name,
    parameters): a node's kernel asks on every call."""
    key = (activation, None if params is None else tuple(params))
    fn = _ACTIVATION_FNS.get(key, _ABSENT)
    if fn is _ABSENT:
        fn = _mlas_activation_fn(activation, params)
        if fn is not None:
            fn.mlas = (_name(activation), tuple(float(v) for v in (params if params is not None else [])))
        if len(_ACTIVATION_FNS) >= 256:
            _ACTIVATION_FNS.clear()
        _ACTIVATION_FNS[key] = fn
    return fn


_ACTIVATION_FNS: dict = {}
_ABSENT = object()


def _mlas_activation_fn(activation, params):
    name = _name(activation)
    if not name:
        return None
    p = [float(v) for v in (params if params is not None else [])]

    def need(count):
        if len(p) != count:
            raise NodeInputError(f"activation {name} needs {count} activation_params, got {len(p)}")

    if name == "Relu":
        return lambda t: branch_free.at_least(t, t.dtype.type(0), out=t)  # (NaN kept, as the compiled kernels keep it)
    if name == "LeakyRelu":
        need(1)
        alpha = p[0]
        return lambda t: branch_free.leaky_relu(t, alpha, out=t)
    if name == "Tanh":
        return lambda t: np.tanh(t, out=t)
    if name == "Sigmoid":
        return lambda t: np.copyto(t, sigmoid_values(t))
    if name == "Clip":
        need(2)
        lo, hi = p
        return lambda t: np.clip(t, t.dtype.type(lo), t.dtype.type(hi), out=t)
    if name == "HardSigmoid":
        need(2)
        alpha, beta = p

        def hard(t):
            t *= t.dtype.type(alpha)
            t += t.dtype.type(beta)
            np.clip(t, 0, 1, out=t)

        return hard
    if name == "HardSwish":  # onyxrt's own (see the module docstring)
        def hard_swish(t):
            if not row_kernels.activation_in_place(t, row_kernels.HARD_SWISH):
                h = t * t.dtype.type(1 / 6) + t.dtype.type(0.5)
                np.clip(h, 0, 1, out=h)
                t *= h

        return hard_swish
    if name == "QuickGelu":  # onyxrt's own: v * sigmoid(alpha v)
        need(1)
        alpha = p[0]

        def quick_gelu(t):
            if not row_kernels.activation_in_place(t, row_kernels.X_SIGMOID, alpha):
                t *= sigmoid_values(t * t.dtype.type(alpha))

        return quick_gelu
    raise NotImplementedError(f"fused activation {name!r} is not supported")


def mlas_activation(y: np.ndarray, activation, params) -> np.ndarray:
    """Apply a FusedConv/NCHWc activation to ``y`` (a fresh array, changed in place when float)."""
    fn = mlas_activation_fn(activation, params)
    return y if fn is None else _in_float(y, fn)


# --------------------------------------------------------------------------- element-wise functors


def functor_activation(y: np.ndarray, activation, alpha=None, beta=None, gamma=None) -> np.ndarray:
    """The activations of FusedGemm / FusedMatMulActivation (onnxruntime's element-wise functors)."""
    name = _name(activation)
    if not name:
        return y

    def a(default):
        return float(default if alpha is None else alpha)

    def b(default):
        return float(default if beta is None else beta)

    def g(default):
        return float(default if gamma is None else gamma)

    def compute(t):
        c = t.dtype.type
        if name == "Relu":
            branch_free.at_least(t, c(0), out=t)
        elif name == "LeakyRelu":
            branch_free.leaky_relu(t, a(0.01), out=t)
        elif name == "Sigmoid":
            np.copyto(t, sigmoid_values(t))
        elif name == "Tanh":
            np.tanh(t, out=t)
        elif name == "HardSigmoid":
            t *= c(a(0.2))
            t += c(b(0.5))
            np.clip(t, 0, 1, out=t)
        elif name == "Elu":
            al = c(a(1.0))
            neg = t < 0
            np.copyto(t, al * np.expm1(t), where=neg)
        elif name == "Selu":
            al, ga = c(a(1.6732632423543772)), c(g(1.0507009873554805))
            neg = t < 0
            np.copyto(t, al * np.expm1(t), where=neg)
            t *= ga
        elif name == "Celu":
            al = c(a(1.0))
            np.copyto(t, np.maximum(t, 0) + np.minimum(0, al * np.expm1(t / al)))
        elif name == "Softplus":
            np.copyto(t, np.logaddexp(t, c(0)))
        elif name == "ParametricSoftplus":
            al, be = c(a(1.0)), c(b(1.0))
            np.copyto(t, al * np.logaddexp(be * t, c(0)))
        elif name == "Softsign":
            t /= 1 + np.abs(t)
        elif name == "ScaledTanh":
            al, be = c(a(1.0)), c(b(1.0))
            np.copyto(t, al * np.tanh(be * t))
        elif name == "ThresholdedRelu":
            np.copyto(t, c(0), where=t <= c(a(1.0)))
        elif name == "Gelu":
            np.copyto(t, c(0.5) * t * (c(1) + erf_values(t * c(0.7071067811865476))))
        elif name == "QuickGelu":
            np.copyto(t, t * sigmoid_values(t * c(a(1.702))))
        else:
            raise NotImplementedError(f"fused activation {name!r} is not supported")

    return _in_float(y, compute)


# --------------------------------------------------------------------------- FusedConv


@op("FusedConv", versions=1, domain="com.microsoft", prepack=conv_prepack)
def fused_conv(
    x,
    w,
    b=None,
    z=None,
    *,
    activation="",
    activation_params=None,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    pads=None,
    strides=None,
    _packed=None,
):
    if x.dtype in _FLOAT_KINDS and (z is None or z.dtype == x.dtype):
        # the activation (and Z) applied inside the convolution, in the same pass as its bias
        fn = mlas_activation_fn(activation, activation_params)
        return float_conv(x, w, b, group, strides, dilations, pads, auto_pad, kernel_shape, _packed, fn, z)
    y = float_conv(x, w, b, group, strides, dilations, pads, auto_pad, kernel_shape, _packed)
    y = _owned(y, x, w, b, z)
    if z is not None:
        add_residual(y, z)
    return mlas_activation(y, activation, activation_params)


def fast_path_activation(keywords: dict, name: str = "activation") -> tuple | None:
    """A node's FusedConv activation (keywords ``name`` and ``name + "_params"``) as kernel fast paths key their
    routes by it: (the ``mlas_activation_fn`` function or None, its ``mlas`` spec or None); None where the fast path
    does not apply (an invalid activation: the kernel reports it on each run)."""
    try:
        activation = mlas_activation_fn(keywords.get(name, ""), keywords.get(name + "_params"))
    except (NodeInputError, NotImplementedError):
        return None
    return activation, None if activation is None else activation.mlas


def _fused_conv_fast_path(bound, keywords):
    """``kernel_registry``'s fast path of a FusedConv node: its prepared routes looked up directly."""
    activation = fast_path_activation(keywords)
    return None if activation is None else prepared_route_path(bound, keywords.get("_packed"), activation[1])


fused_conv.fast_path = _fused_conv_fast_path


# --------------------------------------------------------------------------- FusedGemm


@op("FusedGemm", versions=1, domain="com.microsoft", prepack=gemm_prepack)
def fused_gemm(
    a,
    b,
    c=None,
    *,
    alpha=1.0,
    beta=1.0,
    transA=0,
    transB=0,
    activation="",
    activation_alpha=None,
    activation_beta=None,
    activation_gamma=None,
    leaky_relu_alpha=None,
    _packed=None,
):
    y = _owned(_onnx_gemm(a, b, c, alpha=alpha, beta=beta, transA=transA, transB=transB, _packed=_packed), a, b, c)
    if y.dtype.kind in "iu":
        if _name(activation) not in ("", "Relu"):
            raise NotImplementedError(f"FusedGemm: activation {activation!r} on integer tensors")
        if _name(activation) == "Relu":
            branch_free.at_least(y, y.dtype.type(0), out=y)
        return y
    if leaky_relu_alpha is not None and activation_alpha is None:
        activation_alpha = leaky_relu_alpha
    return functor_activation(y, activation, activation_alpha, activation_beta, activation_gamma)


# --------------------------------------------------------------------------- FusedMatMul


def _fused_matmul_operand(t: np.ndarray, trans_batch: int, trans: int, name: str) -> np.ndarray:
    if t.ndim == 1:  # a vector: the transpose flags do not apply
        return t
    if trans_batch:
        # (d0, b1, ..., bk, last) -> (b1, ..., bk, d0, last)
        t = np.moveaxis(t, 0, -2)
    if trans:
        t = np.swapaxes(t, -1, -2)
    return t


def _fused_matmul_prepack(inputs, attributes):
    """A constant 2-D B's sparse products (``sparse_gemm``) when it has many zeros."""
    return sparse_prepack(inputs[1], transpose=bool(attributes.get("transB", 0))) if len(inputs) > 1 else None


def _fused_matmul(a, b, alpha, transA, transB, transBatchA, transBatchB, packed: SparseWeight | None = None):
    if a.dtype != b.dtype:
        raise NodeInputTypeError(f"FusedMatMul inputs have different dtypes {a.dtype} and {b.dtype}")
    if (transBatchA or transBatchB) and not (a.ndim > 2 and a.ndim == b.ndim):
        raise NodeInputError("FusedMatMul: with transBatchA/transBatchB both inputs must have the same rank >= 3")
    A = _fused_matmul_operand(a, transBatchA, transA, "A")
    B = _fused_matmul_operand(b, transBatchB, transB, "B")
    dtype = a.dtype
    y = packed.product(A) if packed is not None and packed.source_shape == b.shape else None
    if y is not None:
        if alpha != 1.0:
            y *= y.dtype.type(alpha)
        return y
    low = dtype not in _FLOAT_KINDS
    if low:
        A = A.astype(np.float32)
        B = B.astype(np.float32)
    if A.ndim > 2 and B.ndim == 2 and A.flags.c_contiguous:
        y = pool_matmul(A.reshape(-1, A.shape[-1]), B).reshape(A.shape[:-1] + (B.shape[1],))
    else:
        y = pool_matmul(A, B)
    y = np.asarray(y)
    if alpha != 1.0:
        y = _owned(y, a, b)
        y *= y.dtype.type(alpha)
    return y.astype(dtype) if low else y


@op("FusedMatMul", versions=1, domain="com.microsoft", prepack=_fused_matmul_prepack)
def fused_matmul(a, b, *, alpha=1.0, transA=0, transB=0, transBatchA=0, transBatchB=0, _packed=None):
    return _fused_matmul(a, b, alpha, transA, transB, transBatchA, transBatchB, _packed)


@op("TransposeMatMul", versions=1, domain="com.microsoft", prepack=_fused_matmul_prepack)
def transpose_matmul(a, b, *, alpha=1.0, transA=0, transB=0, _packed=None):
    """The older name of FusedMatMul (without the batch transposes)."""
    return _fused_matmul(a, b, alpha, transA, transB, 0, 0, _packed)


@op("FusedMatMulActivation", versions=1, domain="com.microsoft", prepack=_fused_matmul_prepack)
def fused_matmul_activation(
    a,
    b,
    *,
    alpha=1.0,
    transA=0,
    transB=0,
    transBatchA=0,
    transBatchB=0,
    activation="",
    activation_alpha=None,
    activation_beta=None,
    activation_gamma=None,
    activation_axis=None,
    _packed=None,
):
    y = _owned(_fused_matmul(a, b, alpha, transA, transB, transBatchA, transBatchB, _packed), a, b)
    name = _name(activation)
    if name in ("Softmax", "LogSoftmax", "Hardmax"):
        raise NotImplementedError(f"FusedMatMulActivation: activation {name!r} is not supported")
    return functor_activation(y, name, activation_alpha, activation_beta, activation_gamma)


# --------------------------------------------------------------------------- BiasAdd


@op("BiasAdd", versions=1, domain="com.microsoft")
def bias_add(x, bias, skip):
    if x.ndim != 3 or bias.ndim != 1 or bias.shape[0] != x.shape[2] or skip.shape != x.shape:
        raise NodeInputError(f"BiasAdd: X {x.shape}, bias {bias.shape} and skip {skip.shape} are inconsistent")
    y = np.add(x, bias)
    y += skip
    return y


# --------------------------------------------------------------------------- NhwcMaxPool


@op("NhwcMaxPool", versions=1, domain="com.microsoft")
def nhwc_max_pool(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None, strides=None):
    if x.dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
        raise NodeInputTypeError(f"NhwcMaxPool: input must be int8 or uint8, got {x.dtype}")
    if x.ndim < 3:
        raise NodeInputError(f"NhwcMaxPool: input must have rank >= 3, got shape {x.shape}")
    nchw = np.moveaxis(x, -1, 1)
    (y,) = _onnx_max_pool(
        nchw,
        auto_pad=auto_pad,
        ceil_mode=ceil_mode,
        dilations=dilations,
        kernel_shape=kernel_shape,
        pads=pads,
        storage_order=0,
        strides=strides,
        _num_outputs=1,
    )
    return np.ascontiguousarray(np.moveaxis(y, 1, -1))


# --------------------------------------------------------------------------- Trilu


@op("Trilu", versions=1, domain="com.microsoft")
def trilu_ms(x, k=None, *, upper=1):
    return _onnx_trilu(x, k, upper=upper)
