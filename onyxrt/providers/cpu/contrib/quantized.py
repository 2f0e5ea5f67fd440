"""com.microsoft quantized matmul-family ops written by onnxruntime's quantization tools.

* MatMulNBits: 2..8-bit block-wise quantized weights (onnxruntime's MatMulNBitsQuantizer,
  the GenAI model builder): 4 and 8 bits read packed by compiled kernels (``nbits``), other
  widths (and no numba) dequantized with vectorized bit operations;
* DynamicQuantizeMatMul / MatMulIntegerToFloat: what onnxruntime's optimizer fuses a
  dynamically quantized MatMul into;
* QGemm: the static quantizer's Gemm (float or requantized output);
* QAttention: the dynamic quantizer's fused BERT attention;
* DynamicQuantizeLSTM: the dynamic quantizer's LSTM (8-bit weights);
* GatherBlockQuantized, MatMulBnb4: block-quantized embedding tables and bnb 4-bit weights.

Integer accumulations are exact: the 8-bit matmuls (MatMulIntegerToFloat, DynamicQuantizeMatMul,
QGemm, QAttention's projection) run on the int8 GEMM (``math.int8_gemm``: VNNI where the CPU has
it), shapes it does not take on float64 BLAS. Dynamic quantization of activations follows onnxruntime:
uint8, range widened to include 0, scale = (max - min) / 255, round half to even.

Constant weights are prepared once at session creation (each kernel's ``prepack``):
MatMulNBits keeps 4-/8-bit weights packed in ``nbits``' column tiles (and the dequantized
float (K, N) matrix for other widths or without numba), MatMulBnb4 the dequantized matrix, the 8-bit matmuls
(and QAttention's projection) keep B packed for the int8 GEMM with its zero point
(``int8_gemm.PackedInt8B``, about K*N bytes), GatherBlockQuantized keeps its float scales
and unpacked zero points (and the whole dequantized table when small),
DynamicQuantizeLSTM its dequantized W and R. The prepared values are exactly what the
kernel computes per call without them, so results do not depend on whether a weight
was constant. A prepack that finds its inputs invalid declines (returns None), and the
kernel then raises the error at run time as before.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .._helpers import normalize_axis
from . import nbits
from ..kernel_table import op
from ..math.int8_gemm import CenteredA, PackedInt8B, centered_width, matmul_int8, matmul_int8_scaled, pack_b
from ..math.quantization import dynamic_quantize_centered, dynamic_quantize_to_uint8
from ....errors import NodeInputError, NodeInputTypeError
from ....framework.session_config import KERNELS_ON_POOL, note_plan_trait

_MS = "com.microsoft"
_INT8 = (np.dtype(np.uint8), np.dtype(np.int8))


def _check8(name: str, t: np.ndarray) -> None:
    if t.dtype not in _INT8:
        raise NodeInputTypeError(f"{name} must be uint8 or int8, got {t.dtype}")


def _scalar(v, name: str) -> float:
    a = np.asarray(v)
    if a.size != 1:
        raise NodeInputError(f"{name} must be a scalar (per-tensor), got shape {a.shape}")
    return a.reshape(-1)[0]


def _frozen(x):
    """A read-only view of a prepacked array (runs share it), or ``x`` itself when not an array."""
    if isinstance(x, np.ndarray):
        x = x.view()
        x.flags.writeable = False
    return x


def _node_inputs(inputs, count: int) -> list:
    """The constant inputs a prepack receives, padded with None to the op's ``count`` inputs."""
    inputs = list(inputs)[:count]
    return inputs + [None] * (count - len(inputs))


# what a prepack declines on: the kernel raises it again at run time
_PREPACK_ERRORS = (TypeError, ValueError, NotImplementedError, IndexError)


def _is_low_float(dtype: np.dtype) -> bool:
    return dtype == np.float16 or (dtype.kind == "V" and dtype.itemsize == 2)


def _compute_dtype(dtype: np.dtype):
    if dtype == np.float32 or _is_low_float(dtype):
        return np.float32
    if dtype == np.float64:
        return np.float64
    raise NodeInputTypeError(f"unsupported floating type {dtype}")


def _column_param(p, n: int, name: str) -> np.ndarray:
    """A per-tensor scalar or per-column (last axis of B) parameter, broadcastable against (..., K, N)."""
    p = np.asarray(p)
    if p.size == 1:
        return p.reshape(())
    if p.shape[-1] != n:
        raise NodeInputError(f"{name} of shape {p.shape} is neither per-tensor nor per-column ({n} columns)")
    if p.ndim >= 2:
        return p.reshape(p.shape[:-1] + (1, n)) if p.shape[-2] != 1 else p
    return p


def _matmul2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` folding a's leading dims into one GEMM when b is 2-D."""
    if a.ndim > 2 and b.ndim == 2:
        return np.matmul(a.reshape(-1, a.shape[-1]), b).reshape(a.shape[:-1] + (b.shape[1],))
    return np.matmul(a, b)


def dynamic_quantize_uint8(x: np.ndarray) -> tuple[np.ndarray, np.float32, int]:
    """onnxruntime's dynamic uint8 quantization of a float tensor: (values as float32 q - zp, scale, zp)."""
    xf = np.asarray(x, dtype=np.float32)
    if xf.size:
        lo = min(float(xf.min()), 0.0)
        hi = max(float(xf.max()), 0.0)
    else:
        lo = hi = 0.0
    lo32, hi32 = np.float32(lo), np.float32(hi)
    scale = np.float32(1.0) if hi32 == lo32 else np.float32((hi32 - lo32) / np.float32(255.0))
    zp = int(np.rint(np.clip(np.float32(0.0) - lo32 / scale, 0.0, 255.0)))
    q = xf / scale
    np.rint(q, out=q)
    # q + zp saturated to [0, 255], minus zp again: the integer the GEMM multiplies
    np.clip(q, -zp, 255 - zp, out=q)
    return q, scale, zp


# --------------------------------------------------------------------------- MatMulIntegerToFloat


class _Int8B(NamedTuple):
    """A constant 8-bit right operand, prepared once (see ``_int8_b_prepack``)."""

    scale: np.ndarray | None  # float32 b_scale, broadcastable per column; None when not constant
    bias: np.ndarray | None  # float32 bias; None when absent or not constant
    zero_point: bool  # whether b_zero_point was given (a computed one is not in ``gemm``)
    gemm: PackedInt8B | None  # B and its zero point packed for the int8 GEMM; None unless B is 2-D


def _int8_b_prepack(b, b_scale, b_zero_point, bias) -> _Int8B | None:
    if b is None:
        return None
    try:
        _check8("B", b)
        n = b.shape[-1]
        if b_zero_point is not None:
            _column_param(b_zero_point, n, "b_zero_point")  # validates
        scale = None if b_scale is None else _column_param(b_scale, n, "b_scale").astype(np.float32)
        bias32 = None if bias is None else np.asarray(bias).astype(np.float32)
        gemm = _gemm_pack(b, b_zero_point)
    except _PREPACK_ERRORS:
        return None
    return _Int8B(_frozen(scale), _frozen(bias32), b_zero_point is not None, gemm)


def _gemm_pack(b: np.ndarray, b_zero_point) -> PackedInt8B | None:
    """B (2-D, constant) packed for the int8 GEMM with its per-tensor or per-column zero point."""
    if b.ndim != 2 or (b_zero_point is not None and np.size(b_zero_point) not in (1, b.shape[1])):
        return None
    return pack_b(b, None if b_zero_point is None else np.asarray(b_zero_point).reshape(-1))


def _integer_product(a: np.ndarray, a_zero, b: np.ndarray, b_zero_point, gemm: PackedInt8B | None,
                     name: str) -> np.ndarray:
    """(A - a_zero) @ (B - b_zero_point) as exact int32 (the int8 GEMM) or, for shapes it does not
    take (1-D A, batched B with batched zero points), as float32 of the float64 product."""
    if gemm is not None and a.ndim >= 2:
        if a.shape[-1] != gemm.k:
            raise NodeInputError(f"inner dimensions do not match: A {a.shape}, B {b.shape}")
        return matmul_int8(a, gemm, a_zero)
    n = b.shape[-1]
    bzp = None if b_zero_point is None else np.asarray(b_zero_point)
    if a.ndim >= 2 and b.ndim >= 2 and (bzp is None or bzp.size in (1, n) and (b.ndim == 2 or bzp.ndim <= 1)):
        if a.shape[-1] != b.shape[-2]:
            raise NodeInputError(f"inner dimensions do not match: A {a.shape}, B {b.shape}")
        if bzp is not None and bzp.size != 1 and bzp.shape[-1] != n:
            raise NodeInputError(f"{name}_zero_point of shape {bzp.shape} is neither per-tensor nor per-column")
        return matmul_int8(a, b, a_zero, None if bzp is None else bzp.reshape(-1))
    av = a.astype(np.float64)
    if a_zero is not None:
        av -= float(a_zero)
    bv = b.astype(np.float64)
    if bzp is not None:
        bv -= _column_param(bzp, n, f"{name}_zero_point").astype(np.float64)
    return np.asarray(_matmul2(av, bv))


def _int8_b_packed(packed: _Int8B | None, b_zero_point) -> _Int8B | None:
    """``packed`` if it applies to this run (a non-constant zero point is not folded in), else None."""
    if packed is None or packed.zero_point != (b_zero_point is not None):
        return None
    return packed


def _matmul_integer_to_float_prepack(inputs, attributes):
    _, b, _, b_scale, _, b_zero_point, bias = _node_inputs(inputs, 7)
    return _int8_b_prepack(b, b_scale, b_zero_point, bias)


@op("MatMulIntegerToFloat", versions=1, domain=_MS, prepack=_matmul_integer_to_float_prepack)
def matmul_integer_to_float(a, b, a_scale, b_scale, a_zero_point=None, b_zero_point=None, bias=None, *, _packed=None):
    """(A - a_zp) @ (B - b_zp) * (a_scale * b_scale) + bias, in the scales' float type."""
    _check8("A", a)
    _check8("B", b)
    out_dtype = np.asarray(a_scale).dtype
    if out_dtype not in (np.float32, np.float16):
        raise NodeInputTypeError(f"a_scale must be float or float16, got {out_dtype}")
    y = _scaled_integer_matmul(a, a_zero_point, a_scale, b, b_zero_point, b_scale, bias, _packed, ("a", "b"))
    return y if out_dtype == np.float32 else y.astype(out_dtype)


def _scaled_integer_matmul(a, a_zero_point, a_scale, b, b_zero_point, b_scale, bias, _packed, names) -> np.ndarray:
    """(A - a_zp) @ (B - b_zp) * (a_scale * b_scale) (+ bias) in float32; B may be prepacked."""
    a_zero = None if a_zero_point is None else _scalar(a_zero_point, f"{names[0]}_zero_point")
    a_scale32 = np.float32(_scalar(a_scale, f"{names[0]}_scale"))
    return _dequantized_product(a, a_zero, a_scale32, b, b_zero_point, b_scale, bias,
                                _int8_b_packed(_packed, b_zero_point), names[1])


def _dequantized_product(a, a_zero, a_scale: np.float32, b, b_zero_point, b_scale, bias, packed: _Int8B | None,
                         name: str) -> np.ndarray:
    """float32 ``y = (A - a_zero) @ (B - b_zero_point); y *= a_scale * b_scale; y += bias``, the scaling
    done in the int8 GEMM's registers when B is prepacked (same roundings either way). ``a``: uint8/int8, or
    a ``CenteredA`` (quantized for the AVX2 route)."""
    n = b.shape[-1]
    bsc = packed.scale if packed is not None and packed.scale is not None else None
    if bsc is None:
        bsc = _column_param(b_scale, n, f"{name}_scale").astype(np.float32)
    column_scale = a_scale * bsc
    bias32 = None
    if bias is not None:
        bias32 = packed.bias if packed is not None and packed.bias is not None else np.asarray(bias).astype(np.float32)
    gemm = packed.gemm if packed is not None else None
    if (gemm is not None and a.ndim >= 2 and a.shape[-1] == gemm.k and column_scale.ndim <= 1
            and (bias32 is None or bias32.shape == (n,))):
        return matmul_int8_scaled(a, gemm, a_zero, column_scale, bias32)
    if isinstance(a, CenteredA):  # the products below take A as uint8
        a = (a.rows[:, : a.shape[-1]] + a_zero).astype(np.uint8).reshape(a.shape)
    y = _integer_product(a, a_zero, b, b_zero_point, gemm, name).astype(np.float32)
    y *= column_scale
    if bias32 is not None:
        y += bias32
    return y


# --------------------------------------------------------------------------- DynamicQuantizeMatMul


def _dynamic_quantize_matmul_prepack(inputs, attributes):
    _, b, b_scale, b_zero_point, bias = _node_inputs(inputs, 5)
    return _int8_b_prepack(b, b_scale, b_zero_point, bias)


@op("DynamicQuantizeMatMul", versions=1, domain=_MS, prepack=_dynamic_quantize_matmul_prepack)
def dynamic_quantize_matmul(a, b, b_scale, b_zero_point=None, bias=None, *, _packed=None):
    """A quantized to uint8 on the fly, times int8/uint8 B, scaled back to float."""
    _check8("B", b)
    if a.dtype != np.float32:
        raise NodeInputTypeError(f"A must be float, got {a.dtype}")
    packed = _int8_b_packed(_packed, b_zero_point)
    width = centered_width(packed.gemm) if packed is not None and packed.gemm is not None else None
    quantized = None
    if width is not None and a.ndim >= 2 and a.shape[-1] == packed.gemm.k and a.size:
        quantized = dynamic_quantize_centered(a, width)  # straight to the rows the AVX2 route reads
    if quantized is not None:
        rows, a_scale, a_zero = quantized
        q = CenteredA(rows, a.shape)
    else:
        q, a_scale, a_zero = dynamic_quantize_to_uint8(a)
    return _dequantized_product(q, a_zero, a_scale, b, b_zero_point, b_scale, bias, packed, "b")


# --------------------------------------------------------------------------- QGemm


class _QGemmB(NamedTuple):
    """A constant QGemm right operand, prepared once."""

    c: np.ndarray | None  # float64 C; None when absent or not constant
    zero_point: bool  # whether b_zero_point was given
    gemm: PackedInt8B  # B' (K, N) and its zero point packed for the int8 GEMM


def _qgemm_zero_point(b_zero_point, n: int):
    if b_zero_point is None:
        return None
    bzp = np.asarray(b_zero_point).reshape(-1)
    if bzp.size not in (1, n):
        raise NodeInputError(f"b_zero_point of shape {np.shape(b_zero_point)} is neither per-tensor nor per-column")
    return bzp


def _qgemm_c(c) -> np.ndarray:
    if c.dtype != np.int32:
        raise NodeInputTypeError(f"C must be int32, got {c.dtype}")
    return c.astype(np.float64)


def _qgemm_prepack(inputs, attributes):
    _, _, _, b, _, b_zero_point, c, _, _ = _node_inputs(inputs, 9)
    if b is None:
        return None
    try:
        _check8("B", b)
        if b.ndim != 2:
            raise NodeInputError(f"QGemm inputs must be 2-D, got B {b.shape}")
        B = np.ascontiguousarray(b.T if attributes.get("transB", 0) else b)
        gemm = pack_b(B, _qgemm_zero_point(b_zero_point, B.shape[1]))
        c64 = None if c is None else _qgemm_c(c)
    except _PREPACK_ERRORS:
        return None
    return _QGemmB(_frozen(c64), b_zero_point is not None, gemm)


@op("QGemm", versions=1, domain=_MS, prepack=_qgemm_prepack)
def qgemm(
    a, a_scale, a_zero_point, b, b_scale, b_zero_point, c=None, y_scale=None, y_zero_point=None, *,
    alpha=1.0, transA=0, transB=0, _packed=None,
):
    """alpha * (A - a_zp)(B - b_zp) * a_scale * b_scale (+ C, int32 at that scale); float or requantized."""
    _check8("A", a)
    _check8("B", b)
    if a.ndim != 2 or b.ndim != 2:
        raise NodeInputError(f"QGemm inputs must be 2-D, got A {a.shape} and B {b.shape}")
    packed = _packed if _packed is not None and _packed.zero_point == (b_zero_point is not None) else None
    A = a.T if transA else a
    B = b.T if transB else b
    if A.shape[1] != B.shape[0]:
        raise NodeInputError(f"QGemm: inner dimensions do not match: A' {A.shape}, B' {B.shape}")
    n = B.shape[1]
    a_zero = None if a_zero_point is None else _scalar(a_zero_point, "a_zero_point")
    if packed is not None:
        acc = matmul_int8(np.ascontiguousarray(A), packed.gemm, a_zero)  # exact int32
    else:
        acc = matmul_int8(np.ascontiguousarray(A), np.ascontiguousarray(B), a_zero,
                          _qgemm_zero_point(b_zero_point, n))
    if c is not None:
        c_int = packed.c if packed is not None and packed.c is not None else _qgemm_c(c)
        acc = acc + c_int  # float64: C may push the sum past int32
    bs = np.asarray(b_scale, dtype=np.float32).reshape(-1)
    if bs.size not in (1, n):
        raise NodeInputError(f"b_scale of shape {np.shape(b_scale)} is neither per-tensor nor per-column")
    scale = np.float32(alpha) * np.float32(_scalar(a_scale, "a_scale")) * bs
    accf = acc.astype(np.float32)
    if y_scale is None:
        if y_zero_point is not None:
            raise NodeInputError("QGemm: y_zero_point given without y_scale")
        return np.asarray(accf * (scale if bs.size > 1 else scale[0]), dtype=np.float32)
    out_dtype = np.dtype(np.uint8) if y_zero_point is None else np.asarray(y_zero_point).dtype
    if out_dtype not in _INT8:
        raise NodeInputTypeError(f"y_zero_point must be uint8 or int8, got {out_dtype}")
    mult = (scale / np.float32(_scalar(y_scale, "y_scale"))).astype(np.float32)
    y = accf * (mult if bs.size > 1 else mult[0])
    np.rint(y, out=y)
    if y_zero_point is not None:
        y += np.float32(_scalar(y_zero_point, "y_zero_point"))
    info = np.iinfo(out_dtype)
    np.clip(y, info.min, info.max, out=y)
    return y.astype(out_dtype)


# --------------------------------------------------------------------------- MatMulNBits


def unpack_bits(packed: np.ndarray, bits: int, count: int, dtype=np.uint8) -> np.ndarray:
    """Unpack ``bits``-wide unsigned values stored low-bits-first along the last axis.

    ``packed`` is (..., nbytes) uint8; the result is (..., count) of ``dtype``
    (converting while unpacking saves a pass when a float result is wanted).
    """
    packed = np.asarray(packed, dtype=np.uint8)
    lead = packed.shape[:-1]
    if bits == 8:
        out = packed if np.dtype(dtype) == np.uint8 else packed.astype(dtype)
    elif bits in (1, 2, 4):
        per = 8 // bits
        mask = (1 << bits) - 1
        out = np.empty(packed.shape + (per,), dtype=dtype)
        for i in range(per):
            if i == per - 1:
                np.right_shift(packed, i * bits, out=out[..., i], casting="unsafe")
            elif i == 0:
                np.bitwise_and(packed, mask, out=out[..., i], casting="unsafe")
            else:
                np.bitwise_and(packed >> (i * bits), mask, out=out[..., i], casting="unsafe")
        out = out.reshape(lead + (packed.shape[-1] * per,))
    else:
        # odd widths (3, 5, 6, 7): a little-endian bit stream
        stream = np.unpackbits(packed, axis=-1, bitorder="little")
        usable = (stream.shape[-1] // bits) * bits
        groups = stream[..., :usable].reshape(lead + (-1, bits))
        weights = (1 << np.arange(bits)).astype(np.uint16)
        out = (groups * weights).sum(axis=-1, dtype=np.uint16).astype(dtype)
    if out.shape[-1] < count:
        raise NodeInputError(f"packed data holds {out.shape[-1]} values, {count} needed")
    return out[..., :count] if out.shape[-1] != count else out


def dequantize_blockwise(
    b: np.ndarray, scales: np.ndarray, zero_points, g_idx, n: int, k: int, bits: int, block_size: int, dtype
) -> np.ndarray:
    """The (N, K) float weight matrix of MatMulNBits' packed ``B`` (N, k_blocks, blob_size)."""
    k_blocks = (k + block_size - 1) // block_size
    w = unpack_bits(b.reshape(n, k_blocks, -1), bits, block_size, dtype)  # (N, k_blocks, block_size)
    if not w.flags.writeable or w.base is b:
        w = np.array(w, dtype=dtype)
    sc = np.asarray(scales).astype(dtype, copy=False).reshape(n, -1)
    if sc.shape[1] < k_blocks:
        raise NodeInputError(f"scales hold {sc.shape[1]} blocks per column, {k_blocks} needed")
    if zero_points is None:
        zp = dtype(1 << (bits - 1))
    elif zero_points.dtype == np.uint8:
        zp = unpack_bits(zero_points.reshape(n, -1), bits, k_blocks, dtype)
    else:
        zp = np.asarray(zero_points).astype(dtype, copy=False).reshape(n, -1)[:, :k_blocks]
    if g_idx is not None:
        g = np.asarray(g_idx).reshape(-1).astype(np.int64)
        if g.size < k:
            raise NodeInputError(f"g_idx has {g.size} entries, K is {k}")
        g = g[:k]
        flat = w.reshape(n, -1)[:, :k]
        flat -= zp[:, g] if np.ndim(zp) else zp
        flat *= sc[:, g]
        return flat
    w -= zp[:, :, None] if np.ndim(zp) else zp
    w *= sc[:, :k_blocks, None]
    w = w.reshape(n, k_blocks * block_size)
    return w[:, :k] if k_blocks * block_size != k else w


def _int8_blockwise_roundtrip(a: np.ndarray, block_size: int) -> np.ndarray:
    """A quantized to symmetric int8 per ``block_size`` run along K and dequantized again.

    With accuracy_level 4 onnxruntime multiplies these int8 values (scale = max|a| / 127
    per block, round half to even) instead of A itself; doing the same keeps onyxrt's
    results within float rounding of onnxruntime's instead of within A's quantization noise.
    """
    k = a.shape[-1]
    k_blocks = (k + block_size - 1) // block_size
    pad = k_blocks * block_size - k
    ap = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)]) if pad else a
    ap = ap.reshape(a.shape[:-1] + (k_blocks, block_size))
    scale = np.abs(ap).max(axis=-1, keepdims=True)
    scale /= a.dtype.type(127)
    inv = np.zeros_like(scale)  # 1 / scale, 0 for an all-zero block
    np.divide(a.dtype.type(1), scale, out=inv, where=scale != 0)
    q = ap * inv
    np.rint(q, out=q)
    q *= scale
    q = q.reshape(a.shape[:-1] + (k_blocks * block_size,))
    return q[..., :k] if pad else q


class _NBitsWeight(NamedTuple):
    """MatMulNBits' weight in the form the product reads, prepared once when constant."""

    dtype: type  # the compute dtype it was made for (float32, or float64 for double A)
    w: np.ndarray | None  # dequantized (K, N) weight, C-contiguous; None when B is empty
    bias: np.ndarray | None  # bias in the compute dtype; None when absent or not constant
    zero_points: bool  # whether zero_points / g_idx were given (computed ones are not in ``w``)
    g_idx: bool


def _nbits_weight(
    b, scales, zero_points, g_idx, bias, ct, *, K, N, block_size, bits=4, accuracy_level=0, weight_prepacked=0,
) -> _NBitsWeight:
    """Validate MatMulNBits' weight inputs and dequantize B to the (K, N) matrix ``A @ W`` reads."""
    k, n, bits, block_size = int(K), int(N), int(bits), int(block_size)
    if weight_prepacked:
        raise NotImplementedError("MatMulNBits: weights prepacked for a GPU (weight_prepacked != 0) are not supported")
    if not 2 <= bits <= 8:
        raise NodeInputError(f"MatMulNBits: bits must be in [2, 8], got {bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise NodeInputError(f"MatMulNBits: block_size must be a power of 2 >= 16, got {block_size}")
    if b.dtype != np.uint8:
        raise NodeInputTypeError(f"MatMulNBits: B must be uint8, got {b.dtype}")
    w = None
    if b.size:  # empty: an omitted projection
        k_blocks = (k + block_size - 1) // block_size
        blob = block_size * bits // 8
        if b.size != n * k_blocks * blob:
            raise NodeInputError(
                f"MatMulNBits: B has {b.size} bytes, expected N*k_blocks*blob_size = {n}*{k_blocks}*{blob}"
            )
        w = np.ascontiguousarray(dequantize_blockwise(b, scales, zero_points, g_idx, n, k, bits, block_size, ct).T)
    bias_ct = None if bias is None else bias.astype(ct)
    return _NBitsWeight(ct, w, bias_ct, zero_points is not None, g_idx is not None)


def _tiled_nbits(b, scales, zero_points, g_idx, bias, *, K, N, block_size, bits=4, accuracy_level=0, weight_prepacked=0):
    """The weight laid out for ``nbits``' compiled kernels (no float copy), or None where they cannot serve it."""
    block_size, bits = int(block_size), int(bits)
    if weight_prepacked or b.dtype != np.uint8 or not b.size or block_size < 16 or block_size & (block_size - 1):
        return None
    if not nbits.supported(bits, np.asarray(scales).dtype, g_idx) or not nbits.kernels_enabled(bits):
        return None
    tiled = nbits.pack_tiles(b, scales, zero_points, bias, k=int(K), n=int(N), bits=bits, block_size=block_size,
                             unpack_bits=unpack_bits)
    # packed during a plan build: the decoding step's products split over the pool, its spinning workers
    # taking each part within microseconds (llama_tiny int4 decode on 2 cores: 1.71-1.84 -> 1.61 ms)
    note_plan_trait(KERNELS_ON_POOL)
    return tiled


def _tiled_matmul_nbits(a, bias, packed, k: int, block_size: int, accuracy_level) -> np.ndarray | None:
    """MatMulNBits of float32/float16 ``a`` through ``nbits``' kernels; None when numba cannot run them."""
    if a.shape[-1] != k:
        raise NodeInputError(f"MatMulNBits: A's last dimension {a.shape[-1]} is not K={k}")
    a2 = a.reshape(-1, k).astype(np.float32, copy=False)
    if int(accuracy_level) == 4:
        a2 = _int8_blockwise_roundtrip(a2, block_size)
    y = nbits.matmul(a2, packed)
    if y is None:
        return None
    if packed.bias is not None:
        y += packed.bias
    elif bias is not None:
        y += bias.astype(np.float32).reshape(-1)
    return y.reshape(a.shape[:-1] + (packed.n,)).astype(a.dtype, copy=False)


def _matmul_nbits_prepack(inputs, attributes):
    _, b, scales, zero_points, g_idx, bias = _node_inputs(inputs, 6)
    if b is None or scales is None:
        return None
    try:
        tiled = _tiled_nbits(b, scales, zero_points, g_idx, bias, **attributes)
    except _PREPACK_ERRORS:
        tiled = None
    if tiled is not None:
        return tiled
    try:
        ct = _compute_dtype(np.asarray(scales).dtype)  # scales have A's type
        packed = _nbits_weight(b, scales, zero_points, g_idx, bias, ct, **attributes)
    except _PREPACK_ERRORS:
        return None
    return packed._replace(w=_frozen(packed.w), bias=_frozen(packed.bias))


@op("MatMulNBits", versions=1, domain=_MS, prepack=_matmul_nbits_prepack)
def matmul_nbits(
    a, b, scales, zero_points=None, g_idx=None, bias=None, *,
    K, N, block_size, bits=4, accuracy_level=0, weight_prepacked=0, _packed=None,
):
    """A @ dequantize(B)^T (+ bias) with B quantized block-wise along K.

    Computed in float32 (float64 for double A). ``accuracy_level`` 4 (int8 compute)
    additionally rounds A to block-wise int8 first, as onnxruntime does; the other
    levels only set a minimum precision, which float32 satisfies. The deprecated
    ``g_idx`` maps each row of K to its block (act-order); onyxrt applies the zero
    points through it as the schema says (onnxruntime 1.2x ignores uint8 zero points
    when g_idx is given). Odd widths (3, 5, 6, 7 bits) are read as a little-endian bit
    stream per block. Constant 4-/8-bit weights are read packed by compiled kernels
    (``nbits``); other constant weights are dequantized once, at session creation.
    """
    if a.dtype in (np.float32, np.float16) and g_idx is None:
        # the packed kernels serve constant and computed weights alike, so results never depend on constness
        tiled = _packed if isinstance(_packed, nbits.TiledNBits) else None
        if tiled is None or tiled.zero_points != (zero_points is not None):
            try:
                tiled = _tiled_nbits(b, scales, zero_points, None, None, K=K, N=N, block_size=block_size, bits=bits,
                                     weight_prepacked=weight_prepacked)
            except ValueError:  # inconsistent shapes: the numpy path below reports them
                tiled = None
        if tiled is not None:
            y = _tiled_matmul_nbits(a, bias, tiled, int(K), int(block_size), accuracy_level)
            if y is not None:
                return y
    if isinstance(_packed, nbits.TiledNBits):
        _packed = None
    dtype = a.dtype
    ct = _compute_dtype(dtype)
    packed = _packed
    if (
        packed is None or packed.dtype is not ct
        or packed.zero_points != (zero_points is not None) or packed.g_idx != (g_idx is not None)
    ):
        packed = _nbits_weight(
            b, scales, zero_points, g_idx, bias, ct,
            K=K, N=N, block_size=block_size, bits=bits, weight_prepacked=weight_prepacked,
        )
    elif bias is not None and packed.bias is None:  # a computed bias
        packed = packed._replace(bias=bias.astype(ct))
    k, n = int(K), int(N)
    if a.shape[-1] != k:
        raise NodeInputError(f"MatMulNBits: A's last dimension {a.shape[-1]} is not K={k}")
    if packed.w is None:
        y = np.zeros(a.shape[:-1] + (n,), dtype=ct)
    else:
        av = a if a.dtype == ct else a.astype(ct)
        if int(accuracy_level) == 4:
            av = _int8_blockwise_roundtrip(av, int(block_size))
        y = np.asarray(_matmul2(av, packed.w) if av.ndim > 1 else av @ packed.w)
    if packed.bias is not None:
        y += packed.bias
    return y.astype(dtype, copy=False)


# --------------------------------------------------------------------------- MatMulBnb4

_FP4_TABLE = np.array(
    [0.0, 0.0052083333, 0.6666667, 1.0, 0.33333334, 0.5, 0.16666667, 0.25,
     -0.0, -0.0052083333, -0.6666667, -1.0, -0.33333334, -0.5, -0.16666667, -0.25],
    dtype=np.float32,
)
_NF4_TABLE = np.array(
    [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
     -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
     0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
     0.7229568362236023, 1.0],
    dtype=np.float32,
)


def _bnb4_weight(b, absmax, ct, *, K, N, block_size, quant_type, transB=1, training_mode=0) -> np.ndarray:
    """The dequantized FP4/NF4 weight as the right operand of ``A @ W``, C-contiguous."""
    k, n, bs = int(K), int(N), int(block_size)
    table = {0: _FP4_TABLE, 1: _NF4_TABLE}.get(int(quant_type))
    if table is None:
        raise NodeInputError(f"MatMulBnb4: quant_type must be 0 (FP4) or 1 (NF4), got {quant_type}")
    packed = np.asarray(b, dtype=np.uint8).reshape(-1)
    codes = np.stack([packed >> 4, packed & np.uint8(0x0F)], axis=-1).reshape(-1)[: n * k]
    scale = np.asarray(absmax).astype(np.float32).reshape(-1)
    w = table[codes] * np.repeat(scale, bs)[: n * k]
    w = w.reshape(n, k).astype(ct, copy=False)
    return np.ascontiguousarray(w.T) if transB else w


def _matmul_bnb4_prepack(inputs, attributes):
    _, b, absmax = _node_inputs(inputs, 3)
    if b is None or absmax is None:
        return None
    try:
        ct = _compute_dtype(np.asarray(absmax).dtype)  # absmax has A's type
        return ct, _frozen(_bnb4_weight(b, absmax, ct, **attributes))
    except _PREPACK_ERRORS:
        return None


@op("MatMulBnb4", versions=1, domain=_MS, prepack=_matmul_bnb4_prepack)
def matmul_bnb4(a, b, absmax, *, K, N, block_size, quant_type, transB=1, training_mode=0, _packed=None):
    """A @ dequant(B)^T (transB=1) or A @ dequant(B) with B an FP4/NF4 (N, K) matrix, high nibble first."""
    dtype = a.dtype
    ct = _compute_dtype(dtype)
    if _packed is not None and _packed[0] is ct:
        w = _packed[1]
    else:
        w = _bnb4_weight(b, absmax, ct, K=K, N=N, block_size=block_size, quant_type=quant_type, transB=transB)
    av = a if a.dtype == ct else a.astype(ct)
    return np.asarray(_matmul2(av, w)).astype(dtype, copy=False)


# --------------------------------------------------------------------------- GatherBlockQuantized


def _float8_or_4(dtype: np.dtype) -> bool:
    return dtype.kind == "V" or (dtype.kind == "f" and dtype.itemsize == 1)


class _GBQConfig(NamedTuple):
    ga: int  # gather axis
    qa: int  # quantize axis
    bits: int
    block_size: int
    is_sub: bool  # int4 / uint4 data
    is_fp: bool  # float8 / float4 data
    packed_bits: bool  # uint8 data holding several values per byte
    out_dtype: Any


def _gbq_config(data, scales, zero_points, *, bits=4, block_size=128, gather_axis=0, quantize_axis=1) -> _GBQConfig:
    """Validate GatherBlockQuantized's data and attributes."""
    dtype = data.dtype
    r = data.ndim
    ga = normalize_axis(int(gather_axis), r)
    qa = normalize_axis(int(quantize_axis), r)
    bits, block_size = int(bits), int(block_size)
    name = dtype.name if hasattr(dtype, "name") else str(dtype)
    is_sub = name in ("int4", "uint4")
    is_fp = not is_sub and dtype != np.uint8 and _float8_or_4(dtype)
    if dtype == np.uint8:
        if ga != 0:
            raise NodeInputError("GatherBlockQuantized: uint8 data needs gather_axis 0")
        if bits not in (2, 4, 8):
            raise NodeInputError(f"GatherBlockQuantized: bits must be 2, 4 or 8, got {bits}")
        if bits < 8 and ga == qa:
            raise NodeInputError("GatherBlockQuantized: packed data needs gather_axis != quantize_axis")
    elif not (is_sub or is_fp):
        raise NodeInputTypeError(f"GatherBlockQuantized: unsupported data type {dtype}")
    if zero_points is not None and is_fp:
        raise NodeInputError("GatherBlockQuantized: float8/float4 data takes no zero_points")
    out_dtype = np.asarray(scales).dtype
    return _GBQConfig(ga, qa, bits, block_size, is_sub, is_fp, dtype == np.uint8 and bits < 8, out_dtype)


def _gbq_params(scales, zero_points, cfg: _GBQConfig):
    """The whole float32 scale table, and the unpacked float32 zero points (None: the default)."""
    sc = np.asarray(scales).astype(np.float32)
    if zero_points is None or cfg.is_fp:
        return sc, None
    zpa = np.asarray(zero_points)
    if zpa.dtype == np.uint8 and cfg.bits < 8:
        zpa = unpack_bits(zpa, cfg.bits, zpa.shape[-1] * (8 // cfg.bits))
    return sc, zpa.astype(np.float32)


def _gbq_dequantize(data, rows: np.ndarray, sc: np.ndarray, zpa, cfg: _GBQConfig) -> np.ndarray:
    """The float32 values of the slices ``rows`` (1-D, in range) of ``data`` along the gather axis."""
    ga, qa, bits, block_size = cfg.ga, cfg.qa, cfg.bits, cfg.block_size
    # values of the gathered slices, logical (unpacked) layout
    vals = np.take(data, rows, axis=ga)
    if cfg.packed_bits:
        vals = unpack_bits(vals, bits, vals.shape[-1] * (8 // bits))
    q = vals.astype(np.float32)
    # scales for each gathered element: block index along the quantize axis
    logical_len = q.shape[qa]
    if ga == qa:
        block_of = rows // block_size if block_size else np.zeros_like(rows)
        sc_g = np.take(sc, block_of, axis=qa)
    else:
        sc_g = np.take(sc, rows, axis=ga) if sc.shape[ga] != 1 else sc
        bs = block_size if block_size else logical_len
        block_of = np.arange(logical_len) // bs
        sc_g = np.take(sc_g, block_of, axis=qa)
    if cfg.is_fp:
        return q * sc_g
    if zpa is None:
        zp = np.float32(0.0) if cfg.is_sub else np.float32(1 << (bits - 1))
    elif ga == qa:
        zp = np.take(zpa, block_of, axis=qa)
    else:
        zp = np.take(zpa, rows, axis=ga)
        zp = np.take(zp, block_of, axis=qa)
    return (q - zp) * sc_g


# Prepack dequantizes a whole constant table when its float form is at most this large;
# larger ones keep only their float scales / zero points and dequantize what is gathered.
_GBQ_TABLE_BYTES = 64 << 20


class _GBQPacked(NamedTuple):
    sc: np.ndarray  # float32 scales
    zp: np.ndarray | None  # float32 unpacked zero points; None for the default
    zero_points: bool  # whether zero_points were given (computed ones are not in ``zp``)
    table: np.ndarray | None  # the whole dequantized table (output type), or None when too large / not constant


def _gather_block_quantized_prepack(inputs, attributes):
    data, _, scales, zero_points = _node_inputs(inputs, 4)
    if data is None or scales is None:
        return None
    try:
        cfg = _gbq_config(data, scales, zero_points, **attributes)
        sc, zpa = _gbq_params(scales, zero_points, cfg)
        table = None
        size = data.shape[cfg.ga]
        if size and data.size * (8 // cfg.bits if cfg.packed_bits else 1) * 4 <= _GBQ_TABLE_BYTES:
            table = _gbq_dequantize(data, np.arange(size), sc, zpa, cfg).astype(cfg.out_dtype, copy=False)
    except _PREPACK_ERRORS:
        return None
    return _GBQPacked(_frozen(sc), _frozen(zpa), zero_points is not None, _frozen(table))


@op("GatherBlockQuantized", versions=1, domain=_MS, prepack=_gather_block_quantized_prepack)
def gather_block_quantized(
    data, indices, scales, zero_points=None, *, bits=4, block_size=128, gather_axis=0, quantize_axis=1, _packed=None,
):
    """Gather rows of a block-quantized table, then dequantize only what was gathered.

    With constant data whose float form is small (``_GBQ_TABLE_BYTES``) the whole table
    is dequantized once and the kernel only gathers.
    """
    cfg = _gbq_config(
        data, scales, zero_points, bits=bits, block_size=block_size, gather_axis=gather_axis, quantize_axis=quantize_axis
    )
    ga = cfg.ga
    packed = _packed if _packed is not None and _packed.zero_points == (zero_points is not None) else None
    idx = np.asarray(indices).astype(np.int64)
    size = data.shape[ga]
    valid = (idx >= -size) & (idx < size)
    idx = np.where(idx < 0, idx + size, idx)
    safe = np.where(valid, idx, 0)
    if packed is not None and packed.table is not None:
        y = np.take(packed.table, safe, axis=ga)
        if not valid.all():  # invalid indices give zeros
            shape = (1,) * ga + idx.shape + (1,) * (packed.table.ndim - ga - 1)
            y = np.where(valid.reshape(shape), y, np.zeros((), y.dtype))
        return y
    sc, zpa = (packed.sc, packed.zp) if packed is not None else _gbq_params(scales, zero_points, cfg)
    y = _gbq_dequantize(data, safe.reshape(-1), sc, zpa, cfg)
    # invalid indices give zeros
    if not valid.all():
        shape = [1] * y.ndim
        shape[ga] = -1
        y = np.where(valid.reshape(-1).reshape(shape), y, 0)
    y = y.reshape(y.shape[:ga] + idx.shape + y.shape[ga + 1:])
    return np.asarray(y).astype(cfg.out_dtype, copy=False)


# --------------------------------------------------------------------------- QAttention


def attention_mask_bias(mask_index, batch: int, seq: int, past: int, mask_filter_value: float, unidirectional: bool):
    """Additive (batch, 1, seq, past+seq) float32 bias from an Attention-style mask_index, or None."""
    total = past + seq
    bias = None
    if mask_index is not None:
        m = np.asarray(mask_index)
        keep = None
        if m.ndim == 1 and m.shape[0] == batch:  # end positions (right padding)
            keep = np.arange(total)[None, :] < m[:, None]
            keep = keep[:, None, None, :]
        elif m.ndim == 1 and m.shape[0] == 2 * batch:  # end and start positions
            pos = np.arange(total)[None, :]
            keep = (pos < m[:batch, None]) & (pos >= m[batch:, None])
            keep = keep[:, None, None, :]
        elif m.ndim == 2 and m.shape == (batch, total):
            keep = (m > 0)[:, None, None, :]
        elif m.ndim == 3 and m.shape == (batch, seq, total):
            keep = (m > 0)[:, None, :, :]
        else:
            raise NotImplementedError(f"mask_index of shape {m.shape} is not supported (batch {batch}, total length {total})")
        bias = np.where(keep, np.float32(0.0), np.float32(mask_filter_value)).astype(np.float32)
    if unidirectional:
        causal = np.arange(total)[None, :] > (np.arange(seq)[:, None] + past)
        cb = np.where(causal, np.float32(mask_filter_value), np.float32(0.0))[None, None]
        bias = cb if bias is None else bias + cb
    return bias


def _softmax_last(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def multi_head_attention(qkv: np.ndarray, num_heads: int, past, scale, mask_bias, out_dtype):
    """Self-attention from a packed (B, S, 3*hidden) projection; returns (output, present)."""
    b, s, three_h = qkv.shape
    hidden = three_h // 3
    if hidden % num_heads:
        raise NodeInputError(f"hidden size {hidden} is not divisible by num_heads {num_heads}")
    hd = hidden // num_heads

    def heads(t):
        return t.reshape(b, s, num_heads, hd).transpose(0, 2, 1, 3)

    q, k, v = heads(qkv[..., :hidden]), heads(qkv[..., hidden:2 * hidden]), heads(qkv[..., 2 * hidden:])
    if past is not None:
        pk = np.asarray(past[0]).astype(qkv.dtype, copy=False)
        pv = np.asarray(past[1]).astype(qkv.dtype, copy=False)
        k = np.concatenate([pk, k], axis=2)
        v = np.concatenate([pv, v], axis=2)
    sc = np.float32(1.0 / math.sqrt(hd)) if scale is None else np.float32(scale)
    scores = np.matmul(q * sc, k.transpose(0, 1, 3, 2))
    if mask_bias is not None:
        scores += mask_bias
    probs = _softmax_last(scores)
    out = np.matmul(probs, v).transpose(0, 2, 1, 3).reshape(b, s, hidden)
    present = np.stack([k, v]).astype(out_dtype, copy=False)
    return out.astype(out_dtype, copy=False), present


def _qattention_prepack(inputs, attributes):
    _, weight, bias, _, weight_scale, _, _, weight_zero_point, _ = _node_inputs(inputs, 9)
    if weight is None or weight.ndim != 2:
        return None
    try:
        _check8("weight", weight)
        n = weight.shape[1]
        if weight_zero_point is not None:
            _column_param(weight_zero_point, n, "weight_zero_point")  # validates
        scale = None if weight_scale is None else _column_param(weight_scale, n, "weight_scale").astype(np.float32)
        bias32 = None if bias is None else np.asarray(bias).astype(np.float32)
        gemm = _gemm_pack(weight, weight_zero_point)
    except _PREPACK_ERRORS:
        return None
    return _Int8B(_frozen(scale), _frozen(bias32), weight_zero_point is not None, gemm)


@op("QAttention", versions=1, domain=_MS, multi_output=True, prepack=_qattention_prepack)
def qattention(
    input, weight, bias, input_scale, weight_scale, mask_index=None, input_zero_point=None, weight_zero_point=None,
    past=None, *, num_heads, do_rotary=0, mask_filter_value=-10000.0, past_present_share_buffer=0, scale=None,
    unidirectional=0, _num_outputs=1, _packed=None,
):
    """Attention whose QKV projection is an 8-bit integer matmul scaled back to float."""
    _check8("input", input)
    _check8("weight", weight)
    if do_rotary:
        raise NotImplementedError("QAttention with do_rotary=1 is not supported")
    if past_present_share_buffer:
        raise NotImplementedError("QAttention with past_present_share_buffer=1 is not supported")
    if input.ndim != 3 or weight.ndim != 2:
        raise NodeInputError(f"QAttention expects input (B, S, H_in) and weight (H_in, 3*H), got {input.shape}, {weight.shape}")
    out_dtype = np.asarray(bias).dtype
    qkv = _scaled_integer_matmul(
        input, input_zero_point, input_scale, weight, weight_zero_point, weight_scale, bias, _packed, ("input", "weight")
    )
    b, s = input.shape[:2]
    past_len = 0 if past is None else past.shape[3]
    mask_bias = attention_mask_bias(mask_index, b, s, past_len, float(mask_filter_value), bool(unidirectional))
    out, present = multi_head_attention(qkv, int(num_heads), past, scale, mask_bias, out_dtype)
    return (out, present) if _num_outputs > 1 else (out,)


# --------------------------------------------------------------------------- DynamicQuantizeLSTM


def _fake_quantize_uint8(x: np.ndarray) -> np.ndarray:
    """``x`` through onnxruntime's dynamic per-tensor uint8 quantization and back to float32."""
    q, scale, _ = dynamic_quantize_uint8(x)
    q *= scale
    return q


def _fake_quantize_uint8_rows(x: np.ndarray) -> np.ndarray:
    """Like ``_fake_quantize_uint8`` with separate parameters for each row of the 2-D ``x``."""
    lo = np.minimum(x.min(axis=1, keepdims=True), np.float32(0))
    hi = np.maximum(x.max(axis=1, keepdims=True), np.float32(0))
    scale = np.where(hi == lo, np.float32(1), (hi - lo) / np.float32(255)).astype(np.float32)
    zp = np.rint(np.clip(np.float32(0) - lo / scale, 0, 255))
    q = x / scale
    np.rint(q, out=q)
    np.clip(q, -zp, 255 - zp, out=q)
    q *= scale
    return q


def _dequantize_lstm_weight(w, w_scale, w_zero_point, name):
    """(dirs, size, 4*hidden) float weights from 8-bit ones with per-direction or per-column parameters."""
    _check8(name, w)
    nd, _, g = w.shape
    sc = np.asarray(w_scale, dtype=np.float32).reshape(nd, -1)
    zp = np.asarray(w_zero_point).astype(np.float32).reshape(nd, -1)
    if sc.shape[1] not in (1, g) or zp.shape[1] not in (1, g):
        raise NodeInputError(f"{name}_scale / {name}_zero_point must be per direction or per (direction, gate column)")
    return (w.astype(np.float32) - zp[:, None, :]) * sc[:, None, :]


def _lstm_sigmoid(x):
    return (1.0 / (1.0 + np.exp(-np.clip(x, -88.0, 88.0)))).astype(x.dtype, copy=False)


_LSTM_ACTIVATIONS = {
    "sigmoid": (None, None, lambda x, a, b: _lstm_sigmoid(x)),
    "tanh": (None, None, lambda x, a, b: np.tanh(x)),
    "relu": (None, None, lambda x, a, b: np.maximum(x, 0)),
    "affine": (1.0, 0.0, lambda x, a, b: a * x + b),
    "leakyrelu": (0.01, None, lambda x, a, b: np.where(x >= 0, x, a * x)),
    "thresholdedrelu": (1.0, None, lambda x, a, b: np.where(x > a, x, 0)),
    "scaledtanh": (1.0, 1.0, lambda x, a, b: a * np.tanh(b * x)),
    "hardsigmoid": (0.2, 0.5, lambda x, a, b: np.clip(a * x + b, 0, 1)),
    "elu": (1.0, None, lambda x, a, b: np.where(x >= 0, x, a * (np.exp(np.minimum(x, 0)) - 1))),
    "softsign": (None, None, lambda x, a, b: x / (1 + np.abs(x))),
    "softplus": (None, None, lambda x, a, b: np.logaddexp(0, x)),
}


def _lstm_activation_functions(names, alphas, betas, directions):
    names = [n.decode() if isinstance(n, bytes) else n for n in (names or ["Sigmoid", "Tanh", "Tanh"] * directions)]
    if len(names) == 3 and directions == 2:
        names = names * 2
    if len(names) != 3 * directions:
        raise NodeInputError(f"expected {3 * directions} activations, got {len(names)}")
    alphas, betas = list(alphas or []), list(betas or [])
    funcs = []
    for name in names:
        entry = _LSTM_ACTIVATIONS.get(name.lower())
        if entry is None:
            raise NodeInputError(f"unsupported LSTM activation '{name}'")
        a_default, b_default, fn = entry
        a = (alphas.pop(0) if alphas else a_default) if a_default is not None else None
        b = (betas.pop(0) if betas else b_default) if b_default is not None else None
        funcs.append(lambda x, fn=fn, a=a, b=b: np.asarray(fn(x, np.float32(a or 0), np.float32(b or 0)), dtype=np.float32))
    return [funcs[3 * d:3 * d + 3] for d in range(directions)]


def _dynamic_quantize_lstm_prepack(inputs, attributes):
    ins = _node_inputs(inputs, 12)
    packed = []
    for name, (w, scale, zero_point) in (("W", (ins[1], ins[8], ins[9])), ("R", (ins[2], ins[10], ins[11]))):
        wf = None
        if w is not None and scale is not None and zero_point is not None:
            try:
                wf = _frozen(_dequantize_lstm_weight(w, scale, zero_point, name))
            except _PREPACK_ERRORS:
                pass
        packed.append(wf)
    return None if all(wf is None for wf in packed) else tuple(packed)


@op("DynamicQuantizeLSTM", versions=1, domain=_MS, multi_output=True, prepack=_dynamic_quantize_lstm_prepack)
def dynamic_quantize_lstm(
    x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None,
    w_scale=None, w_zero_point=None, r_scale=None, r_zero_point=None, *,
    activation_alpha=None, activation_beta=None, activations=None, clip=None, direction="forward",
    hidden_size=None, input_forget=0, _num_outputs=3, _packed=None,
):
    """ONNX LSTM (gates i, o, f, c) with 8-bit (dirs, size, 4*hidden) weights.

    Like onnxruntime, the left operand of every GEMM is quantized to uint8 on the fly
    (onyxrt multiplies the dequantized values, the same product): X per tensor for the
    input projection of all steps at once, and H before each recurrent step per batch
    row. (onnxruntime quantizes H in chunks of ceil(batch / its thread count) rows, so
    the two agree exactly while the batch is no larger than onnxruntime's thread count,
    and to H's quantization noise beyond.)
    """
    if x.dtype != np.float32:
        raise NodeInputTypeError(f"X must be float, got {x.dtype}")
    if isinstance(direction, bytes):
        direction = direction.decode()
    if direction not in ("forward", "reverse", "bidirectional"):
        raise NodeInputError(f"unknown direction '{direction}'")
    nd = 2 if direction == "bidirectional" else 1
    if w.shape[0] != nd or r.shape[0] != nd:
        raise NodeInputError(f"W/R have {w.shape[0]}/{r.shape[0]} directions, direction '{direction}' needs {nd}")
    wf, rf = _packed if _packed is not None else (None, None)
    if wf is None:
        wf = _dequantize_lstm_weight(w, w_scale, w_zero_point, "W")  # (dirs, input, 4H)
    if rf is None:
        rf = _dequantize_lstm_weight(r, r_scale, r_zero_point, "R")  # (dirs, H, 4H)
    seq, batch, size = x.shape
    hid = int(hidden_size) if hidden_size is not None else r.shape[1]
    if wf.shape[1] != size or wf.shape[2] != 4 * hid or rf.shape[1] != hid:
        raise NodeInputError(f"DynamicQuantizeLSTM: W {w.shape} / R {r.shape} do not match input size {size}, hidden {hid}")
    funcs = _lstm_activation_functions(activations, activation_alpha, activation_beta, nd)
    bias = np.zeros((nd, 8 * hid), np.float32) if b is None else np.asarray(b, dtype=np.float32).reshape(nd, 8 * hid)
    lengths = np.full(batch, seq, np.int64) if sequence_lens is None else np.asarray(sequence_lens, np.int64).reshape(-1)
    full = bool(np.all(lengths == seq))
    h0 = np.zeros((nd, batch, hid), np.float32) if initial_h is None else np.asarray(initial_h, np.float32)
    c0 = np.zeros((nd, batch, hid), np.float32) if initial_c is None else np.asarray(initial_c, np.float32)
    steps = np.arange(seq)[:, None]
    rows = np.arange(batch)[None, :]
    # the input projection's left operand is the whole (seq * batch, size) input
    xq = _fake_quantize_uint8(x)
    y = np.zeros((seq, nd, batch, hid), np.float32)
    y_h = np.empty((nd, batch, hid), np.float32)
    y_c = np.empty((nd, batch, hid), np.float32)
    for d in range(nd):
        reverse = direction == "reverse" or d == 1
        f_act, g_act, h_act = funcs[d]
        proj = (xq.reshape(-1, size) @ wf[d]).reshape(seq, batch, 4 * hid)
        proj += bias[d, :4 * hid] + bias[d, 4 * hid:]
        order = np.where(steps < lengths, lengths - 1 - steps, steps) if reverse else None
        if reverse:
            proj = proj[order, rows]
        peep = None if p is None else np.asarray(p, np.float32).reshape(nd, 3 * hid)[d]
        h, c = h0[d], c0[d]
        out = np.zeros((seq, batch, hid), np.float32)
        for t in range(seq):
            gates = proj[t] + _fake_quantize_uint8_rows(h) @ rf[d]
            gi, go, gf, gc = (gates[:, k * hid:(k + 1) * hid] for k in range(4))
            if peep is not None:
                gi = gi + peep[:hid] * c
                gf = gf + peep[2 * hid:] * c
            if clip is not None:
                gi, gf, gc = (np.clip(v, -clip, clip) for v in (gi, gf, gc))
            i = f_act(gi)
            forget = 1 - i if input_forget else f_act(gf)
            new_c = forget * c + i * g_act(gc)
            if peep is not None:
                go = go + peep[hid:2 * hid] * new_c
            if clip is not None:
                go = np.clip(go, -clip, clip)
            new_h = f_act(go) * h_act(new_c)
            if full:
                h, c = new_h, new_c
                out[t] = new_h
            else:
                live = (t < lengths)[:, None]
                h, c = np.where(live, new_h, h), np.where(live, new_c, c)
                out[t] = np.where(live, new_h, 0)
        y[:, d] = out[order, rows] if reverse else out
        y_h[d], y_c[d] = h, c
    return y, y_h, y_c
