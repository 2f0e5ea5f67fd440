"""How long OpenBLAS's threads spin after a GEMM before they sleep.

OpenBLAS (the BLAS inside numpy's wheels) keeps each of its threads spinning for 2^n CPU
ticks after a parallel call, ``n = OPENBLAS_THREAD_TIMEOUT`` (default 28: about 0.1 s), read
when its thread pool starts. A session running a few times a second therefore keeps a core
busy between runs, and an idle second after a run costs 0.1 CPU-second.

Before its first run, onyxrt shortens that to 2^20 ticks (about 0.4 ms): enough for the
GEMMs that follow each other within a run, and short after a run, so idle costs next to
nothing. Measured on 2 cores (resnet50, mobilenet_v2, minilm_l6, llama decode), runs are as
fast as with 2^22 or 2^28 and steadier: with the longer spins, runs went ~35% slower for
seconds at a time (a spinning thread beside the single-threaded kernels), with 2^20 rarely. OpenBLAS applies the value when its pool (re)starts, so onyxrt re-reads the
environment through ``openblas_read_env`` and stops the pool (``blas_thread_shutdown_``); the
next parallel call starts it again. The pool must not be working at that moment, so this is
done only while no thread other than onyxrt's own is alive in the process (a program whose
other threads might be inside numpy at that moment keeps OpenBLAS's default). An
``OPENBLAS_THREAD_TIMEOUT`` set by the user is left as it is, and the process environment is
left unchanged (the value is set only while OpenBLAS reads it).
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any, Sequence

# 2^20 ticks: ~0.4 ms at 2.6 GHz.
IDLE_SPIN_EXPONENT = 20
_ENV = "OPENBLAS_THREAD_TIMEOUT"
_done = False
_lock = threading.Lock()


def shorten_idle_spin(libraries: Sequence[Any]) -> list[str]:
    """Apply the short spin to the OpenBLAS libraries among threadpoolctl's ``libraries``
    (once per process); returns the paths of those changed."""
    global _done
    with _lock:
        if _done:
            return []
        _done = True
        if _ENV in os.environ or not _only_onyxrt_threads():
            return []
        changed = []
        for library in libraries:
            if getattr(library, "internal_api", "") != "openblas":
                continue
            try:
                dll = ctypes.CDLL(library.filepath)
                read_env, shutdown, timeout = dll.openblas_read_env, dll.blas_thread_shutdown_, dll.openblas_thread_timeout
            except (OSError, AttributeError):  # another build: leave it alone
                continue
            os.environ[_ENV] = str(IDLE_SPIN_EXPONENT)
            try:
                read_env()
            finally:
                del os.environ[_ENV]
            if timeout() == IDLE_SPIN_EXPONENT:
                shutdown()  # restarted, with the new timeout, by the next parallel call
                changed.append(library.filepath)
        return changed


def _only_onyxrt_threads() -> bool:
    """Whether every live Python thread but the calling one is an onyxrt worker."""
    current = threading.current_thread()
    return all(thread is current or thread.name.startswith("onyxrt-") for thread in threading.enumerate())
