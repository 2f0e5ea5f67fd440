"""com.microsoft NhwcFusedConv and NhwcConv: 2-D convolutions of channels-last tensors, X (N, H, W, C) -> Y (N, OH,
OW, M), the filter W as ONNX Conv has it (M, C / group, kh, kw); NhwcFusedConv adds FusedConv's epilogue (a sum Z
(N, OH, OW, M) added before ``activation``). onnxruntime defines both (its layout transformer writes them for
providers that prefer channels-last); onyxrt runs models that contain them.

onyxrt's optimizer does not write them: measured on 2 Zen 5 cores, alternating processes, a pass running float32
pointwise and depthwise convolutions of small images channels-last took mobilenet_v2 0.96-1.00x the time of
channels-first, resnet50 1.05x, and the unseen MobileNetV3- and EfficientNet-like nets (batch 8, 32x32) 1.11-1.35x
(their products on BLAS's threads, the channels-first routes' epilogues fused, fewer nodes): ``benchmarks/layout.md``.

Routes, chosen once per input shape:

* a pointwise convolution (1x1, stride 1, no padding, group 1) is one product, (N*H*W, C) @ (C, M), on onyxrt's GEMM
  (``math/sgemm_tiles``) with the bias per column, the sum and the activation in its registers where the CPU has
  it, else BLAS's product and the epilogue after it. Pixels are the GEMM's rows: a 7x7 image's 49 pixels waste no
  vector lanes (channels-first, they are a row of 49 columns: four 16-lane vectors for 49 values);
* a depthwise convolution (group = C = M, a square filter of 1, 3, 5 or 7, no negative pads) runs
  ``nn/depthwise_nhwc.nhwc_blocks``: a pixel's block of sixteen channels is one contiguous run, so the
  vector blocks need no transposes;
* anything else is computed channels-first (``conv_core.float_conv``) between two transposes.
"""

from __future__ import annotations

import math

import numpy as np

from ....errors import NodeInputError, NodeInputTypeError
from ....framework.thread_mode import note_pool_product
from ....framework.thread_pool import current_pool
from .. import row_kernels
from ..gemm import fused_product, own_sgemm_usable
from ..gemm import matmul as pool_matmul
from ..jit import optional_module
from ..kernel_table import op
from ..nn.conv_core import (check_kernel_shape, conv_pads, float_conv, frozen, keep_route, pack_conv_weights,
                            spatial_defaults)
# (a depthwise convolution's thresholds for splitting its work and for the split mode: the channels-first ones)
from ..nn.depthwise_conv import _PARALLEL_MIN_WORK, _POOL_MODE_WORK
from .fused import mlas_activation_fn

_F32 = np.dtype(np.float32)


class NhwcConvWeights:
    """A constant filter prepared once: the channels-first ``ConvWeights`` (the fallback route), W^T (C, M) for a
    pointwise filter, the vector blocks' packed filters for a depthwise one, and the routes taken per input shape."""

    __slots__ = ("nchw", "pointwise", "depthwise", "bias", "routes")

    def __init__(self, w: np.ndarray, b: np.ndarray | None, attributes) -> None:
        self.nchw = pack_conv_weights(w, b, attributes)
        group = int(attributes.get("group", 1))
        self.bias = None if b is None else frozen(np.ascontiguousarray(b, dtype=_F32).reshape(-1))
        self.pointwise = None
        if w.dtype == _F32 and w.ndim == 4 and group == 1 and w.shape[2:] == (1, 1):
            self.pointwise = frozen(np.ascontiguousarray(w.reshape(w.shape[:2]).T))
        self.depthwise = None
        if w.dtype == _F32 and w.ndim == 4 and w.shape[1] == 1 and group == w.shape[0] and w.shape[2] == w.shape[3]:
            blocks = optional_module("onyxrt.providers.cpu.nn.depthwise_nhwc")
            if blocks is not None and w.shape[2] in blocks.FILTERS:
                bias = np.zeros(w.shape[0], _F32) if b is None else np.asarray(b, _F32).reshape(-1)
                self.depthwise = tuple(frozen(a) for a in blocks.pack_filters(w.reshape(w.shape[0], w.shape[2],
                                                                                        w.shape[3]), bias))
        self.routes: dict = {}


def _prepack(inputs, attributes):
    w = inputs[1] if len(inputs) > 1 else None
    b = inputs[2] if len(inputs) > 2 else None
    if not isinstance(w, np.ndarray) or w.ndim != 4 or not np.issubdtype(w.dtype, np.floating):
        return None
    if b is not None and (not isinstance(b, np.ndarray) or b.size != w.shape[0]):
        return None
    return NhwcConvWeights(w, b, attributes)


def _check(x: np.ndarray, w: np.ndarray, z, op_name: str) -> None:
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise NodeInputError(f"{op_name}: X must be a 4-D (N, H, W, C) tensor, got shape {getattr(x, 'shape', None)}")
    if x.dtype.kind != "f":
        raise NodeInputTypeError(f"{op_name}: X must be a float tensor, got {x.dtype}")
    if w.ndim != 4:
        raise NodeInputError(f"{op_name}: W must be a 4-D (M, C / group, kh, kw) filter, got shape {w.shape}")
    if z is not None and z.dtype != x.dtype:
        raise NodeInputTypeError(f"{op_name}: Z must have X's type {x.dtype}, got {z.dtype}")


def _route(shape, dtype, w, b, group, strides, dilations, pads, auto_pad, kernel_shape, packed, activation,
           summed: bool, op_name: str):
    """The convolution for inputs of ``shape`` (N, H, W, C) as a function ``(x, z) -> y``."""
    N, H, W, C = shape
    check_kernel_shape(kernel_shape, w)
    if C != w.shape[1] * group:
        raise NodeInputError(f"{op_name}: X has {C} channels, W expects {w.shape[1] * group} (group {group})")
    s, d = spatial_defaults(2, strides, dilations)
    p = conv_pads((H, W), w.shape[2:], s, d, pads, auto_pad)
    OH = (H + p[0] + p[2] - (w.shape[2] - 1) * d[0] - 1) // s[0] + 1
    OW = (W + p[1] + p[3] - (w.shape[3] - 1) * d[1] - 1) // s[1] + 1
    if OH <= 0 or OW <= 0:
        raise NodeInputError(f"{op_name}: the filter {w.shape[2:]} does not fit the padded input {(H, W)}")
    M = w.shape[0]
    y_shape = (N, OH, OW, M)
    fused = row_kernels.activation_code(activation)
    usable = packed is not None and dtype == _F32 and (b is None or packed.bias is not None)
    if usable and packed.pointwise is not None and s == [1, 1] and not any(p) and packed.pointwise.shape[0] == C:
        return _pointwise(packed, y_shape, fused, activation)
    if usable and packed.depthwise is not None and C == M and min(p) >= 0 and fused is not None and not summed:
        blocks = optional_module("onyxrt.providers.cpu.nn.depthwise_nhwc")
        if blocks is not None and fused[0] in blocks.ACTIVATIONS:
            return _depthwise(blocks, packed, shape, y_shape, s, d, p, fused)
    nchw_packed = None if packed is None else packed.nchw

    def channels_first(x: np.ndarray, z: np.ndarray | None) -> np.ndarray:
        x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        z_nchw = None if z is None else np.ascontiguousarray(z.transpose(0, 3, 1, 2))
        y = float_conv(x_nchw, w, b, group, strides, dilations, pads, auto_pad, kernel_shape, nchw_packed, activation,
                       z_nchw)
        return np.ascontiguousarray(y.transpose(0, 2, 3, 1))

    return channels_first


# activations the row kernels apply over the output after the product (``row_kernels.activation``'s kinds), by name
_ROW_KINDS = {"QuickGelu": row_kernels.X_SIGMOID, "Sigmoid": row_kernels.SIGMOID, "HardSwish": row_kernels.HARD_SWISH}


def _pointwise(packed: NhwcConvWeights, y_shape: tuple, fused, activation):
    wt = packed.pointwise
    C, M = wt.shape
    bias = packed.bias
    own = own_sgemm_usable()
    in_registers = own and fused is not None and fused[0] in row_kernels.IN_REGISTERS
    code, values = (fused[0], np.array(fused[1], _F32)) if in_registers else (0, np.zeros(2, _F32))
    spec = None if activation is None else activation.mlas
    row_kind = None if spec is None or in_registers else _ROW_KINDS.get(spec[0])
    alpha = spec[1][0] if row_kind == row_kernels.X_SIGMOID else 1.0

    def pointwise(x: np.ndarray, z: np.ndarray | None) -> np.ndarray:
        x2 = np.ascontiguousarray(x).reshape(-1, C)
        y = np.empty(y_shape, _F32)
        y2 = y.reshape(-1, M)
        z2 = None if z is None else np.ascontiguousarray(z, dtype=_F32).reshape(-1, M)
        if z2 is not None and z2.shape != y2.shape:
            raise NodeInputError(f"NhwcFusedConv: Z has shape {z.shape}, the output {y_shape}")
        # (onyxrt's GEMM where the pool owns the cores, as for channels-first pointwise convolutions; else BLAS's
        # threads)
        fused_here = own and current_pool().splits_gemms and fused_product(x2, wt, y2, bias, z2, code, values,
                                                                           column_bias=True)
        if not fused_here:
            pool_matmul(x2, wt, out=y2)
            if bias is not None:
                y2 += bias
            if z2 is not None:
                y2 += z2
        if activation is None or (fused_here and in_registers):
            return y
        if row_kind is None or not row_kernels.activation_in_place(y, row_kind, alpha):
            activation(y)
        return y

    return pointwise


def _depthwise(blocks, packed: NhwcConvWeights, shape: tuple, y_shape: tuple, s, d, p, fused):
    weights, biases = packed.depthwise
    N, _, _, _ = shape
    _, OH, OW, M = y_shape
    code, params = fused
    values = np.array(params + (0.0, 1.0), _F32)
    geometry = (OH, OW, s[0], s[1], d[0], d[1], p[0], p[1], code)
    template = blocks.nhwc_template(shape, weights, biases, values, *geometry)
    count = N * weights.shape[0]
    work = math.prod(y_shape) * weights.shape[1]
    faster_split = work >= _POOL_MODE_WORK

    def depthwise(x: np.ndarray, z: np.ndarray | None) -> np.ndarray:
        if faster_split:
            note_pool_product()
        x = np.ascontiguousarray(x, dtype=_F32)
        y = np.empty(y_shape, _F32)
        pool = current_pool()
        if pool.splits_gemms and pool.runs_native_tasks and work >= _PARALLEL_MIN_WORK:
            pool.run_native(blocks.nhwc_part.address, blocks.task_args(template, x, y), pool.num_threads)
        else:  # (through the native task on this thread: one compiled signature of the kernel, the task's)
            pool.run_native(blocks.nhwc_part.address, blocks.task_args(template, x, y), 1)
        return y

    depthwise.operands = (weights, biases, values)  # (alive while the template holding their addresses is used)
    return depthwise


def _run(op_name, x, w, b, z, activation, auto_pad, dilations, group, kernel_shape, pads, strides, _packed):
    _check(x, w, z, op_name)
    packed = _packed if isinstance(_packed, NhwcConvWeights) else None
    spec = None if activation is None else activation.mlas
    key = (x.shape, x.dtype, b is None, spec, z is None)
    route = None if packed is None else packed.routes.get(key)
    if route is None:
        route = _route(x.shape, x.dtype, w, b, int(group), strides, dilations, pads, auto_pad, kernel_shape, packed,
                       activation, z is not None, op_name)
        if packed is not None:
            keep_route(packed.routes, key, route)
    return route(x, z)


@op("NhwcFusedConv", versions=1, domain="com.microsoft", prepack=_prepack)
def nhwc_fused_conv(x, w, b=None, z=None, *, activation="", activation_params=None, auto_pad="NOTSET", dilations=None,
                    group=1, kernel_shape=None, pads=None, strides=None, _packed=None):
    return _run("NhwcFusedConv", x, w, b, z, mlas_activation_fn(activation, activation_params), auto_pad, dilations,
                group, kernel_shape, pads, strides, _packed)


@op("NhwcConv", versions=1, domain="com.microsoft", prepack=_prepack)
def nhwc_conv(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None,
              _packed=None):
    return _run("NhwcConv", x, w, b, None, None, auto_pad, dilations, group, kernel_shape, pads, strides, _packed)
