"""Keeping freed host memory in the process while sessions run: onyxrt's CPU memory arena.

onnxruntime's CPU arena holds the memory of one run for the next. onyxrt's kernels allocate
through numpy, that is through the C library's ``malloc``. glibc returns large freed blocks
to the kernel at once (``mmap`` above a threshold, ``trim`` of the heap's top), so every run
of a model pays a page fault for each 4 KiB page of its activations again: measured on
minilm_l6 at sequence 128, 11,000 faults and about 20 ms a run, two thirds of its kernels' time.

While a session with ``SessionOptions.enable_cpu_mem_arena`` (onnxruntime's default, True)
is alive, glibc is told to serve blocks up to 32 MiB from its heap and to keep up to
``TRIM_THRESHOLD`` freed bytes there, so a repeated run reuses the same pages. When the last
such session is garbage-collected, the kept memory is handed back (``malloc_trim``). Like
onnxruntime's arena this holds memory between runs; unlike it, the setting is the process's
(glibc has one allocator), so other code in the process keeps freed memory too while such a
session lives. Other C libraries (musl, macOS, Windows) are left alone.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from typing import Any

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts; larger blocks are mapped and unmapped as before
TRIM_THRESHOLD = 1 << 30  # freed bytes glibc may keep at its heap's top before returning them

_lock = threading.Lock()
_holders = 0
_libc: Any = None


def _glibc() -> Any:
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    global _libc
    if _libc is None:
        try:
            # the process's own symbols, which hold the C library's (``ctypes.util.find_library`` runs ldconfig in a
            # subprocess: ~3 ms of the first session's creation)
            libc = ctypes.CDLL(None)
            libc.gnu_get_libc_version  # glibc only
            libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
            libc.malloc_trim.argtypes = (ctypes.c_size_t,)
            _libc = libc
        except (OSError, AttributeError, TypeError):  # (TypeError: Windows has no process handle to open)
            _libc = False
    return _libc or None


def hold_for(owner: object) -> bool:
    """Keep freed memory in the process until ``owner`` (a session) is garbage-collected.

    Returns whether the C library honours it (glibc).
    """
    global _holders
    libc = _glibc()
    if libc is None:
        return False
    with _lock:
        if _holders == 0:
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        _holders += 1
    weakref.finalize(owner, _release)
    return True


def _release() -> None:
    global _holders
    with _lock:
        _holders -= 1
        if _holders == 0:
            # new blocks are mapped at 128 KiB and up again (glibc's default), and the heap's
            # free top goes back to the kernel now and after each later free beyond 128 KiB
            _libc.mallopt(_M_MMAP_THRESHOLD, 128 << 10)
            _libc.mallopt(_M_TRIM_THRESHOLD, 128 << 10)
            _libc.malloc_trim(0)


def holders() -> int:
    """How many live sessions keep freed memory in the process now."""
    return _holders
