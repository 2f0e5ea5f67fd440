"""The BLAS libraries loaded in the process, each with its thread count's getter and setter.

Sessions cap the threads of the BLAS numpy calls (``thread_pool``), shorten OpenBLAS's idle spin
(``openblas_spin``) and call its ``cblas_sgemm`` directly (``providers/cpu/native_sgemm``); all three need the loaded
libraries. threadpoolctl finds them by resolving the path of every shared object in the process (68 with numpy,
onnx and numba loaded: 3.6-6 ms on a 2-vCPU Zen 3, plus ~2 ms importing threadpoolctl, in the first session's
creation, whose whole is ~40 ms). On Linux the libraries' names are read from ``/proc/self/maps`` instead, and where
every BLAS among them is an OpenBLAS with pthreads (numpy's wheels bundle one), each is reached through its own
symbols (:class:`OpenBLASLibrary`); any other BLAS (MKL, BLIS, FlexiBLAS, a reference ``libblas``), another system,
or an OpenBLAS whose symbols are not found falls back to threadpoolctl's controllers, where it is installed.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import sys
from typing import Any, Callable

# Name prefixes of the shared objects threadpoolctl recognizes as BLAS (its controllers' ``filename_prefixes``).
_OPENBLAS_PREFIXES = ("libopenblas", "libscipy_openblas")
_OTHER_BLAS_PREFIXES = ("libblas", "libblis", "libflexiblas", "libmkl_rt", "mkl_rt")
# OpenBLAS's ``openblas_get_parallel``: 0 sequential, 1 pthreads, 2 OpenMP (threadpoolctl's names for them)
_OPENMP = 2
_THREADING_LAYERS = {0: "disabled", 1: "pthreads"}


class OpenBLASLibrary:
    """An OpenBLAS (pthreads or sequential, not OpenMP) library's process-wide thread count through its own getter and setter, with the
    attributes of threadpoolctl's controllers that onyxrt reads (``filepath``, ``internal_api``,
    ``threading_layer``, ``num_threads``, ``set_num_threads``).

    threadpoolctl's controller calls the same two functions, behind a lock and a symbol lookup per call (~1 us a
    run's limit and restore), and from version 3.8 on ignores the setter on any thread but the first that called it,
    which would leave BLAS's threads unlimited for a session run on another thread (``run_async``, a server's
    workers). Callers serialize the setter (``thread_pool``'s limit holds a lock)."""

    __slots__ = ("filepath", "threading_layer", "_get", "set_num_threads")
    internal_api = "openblas"

    def __init__(self, filepath: str, threading_layer: str, get: Callable[[], int],
                 set_num_threads: Callable[[int], None]) -> None:
        self.filepath = filepath
        self.threading_layer = threading_layer
        self._get = get
        self.set_num_threads = set_num_threads

    @property
    def num_threads(self) -> int:
        return self._get()


def loaded_blas_libraries() -> list[Any]:
    """The BLAS libraries loaded in the process: :class:`OpenBLASLibrary` objects, or threadpoolctl's controllers
    (those of OpenBLAS builds with pthreads as :class:`OpenBLASLibrary` too) where the fast scan cannot tell;
    empty where there are none, or only threadpoolctl could find them and it is not installed."""
    direct = _openblas_from_maps()
    if direct is not None:
        return direct
    try:
        import threadpoolctl
    except ImportError:  # optional at run time: BLAS then keeps its own thread count
        return []
    return [_direct(controller) for controller in threadpoolctl.ThreadpoolController().select(user_api="blas")
            .lib_controllers]


def _openblas_from_maps(maps_path: str = "/proc/self/maps") -> list[OpenBLASLibrary] | None:
    """The OpenBLAS libraries named in the process's memory map (``maps_path``), reached through their symbols; None
    where that does not settle it (not Linux, another BLAS loaded, an OpenBLAS with OpenMP or without the
    symbols)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open(maps_path, encoding="utf-8", errors="replace") as maps:
            fields = (line.split(None, 5) for line in maps)
            paths = {parts[5].strip() for parts in fields if len(parts) == 6 and parts[5].startswith("/")}
    except OSError:
        return None
    found = []
    for path in sorted(paths):
        name = os.path.basename(path)
        if name.startswith(_OTHER_BLAS_PREFIXES):
            return None
        if name.startswith(_OPENBLAS_PREFIXES) and ".so" in name:
            library = _openblas(path)
            if library is None:
                return None
            found.append(library)
    return found


def _openblas(path: str) -> OpenBLASLibrary | None:
    """The OpenBLAS at ``path`` through its thread-count symbols (the builds' names: ``scipy_`` prefixed, ``64_``
    or ``_64`` suffixed), None where they are missing or it runs on OpenMP's threads."""
    try:
        library = ctypes.CDLL(path)
    except OSError:
        return None
    for prefix, suffix in itertools.product(("", "scipy_"), ("", "64_", "_64")):
        get = getattr(library, f"{prefix}openblas_get_num_threads{suffix}", None)
        set_num_threads = getattr(library, f"{prefix}openblas_set_num_threads{suffix}", None)
        parallel = getattr(library, f"{prefix}openblas_get_parallel{suffix}", None)
        if get is not None and set_num_threads is not None and parallel is not None:
            layer = parallel()
            if layer == _OPENMP:
                return None
            return OpenBLASLibrary(path, _THREADING_LAYERS.get(layer, "unknown"), get, set_num_threads)
    return None


def _direct(controller: Any) -> Any:
    """A threadpoolctl controller of an OpenBLAS with pthreads as :class:`OpenBLASLibrary`; any other as it is."""
    if getattr(controller, "internal_api", "") != "openblas" or getattr(controller, "threading_layer", "") == "openmp":
        return controller
    return _openblas(controller.filepath) or controller
