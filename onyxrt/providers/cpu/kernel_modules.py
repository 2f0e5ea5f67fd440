"""Imports every CPU kernel module so their ``@op`` registrations run.

Modules of compiled kernels (:data:`COMPILED_ON_USE`) register no ops and are skipped: they import
numba at their top, and some compile C callbacks as they are imported, so their kernel modules
load them on first use (``jit.optional_module``, ``jit.LazyModuleKernel``). ``import onyxrt`` then
works without numba (an optional extra) and compiles nothing.
"""

import importlib
import pkgutil

from . import contrib, controlflow, math, ml, nn, sequence, tensor, training

COMPILED_ON_USE = frozenset({
    "math.gemv_rows", "math.int8_gemm_avx2", "math.int8_gemm_vnni", "math.quantize_jit", "math.sparse_tiles",
    "math.sgemm_tiles", "nn.depthwise_channels_last", "nn.depthwise_rows", "nn.max_pool_rows",
    "nn.depthwise_conv_task", "nn.im2col_rows",
    "nn.direct_conv_kernels", "nn.patch_conv_kernels", "nn.pointwise_conv_task", "nn.integer_conv_kernels",
    "nn.winograd_kernels", "nn.winograd_bands",
    "nn.depthwise_nhwc", "tensor.channels_last", "contrib.attention_heads_task", "contrib.attention_tiles_task",
    "contrib.gqa_decode", "contrib.nbits_kernels", "contrib.qlinear_kernels",
})
PACKAGES = (math, nn, tensor, controlflow, sequence, ml, contrib, training)

for _package in PACKAGES:
    _short = _package.__name__.rsplit(".", 1)[1]
    for _info in pkgutil.iter_modules(_package.__path__):
        if f"{_short}.{_info.name}" not in COMPILED_ON_USE:
            importlib.import_module(f"{_package.__name__}.{_info.name}")
