"""Matrix multiplication kernels: MatMul, Gemm, MatMulInteger, QLinearMatMul.

float32/float64 go straight to BLAS through ``np.matmul``; float16/bfloat16 are
multiplied in float32 (numpy has no half-precision BLAS) and rounded back once.
Integer (8-bit) products (MatMulInteger, QLinearMatMul) run on the int8 GEMM
(``int8_gemm``, exact int32), their constant B packed once at session creation.
Float32/float64 MatMul writes into the plan's buffers (``_alloc``).
A constant float32 B with many zeros may run on sparse kernels instead (``sparse_gemm``,
chosen at session creation by measurement).
"""

from __future__ import annotations

import numpy as np

from ....framework.huge_pages import constant_array
from ..gemm import GEMV_AXPY_MAX_COLUMNS, GEMV_MAX_ROWS, gemv_task_usable, note_product
from ..gemm import matmul as pool_matmul
from .int8_gemm import matmul_int8, packed_for, prepack_constant_b
from .sparse_gemm import SparseWeight, sparse_prepack
from .._helpers import ALLOC_MIN_BYTES
from ..kernel_table import op
from ....errors import NodeInputError, NodeInputTypeError

_BLAS_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_F32 = np.dtype(np.float32)


def _is_low_precision_float(dtype: np.dtype) -> bool:
    """float16, bfloat16 and the other ml_dtypes small floats."""
    return dtype == np.float16 or (dtype.kind == "V" and dtype.itemsize <= 2) or (
        dtype.kind == "f" and dtype.itemsize < 4
    )


# Columns up to which a float32 MatMul's constant B (K x N) gets a transposed copy for products of at most GEMV_MAX_ROWS
# rows (a decoding step's projections), made at the first such product: BLAS's GEMV then streams contiguous rows of
# B^T, one block per thread, where on B as it lies each thread reads N / threads floats of every row. Measured on 2
# Zen 5 cores, OpenBLAS's two threads, B from memory: 1408 x 512 82 -> 47 us, 2048 x 512 112 -> 95, 1024 x 1024 109
# -> 91, 3072 x 768 242 -> 214, 1024 x 4096 407 -> 371, 512 x 2816 95 -> 88; from 8192 columns no gain (512 x 8192
# 374 / 368, a 512 x 32000 vocabulary head 1408 / 1446), and none is made: the copy costs B's memory again.
GEMV_TRANSPOSE_MAX_COLUMNS = 4096


class _PackedB:
    """A constant right operand prepared once: ``op(B)`` contiguous in the compute dtype
    (float32 for the half-precision floats), and for GEMVs its transpose (``transposed``).
    Runs share it; it is never written."""

    __slots__ = ("dtype", "shape", "value", "_transposed")

    def __init__(self, b: np.ndarray, value: np.ndarray):
        self.dtype = b.dtype
        self.shape = b.shape
        value.flags.writeable = False
        self.value = value
        self._transposed: np.ndarray | None = None

    def transposed(self) -> np.ndarray | None:
        """``value`` transposed, C-contiguous (made at the first call), for products of few rows by a float32 B of at
        most GEMV_TRANSPOSE_MAX_COLUMNS columns; None for any other B."""
        if self._transposed is None:
            value = self.value
            if value.ndim != 2 or value.dtype != _F32 or value.shape[1] > GEMV_TRANSPOSE_MAX_COLUMNS:
                return None
            transposed = constant_array(value.T.shape, _F32)  # (streamed from memory: in huge pages)
            np.copyto(transposed, value.T)
            transposed.flags.writeable = False
            self._transposed = transposed  # (two runs making it at once: either copy will do)
        return self._transposed


def _pack_b(b, transpose: bool) -> _PackedB | None:
    if not isinstance(b, np.ndarray) or b.ndim != 2:
        return None
    if b.dtype in _BLAS_FLOATS:
        if not transpose and b.flags.c_contiguous:
            return None  # nothing to prepare
        return _PackedB(b, np.ascontiguousarray(b.T if transpose else b))
    if _is_low_precision_float(b.dtype):
        return _PackedB(b, np.ascontiguousarray((b.T if transpose else b).astype(np.float32)))
    return None


def _matmul_prepack(inputs, attributes):
    b = inputs[1] if len(inputs) > 1 else None
    packed = sparse_prepack(b) or _pack_b(b, False)
    if packed is None and isinstance(b, np.ndarray) and b.ndim == 2 and b.dtype == _F32:
        packed = _PackedB(b, b.view())  # B as it is (no copy), for its GEMVs' transposed copy
    return packed


def _matmul_shape(a: np.ndarray, b: np.ndarray) -> tuple[int, ...] | None:
    """The product's shape when both operands are at least 2-D (None otherwise: numpy's rules apply)."""
    if a.ndim < 2 or b.ndim < 2:
        return None
    if b.ndim == 2:  # (a transformer's activations by a weight: no broadcast to work out, ~1.5 us)
        return a.shape[:-1] + (b.shape[1],)
    return np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])


def _matmul(a: np.ndarray, b: np.ndarray, packed: _PackedB | None = None, alloc=None) -> np.ndarray:
    if a.dtype != b.dtype:
        raise NodeInputTypeError(f"MatMul inputs have different dtypes {a.dtype} and {b.dtype}")
    if a.ndim == 0 or b.ndim == 0:
        raise NodeInputError("MatMul inputs must have rank >= 1")
    dtype = a.dtype
    if isinstance(packed, SparseWeight):
        y = packed.product(a, alloc) if packed.source_shape == b.shape else None
        if y is not None:
            return y
        packed = None  # the dense GEMM runs for this many rows
    if packed is not None and packed.dtype == dtype and packed.shape == b.shape:
        b = packed.value  # op(B) == B here: contiguous, and float32 for half-precision floats
        if dtype not in _BLAS_FLOATS:  # float32 GEMM (the pool's path below), rounded back once
            return np.asarray(_matmul(a.astype(np.float32), b).astype(dtype))
    if dtype in _BLAS_FLOATS:
        if dtype == _F32 and b.ndim == 2 and a.ndim >= 2 and a.shape[-1]:
            rows = a.size // a.shape[-1]
            note_product(rows, a.shape[-1], b.shape[1])
            # (a one-row product by a wider than deep B takes it as it lies on the pool's GEMV task: gemm.matmul)
            if rows <= GEMV_MAX_ROWS and packed is not None and packed.shape == b.shape and not (
                    rows == 1 and b.shape[0] < b.shape[1] <= GEMV_AXPY_MAX_COLUMNS and gemv_task_usable()):
                transposed = packed.transposed()
                if transposed is not None:
                    b = transposed.T  # the same B, its columns contiguous (see GEMV_TRANSPOSE_MAX_COLUMNS)
        wanted = alloc is not None and a.nbytes >= ALLOC_MIN_BYTES  # the output has a's rows
        shape = _matmul_shape(a, b) if wanted and a.shape[-1] == b.shape[-2 if b.ndim > 1 else 0] else None
        out = None if shape is None else alloc(shape, dtype)
        if a.ndim > 2 and b.ndim == 2 and a.flags.c_contiguous:
            # one large GEMM instead of a loop of per-batch GEMMs
            flat_out = None if out is None else out.reshape(-1, b.shape[1])
            y = pool_matmul(a.reshape(-1, a.shape[-1]), b, out=flat_out).reshape(a.shape[:-1] + (b.shape[1],))
        else:
            y = pool_matmul(a, b, out=out)
        if out is not None:
            return out
    elif _is_low_precision_float(dtype):
        y = _matmul(a.astype(np.float32), b.astype(np.float32)).astype(dtype)
    elif dtype.kind in "iu":
        y = np.matmul(a, b)
    else:
        raise NodeInputTypeError(f"MatMul does not support dtype {dtype}")
    return np.asarray(y)


@op("MatMul", versions=(1, 9, 13), prepack=_matmul_prepack)
def matmul(a, b, *, _packed=None, _alloc=None):
    return _matmul(a, b, _packed, _alloc)


def gemm_prepack(inputs, attributes):
    """Prepack of Gemm-like kernels (inputs A, B, C): op(B)'s sparse products (``sparse_gemm``), else
    op(B) contiguous in the compute dtype."""
    b = inputs[1] if len(inputs) > 1 else None
    transpose = bool(attributes.get("transB", 0))
    return sparse_prepack(b, transpose=transpose) or _pack_b(b, transpose)


def _gemm(a, b, c, alpha, beta, transA, transB, packed: _PackedB | None = None):
    if a.ndim != 2 or b.ndim != 2:
        raise NodeInputError(f"Gemm inputs A {a.shape} and B {b.shape} must be 2-D")
    dtype = a.dtype
    low = _is_low_precision_float(dtype)
    ct = np.dtype(np.float32) if low else dtype
    is_float = ct.kind == "f"
    A = a.T if transA else a
    y = None
    if isinstance(packed, SparseWeight):
        if packed.source_shape == b.shape and A.shape[1] == packed.shape[0]:
            y = packed.product(A)
        packed = None
    if y is None:
        if transB and A.shape[0] <= GEMV_MAX_ROWS and b.dtype == ct and b.flags.c_contiguous:
            # a GEMV (a classifier at batch 1) on B as it lies, transposed: split by its columns, each part streams
            # contiguous rows of B (mobilenet_v2's 1280 -> 1000 on 2 Zen 5 cores: 57 -> 37 us in cache, 172 -> 147 us
            # from memory, against op(B)'s contiguous copy split by columns)
            B = b.T
        elif packed is not None and packed.dtype == dtype and packed.shape == b.shape:
            B = packed.value  # op(B), already in the compute dtype
        else:
            B = b.T if transB else b
            if low:
                B = B.astype(np.float32)
        if low:
            A = A.astype(np.float32)
        if A.shape[1] != B.shape[0]:
            raise NodeInputError(f"Gemm: inner dimensions do not match: A' {A.shape}, B' {B.shape}")
        if ct == _F32:
            note_product(A.shape[0], A.shape[1], B.shape[1])
        y = np.asarray(pool_matmul(A, B) if is_float else np.matmul(A, B))
    if alpha != 1.0:
        if is_float:
            y *= ct.type(alpha)
        else:
            y = (y * alpha).astype(ct)
    if c is not None and beta != 0.0:
        cc = c.astype(ct) if c.dtype != ct else c
        if beta != 1.0:
            cc = cc * ct.type(beta) if is_float else (cc * beta).astype(ct)
        if cc.shape != y.shape[-cc.ndim:] and np.broadcast_shapes(cc.shape, y.shape) != y.shape:  # (the first test
            # settles the common shapes, (N,) and (M, N), without broadcast_shapes' ~1.5 us)
            raise NodeInputError(f"Gemm: C of shape {c.shape} does not broadcast to {y.shape}")
        y += cc
    return y.astype(dtype) if low else y


@op("Gemm", versions=(1, 6), prepack=gemm_prepack)
def gemm_legacy(a, b, c=None, *, alpha=1.0, beta=1.0, broadcast=0, transA=0, transB=0, _packed=None):
    # broadcast=0 requires C to already be (M, N); a broadcastable C is accepted either way.
    return _gemm(a, b, c, alpha, beta, transA, transB, _packed)


@op("Gemm", versions=(7, 9, 11, 13), prepack=gemm_prepack)
def gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, _packed=None):
    return _gemm(a, b, c, alpha, beta, transA, transB, _packed)


# Multiply-adds below which a float32 product of more than GEMV_MAX_ROWS rows runs as one ``np.matmul`` on the calling
# thread in every thread mode (under ``gemm.matmul``'s smallest split threshold, and its own GEMM's).
SMALL_PRODUCT_MACS = 1 << 16


def _gemm_fast_path(bound, keywords):
    """Gemm's ``fast_path`` for alpha and beta 1 and A as it is: a small float32 product (a classifier head's,
    :data:`SMALL_PRODUCT_MACS`) with a bias of one row or none is ``np.matmul`` of the operands ``_gemm`` takes (op(B)
    prepacked where it was) and an add, what ``_gemm`` computes, without its checks and dispatch (8 x 64 by 64 x 10:
    4.7 -> ~2 us); anything else the kernel."""
    packed = keywords.get("_packed")
    if (keywords.get("alpha", 1.0) != 1.0 or keywords.get("beta", 1.0) != 1.0 or keywords.get("transA", 0)
            or not (packed is None or isinstance(packed, _PackedB) and packed.dtype == _F32)):
        return None
    transposed = bool(keywords.get("transB", 0))

    def small_gemm(a, b, c=None):
        if a.dtype == _F32 and b.dtype == _F32 and a.ndim == 2 and b.ndim == 2 and a.shape[0] > GEMV_MAX_ROWS:
            if packed is not None and packed.shape == b.shape:
                op_b = packed.value
            else:
                op_b = b.T if transposed else b
            depth, n = op_b.shape
            if (a.shape[1] == depth and a.shape[0] * depth * n < SMALL_PRODUCT_MACS
                    and (c is None or c.shape == (n,) and c.dtype == _F32)):
                y = np.matmul(a, op_b)
                if c is not None:
                    y += c
                return y
        return bound(a, b, c)

    return small_gemm


gemm.fast_path = gemm_legacy.fast_path = _gemm_fast_path


# --------------------------------------------------------------------------- quantized


def _check_int8(name, t):
    if t.dtype not in (np.int8, np.uint8):
        raise NodeInputTypeError(f"{name} must be int8 or uint8, got {t.dtype}")


def _row_param(p, a: np.ndarray, name: str):
    """A per-tensor scalar or per-row (M) parameter of A shaped to broadcast against A."""
    p = np.asarray(p)
    if p.size == 1:
        return p.reshape(())
    if a.ndim < 2:
        raise NodeInputError(f"{name} of shape {p.shape} needs a 2-D A")
    if p.ndim == 1 and p.shape[0] == a.shape[-2]:
        return p.reshape(-1, 1)
    if p.ndim >= 2 and p.shape[-1] == 1:
        return p  # already (..., M, 1)
    raise NodeInputError(f"{name} of shape {p.shape} is neither per-tensor nor per-row of A {a.shape}")


def _col_param(p, b: np.ndarray, name: str):
    """A per-tensor scalar or per-column (N) parameter of B shaped to broadcast against B."""
    p = np.asarray(p)
    if p.size == 1:
        return p.reshape(())
    if b.ndim >= 2 and p.shape[-1] == b.shape[-1] and (p.ndim == 1 or p.shape[-2] == 1):
        return p
    raise NodeInputError(f"{name} of shape {p.shape} is neither per-tensor nor per-column of B {b.shape}")


def _int_matmul(a, b, a_zero_point, b_zero_point) -> np.ndarray:
    """(a - a_zp) @ (b - b_zp) computed exactly (float64 BLAS) and returned as float64."""
    af = a.astype(np.float64)
    if a_zero_point is not None:
        af -= _row_param(a_zero_point, a, "a_zero_point").astype(np.float64)
    bf = b.astype(np.float64)
    if b_zero_point is not None:
        bf -= _col_param(b_zero_point, b, "b_zero_point").astype(np.float64)
    return np.asarray(np.matmul(af, bf))


def _int8_product(a, b, a_zero_point, b_zero_point, packed) -> np.ndarray:
    """(a - a_zp) @ (b - b_zp) as int32 through the int8 GEMM (``int8_gemm``); the float64 path
    where its shapes do not fit one (1-D operands, batched per-column zero points)."""
    if packed is not None and a.ndim >= 2:
        if a.shape[-1] != packed.k:
            raise NodeInputError(f"inner dimensions do not match: A {a.shape}, B {b.shape}")
        if a_zero_point is not None:
            _row_param(a_zero_point, a, "a_zero_point")
        return matmul_int8(a, packed, a_zero_point)
    if a.ndim < 2 or b.ndim < 2 or (b.ndim > 2 and b_zero_point is not None and np.ndim(b_zero_point) > 1):
        return _int_matmul(a, b, a_zero_point, b_zero_point).astype(np.int32)
    if a.shape[-1] != b.shape[-2]:
        raise NodeInputError(f"inner dimensions do not match: A {a.shape}, B {b.shape}")
    if a_zero_point is not None:
        _row_param(a_zero_point, a, "a_zero_point")  # validates; the GEMM takes (M,) or a scalar
    if b_zero_point is not None:
        b_zero_point = _col_param(b_zero_point, b, "b_zero_point")
    try:
        return matmul_int8(a, b, a_zero_point, b_zero_point)
    except (TypeError, ValueError) as e:
        raise NodeInputError(str(e)) from None


def _matmul_integer_prepack(inputs, attributes):
    b = inputs[1] if len(inputs) > 1 else None
    return prepack_constant_b(b, inputs[3] if len(inputs) > 3 else None)


@op("MatMulInteger", versions=10, prepack=_matmul_integer_prepack)
def matmul_integer(a, b, a_zero_point=None, b_zero_point=None, *, _packed=None):
    _check_int8("A", a)
    _check_int8("B", b)
    return _int8_product(a, b, a_zero_point, b_zero_point, packed_for(_packed, b, b_zero_point))


def _float8_dtypes():
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover
        return ()
    return tuple(
        np.dtype(getattr(ml_dtypes, n))
        for n in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")
        if hasattr(ml_dtypes, n)
    )


_FLOAT8 = _float8_dtypes()


def _scalar_f32(v) -> np.float32:
    return np.float32(np.asarray(v).astype(np.float32).reshape(-1)[0])


def _qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point, allow_float8,
                    packed=None):
    out_dtype = np.asarray(y_zero_point).dtype
    a_f8, b_f8, y_f8 = (t in _FLOAT8 for t in (a.dtype, b.dtype, out_dtype))
    if (a_f8 or b_f8 or y_f8) and not allow_float8:
        raise NodeInputTypeError("float8 QLinearMatMul needs opset 21")
    if not a_f8:
        _check_int8("a", a)
    if not b_f8:
        _check_int8("b", b)
    if not y_f8 and out_dtype not in (np.int8, np.uint8):
        raise NodeInputTypeError(f"y_zero_point must be int8/uint8 (or float8), got {out_dtype}")
    sa = _row_param(np.asarray(a_scale).astype(np.float32), a, "a_scale")
    sb = _col_param(np.asarray(b_scale).astype(np.float32), b, "b_scale")
    sy = _scalar_f32(y_scale)
    if a_f8 or b_f8:
        acc = np.matmul(
            (a.astype(np.float32) - _row_param(a_zero_point, a, "a_zero_point").astype(np.float32)),
            (b.astype(np.float32) - _col_param(b_zero_point, b, "b_zero_point").astype(np.float32)),
        ).astype(np.float32)
    else:
        acc = _int8_product(a, b, a_zero_point, b_zero_point, packed).astype(np.float32)
    mult = (sa * sb) / sy  # float32, like onnxruntime's requantization multiplier
    y = acc * mult
    zp = _scalar_f32(y_zero_point)
    if y_f8:
        y = y + zp
        import ml_dtypes

        finfo = float(ml_dtypes.finfo(out_dtype).max)
        np.clip(y, -finfo, finfo, out=y)
        return np.asarray(y.astype(out_dtype))
    np.rint(y, out=y)
    y += zp
    info = np.iinfo(out_dtype)
    np.clip(y, info.min, info.max, out=y)
    return np.asarray(y.astype(out_dtype))


def _qlinear_matmul_prepack(inputs, attributes):
    b = inputs[3] if len(inputs) > 3 else None
    return prepack_constant_b(b, inputs[5] if len(inputs) > 5 else None)


@op("QLinearMatMul", versions=10, prepack=_qlinear_matmul_prepack)
def qlinear_matmul_10(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point, *, _packed=None):
    return _qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point, False,
                           packed_for(_packed, b, b_zero_point))


@op("QLinearMatMul", versions=21, prepack=_qlinear_matmul_prepack)
def qlinear_matmul_21(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point, *, _packed=None):
    return _qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point, True,
                           packed_for(_packed, b, b_zero_point))
