"""Constant arrays onyxrt prepares itself, cut from huge-page chunks (framework/huge_pages.py)."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from onyxrt.framework import huge_pages


def test_small_arrays_come_from_the_heap() -> None:
    a = huge_pages.constant_array((4, 5), np.float32)
    assert a.shape == (4, 5) and a.dtype == np.float32 and a.flags.writeable and a.flags.c_contiguous
    assert not isinstance(a.base, mmap.mmap) and not isinstance(getattr(a.base, "obj", None), mmap.mmap)


@pytest.mark.skipif(not huge_pages._usable(), reason="no MADV_HUGEPAGE here")
def test_large_arrays_are_cut_from_shared_chunks_without_overlap() -> None:
    shape = (huge_pages.MIN_BYTES // 4 // 100 + 1, 100)
    arrays = [huge_pages.constant_array(shape, np.float32) for _ in range(3)]
    for index, a in enumerate(arrays):
        assert a.shape == shape and a.flags.writeable and a.flags.c_contiguous
        assert a.ctypes.data % 64 == 0
        a[...] = index
    for index, a in enumerate(arrays):  # each kept its own values: no two share memory
        assert (a == index).all()
    assert not any(np.shares_memory(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1:])


@pytest.mark.skipif(not huge_pages._usable(), reason="no MADV_HUGEPAGE here")
def test_an_array_larger_than_a_chunk_gets_a_mapping_of_its_own() -> None:
    count = huge_pages.CHUNK_BYTES // 4 + 1000
    a = huge_pages.constant_array((count,), np.float32)
    a[-1] = 7.0
    assert a.shape == (count,) and a[-1] == 7.0
