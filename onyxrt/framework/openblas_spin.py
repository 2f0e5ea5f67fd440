"""How long OpenBLAS's threads spin after a GEMM before they sleep.

OpenBLAS (the BLAS inside numpy's wheels) keeps each of its threads spinning for 2^n CPU
ticks after a parallel call, ``n = OPENBLAS_THREAD_TIMEOUT`` (default 28: about 0.1 s), read
when its thread pool starts. A session running a few times a second therefore keeps a core
busy between runs, and an idle second after a run costs 0.1 CPU-second.

Before its first run, onyxrt shortens that to 2^24 ticks (about 6 ms): longer than the gaps
between the parallel GEMMs of one run, and short after a run, so idle costs next to nothing.
Measured on 2 cores (a virtual machine): a thread that has gone to sleep takes long to wake
up again (waking a virtual CPU), so shorter spins make runs that follow a pause slower (llama
decode after 0.1 s idle: 19.7 ms a token at 2^20, 9.9 at 2^22, 7.4 at 2^24, 6.2 at 2^28; back
to back 5.6 ms). OpenBLAS applies the value when its pool (re)starts, so onyxrt re-reads the
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

# 2^24 ticks: ~6 ms at 2.6 GHz.
IDLE_SPIN_EXPONENT = 24
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
