"""Constant arrays onyxrt prepares itself (a GEMV's transposed weights), in transparent huge pages where the OS has them.

A product of one row by a weight matrix that does not stay in the caches (a decoding step's projections) streams the
matrix from memory. In 4 KiB pages the CPU's prefetchers stop at every page boundary and each page costs a TLB
entry; in 2 MiB pages they run on. Measured on 2 Zen 5 cores (a VM, transparent huge pages on ``madvise``), a GEMV
on B^T from memory, OpenBLAS's two threads: 512 x 512 42 -> 30 us, 1408 x 512 63 -> 59, 2816 x 512 119 -> 110.

Linux gives huge pages to anonymous memory marked ``MADV_HUGEPAGE`` (with ``transparent_hugepage`` set to ``madvise``
or ``always``). Arrays are cut from chunks of such memory (so that a 1 MiB matrix does not hold a 2 MiB page of its
own); a chunk is unmapped when the last array cut from it is gone. Elsewhere (another OS, huge pages off, small
arrays) :func:`constant_array` is ``np.empty``.

A model's initializers are not copied here: a huge page costs about four times its small pages to fault in (the
kernel zeroes and compacts), 400 MB 81 -> 312 ms, and bert_base's session creation went from 0.70 to 1.3-1.5 s
(onnxruntime's 0.52-0.58) for a 5 % faster vocabulary head in llama_tiny's decoding step.
"""

from __future__ import annotations

import math
import mmap
import threading

import numpy as np

HUGE_PAGE = 2 << 20
CHUNK_BYTES = 32 << 20  # memory mapped at a time: arrays are cut from it until it is full
MIN_BYTES = 256 << 10  # smaller arrays stay in the C library's heap
_ALIGN = 64  # each array starts on a cache line

_lock = threading.Lock()
_chunk: list = [None, 0]  # the chunk arrays are being cut from, and the bytes of it handed out


def _usable() -> bool:
    return hasattr(mmap, "MADV_HUGEPAGE") and hasattr(mmap, "MAP_ANONYMOUS")


def constant_array(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A new writable array of ``shape`` and ``dtype`` (contents undefined) for constant data the session prepares
    once: in huge pages where :mod:`huge_pages` applies, else from ``np.empty``."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or not _usable():
        return np.empty(shape, dtype)
    with _lock:
        memory, used = _chunk
        if memory is None or used + nbytes > len(memory):
            try:
                memory = mmap.mmap(-1, max(CHUNK_BYTES, -(-nbytes // HUGE_PAGE) * HUGE_PAGE),
                                   flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
                memory.madvise(mmap.MADV_HUGEPAGE)
            except (OSError, ValueError):  # no memory to map, or the advice refused: the heap will do
                return np.empty(shape, dtype)
            used = 0
        _chunk[0], _chunk[1] = memory, -(-(used + nbytes) // _ALIGN) * _ALIGN
    return np.frombuffer(memory, dtype, math.prod(shape), used).reshape(shape)
