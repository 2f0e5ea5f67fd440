"""Optional numba compilation of CPU kernels, with the numpy path as the fallback.

numba is the ``fast`` extra. A :class:`LazyKernel` compiles its plain-Python function on
first use (not at import or session creation) with ``cache=True`` (numba writes next to the
module when that is writable, else in its user-wide cache; ``NUMBA_CACHE_DIR`` overrides both;
with no writable directory it compiles in each process), ``nogil`` so concurrent runs proceed
in parallel, and fastmath off. Where numba is missing, fails to import or fails to compile, or
``ONYXRT_DISABLE_NUMBA=1``, the kernel reports itself unusable and callers run numpy.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Hashable

import numpy as np

DISABLE_ENV = "ONYXRT_DISABLE_NUMBA"
# Kernels ask on every call whether numba is disabled (tests and users may set the variable at any time):
# ``os.environ.get`` encodes the key and decodes the value (~1 us), a lookup in the mapping it keeps
# (``_data``, CPython's) ~0.1 us. Where that mapping is not there, ``os.environ`` is read as usual.
_ENVIRON_DATA = getattr(os.environ, "_data", None)
_DISABLE_KEY = os.environ.encodekey(DISABLE_ENV) if hasattr(os.environ, "encodekey") else None
_NOT_DISABLED = frozenset({"", "0", b"", b"0"})


def numba_disabled() -> bool:
    """Whether ``ONYXRT_DISABLE_NUMBA`` is set to something other than "" or "0" (read now, not cached)."""
    if _ENVIRON_DATA is not None and _DISABLE_KEY is not None:
        value = _ENVIRON_DATA.get(_DISABLE_KEY)
        return value is not None and value not in _NOT_DISABLED
    return os.environ.get(DISABLE_ENV, "") not in ("", "0")


def read_only(a: np.ndarray) -> np.ndarray:
    """``a`` typed read-only for numba: its kernels then compile one specialization for inputs that are
    weights (read-only) and activations (writable) alike."""
    if not a.flags.writeable:
        return a
    view = a.view()
    view.flags.writeable = False
    return view


def optional_module(name: str) -> Any:
    """The module ``name`` (one that imports numba at its top), imported on first use; None where numba
    is disabled (``ONYXRT_DISABLE_NUMBA``) or the import fails (numba missing or broken, no cache
    directory), so that callers take their fallback path."""
    if name not in _OPTIONAL_MODULES:
        if numba_disabled():
            return None  # (not remembered: the variable may be cleared later in the process)
        try:
            module = importlib.import_module(name)
        except Exception:  # numba's errors have no common base
            module = None
        _OPTIONAL_MODULES[name] = module
    return _OPTIONAL_MODULES[name]


_OPTIONAL_MODULES: dict[str, Any] = {}


class LazyKernel:
    """``function`` compiled by numba on first use; ``failed`` once numba proved unusable for it."""

    def __init__(self, function: Callable[..., Any] | None) -> None:
        self.function = function
        self.kernel: Callable[..., Any] | None = None
        self.failed = False
        self.compiled: set = set()  # keys (e.g. dtypes) whose specialization compiled or loaded from the cache

    def get(self) -> Callable[..., Any] | None:
        """The numba dispatcher, created (not yet compiled) on the first call; None without numba."""
        if self.kernel is None and not self.failed:
            try:
                self.kernel = self._create()
            except (ImportError, OSError):  # numba absent, or broken (numpy version, llvmlite library)
                self.failed = True
        return self.kernel

    def _create(self) -> Callable[..., Any]:
        import numba

        try:
            return numba.njit(cache=True, nogil=True)(self.function)
        except RuntimeError:  # no writable cache directory anywhere: compile in each process
            return numba.njit(nogil=True)(self.function)

    def enabled(self) -> bool:
        """Whether the compiled kernel may be used (numba importable, not disabled by the environment)."""
        return not numba_disabled() and self.get() is not None

    def compiled_for(self, key: Hashable, *probe: Any) -> Callable[..., Any] | None:
        """The kernel, compiled for ``key`` by calling it once with ``probe`` (arguments that do no work);
        None when it cannot be used, after which the caller runs its numpy path."""
        if not self.enabled():
            return None
        if key not in self.compiled:
            try:
                self.kernel(*probe)
            except Exception:  # numba's compile errors have no common base; any makes the numpy path run
                self.failed = True
                self.kernel = None
                return None
            self.compiled.add(key)
        return self.kernel


class LazyModuleKernel(LazyKernel):
    """The kernel ``name`` of a module that imports numba itself, imported on first use.

    For kernels calling other jitted functions, which must already be numba functions when
    the kernel compiles. Such a module decorates with ``cache=True``: where no cache directory
    is writable it fails to import, and the numpy path runs.
    """

    def __init__(self, module: str, name: str) -> None:
        super().__init__(None)
        self.module = module
        self.name = name

    def _create(self) -> Callable[..., Any]:
        try:
            return getattr(importlib.import_module(self.module), self.name)
        except RuntimeError as error:  # numba's "cannot cache" error
            raise ImportError(str(error)) from error
