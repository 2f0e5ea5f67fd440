"""Which products onyxrt's GEMM takes by the CPU's vectors (``gemm.own_sgemm_fits``): AVX-512's tiles any; AVX2's
those whose B is small and whose rows are not 4 KB apart (the rest ran faster on OpenBLAS on a Zen 3 core)."""

from __future__ import annotations

from onyxrt.providers.cpu import gemm


def test_avx2_tiles_leave_large_and_aliasing_operands_to_blas(monkeypatch):
    monkeypatch.setattr(gemm, "_WIDE_VECTORS", False)
    assert gemm.own_sgemm_fits(64, 256) and gemm.own_sgemm_fits(16, 1000)
    assert not gemm.own_sgemm_fits(32, 1024)  # rows 4 KB apart
    assert not gemm.own_sgemm_fits(384, 384)  # 576 KB
    assert not gemm._own_sgemm_shape(128, 384, 384)  # (so matmul keeps BLAS)


def test_avx512_tiles_take_every_size(monkeypatch):
    monkeypatch.setattr(gemm, "_WIDE_VECTORS", True)
    assert gemm.own_sgemm_fits(32, 1024) and gemm.own_sgemm_fits(384, 384)
    assert gemm._own_sgemm_shape(128, 384, 384)
