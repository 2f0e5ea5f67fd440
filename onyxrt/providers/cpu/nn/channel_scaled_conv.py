"""ai.onyxrt ChannelScaledConv: a FusedConv of its input scaled per image and channel,
``activation(Conv(X * S, W) + B + Z)`` with S (N or 1, C, 1, ...).

What ``optimizer/channel_scale_conv_fusion.py`` makes of a squeeze-and-excitation block's ``Mul(X, gate)`` and
the pointwise convolution reading it (EfficientNet, MobileNetV3, SE-ResNet, RegNetY). For a pointwise filter the
scale goes into the filter instead: image n's product is (W * S[n]) @ X[n], M x C multiplies an image in place of
the Mul's pass over its C x H x W values (and the Mul's output buffer); the bias, Z and the activation follow as
in FusedConv (``conv_core``'s epilogue). Any other case computes X * S and runs FusedConv's kernel. The products
differ from the Mul-then-Conv ones by the rounding of the scaled filter (float32 reassociation, ~1e-7 relative).
"""

from __future__ import annotations

import math

import numpy as np

from ....graph.opsets import ONYXRT_DOMAIN
from ..contrib.fused import fast_path_activation, fused_conv, mlas_activation_fn
from .. import row_kernels
from ..gemm import own_sgemm_fits, own_sgemm_parts, own_sgemm_usable
from ..jit import optional_module
from ..gemm import matmul as pool_matmul
from ..kernel_table import op
from ....framework.thread_pool import current_pool
from .conv_core import ConvWeights, epilogue_finisher, keep_route, pack_conv_weights

_F32 = np.dtype(np.float32)
_NO_BIAS = np.zeros(0, _F32)
_NO_RESIDUAL = np.zeros((0, 0, 0), _F32)


def _prepack(inputs, attributes):
    """The filter (input 2) and bias (input 3) prepared as FusedConv's."""
    return pack_conv_weights(inputs[2] if len(inputs) > 2 else None, inputs[3] if len(inputs) > 3 else None,
                             attributes)


@op("ChannelScaledConv", versions=1, domain=ONYXRT_DOMAIN, prepack=_prepack)
def channel_scaled_conv(x, s, w, b=None, z=None, *, activation="", activation_params=None, auto_pad="NOTSET",
                        dilations=None, group=1, kernel_shape=None, pads=None, strides=None, _packed=None):
    fn = mlas_activation_fn(activation, activation_params)
    route = _scaled_pointwise(x, s, z, _packed, fn) if isinstance(_packed, ConvWeights) else None
    if route is not None:
        return route(x, s, z)
    return fused_conv(x * s, w, b, z, activation=activation, activation_params=activation_params,
                      auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads,
                      strides=strides, _packed=_packed)


def _channel_scaled_conv_fast_path(bound, keywords):
    """``kernel_registry``'s fast path of a ChannelScaledConv node: its prepared scaled-filter routes looked up
    directly."""
    packed = keywords.get("_packed")
    if not isinstance(packed, ConvWeights):
        return None
    activation = fast_path_activation(keywords)
    if activation is None:
        return None
    spec = activation[1]
    routes = packed.routes

    def scaled(x, s, w, b=None, z=None):
        route = routes.get(("channel_scaled", x.shape, s.shape, spec, z is None))
        if route is None or x.dtype != _F32 or s.dtype != _F32:
            return bound(x, s, w, b, z)
        return route(x, s, z)

    return scaled


channel_scaled_conv.fast_path = _channel_scaled_conv_fast_path


def _scaled_pointwise(x: np.ndarray, s: np.ndarray, z: np.ndarray | None, packed: ConvWeights, activation):
    """The scaled-filter route for these operands' shapes (kept in the filter's routes), or None where it does not
    apply: a float32 pointwise filter of x's channels and a float32 scale of one value per image (or one for all)
    and channel."""
    spec = None if activation is None else getattr(activation, "mlas", None)
    if activation is not None and spec is None:
        return None
    key = ("channel_scaled", x.shape, s.shape, spec, z is None)
    route = packed.routes.get(key)
    if route is not None:
        return route
    weights = packed.pointwise
    if (weights is None or x.dtype != _F32 or s.dtype != _F32 or packed.ct != _F32 or x.ndim < 3
            or x.shape[1] != weights.shape[1] or s.ndim != x.ndim or s.shape[0] not in (1, x.shape[0])
            or s.shape[1] != x.shape[1] or any(d != 1 for d in s.shape[2:]) or x.size == 0):
        return None
    n, c = x.shape[:2]
    m = weights.shape[0]
    pixels = math.prod(x.shape[2:])
    y_shape = (n, m) + x.shape[2:]
    finish = epilogue_finisher(m, packed.b, activation, x.ndim - 2)

    code = row_kernels.activation_code(activation)
    in_registers = (code is not None and code[0] in row_kernels.IN_REGISTERS and own_sgemm_fits(c, pixels)
                    and own_sgemm_usable())
    module = optional_module("onyxrt.providers.cpu.math.sgemm_tiles") if in_registers else None
    per_image = s.shape[0] == n and n > 1
    if module is not None:
        # onyxrt's GEMM task set up once but for its operands' addresses (its Python set-up per call ~2 us)
        params = np.array(code[1], _F32)
        bias = packed.b if packed.b is not None else _NO_BIAS
        probe = np.zeros((n, m, c) if per_image else (m, c), _F32)
        template = module.task_template(probe, pixels, n, bias, code[0], params, False)
        held = (template, bias, params)  # (the template holds their addresses alone)
        macs, units = n * m * c * pixels, module.units(m, pixels, n)

    def scaled(x: np.ndarray, s: np.ndarray, z: np.ndarray | None) -> np.ndarray:
        filters = np.multiply(weights, s.reshape(s.shape[0], 1, c))  # (N or 1, M, C): W * S[n], per column
        images = np.ascontiguousarray(x).reshape(n, c, pixels)
        pool = current_pool()
        if (module is not None and pool.splits_gemms and pool.runs_native_tasks
                and (z is None or z.shape == y_shape and z.dtype == _F32)):
            # where the pool owns the cores: the images' products as one task over it on onyxrt's GEMM, each by its
            # own filter, the bias, residual and activation in the registers (numpy's batched product calls BLAS once
            # per image, single-threaded there, and its epilogue is a pass of its own). On BLAS's threads (the
            # default mode) numpy's products stay: onyxrt's GEMM on one thread was the slower there (a
            # MobileNetV3-like net 1.05x in alternating processes, on 2 Zen 5 cores).
            y = np.empty(y_shape, _F32)
            residual = _NO_RESIDUAL if z is None else np.ascontiguousarray(z).reshape(n, m, pixels)
            args = module.operand_args_of(held[0], filters if per_image else filters[0], images,
                                          y.reshape(n, m, pixels), residual)
            pool.run_native(module.gemm_part.address, args, own_sgemm_parts(pool, macs, units))
            return y
        y = pool_matmul(filters[0], images[0]) if n == 1 else np.matmul(filters, images)
        return finish(y.reshape(y_shape), z)

    keep_route(packed.routes, key, scaled)
    return scaled
