"""ai.onyxrt RowQuantizeMatMul: a float activation quantized per row to int8, times a constant int8 weight.

What ``optimizer/row_quantize_matmul_fusion.py`` makes of the standard ops ``onyxrt.quantization`` writes
for a MatMul after a GELU (``quantization/dynamic.py``, ``GeluOutputActivations="per_row"``):

    s[r] = max(max_j |x[r, j]|, floor) / 127          (one scale per row of x's last axis)
    q[r] = int8(clip(round_half_even(x[r] / s[r]), -127, 127))
    y[r] = float32(q[r] @ w) * w_scale * s[r]         (two float32 multiplies, in that order)

computed with the same float32 operations, so the result equals those ops' bit for bit. q goes to the
int8 GEMM (``math/int8_gemm``: the VNNI route where the CPU has it) shifted to uint8 (zero point 128),
w packed once; the weight scale is applied in the GEMM's registers, the row scale in one pass after.
"""

from __future__ import annotations

import numpy as np

from ....errors import NodeInputError, NodeInputTypeError
from ....graph.opsets import ONYXRT_DOMAIN
from ..jit import LazyModuleKernel
from ..kernel_table import op
from .int8_gemm import PackedInt8B, matmul_int8_scaled, pack_b

_F32 = np.dtype(np.float32)
LIMIT = np.float32(127.0)
_SHIFT = 128  # int8 q + 128 as uint8: the VNNI kernel's unsigned left operand
_QUANTIZE_ROWS = LazyModuleKernel(__name__.rsplit(".", 1)[0] + ".quantize_jit", "quantize_rows_int8_shifted")
# arguments that do no work, with which the kernel compiles (or loads) its float32 form once
_PROBE = (np.zeros((0, 0), _F32), np.zeros(0, _F32), LIMIT, np.zeros((0, 0), np.uint8))


def quantize_rows(x: np.ndarray, floor: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(q + 128 as uint8 (M, K), the row scales (M,) float32) of C-contiguous float32 rows ``x`` (M, K), as
    the module docstring defines q and s."""
    # max|x| as max(max x, -min x): two vectorized reductions, no |x| temporary (numba's loop does not vectorize)
    peak = np.maximum(x.max(axis=1, initial=np.float32(0)), -x.min(axis=1, initial=np.float32(0)))
    scales = np.maximum(peak, floor, out=peak)
    scales /= LIMIT
    out = np.empty(x.shape, np.uint8)
    kernel = _QUANTIZE_ROWS.compiled_for("f32", *_PROBE)
    if kernel is not None:
        kernel(x, scales, LIMIT, out)
        return out, scales
    q = np.rint(x / scales[:, None])
    np.clip(q, -LIMIT, LIMIT, out=q)
    q += np.float32(_SHIFT)
    return q.astype(np.uint8), scales


def _prepack(inputs, attributes) -> PackedInt8B | None:
    w = inputs[1] if len(inputs) > 1 else None
    if w is None or w.dtype != np.int8 or w.ndim != 2:
        return None
    return pack_b(w)


@op("RowQuantizeMatMul", versions=1, domain=ONYXRT_DOMAIN, prepack=_prepack)
def row_quantize_matmul(x, w, w_scale, *, floor: float = 1e-30, _packed: PackedInt8B | None = None):
    """float32 x (..., K) quantized per row to int8, times int8 w (K, N), scaled by w_scale (scalar or N)
    and the row scales (see the module docstring)."""
    if x.dtype != _F32:
        raise NodeInputTypeError(f"X must be float32, got {x.dtype}")
    if w.dtype != np.int8 or w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise NodeInputError(f"W must be int8 (K, N) with K = X's last dimension; got {w.dtype} {w.shape} for X {x.shape}")
    k, n = w.shape
    scale = np.asarray(w_scale)
    if scale.dtype != _F32 or scale.size not in (1, n) or scale.ndim > 1:
        raise NodeInputError(f"w_scale must be float32 of 1 or {n} values, got {scale.dtype} {scale.shape}")
    rows = np.ascontiguousarray(x).reshape(-1, k)
    q, row_scales = quantize_rows(rows, np.float32(floor))
    y = matmul_int8_scaled(q, _packed if _packed is not None else pack_b(w), _SHIFT,
                           np.broadcast_to(scale.reshape(-1), (n,)), None)
    y *= row_scales[:, None]
    return y.reshape(x.shape[:-1] + (n,))
