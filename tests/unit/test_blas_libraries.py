"""The BLAS libraries sessions govern, found without threadpoolctl's scan where they are OpenBLAS
(framework/blas_libraries.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from onyxrt.framework import blas_libraries
from onyxrt.framework.blas_libraries import OpenBLASLibrary, loaded_blas_libraries

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the memory map is Linux's")


def _threadpoolctl_blas() -> list:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers


def test_the_libraries_threadpoolctl_finds_with_their_thread_counts() -> None:
    np.ones((4, 4)) @ np.ones((4, 4))
    expected = _threadpoolctl_blas()
    found = loaded_blas_libraries()
    assert sorted(library.filepath for library in found) == sorted(c.filepath for c in expected)
    by_path = {c.filepath: c for c in expected}
    for library in found:
        assert library.internal_api == by_path[library.filepath].internal_api
        assert library.threading_layer == by_path[library.filepath].threading_layer
        assert library.num_threads == by_path[library.filepath].num_threads


def test_an_openblas_thread_count_is_set_through_its_own_symbols() -> None:
    libraries = [library for library in loaded_blas_libraries() if isinstance(library, OpenBLASLibrary)]
    if not libraries:
        pytest.skip("numpy's BLAS here is not an OpenBLAS with pthreads")
    library = libraries[0]
    own = library.num_threads
    try:
        library.set_num_threads(1)
        assert library.num_threads == 1
        assert {c.filepath: c.num_threads for c in _threadpoolctl_blas()}[library.filepath] == 1
    finally:
        library.set_num_threads(own)
    assert library.num_threads == own


@linux_only
def test_another_blas_in_the_map_leaves_the_scan_to_threadpoolctl(tmp_path) -> None:
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 42 /opt/intel/lib/libmkl_rt.so.2\n"
                    "7f02-7f03 rw-p 00000000 00:00 0 \n")
    assert blas_libraries._openblas_from_maps(str(maps)) is None


@linux_only
def test_a_map_without_blas_has_none(tmp_path) -> None:
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 42 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
                    "7ffd-7ffe rw-p 00000000 00:00 0                          [stack]\n")
    assert blas_libraries._openblas_from_maps(str(maps)) == []


@linux_only
def test_an_openblas_it_cannot_open_leaves_the_scan_to_threadpoolctl(tmp_path) -> None:
    maps = tmp_path / "maps"
    maps.write_text(f"7f00-7f01 r-xp 00000000 08:01 42 {tmp_path}/libopenblas.so.0\n")
    assert blas_libraries._openblas_from_maps(str(maps)) is None


def test_the_fallback_is_threadpoolctl(monkeypatch) -> None:
    expected = _threadpoolctl_blas()
    monkeypatch.setattr(blas_libraries, "_openblas_from_maps", lambda: None)
    found = loaded_blas_libraries()
    assert sorted(library.filepath for library in found) == sorted(c.filepath for c in expected)
