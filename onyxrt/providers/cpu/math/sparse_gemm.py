"""Sparse products ``Y = X @ W`` with a constant float32 weight ``W`` (K x N) holding many zeros.

At session creation (``sparse_prepack``, called from the MatMul/Gemm-like, Attention and 1x1 Conv
kernels' prepacks) a weight with at least ``onyxrt.sparse.min_sparsity`` of its elements exactly
zero is stored in the formats of ``onyxrt.sparsity.formats`` (CSR; also 2:4 when its zeros follow
that pattern), and each format's kernel is timed against the dense GEMM on the session's thread
pool for a decoding-like product (one row of ``X``) and an encoder-like one (``MEASURED_ROWS``
rows); every product of more than one row follows the latter. A sparse kernel is kept only when
it beats the dense GEMM by ``REQUIRED_GAIN``; otherwise the dense path runs. Decisions are cached
per process by shape, density and pool (bert-base repeats 4 weight shapes, not 60 weights). The
one-row product is timed with the weight read from memory, as a model's decoding step meets it.

The kernels work column by column of the output: ``Y^T[n, :] = sum_k W[k, n] * X^T[k, :]`` over
the nonzero k of column n, so the vectorized work runs over the rows of ``X`` (contiguous in
``X^T``); a single row (a GEMV) is a dot product per column. The CSR many-row kernel
(``sparse_tiles``) keeps a column's tile of up to 64 rows in registers while its nonzeros stream
past, rows tile by tile so the slice of ``X^T`` a tile reads stays in cache. The output columns are
split over the pool's threads. They are compiled by numba (``jit.LazyKernel``); without numba (or
with ``ONYXRT_DISABLE_NUMBA=1``) numpy versions of the same kernels are what the measurement
compares (they rarely win, so the dense path runs). Sums run in float32, as the dense GEMM
accumulates: results equal the dense product to rounding (about 1e-6 relative at K = 3072; the
tests allow 1e-4). A 2:4 weight keeps half its elements: on a CPU its
kernel does not beat the dense GEMM, it exists for the format (half the bytes) and the GPU
providers that will map it onto sparse tensor cores.

Session config entries: ``onyxrt.sparse.enable`` ("1" default, "0" off),
``onyxrt.sparse.min_sparsity`` (default ``DEFAULT_MIN_SPARSITY``), ``onyxrt.sparse.select``
("measure" default; "always": use the sparse kernel for every weight above the threshold,
without timing, for benchmarks and tests).
"""

from __future__ import annotations

import abc
import glob
import math
import time
from typing import TYPE_CHECKING, Callable

import numpy as np

from ....errors import InvalidArgument
from ....framework.session_config import KERNELS_ON_POOL, note_plan_trait, session_config_entry
from ....framework.thread_pool import current_pool
from .._helpers import ALLOC_MIN_BYTES
from ..gemm import matmul as pool_matmul
from ..jit import LazyKernel, LazyModuleKernel, read_only

if TYPE_CHECKING:
    from ....sparsity.formats import CsrWeight, SemiStructuredWeight

ENABLE_KEY = "onyxrt.sparse.enable"
MIN_SPARSITY_KEY = "onyxrt.sparse.min_sparsity"
SELECT_KEY = "onyxrt.sparse.select"
# Below 80% zeros CSR does not win for every bert/minilm weight shape at 64-128 rows (AMD EPYC, AVX2, one
# thread, benchmarks/sparse_kernels.md: 1.1-1.7x at 80% except 3072x768 (even), 1.8-3.2x at 90%; at 70-75% it
# wins at 64 rows but loses at 128 for the largest shapes, and the choice made at MEASURED_ROWS holds for all;
# one row from memory wins from 80-95% by shape): not worth building or timing.
DEFAULT_MIN_SPARSITY = 0.8
# the encoder-like row count timed at session creation; every product of more than one row follows it
MEASURED_ROWS = 64
# the same for a 1x1 convolution's pixels (14 x 14, resnet50's third stage; its others have 49 to 3136)
MEASURED_PIXELS = 196
# a sparse kernel must take at most this fraction of the dense time (timing noise must not flip choices)
REQUIRED_GAIN = 0.9
_TIMING_REPEATS = 3
# one-row timings first read a buffer twice the last-level cache (at most this many bytes)
_MAX_EVICT_BYTES = 128 << 20
_DEFAULT_CACHE_BYTES = 32 << 20
# Multiply-adds below which one thread computes the product (a split costs ~15 us of hand-offs).
_MIN_PARALLEL_MACS = 1 << 17
# numpy kernels: elements of the gathered (nonzeros x rows) block per step
_NUMPY_BLOCK = 1 << 21
_F32 = np.dtype(np.float32)
# 2:4 kernel: output columns accumulated together before being written into the output's rows
COLUMN_BLOCK = 16
# 2:4 kernel: rows of X computed together: a column's values read 4 KiB slices of X^T's rows, kept in cache
ROW_BLOCK = 1024

_decisions: dict[tuple, tuple[str | None, str | None]] = {}


# --------------------------------------------------------------------------- compiled kernels
# Plain Python compiled by numba on first use (jit.LazyKernel); never called uncompiled.


def _csr_dots(x, indptr, indices, values, y, n0, n1):
    """``y[n] = sum_j values[j] * x[indices[j]]`` for n in [n0, n1) (a one-row product).

    Four partial sums: the additions of one sum wait on each other, four chains overlap."""
    for n in range(n0, n1):
        acc0 = acc1 = acc2 = acc3 = np.float32(0.0)
        j = indptr[n]
        end = indptr[n + 1]
        while j + 4 <= end:
            acc0 += values[j] * x[indices[j]]
            acc1 += values[j + 1] * x[indices[j + 1]]
            acc2 += values[j + 2] * x[indices[j + 2]]
            acc3 += values[j + 3] * x[indices[j + 3]]
            j += 4
        while j < end:
            acc0 += values[j] * x[indices[j]]
            j += 1
        y[n] = (acc0 + acc1) + (acc2 + acc3)


def _semi_structured_columns(xt, values, metadata, y, n0, n1, transposed):
    """The 2:4 form of ``_csr_columns``: group g of column n keeps k = 4g + the metadata's two 2-bit offsets."""
    rows = xt.shape[1]
    groups = values.shape[1] // 2
    block = np.empty((COLUMN_BLOCK, min(rows, ROW_BLOCK)), np.float32)
    for r0 in range(0, rows, ROW_BLOCK):
        r1 = min(r0 + ROW_BLOCK, rows)
        span = r1 - r0
        for b0 in range(n0, n1, COLUMN_BLOCK):
            b1 = min(b0 + COLUMN_BLOCK, n1)
            for n in range(b0, b1):
                out = y[n, r0:r1] if transposed else block[n - b0, :span]
                out[:] = 0
                g = 0
                while g + 2 <= groups:  # two groups (four values) per pass: one load and store of out per four
                    nibble0 = (metadata[n, g >> 2] >> ((g & 3) * 4)) & 15
                    nibble1 = (metadata[n, (g + 1) >> 2] >> (((g + 1) & 3) * 4)) & 15
                    w0, w1 = values[n, 2 * g], values[n, 2 * g + 1]
                    w2, w3 = values[n, 2 * g + 2], values[n, 2 * g + 3]
                    s0 = xt[4 * g + (nibble0 & 3), r0:r1]
                    s1 = xt[4 * g + (nibble0 >> 2), r0:r1]
                    s2 = xt[4 * g + 4 + (nibble1 & 3), r0:r1]
                    s3 = xt[4 * g + 4 + (nibble1 >> 2), r0:r1]
                    for m in range(span):
                        out[m] += w0 * s0[m] + w1 * s1[m] + w2 * s2[m] + w3 * s3[m]
                    g += 2
                if g < groups:
                    nibble0 = (metadata[n, g >> 2] >> ((g & 3) * 4)) & 15
                    w0, w1 = values[n, 2 * g], values[n, 2 * g + 1]
                    s0 = xt[4 * g + (nibble0 & 3), r0:r1]
                    s1 = xt[4 * g + (nibble0 >> 2), r0:r1]
                    for m in range(span):
                        out[m] += w0 * s0[m] + w1 * s1[m]
            if not transposed:
                for m in range(span):
                    for n in range(b0, b1):
                        y[r0 + m, n] = block[n - b0, m]


def _semi_structured_dots(x, values, metadata, y, n0, n1):
    """The 2:4 form of ``_csr_dots`` (two partial sums: each group's two values)."""
    groups = values.shape[1] // 2
    for n in range(n0, n1):
        acc0 = acc1 = np.float32(0.0)
        for g in range(groups):
            nibble = (metadata[n, g >> 2] >> ((g & 3) * 4)) & 15
            acc0 += values[n, 2 * g] * x[4 * g + (nibble & 3)]
            acc1 += values[n, 2 * g + 1] * x[4 * g + (nibble >> 2)]
        y[n] = acc0 + acc1


_TILES_MODULE = __name__.rsplit(".", 1)[0] + ".sparse_tiles"
_CSR_COLUMNS = LazyModuleKernel(_TILES_MODULE, "csr_columns")
_TRANSPOSE = LazyModuleKernel(_TILES_MODULE, "transpose_into")
_CSR_DOTS = LazyKernel(_csr_dots)
_SEMI_COLUMNS = LazyKernel(_semi_structured_columns)
_SEMI_DOTS = LazyKernel(_semi_structured_dots)


def _probe(shape: tuple[int, ...], dtype, writable: bool = False) -> np.ndarray:
    """An empty argument of a kernel's compile probe (``LazyKernel.compiled_for``): read-only unless an output."""
    array = np.zeros(shape, dtype)
    return array if writable else read_only(array)


def _transposed(a: np.ndarray) -> np.ndarray:
    """``a.T`` C-contiguous and read-only, for a C-contiguous float32 ``a`` (rows x K)."""
    xt = np.empty((a.shape[1], a.shape[0]), _F32)
    kernel = _TRANSPOSE.compiled_for("f32", _probe((0, 0), _F32), _probe((0, 0), _F32, True), 0, 0)
    if kernel is None:
        np.copyto(xt, a.T)
    else:
        kernel(read_only(a), xt, 0, a.shape[0])  # on this thread: waking the pool costs more than it saves
    return read_only(xt)


def _split_columns(kernel: Callable, columns: int, macs: int) -> None:
    """Run ``kernel(n0, n1)`` over the output columns, split over the current pool when worth it."""
    current_pool().run_chunks(kernel, columns, macs, _MIN_PARALLEL_MACS)


# --------------------------------------------------------------------------- products


class _Product(abc.ABC):
    """``X @ W`` for a sparse ``W`` (K x N): the row-count dispatch and thread split every format shares."""

    kind = ""
    shape: tuple[int, int]
    _kernels: tuple[Callable | None, Callable | None] | None = None

    def kernels(self) -> tuple[Callable | None, Callable | None]:
        """The one-row and the many-row kernel bound to this format's arrays (None without numba), found
        on first use: the product is created at session creation, its first run compiles or loads them."""
        if self._kernels is None:
            self._kernels = self._bound_kernels()
        return self._kernels

    def product(self, a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``a @ W`` for a C-contiguous float32 ``a`` (rows x K), into ``out`` (rows x N, C-contiguous) when given."""
        rows, columns = a.shape[0], self.shape[1]
        y = np.empty((rows, columns), _F32) if out is None else out
        dots, many = self.kernels()
        if rows == 1 and dots is not None:
            x, target = read_only(a[0]), y[0]
            _split_columns(lambda n0, n1: dots(x, target, n0, n1), columns, self._macs(rows))
            return y
        xt = _transposed(a)
        if many is not None:
            _split_columns(lambda n0, n1: many(xt, y, n0, n1, False), columns, self._macs(rows))
        else:
            np.copyto(y, self._numpy_columns(xt).T)
        return y

    def transposed_product(self, xt: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``(xt^T @ W)^T`` (N x rows) for a C-contiguous float32 ``xt`` (K x rows), into ``out`` when given:
        a convolution's ``W^T @ X`` with the image's channels x pixels matrix as ``xt``."""
        rows, columns = xt.shape[1], self.shape[1]
        yt = np.empty((columns, rows), _F32) if out is None else out
        dots, many = self.kernels()
        xt = read_only(xt)
        if rows == 1 and dots is not None:
            x, target = xt.reshape(-1), yt.reshape(-1)
            _split_columns(lambda n0, n1: dots(x, target, n0, n1), columns, self._macs(rows))
        elif many is not None:
            _split_columns(lambda n0, n1: many(xt, yt, n0, n1, True), columns, self._macs(rows))
        else:
            np.copyto(yt, self._numpy_columns(xt))
        return yt

    @abc.abstractmethod
    def _bound_kernels(self) -> tuple[Callable | None, Callable | None]:
        """See ``kernels``."""

    @abc.abstractmethod
    def _macs(self, rows: int) -> int:
        """Multiply-adds of a product with ``rows`` rows (decides the thread split)."""

    @abc.abstractmethod
    def _numpy_columns(self, xt: np.ndarray) -> np.ndarray:
        """``(xt^T @ W)^T`` by numpy (the many-row kernel where numba is absent)."""


class CsrProduct(_Product):
    """``X @ W`` for an unstructured sparse ``W`` (``formats.CsrWeight``)."""

    kind = "csr"

    def __init__(self, weight: CsrWeight) -> None:
        if (weight.indices.dtype not in (np.uint16, np.uint32) or not weight.indices.flags.c_contiguous
                or weight.values.dtype != _F32 or not weight.values.flags.c_contiguous):
            # the many-row kernel reads the arrays by address: contiguous, unsigned 16/32-bit indices
            weight = type(weight)(weight.shape, weight.indptr, np.ascontiguousarray(weight.indices, np.uint32),
                                  np.ascontiguousarray(weight.values, _F32))
        self.weight = weight
        self.shape = weight.shape
        for array in (weight.indptr, weight.indices, weight.values):
            array.flags.writeable = False
        self._filled = np.flatnonzero(np.diff(weight.indptr))  # columns with a nonzero (numpy path)

    def _bound_kernels(self):
        w = self.weight
        key = ("f32", w.indices.dtype.str)
        indptr, indices, values = _probe((1,), np.int64), _probe((0,), w.indices.dtype), _probe((0,), _F32)
        dots = _CSR_DOTS.compiled_for(key, _probe((0,), _F32), indptr, indices, values, _probe((0,), _F32, True), 0, 0)
        many = _CSR_COLUMNS.compiled_for(key, _probe((0, 0), _F32), indptr, indices, values,
                                         _probe((0, 0), _F32, True), 0, 0, False)
        return (None if dots is None else lambda x, y, n0, n1: dots(x, w.indptr, w.indices, w.values, y, n0, n1),
                None if many is None else
                lambda xt, y, n0, n1, transposed: many(xt, w.indptr, w.indices, w.values, y, n0, n1, transposed))

    def _macs(self, rows: int) -> int:
        return self.weight.nnz * rows

    def _numpy_columns(self, xt: np.ndarray) -> np.ndarray:
        """``Y^T`` by numpy: each filled column's gathered, scaled rows of ``X^T`` summed (in blocks)."""
        w, rows = self.weight, xt.shape[1]
        yt = np.zeros((self.shape[1], rows), _F32)
        filled, starts = self._filled, w.indptr[self._filled]
        step = max(1, _NUMPY_BLOCK // max(rows, 1))
        first = 0
        while first < filled.size:
            # columns whose nonzeros fit in one block (at least one column)
            last = max(first + 1, int(np.searchsorted(starts, starts[first] + step, side="right")))
            lo, hi = int(starts[first]), int(w.indptr[filled[last - 1] + 1])
            block = xt[w.indices[lo:hi]] * w.values[lo:hi, None]
            yt[filled[first:last]] = np.add.reduceat(block, starts[first:last] - lo, axis=0)
            first = last
        return yt


class SemiStructuredProduct(_Product):
    """``X @ W`` for a 2:4 sparse ``W`` (``formats.SemiStructuredWeight``)."""

    kind = "2:4"

    def __init__(self, weight: SemiStructuredWeight) -> None:
        self.weight = weight
        self.shape = weight.shape
        for array in (weight.values, weight.metadata):
            array.flags.writeable = False

    def _bound_kernels(self):
        w = self.weight
        values, metadata = _probe((0, 0), _F32), _probe((0, 0), np.uint16)
        dots = _SEMI_DOTS.compiled_for("f32", _probe((0,), _F32), values, metadata, _probe((0,), _F32, True), 0, 0)
        many = _SEMI_COLUMNS.compiled_for("f32", _probe((0, 0), _F32), values, metadata,
                                          _probe((0, 0), _F32, True), 0, 0, False)
        return (None if dots is None else lambda x, y, n0, n1: dots(x, w.values, w.metadata, y, n0, n1),
                None if many is None else
                lambda xt, y, n0, n1, transposed: many(xt, w.values, w.metadata, y, n0, n1, transposed))

    def _macs(self, rows: int) -> int:
        return rows * self.shape[1] * self.shape[0] // 2

    def _numpy_columns(self, xt: np.ndarray) -> np.ndarray:
        w, rows = self.weight, xt.shape[1]
        yt = np.empty((self.shape[1], rows), _F32)
        step = max(1, _NUMPY_BLOCK // max(rows * w.values.shape[1], 1))
        for n0 in range(0, self.shape[1], step):
            n1 = min(n0 + step, self.shape[1])
            gathered = xt[w.kept_indices(n0, n1)]  # (columns, K/2, rows)
            np.einsum("nj,njm->nm", w.values[n0:n1], gathered, out=yt[n0:n1])
        return yt


Product = CsrProduct | SemiStructuredProduct


class SparseWeight:
    """A constant weight's sparse products chosen at session creation (a kernel's ``_packed``).

    ``shape`` is the product's ``W`` (K x N); ``source_shape`` the node input it was made from (N x K
    for a transposed Gemm B), which kernels compare with the input they receive. ``single_row`` runs
    one-row products, ``many_rows`` the others; None where the dense GEMM was faster."""

    __slots__ = ("shape", "source_shape", "sparsity", "single_row", "many_rows")

    def __init__(self, shape: tuple[int, int], source_shape: tuple[int, ...], sparsity: float,
                 single_row: Product | None, many_rows: Product | None) -> None:
        self.shape = shape
        self.source_shape = source_shape
        self.sparsity = sparsity
        self.single_row = single_row
        self.many_rows = many_rows

    def _chosen(self, rows: int) -> Product | None:
        return None if rows == 0 else self.single_row if rows == 1 else self.many_rows

    def product(self, a: np.ndarray, alloc=None) -> np.ndarray | None:
        """``a @ W`` (``a`` float32, rank >= 2, last axis K) by the chosen sparse kernel, written into a
        buffer from the plan's ``alloc`` when given; None when the dense GEMM should run for this many
        rows (or ``a`` does not fit: another dtype or inner size)."""
        if a.dtype != _F32 or a.ndim < 2 or a.shape[-1] != self.shape[0]:
            return None
        rows = math.prod(a.shape[:-1])
        chosen = self._chosen(rows)
        if chosen is None:
            return None
        shape = a.shape[:-1] + (self.shape[1],)
        out = alloc(shape, _F32) if alloc is not None and a.nbytes >= ALLOC_MIN_BYTES else None
        flat = np.ascontiguousarray(a).reshape(rows, self.shape[0])
        y = chosen.product(flat, None if out is None else out.reshape(rows, self.shape[1]))
        return y.reshape(shape)

    def transposed_product(self, xt: np.ndarray) -> np.ndarray | None:
        """``W^T @ xt`` (N x columns of ``xt``) for a float32 ``xt`` (K x columns): a 1x1 convolution of
        one image (channels x pixels); None when the dense GEMM should run (or ``xt`` does not fit)."""
        if xt.dtype != _F32 or xt.ndim != 2 or xt.shape[0] != self.shape[0]:
            return None
        chosen = self._chosen(xt.shape[1])
        return None if chosen is None else chosen.transposed_product(np.ascontiguousarray(xt))


# --------------------------------------------------------------------------- selection at session creation


def _settings() -> tuple[bool, float, str]:
    enabled = session_config_entry(ENABLE_KEY, "1")
    if enabled not in ("0", "1"):
        raise InvalidArgument(f"session config '{ENABLE_KEY}' must be '0' or '1', got {enabled!r}")
    text = session_config_entry(MIN_SPARSITY_KEY, str(DEFAULT_MIN_SPARSITY))
    try:
        threshold = float(text)
    except ValueError:
        threshold = math.nan
    if not 0.0 <= threshold <= 1.0:
        raise InvalidArgument(f"session config '{MIN_SPARSITY_KEY}' must be a number in [0, 1], got {text!r}")
    select = session_config_entry(SELECT_KEY, "measure")
    if select not in ("measure", "always"):
        raise InvalidArgument(f"session config '{SELECT_KEY}' must be 'measure' or 'always', got {select!r}")
    return enabled == "1", threshold, select


def _last_level_cache_bytes() -> int:
    """The largest CPU cache's size (Linux sysfs), else ``_DEFAULT_CACHE_BYTES``."""
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=_DEFAULT_CACHE_BYTES)


def _best_time(fn: Callable[[], object], evict: np.ndarray | None = None) -> float:
    """The fastest of ``_TIMING_REPEATS`` calls of ``fn`` after a warming one; with ``evict``, a buffer
    larger than the caches, each call starts after reading it (the weight then comes from memory)."""
    fn()  # warm: compiles, touches the weight
    best = math.inf
    for _ in range(_TIMING_REPEATS):
        if evict is not None:
            evict.sum()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _fastest(weight: np.ndarray, products: list[Product], rows: int, convolution: bool) -> Product | None:
    """The product beating the dense GEMM by ``REQUIRED_GAIN`` for ``rows`` rows (the fastest such), else None.

    ``convolution``: timed as a 1x1 convolution computes, ``W^T @ X`` (``transposed_product``). One
    row is timed with the weight read from memory, as a decoding step meets it (a model's weights
    exceed the caches): such a product is bound by the bytes it reads, which sparsity cuts."""
    inner, columns = weight.shape
    evict = None
    if rows == 1:
        evict = np.ones(min(2 * _last_level_cache_bytes(), _MAX_EVICT_BYTES) // 4, np.float32)
    if convolution:
        left = np.ascontiguousarray(weight.T)
        x = np.random.default_rng(0).standard_normal((inner, rows), dtype=np.float32)
        out = np.empty((columns, rows), _F32)
        budget = REQUIRED_GAIN * _best_time(lambda: pool_matmul(left, x, out=out), evict)
    else:
        dense = np.ascontiguousarray(weight)
        x = np.random.default_rng(0).standard_normal((rows, inner), dtype=np.float32)
        out = np.empty((rows, columns), _F32)
        budget = REQUIRED_GAIN * _best_time(lambda: pool_matmul(x, dense, out=out), evict)
    best, best_time = None, budget
    for candidate in products:
        run = candidate.transposed_product if convolution else candidate.product
        elapsed = _best_time(lambda: run(x, out), evict)
        if elapsed < best_time:
            best, best_time = candidate, elapsed
    return best


def sparse_prepack(weight, source_shape: tuple[int, ...] | None = None, *, transpose: bool = False,
                   convolution: bool = False) -> SparseWeight | None:
    """The sparse products of a constant ``weight`` (K x N, ``Y = X @ weight``; ``source_shape``: the shape
    of the node input it comes from, default its own), chosen under the current session's
    ``onyxrt.sparse.*`` settings; None when the dense GEMM should run for every row count (sparse
    execution off, not float32, too few zeros, or the dense GEMM measured faster). ``convolution``: the
    weight of a 1x1 convolution, timed over ``MEASURED_PIXELS`` pixels as ``transposed_product`` runs.
    ``transpose``: the node input is ``weight^T`` (Gemm's ``transB``), whose shape is the source shape."""
    if not isinstance(weight, np.ndarray) or weight.ndim != 2 or weight.dtype != _F32 or weight.size == 0:
        return None
    if transpose:
        source_shape, weight = weight.shape if source_shape is None else source_shape, weight.T
    enabled, threshold, select = _settings()
    if not enabled:
        return None
    zeros = weight.size - np.count_nonzero(weight)
    # in whole elements, rounded down: a weight pruned to the threshold counts however its pruner rounded
    if zeros < math.floor(threshold * weight.size) or zeros == 0:
        return None
    # (imported here: a dense model's sessions never need the formats, ~2 ms of a first session's creation)
    from ....sparsity.formats import CsrWeight, SemiStructuredWeight, is_semi_structured

    sparsity = zeros / weight.size
    source = tuple(weight.shape if source_shape is None else source_shape)
    structured = is_semi_structured(weight)

    def products() -> list[Product]:  # the 2:4 form first: the one "always" takes
        csr = CsrProduct(CsrWeight.from_dense(weight))
        return [SemiStructuredProduct(SemiStructuredWeight.from_dense(weight)), csr] if structured else [csr]

    if select == "always":
        chosen = products()[0]
        note_plan_trait(KERNELS_ON_POOL)
        return SparseWeight(weight.shape, source, sparsity, chosen, chosen)
    pool = current_pool()
    key = (weight.shape, round(sparsity, 2), structured, convolution, pool.num_threads, pool.splits_gemms,
           _CSR_COLUMNS.enabled())
    kinds = _decisions.get(key)
    if kinds == (None, None):
        return None  # measured before for this shape and density: no format to build
    candidates = products()
    if kinds is None:
        many = MEASURED_PIXELS if convolution else MEASURED_ROWS
        choices = (_fastest(weight, candidates, 1, convolution), _fastest(weight, candidates, many, convolution))
        kinds = _decisions[key] = tuple(None if c is None else c.kind for c in choices)
    by_kind = {p.kind: p for p in candidates}
    single_row, many_rows = (by_kind.get(kind) for kind in kinds)
    if single_row is None and many_rows is None:
        return None
    note_plan_trait(KERNELS_ON_POOL)  # its kernels split over the pool (the session's thread mode depends on it)
    return SparseWeight(weight.shape, source, sparsity, single_row, many_rows)
