"""Integer GEMM of 8-bit matrices with zero points: the primitive under every quantized matmul.

    C[m, n] = sum_k (A[m, k] - a_zero_point[m]) * (B[k, n] - b_zero_point[n])      (int32)

A and B are each uint8 or int8 (any of the four pairs); zero points are per tensor, per row of A
and per column of B. The result is computed modulo 2**32, which is the exact value whenever it
fits int32: always when K <= 33025 (every factor is within [-255, 255]); K <= 65793 when B's
factors are within [-128, 128] (int8 weights with zero point 0, as onnxruntime's quantizers write
them). Every route gives bit-identical results.

Routes, chosen once per process by what is installed and what the CPU reports
(``framework.cpu_features``), overridable with ``ONYXRT_INT8_GEMM=vnni|avx2|mkl|numpy``:

* ``vnni``: numba with an AVX-512 VNNI micro-kernel (``int8_gemm_vnni``), B packed once into
  32-column panels. Needs numba (the ``fast`` extra) and ``avx512f`` + ``avx512_vnni``.
* ``avx2``: numba with an AVX2 micro-kernel on int16 pairs (``int8_gemm_avx2``; ``vpmaddwd``, exact,
  unlike AVX2's saturating byte instruction), B minus its zero point packed once as int16 into
  16-column panels, A minus its zero point widened per call (or handed over so by a dynamic quantizer:
  ``CenteredA``). For CPUs with AVX2 but no VNNI:
  ~130 GOPS a core on the AMD EPYC measured, 1.6-1.8x float32 sgemm there (``benchmarks/int8_gemm_avx2.md``).
* ``mkl``: oneMKL's ``cblas_gemm_s8u8s32`` through ctypes (the ``mkl`` extra). On the AMD
  machine measured it is 10-30x slower than ``vnni`` and slower than ``numpy`` too (MKL takes a
  generic path on non-Intel CPUs), so it is chosen automatically first on CPUs with AMX-INT8
  (where MKL uses the tile unit) and after ``vnni`` on other Intel CPUs only.
* ``numpy``: float32 BLAS on the integer values, K split into chunks short enough that every
  partial sum stays below 2**24 (exact in float32 whatever the summation order), chunks added
  in int64. Always available; the fallback.

Measurements: ``benchmarks/int8_gemm.md``. ``A`` and ``B`` are normalized so the kernels see
uint8 A and int8 B: int8 A is shifted by +128 (and its zero point with it), uint8 B by -128.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import importlib
import os
import sys
import threading
from typing import Any, NamedTuple

import numpy as np

from ....framework.cpu_features import cpu_vendor, has_flags
from ....framework.session_config import KERNELS_ON_POOL, note_plan_trait
from ....framework.thread_pool import current_pool
from ..jit import numba_disabled

__all__ = ["PackedInt8B", "ConstantB", "CenteredA", "pack_b", "prepack_constant_b", "gemm_int8", "matmul_int8",
           "matmul_int8_scaled", "centered_width", "selected_route", "available_routes", "ROUTE_ENV"]

ROUTE_ENV = "ONYXRT_INT8_GEMM"
ROUTES = ("vnni", "avx2", "mkl", "numpy")
_F32_EXACT = 1 << 24  # integers up to this magnitude are exact in float32
# multiply-adds below which one thread does the product. Waking a blocked pool worker and joining
# it costs ~50-80 us on this 2-core VM, not the ~15 us of a warm hand-off: measured with 2 threads
# on a quiet machine, 128x384x384 (19M) took 120 us split vs 87 us on one thread, 128x384x1536
# (75M) 276 vs 352 us; the split pays from ~34M multiply-adds (~150 us of VNNI work)
_MIN_PARALLEL_MACS = 1 << 25
# The AVX2 route does about a third of VNNI's multiply-adds a cycle, so its products pay for the
# split from fewer of them: measured on a 2-core AMD EPYC (Zen 3), its workers spinning between native
# tasks, medians of 300 calls, one thread -> two: 128x384x384 (19M) 270 -> 185-220 us, 64x384x384
# (9.4M) 141 -> 107-111 us, 128x384x128 (6.3M) 100 -> 87-130 us, 32x384x384 (4.7M) 80 -> 79-86 us
_MIN_PARALLEL_MACS_AVX2 = 1 << 23
# The VNNI route as a native task on the pool's spinning workers (a hand-off ~3.5 us): measured on a 2-core
# AMD EPYC (Zen 5), one thread -> two, 128x384x1536 (75M) 150 -> 86 us, 128x384x384 (19M) 38 -> 24,
# 32x384x384 (4.7M) 11.2 -> 8.8, 16x384x384 (2.4M) 6.3 -> 6.0
_MIN_PARALLEL_MACS_VNNI = 1 << 22

_U8 = np.dtype(np.uint8)
_S8 = np.dtype(np.int8)


class CenteredA(NamedTuple):
    """A left operand already minus its zero point, as the AVX2 route reads it: ``rows`` (M, width) int16,
    the K columns of A then zeros (``width``: :func:`centered_width`), for A of ``shape`` (..., K). What a
    dynamic quantizer writes directly (``quantization.dynamic_quantize_centered``), saving the uint8 pass
    and the widening one."""

    rows: np.ndarray
    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)


def centered_width(b: PackedInt8B) -> int | None:
    """The row width of a :class:`CenteredA` that ``matmul_int8_scaled`` takes with ``b``; None where ``b``'s
    route reads uint8 A (every route but AVX2)."""
    return 2 * b.panels.shape[1] if b.route == "avx2" else None


# --------------------------------------------------------------------------- routes


class _Lazy:
    """A route's backend, loaded on first use; ``None`` when it cannot run here."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loaded = False
        self.value: Any = None


_VNNI = _Lazy()
_AVX2 = _Lazy()
# the CPU flags each route's module needs (compiling its intrinsics for another CPU aborts the process)
VNNI_FLAGS = ("avx512f", "avx512_vnni")
AVX2_FLAGS = ("avx2",)
_MKL = _Lazy()


def _numba_targets_host(*llvm_features: str) -> bool:
    """numba compiles for this CPU (not one named by NUMBA_CPU_NAME) and LLVM sees ``llvm_features`` on
    it too: an instruction LLVM cannot select for the target aborts the process rather than raising."""
    if os.environ.get("NUMBA_CPU_NAME") or os.environ.get("NUMBA_CPU_FEATURES"):
        return False
    try:
        from llvmlite import binding

        features = binding.get_host_cpu_features()
    except (ImportError, RuntimeError):
        return False
    return all(features.get(name) for name in llvm_features)


def _kernel_module(lazy: _Lazy, name: str, cpu_flags: tuple[str, ...], llvm_features: tuple[str, ...], probe):
    """The numba kernel module ``name`` of a route, imported and probed once (``lazy`` holds it); None
    where numba is disabled or unusable, the CPU lacks ``cpu_flags``, or the probe fails."""
    if numba_disabled():
        return None  # (not remembered: the variable may be cleared later in the process)
    with lazy.lock:
        if not lazy.loaded:
            lazy.loaded = True
            if has_flags(*cpu_flags) and _numba_targets_host(*llvm_features):
                try:
                    module = importlib.import_module(f"{__package__}.{name}")
                    probe(module)
                    lazy.value = module
                except Exception:  # numba missing or broken, or compilation failed: other routes run
                    lazy.value = None
    return lazy.value


def _vnni_module():
    return _kernel_module(_VNNI, "int8_gemm_vnni", VNNI_FLAGS, ("avx512f", "avx512vnni"), _probe_vnni)


def _avx2_module():
    return _kernel_module(_AVX2, "int8_gemm_avx2", AVX2_FLAGS, ("avx2",), _probe_avx2)


def _probe_avx2(module) -> None:
    """Compile (or load from numba's cache) and check the kernels on a small product with a known result."""
    a = np.arange(3 * 7, dtype=np.uint8).reshape(3, 7) * np.uint8(12)
    b = np.arange(7 * 5, dtype=np.int16).reshape(7, 5) * 7 - 120
    panels = module.pack_panels(b)
    a16 = module.widen_a(a, np.full(3, 9, np.int32), 2 * panels.shape[1])
    c = np.empty((3, 5), np.int32)
    module.gemm_s16(a16, panels, c, 0, 3, 0, panels.shape[0])
    expected = (a.astype(np.int64) - 9) @ b.astype(np.int64)
    if not np.array_equal(c, expected):
        raise RuntimeError("AVX2 int8 GEMM probe gave a wrong result")
    scaled = np.empty((3, 5), np.float32)
    half = np.full(module.PANEL, 0.5, np.float32)
    module.gemm_s16_scaled(a16, panels, scaled, 0, 3, 0, panels.shape[0], half, half)
    if not np.array_equal(scaled, expected.astype(np.float32) * np.float32(0.5) + np.float32(0.5)):
        raise RuntimeError("AVX2 int8 GEMM probe (float epilogue) gave a wrong result")


def _probe_vnni(module) -> None:
    """Compile (or load from numba's cache) and check the kernel on a small product with a known result."""
    a = np.arange(3 * 8, dtype=np.uint8).reshape(3, 8)
    b = (np.arange(8 * 5, dtype=np.int16).reshape(8, 5) - 20).astype(np.int8)
    panels = module.pack_panels(b)
    c = np.empty((3, 5), np.int32)
    a_zero = np.full(3, 7, np.int32)
    rows = a.sum(axis=1, dtype=np.int32)
    b_zero = np.zeros(module.PANEL, np.int32)
    b_zero[:5] = [1, -2, 3, 0, 5]
    col_term = np.zeros(module.PANEL, np.int32)
    col_term[:5] = b.sum(axis=0, dtype=np.int32) - 8 * b_zero[:5]
    module.gemm_u8s8(a, panels, c, 0, 3, 0, panels.shape[0], a_zero, rows, col_term, b_zero)
    expected = (a.astype(np.int64) - 7) @ (b.astype(np.int64) - b_zero[:5].astype(np.int64))
    if not np.array_equal(c, expected):
        raise RuntimeError("VNNI int8 GEMM probe gave a wrong result")
    scaled = np.empty((3, 5), np.float32)
    half = np.full(module.PANEL, 0.5, np.float32)
    module.gemm_u8s8_scaled(a, panels, scaled, 0, 3, 0, panels.shape[0], a_zero, rows, col_term, b_zero, half, half)
    if not np.array_equal(scaled, expected.astype(np.float32) * np.float32(0.5) + np.float32(0.5)):
        raise RuntimeError("VNNI int8 GEMM probe (float epilogue) gave a wrong result")


def _mkl_library():
    with _MKL.lock:
        if not _MKL.loaded:
            _MKL.loaded = True
            _MKL.value = _load_mkl()
    return _MKL.value


_MKL_NAMES = ("libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so")


def _mkl_files() -> list[str]:
    """libmkl_rt files of the ``mkl`` wheel (in the environment's lib directory)."""
    return [path for name in _MKL_NAMES for path in glob.glob(os.path.join(sys.prefix, "lib", name))]


def _load_mkl():
    for path in _mkl_files() + list(_MKL_NAMES):
        try:
            lib = ctypes.CDLL(path)
            fn = lib.cblas_gemm_s8u8s32
        except (OSError, AttributeError):
            continue
        c_int = ctypes.c_int  # the LP64 interface, libmkl_rt's default
        fn.restype = None
        fn.argtypes = [c_int, c_int, c_int, c_int, c_int, c_int, c_int, ctypes.c_float,
                       ctypes.c_void_p, c_int, ctypes.c_int8, ctypes.c_void_p, c_int, ctypes.c_int8,
                       ctypes.c_float, ctypes.c_void_p, c_int, ctypes.c_void_p]
        return fn
    return None


def available_routes() -> tuple[str, ...]:
    """The routes that can run in this process, in the order ``auto`` prefers them on this CPU
    (found once per process; while ``ONYXRT_DISABLE_NUMBA`` is set, found anew and not remembered)."""
    return _routes() if numba_disabled() else _remembered_routes()


@functools.cache
def _remembered_routes() -> tuple[str, ...]:
    return _routes()


def _routes() -> tuple[str, ...]:
    routes = []
    vnni = _vnni_module() is not None
    if has_flags("amx_int8", "amx_tile") or (not vnni and cpu_vendor() == "GenuineIntel"):
        mkl = _mkl_library() is not None  # auto may pick it: it must really load
    else:  # last resort only: whether the wheel is there (loading MKL and its OpenMP runtime waits for a use)
        mkl = bool(_mkl_files())
    if mkl and has_flags("amx_int8", "amx_tile"):
        routes.append("mkl")
    if vnni:
        routes.append("vnni")
    if not vnni and _avx2_module() is not None:  # (with VNNI loaded, avx2 is not worth compiling)
        routes.append("avx2")
    if mkl and "mkl" not in routes and cpu_vendor() == "GenuineIntel":
        routes.append("mkl")
    routes.append("numpy")
    if mkl and "mkl" not in routes:  # usable, but slower than numpy's float32 BLAS on this CPU
        routes.append("mkl")
    return tuple(routes)


def selected_route() -> str:
    """The route new packs and products use: ``ONYXRT_INT8_GEMM`` when set and available
    (an unknown or unavailable name is an error), else the first of ``available_routes()``."""
    wanted = os.environ.get(ROUTE_ENV, "").strip().lower()
    if wanted in ("", "auto"):
        return available_routes()[0]
    if wanted not in ROUTES:
        raise ValueError(f"{ROUTE_ENV}={wanted!r}: expected one of auto, {', '.join(ROUTES)}")
    if wanted not in available_routes():
        raise ValueError(f"{ROUTE_ENV}={wanted!r}: that route is not available here (available: "
                         f"{', '.join(available_routes())})")
    return wanted


# --------------------------------------------------------------------------- operands


def _zero_points(zero_point, count: int, name: str, axis_name: str) -> np.ndarray | None:
    """A zero point as an int32 vector of ``count`` (per tensor broadcast); None when absent or all zero."""
    if zero_point is None:
        return None
    zp = np.asarray(zero_point)
    if zp.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got {zp.dtype}")
    if zp.size == 1:
        value = int(zp.reshape(-1)[0])
        return None if value == 0 else np.full(count, value, np.int32)
    flat = zp.reshape(-1)
    if flat.size != count or zp.ndim > 2 or (zp.ndim == 2 and 1 not in zp.shape):
        raise ValueError(f"{name} of shape {zp.shape} is neither per-tensor nor per-{axis_name} ({count})")
    if not flat.any():
        return None
    return flat.astype(np.int32)


def _as_uint8_a(a: np.ndarray, a_zero: np.ndarray | None, m: int):
    """A as uint8 (int8 shifted by +128) and its zero point shifted alike."""
    if a.dtype == _U8:
        return a, a_zero
    shifted = (a.view(np.uint8) ^ np.uint8(0x80))  # int8 x + 128 as uint8
    zero = np.full(m, 128, np.int32) if a_zero is None else a_zero + np.int32(128)
    return shifted, zero


def _check_operands(a: np.ndarray, b_dtype: np.dtype, k_b: int) -> None:
    if a.dtype not in (_U8, _S8) or b_dtype not in (_U8, _S8):
        raise TypeError(f"int8 GEMM operands must be uint8 or int8, got {a.dtype} and {b_dtype}")
    if a.ndim != 2:
        raise ValueError(f"int8 GEMM: A must be 2-D, got shape {a.shape}")
    if a.shape[1] != k_b:
        raise ValueError(f"int8 GEMM: inner dimensions differ: A {a.shape}, B has {k_b} rows")


class PackedInt8B:
    """A right operand B (K, N) with its zero point, prepared once for one route.

    Immutable once built; any number of threads may multiply by it at once. ``nbytes`` is what
    it keeps (about K*N bytes on every route).
    """

    __slots__ = ("k", "n", "dtype", "route", "zero", "col_term", "panels", "values", "values_max", "zeros",
                 "nbytes")

    def __init__(self, b: np.ndarray, b_zero_point=None, route: str | None = None) -> None:
        b = np.asarray(b)
        if b.dtype not in (_U8, _S8) or b.ndim != 2:
            raise TypeError(f"B must be a 2-D uint8 or int8 matrix, got {b.dtype} of shape {b.shape}")
        self.route = route or selected_route()
        self.k, self.n = b.shape
        self.dtype = b.dtype
        zero = _zero_points(b_zero_point, self.n, "b_zero_point", "column")
        self.panels = self.values = self.col_term = self.zeros = None
        self.values_max = 0
        if self.route == "avx2":
            module = _avx2_module()
            if module is None:
                raise ValueError("the avx2 int8 GEMM route is not available here")
            self.panels = module.pack_panels(b.astype(np.int16) - (zero if zero is not None else 0))
            self.zero = None  # subtracted in the pack
        elif self.route == "numpy":
            # B - zero point, as the narrowest integer type holding it (converted per chunk)
            diff = b.astype(np.int16) - (zero if zero is not None else 0)
            if diff.size and -128 <= diff.min() and diff.max() <= 127:
                diff = diff.astype(np.int8)
            self.values = diff
            self.values_max = int(np.abs(diff.astype(np.int32)).max()) if diff.size else 0
            self.zero = None
        else:
            if b.dtype == _U8:  # uint8 x -> int8 x - 128, and the zero point with it
                b = (b ^ np.uint8(0x80)).view(np.int8)
                zero = (zero if zero is not None else np.zeros(self.n, np.int32)) - np.int32(128)
            self.zero = zero
            sums = b.sum(axis=0, dtype=np.int64)
            if zero is not None:
                sums = sums - np.int64(self.k) * zero
            if self.route == "vnni":
                module = _vnni_module()
                if module is None:
                    raise ValueError("the vnni int8 GEMM route is not available here")
                self.panels = module.pack_panels(np.ascontiguousarray(b))
                width = self.panels.shape[0] * module.PANEL
                self.col_term = _padded_int32(sums, width)
                self.zeros = np.zeros(width, np.int32)  # col_term / b_zero when there is nothing to correct
                if zero is not None:
                    self.zero = _padded_int32(zero, width)
            elif self.route == "mkl":
                if _mkl_library() is None:
                    raise ValueError("the mkl int8 GEMM route is not available here (pip install mkl)")
                self.values = np.ascontiguousarray(b)
                self.col_term = _wrap_int32(sums)
            else:
                raise ValueError(f"unknown int8 GEMM route {self.route!r}")
        if self.panels is not None:
            note_plan_trait(KERNELS_ON_POOL)  # packed during a plan build: its products split over the pool
        self.nbytes = sum(x.nbytes for x in (self.panels, self.values, self.col_term, self.zero) if x is not None)
        for x in (self.panels, self.values, self.col_term, self.zero):
            if x is not None:
                x.flags.writeable = False

    @property
    def shape(self) -> tuple[int, int]:
        return (self.k, self.n)


def _wrap_int32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.int64).astype(np.int32)  # modulo 2**32, like every route's arithmetic


def _padded_int32(x: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros(width, np.int32)
    out[: x.shape[0]] = _wrap_int32(x)
    return out


def pack_b(b: np.ndarray, b_zero_point=None, *, route: str | None = None) -> PackedInt8B:
    """Prepare B (K, N, uint8 or int8) and its zero point (per tensor or per column) for
    ``gemm_int8``; ``route`` defaults to ``selected_route()``."""
    return PackedInt8B(b, b_zero_point, route)


class ConstantB:
    """A kernel's prepacked constant B: it stands for B only while the kernel reads the very arrays
    it was packed from (identity, not equality), so a zero point fed at run time falls back."""

    __slots__ = ("inputs", "packed")

    def __init__(self, inputs: tuple, packed: PackedInt8B) -> None:
        self.inputs, self.packed = inputs, packed

    def packed_for(self, *inputs) -> PackedInt8B | None:
        same = len(inputs) == len(self.inputs) and all(x is y for x, y in zip(inputs, self.inputs))
        return self.packed if same else None


def packed_for(prepacked, *inputs) -> PackedInt8B | None:
    """``prepacked.packed_for(*inputs)``, or None when nothing was prepacked."""
    return prepacked.packed_for(*inputs) if isinstance(prepacked, ConstantB) else None


def prepack_constant_b(b, b_zero_point=None, *, transpose: bool = False) -> ConstantB | None:
    """For a kernel's ``prepack=``: B (constant, 2-D, 8-bit) packed with its zero point (per tensor or
    per column), or None when B is not constant or not something ``gemm_int8`` takes (the kernel
    then reports the problem at run time). ``transpose``: the kernel multiplies by B.T."""
    if not isinstance(b, np.ndarray) or b.ndim != 2 or b.dtype not in (_U8, _S8):
        return None
    if b_zero_point is not None and not isinstance(b_zero_point, np.ndarray):
        return None
    try:
        packed = pack_b(np.ascontiguousarray(b.T) if transpose else b, b_zero_point)
    except (TypeError, ValueError):
        return None
    return ConstantB((b, b_zero_point), packed)


# --------------------------------------------------------------------------- the product


def gemm_int8(a: np.ndarray, b: np.ndarray | PackedInt8B, a_zero_point=None, b_zero_point=None,
              *, out: np.ndarray | None = None) -> np.ndarray:
    """``C = (A - a_zero_point) @ (B - b_zero_point)`` as int32, modulo 2**32 (see the module docstring).

    Args:
        a: (M, K) uint8 or int8.
        b: (K, N) uint8 or int8, or a ``PackedInt8B`` (which carries B's zero point; then
            ``b_zero_point`` must be None).
        a_zero_point: None, a scalar, or one value per row of A (M,); same integer range as A.
        b_zero_point: None, a scalar, or one value per column of B (N,).
        out: an optional C-contiguous (M, N) int32 array to write into.

    Returns:
        (M, N) int32 (``out`` when given). Raises TypeError/ValueError on bad dtypes or shapes.
    """
    a = np.asarray(a)
    if isinstance(b, PackedInt8B):
        if b_zero_point is not None:
            raise ValueError("b_zero_point must be None with a packed B (the pack holds it)")
        packed = b
    else:
        b = np.asarray(b)
        if b.ndim != 2:
            raise ValueError(f"int8 GEMM: B must be 2-D, got shape {b.shape}")
        _check_operands(a, b.dtype, b.shape[0])
        packed = None
    b_dtype = packed.dtype if packed is not None else b.dtype
    k_b = packed.k if packed is not None else b.shape[0]
    _check_operands(a, b_dtype, k_b)
    m, k = a.shape
    n = packed.n if packed is not None else b.shape[1]
    if out is None:
        out = np.empty((m, n), np.int32)
    elif out.shape != (m, n) or out.dtype != np.int32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous ({m}, {n}) int32 array")
    a_zero = _zero_points(a_zero_point, m, "a_zero_point", "row")
    if m == 0 or n == 0:
        return out
    if k == 0:
        out.fill(0)
        return out
    if packed is None:
        packed = PackedInt8B(b, b_zero_point, _route_for_one_product(m, k, n))
    if packed.route == "numpy":
        return _gemm_numpy(a, a_zero, packed, out)
    if packed.route == "avx2":
        return _gemm_avx2(a, a_zero, packed, out)
    a_u8, a_zero = _as_uint8_a(a, a_zero, m)
    if packed.route == "vnni":
        return _gemm_vnni(a_u8, a_zero, packed, out)
    return _gemm_mkl(a_u8, a_zero, packed, out)


def _gemm_avx2(a: np.ndarray, a_zero: np.ndarray | None, packed: PackedInt8B, out: np.ndarray,
               epilogue: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    module = _avx2_module()  # loaded: the pack was made on this route
    zero = a_zero if a_zero is not None else np.zeros(a.shape[0], np.int32)
    a16 = module.widen_a(np.ascontiguousarray(a), zero, 2 * packed.panels.shape[1])  # (A - a_zero), K padded
    return _gemm_avx2_centered(a16, packed, out, epilogue)


def _gemm_avx2_centered(a16: np.ndarray, packed: PackedInt8B, out: np.ndarray,
                        epilogue: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The AVX2 product of A already minus its zero point (``widen_a``'s int16 rows, K padded)."""
    module = _avx2_module()
    kernel = module.gemm_s16 if epilogue is None else module.gemm_s16_scaled
    _run_panels(kernel, a16, packed, out, epilogue or (), native=module, min_macs=_MIN_PARALLEL_MACS_AVX2)
    return out


def _route_for_one_product(m: int, k: int, n: int) -> str:
    """The route for an unpacked B: packing costs about one pass over B, worth it unless M is tiny."""
    route = selected_route()
    if route != "numpy" and m < 4 and os.environ.get(ROUTE_ENV, "") in ("", "auto"):
        return "numpy"
    return route


def _flat_row_zero_point(zero_point, a_shape: tuple[int, ...]):
    """A's zero point for A flattened to rows: per row ((M,) or (..., M, 1)) as a flat vector; as given
    when per tensor."""
    if zero_point is None or np.size(zero_point) <= 1:
        return zero_point
    zp = np.asarray(zero_point)
    if zp.ndim >= 2 and zp.shape[-1] == 1:
        zp = zp[..., 0]
    return np.broadcast_to(zp, a_shape[:-1]).reshape(-1)


def matmul_int8(a: np.ndarray, b: np.ndarray | PackedInt8B, a_zero_point=None, b_zero_point=None) -> np.ndarray:
    """``gemm_int8`` with numpy matmul's batching: A (..., M, K) times B (K, N) (or packed), or both
    batched with broadcasting. A per-row ``a_zero_point`` applies to A's last-but-one axis (M)."""
    a = np.asarray(a)
    if isinstance(b, PackedInt8B) or np.ndim(b) == 2:
        if a.ndim == 2:
            return gemm_int8(a, b, a_zero_point, b_zero_point)
        if a.ndim < 2:
            raise ValueError(f"int8 matmul: A must have rank >= 2 here, got shape {a.shape}")
        zp = _flat_row_zero_point(a_zero_point, a.shape)
        flat = np.ascontiguousarray(a).reshape(-1, a.shape[-1])
        n = b.n if isinstance(b, PackedInt8B) else np.shape(b)[1]
        return gemm_int8(flat, b, zp, b_zero_point).reshape(a.shape[:-1] + (n,))
    b = np.asarray(b)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"int8 matmul needs rank >= 2 operands, got {a.shape} and {b.shape}")
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a3 = np.broadcast_to(a, batch + a.shape[-2:]).reshape((-1,) + a.shape[-2:])
    b3 = np.broadcast_to(b, batch + b.shape[-2:]).reshape((-1,) + b.shape[-2:])
    out = np.empty((a3.shape[0], a.shape[-2], b.shape[-1]), np.int32)
    for i in range(a3.shape[0]):
        gemm_int8(np.ascontiguousarray(a3[i]), b3[i], a_zero_point, b_zero_point, out=out[i])
    return out.reshape(batch + (a.shape[-2], b.shape[-1]))


def matmul_int8_scaled(a: np.ndarray, b: PackedInt8B, a_zero_point, column_scale, bias=None) -> np.ndarray:
    """float32 ``y = float32(matmul_int8(a, b, a_zero_point)); y *= column_scale; y += bias``.

    The dequantizing epilogue of MatMulIntegerToFloat / DynamicQuantizeMatMul, with numpy's roundings
    (a float32 multiply, then an add). ``column_scale``: float32 scalar or (N,); ``bias``: None or
    float32 (N,). On the VNNI route it is applied in the GEMM's registers (no int32 C is written).
    ``a`` may be a :class:`CenteredA` (A quantized straight to the AVX2 route's rows; ``a_zero_point`` unused)
    when ``b`` is packed for that route.
    """
    if isinstance(a, CenteredA):
        if b.route != "avx2" or a.shape[-1] != b.k or a.rows.shape[1] != centered_width(b):
            raise ValueError(f"a CenteredA of shape {a.shape} needs B (K = {b.k}) packed for the avx2 route")
        return _scaled_avx2(a, b, None, _column_scale(column_scale, bias, b.n), bias)
    if (b.route == "vnni" and type(a) is np.ndarray and a.dtype == _U8 and a.ndim >= 2 and a.shape[-1] == b.k
            and b.k % 4 == 0 and a.size and b.n and a.flags.c_contiguous
            and (a_zero_point is None or np.ndim(a_zero_point) == 0)):
        return _scaled_vnni(a, b, a_zero_point, column_scale, bias)  # the common case, with less per-call work
    a = np.asarray(a)
    n = b.n
    scale = _column_scale(column_scale, bias, n)
    if b.route == "avx2" and a.ndim >= 2 and a.shape[-1] == b.k and a.dtype in (_U8, _S8):
        return _scaled_avx2(a, b, a_zero_point, scale, bias)
    if b.route == "vnni" and a.ndim >= 2 and a.shape[-1] == b.k:
        flat = np.ascontiguousarray(a).reshape(-1, a.shape[-1])
        m = flat.shape[0]
        a_zero = _zero_points(a_zero_point, m, "a_zero_point", "row") if np.size(a_zero_point) <= 1 else None
        if a_zero_point is None or np.size(a_zero_point) <= 1:
            _check_operands(flat, b.dtype, b.k)
            out = np.empty((m, n), np.float32)
            if m and n:
                width = b.col_term.shape[0]
                col_scale = np.zeros(width, np.float32)
                col_scale[:n] = scale
                padded_bias = np.zeros(width, np.float32)
                if bias is not None:
                    padded_bias[:n] = bias
                a_u8, a_zero = _as_uint8_a(flat, a_zero, m)
                if b.k == 0:
                    out[:] = np.float32(0) * col_scale[:n] + padded_bias[:n]
                else:
                    _gemm_vnni(a_u8, a_zero, b, out, (col_scale, padded_bias))
            return out.reshape(a.shape[:-1] + (n,))
    y = matmul_int8(a, b, a_zero_point).astype(np.float32)
    y *= scale if scale.size > 1 else scale.reshape(())
    if bias is not None:
        y += bias
    return y


def _column_scale(column_scale, bias, n: int) -> np.ndarray:
    """``column_scale`` as float32, checked with ``bias`` against N."""
    scale = np.asarray(column_scale, dtype=np.float32)
    if scale.size not in (1, n) or (bias is not None and np.shape(bias) != (n,)):
        raise ValueError(f"column_scale {scale.shape} and bias {np.shape(bias)} must be scalars or ({n},) vectors")
    return scale


def _scaled_avx2(a: np.ndarray | CenteredA, packed: PackedInt8B, a_zero_point, scale: np.ndarray, bias) -> np.ndarray:
    """``matmul_int8_scaled`` on the AVX2 route: the scale and bias applied in the GEMM's registers."""
    n = packed.n
    m = a.rows.shape[0] if isinstance(a, CenteredA) else int(np.prod(a.shape[:-1]))
    out = np.empty((m, n), np.float32)
    if m and n:
        width = packed.panels.shape[0] * _avx2_module().PANEL
        col_scale = np.zeros(width, np.float32)
        col_scale[:n] = scale
        padded_bias = np.zeros(width, np.float32)
        if bias is not None:
            padded_bias[:n] = bias
        if isinstance(a, CenteredA):
            _gemm_avx2_centered(a.rows, packed, out, (col_scale, padded_bias))
        else:
            a_zero = _zero_points(_flat_row_zero_point(a_zero_point, a.shape), m, "a_zero_point", "row")
            _gemm_avx2(a.reshape(m, a.shape[-1]), a_zero, packed, out, (col_scale, padded_bias))
    return out.reshape(a.shape[:-1] + (n,))


def _scaled_vnni(a: np.ndarray, packed: PackedInt8B, a_zero_point, column_scale, bias) -> np.ndarray:
    """``matmul_int8_scaled`` for a C-contiguous uint8 A with K a multiple of 4 and a per-tensor zero point."""
    module = _vnni_module()
    n, k = packed.n, packed.k
    m = a.size // k
    width = packed.col_term.shape[0]
    col_scale = np.zeros(width, np.float32)
    col_scale[:n] = column_scale
    padded_bias = np.zeros(width, np.float32)
    if bias is not None:
        if np.shape(bias) != (n,):
            raise ValueError(f"bias of shape {np.shape(bias)} is not ({n},)")
        padded_bias[:n] = bias
    flat = a.reshape(m, k)
    zero = 0 if a_zero_point is None else int(a_zero_point)
    a_zero = np.full(m, zero, np.int32)
    rows = _row_sums(flat) if packed.zero is not None else np.zeros(m, np.int32)
    col_term = packed.col_term if zero else packed.zeros
    b_zero = packed.zero if packed.zero is not None else packed.zeros
    out = np.empty(a.shape[:-1] + (n,), np.float32)
    _run_panels(module.gemm_u8s8_scaled, flat, packed, out.reshape(m, n),
                (a_zero, rows, col_term, b_zero, col_scale, padded_bias), native=module, min_macs=_MIN_PARALLEL_MACS_VNNI)
    return out


def _gemm_numpy(a: np.ndarray, a_zero: np.ndarray | None, packed: PackedInt8B, out: np.ndarray) -> np.ndarray:
    m, k = a.shape
    af = a.astype(np.float32)
    if a_zero is not None:
        af -= a_zero.astype(np.float32)[:, None]
    b_vals = packed.values
    a_max = float(np.abs(af).max()) if af.size else 0.0
    b_max = float(packed.values_max)
    if a_max == 0.0 or b_max == 0.0:
        out.fill(0)
        return out
    # every partial sum of a chunk is at most chunk * a_max * b_max in magnitude: keep it below 2**24
    chunk = max(1, int(_F32_EXACT // (a_max * b_max)))
    if chunk >= k:
        np.copyto(out, np.matmul(af, b_vals.astype(np.float32)), casting="unsafe")
        return out
    total = np.zeros((m, packed.n), np.int64)
    for k0 in range(0, k, chunk):
        part = np.matmul(af[:, k0:k0 + chunk], b_vals[k0:k0 + chunk].astype(np.float32))
        total += part.astype(np.int64)
    np.copyto(out, total.astype(np.int32))  # modulo 2**32, as the other routes
    return out


def _row_sums(a_u8: np.ndarray) -> np.ndarray:
    return a_u8.sum(axis=1, dtype=np.int64).astype(np.int32)


def _gemm_vnni(a_u8: np.ndarray, a_zero: np.ndarray | None, packed: PackedInt8B, out: np.ndarray,
               epilogue: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    module = _vnni_module()
    if module is None:
        raise ValueError("the vnni int8 GEMM route is not available here")
    m, k = a_u8.shape
    k4 = packed.panels.shape[1]
    if k != 4 * k4 or not a_u8.flags.c_contiguous:
        padded = np.zeros((m, 4 * k4), np.uint8)  # zero columns: the kernel reads K in groups of 4
        padded[:, :k] = a_u8
        a_u8 = padded
    a_zero_vec = a_zero if a_zero is not None else np.zeros(m, np.int32)
    rows = _row_sums(a_u8) if packed.zero is not None else np.zeros(m, np.int32)
    col_term = packed.col_term if a_zero is not None else packed.zeros
    b_zero = packed.zero if packed.zero is not None else packed.zeros
    kernel = module.gemm_u8s8 if epilogue is None else module.gemm_u8s8_scaled
    _run_panels(kernel, a_u8, packed, out, (a_zero_vec, rows, col_term, b_zero) + (epilogue or ()), native=module,
                min_macs=_MIN_PARALLEL_MACS_VNNI)
    return out


def _run_panels(kernel, a: np.ndarray, packed: PackedInt8B, out: np.ndarray, tail: tuple, native=None,
                min_macs: int = _MIN_PARALLEL_MACS) -> None:
    """A panel kernel (VNNI or AVX2) over all of C, split over the session's pool when the product has
    ``min_macs`` multiply-adds or more (:data:`_MIN_PARALLEL_MACS` where the pool's workers do not spin);
    as a native task where ``native`` (the kernel's module) has one (``gemm_part``, ``task_args``) and the
    pool runs native tasks, else as Python tasks."""
    m, k = a.shape
    panels = packed.panels.shape[0]
    args = (packed.panels, out)
    pool = current_pool()
    macs = m * k * packed.n
    if not pool.workers_spin:  # each split wakes a blocked worker
        min_macs = max(min_macs, _MIN_PARALLEL_MACS)
    if pool.num_threads < 2 or macs < min_macs:
        kernel(a, *args, 0, m, 0, panels, *tail)
    elif native is not None and pool.runs_native_tasks:
        by_panels = m < 8 * pool.num_threads
        task = native.task_args(a, packed.panels, out, by_panels, tail)
        pool.run_native(native.gemm_part.address, task, min(pool.num_threads, panels if by_panels else m))
    elif m >= 8 * pool.num_threads:  # rows: each part writes its own block of C
        pool.run_chunks(lambda r0, r1: kernel(a, *args, r0, r1, 0, panels, *tail), m, macs, min_macs)
    else:  # few rows (a decoding step): split the panels
        pool.run_chunks(lambda p0, p1: kernel(a, *args, 0, m, p0, p1, *tail), panels, macs, min_macs)


_ROW_MAJOR, _NO_TRANS, _FIX_OFFSET = 101, 111, 173


def _gemm_mkl(a_u8: np.ndarray, a_zero: np.ndarray | None, packed: PackedInt8B, out: np.ndarray) -> np.ndarray:
    fn = _mkl_library()
    if fn is None:
        raise ValueError("the mkl int8 GEMM route is not available here (pip install mkl)")
    a_u8 = np.ascontiguousarray(a_u8)
    m, k = a_u8.shape
    n = packed.n
    c_offset = np.zeros(1, np.int32)
    # Zero points are applied below rather than through MKL's int8 offsets: a uint8 zero point
    # (up to 255) does not fit MKL_INT8.
    fn(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, _FIX_OFFSET, m, n, k, 1.0, a_u8.ctypes.data, k, 0,
       packed.values.ctypes.data, n, 0, 0.0, out.ctypes.data, n, c_offset.ctypes.data)
    with np.errstate(over="ignore"):
        if a_zero is not None:
            out -= a_zero[:, None] * packed.col_term[None, :]
        if packed.zero is not None:
            out -= _row_sums(a_u8)[:, None] * packed.zero[None, :]
    return out


def max_exact_k() -> int:
    """The largest K for which every result fits int32 whatever the values and zero points."""
    return (2**31 - 1) // (255 * 255)

