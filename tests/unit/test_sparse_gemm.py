"""Sparse weight formats (onyxrt.sparsity.formats) and the sparse product kernels (providers/cpu/math/sparse_gemm)."""

from __future__ import annotations

import numpy as np
import pytest

from onyxrt.errors import InvalidArgument
from onyxrt.framework.session_config import active_session_config
from onyxrt.framework.thread_pool import ThreadPool
from onyxrt.providers.cpu.jit import DISABLE_ENV
from onyxrt.providers.cpu.math import sparse_gemm
from onyxrt.providers.cpu.math.sparse_gemm import (CsrProduct, SemiStructuredProduct, SparseWeight,
                                                   sparse_prepack)
from onyxrt.sparsity.formats import CsrWeight, SemiStructuredWeight, is_semi_structured, zero_fraction


def pruned(shape, sparsity, seed=0, dtype=np.float32):
    """A random weight with its smallest ``sparsity`` fraction of elements set to zero."""
    w = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    if sparsity > 0:
        w[np.abs(w) <= np.quantile(np.abs(w), sparsity)] = 0
    return w


def two_four(shape, seed=0):
    """A random K x N weight keeping the 2 largest of every 4 consecutive elements along K."""
    k, n = shape
    w = np.random.default_rng(seed).standard_normal((n, k // 4, 4)).astype(np.float32)
    smallest = np.argsort(np.abs(w), axis=2)[:, :, :2]
    np.put_along_axis(w, smallest, 0, axis=2)
    return np.ascontiguousarray(w.reshape(n, k).T)


@pytest.fixture(params=["numba", "numpy"])
def kernels(request, monkeypatch):
    """Run a test with the compiled kernels and with the numpy ones (numba disabled)."""
    if request.param == "numpy":
        monkeypatch.setenv(DISABLE_ENV, "1")
    else:
        pytest.importorskip("numba")
        monkeypatch.delenv(DISABLE_ENV, raising=False)
    return request.param


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
def test_csr_round_trip(sparsity):
    w = pruned((37, 23), sparsity)
    w[:, 3] = 0  # an empty output column
    csr = CsrWeight.from_dense(w)
    assert np.array_equal(csr.to_dense(), w)
    assert csr.nnz == np.count_nonzero(w)
    assert csr.indptr.shape == (24,) and csr.indptr[3] == csr.indptr[4]
    assert zero_fraction(w) == pytest.approx(1 - csr.nnz / w.size)


def test_csr_rejects_inconsistent_arrays():
    with pytest.raises(ValueError, match="indices"):
        CsrWeight((4, 2), np.array([0, 1, 2]), np.array([0, 7], np.int32), np.ones(2, np.float32))
    with pytest.raises(ValueError, match="2-D"):
        CsrWeight.from_dense(np.ones(3, np.float32))


def test_two_four_round_trip_and_bytes():
    w = two_four((64, 48))
    w[0:4, 0] = 0  # an empty group
    w[4:8, 1] = [0, 0, 0, 2.5]  # a group with one nonzero
    assert is_semi_structured(w)
    packed = SemiStructuredWeight.from_dense(w)
    assert np.array_equal(packed.to_dense(), w)
    assert packed.values.shape == (48, 32) and packed.metadata.shape == (48, 4)
    # values + 2 bits per value: about half the dense bytes
    assert packed.nbytes == w.nbytes // 2 + 48 * 64 // 8
    assert packed.nbytes < 0.55 * w.nbytes


def test_two_four_metadata_layout():
    """Each group's nibble is first | second << 2, group g at bits 4 * (g % 4) of word g // 4 (torch's packing)."""
    w = np.zeros((8, 1), np.float32)
    w[[1, 3], 0] = [1.0, 2.0]  # group 0 keeps offsets 1 and 3
    w[[4, 6], 0] = [3.0, 4.0]  # group 1 keeps offsets 0 and 2
    packed = SemiStructuredWeight.from_dense(w)
    assert packed.metadata[0, 0] == (1 | 3 << 2) | (0 | 2 << 2) << 4
    assert packed.values.tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert packed.kept_indices().tolist() == [[1, 3, 4, 6]]


def test_two_four_rejects_denser_groups_and_odd_k():
    w = two_four((16, 4))
    w[0:4, 2] = 1.0
    assert not is_semi_structured(w)
    with pytest.raises(ValueError, match="more than 2 nonzeros"):
        SemiStructuredWeight.from_dense(w)
    with pytest.raises(ValueError, match="multiple of 4"):
        SemiStructuredWeight.from_dense(np.zeros((6, 2), np.float32))


# --------------------------------------------------------------------------- kernels


def assert_product_close(y, expected):
    """Equal to the dense product within 1e-4 relative (float32 sums in another order)."""
    scale = max(float(np.abs(expected).max()), 1e-30)
    assert y.shape == expected.shape and y.dtype == np.float32
    assert float(np.abs(y - expected).max()) <= 1e-4 * scale


@pytest.mark.parametrize("rows", [1, 2, 7, 64, 130, sparse_gemm.ROW_BLOCK + 3])
@pytest.mark.parametrize("shape,sparsity", [((64, 48), 0.5), ((300, 17), 0.9), ((33, 200), 0.99), ((16, 16), 1.0)])
def test_csr_product_equals_dense(kernels, rows, shape, sparsity):
    w = pruned(shape, sparsity)
    x = np.random.default_rng(1).standard_normal((rows, shape[0])).astype(np.float32)
    assert_product_close(CsrProduct(CsrWeight.from_dense(w)).product(x), x @ w)


@pytest.mark.parametrize("rows", [1, 3, 64, sparse_gemm.ROW_BLOCK + 3])
@pytest.mark.parametrize("shape", [(64, 40), (20, 33), (4, 1)])
def test_two_four_product_equals_dense(kernels, rows, shape):
    w = two_four(shape)
    x = np.random.default_rng(2).standard_normal((rows, shape[0])).astype(np.float32)
    assert_product_close(SemiStructuredProduct(SemiStructuredWeight.from_dense(w)).product(x), x @ w)


@pytest.mark.parametrize("columns", [1, 5, 49, sparse_gemm.ROW_BLOCK + 3])
def test_transposed_products_equal_dense(kernels, columns):
    """W^T @ X, X channels x pixels: a 1x1 convolution of one image."""
    xt = np.random.default_rng(6).standard_normal((64, columns)).astype(np.float32)
    unstructured, structured = pruned((64, 40), 0.85), two_four((64, 40))
    for w, product in ((unstructured, CsrProduct(CsrWeight.from_dense(unstructured))),
                       (structured, SemiStructuredProduct(SemiStructuredWeight.from_dense(structured)))):
        assert_product_close(product.transposed_product(xt), w.T @ xt)
        sparse = SparseWeight(w.shape, w.shape, 0.5, product, product)
        assert_product_close(sparse.transposed_product(xt), w.T @ xt)


@pytest.mark.parametrize("rows", [8, 15, 24, 100, 121])
def test_csr_row_tiles_and_tail(kernels, rows):
    """Rows covering each tile width of the many-row kernel (64, 32, 16, 8) and a zero-padded tail of 1-7."""
    w = pruned((96, 37), 0.9)
    x = np.random.default_rng(7).standard_normal((rows, 96)).astype(np.float32)
    product = CsrProduct(CsrWeight.from_dense(w))
    assert_product_close(product.product(x), x @ w)
    assert_product_close(product.transposed_product(np.ascontiguousarray(x.T)), (x @ w).T)


@pytest.mark.parametrize("shape", [(1, 1), (3, 13), (8, 8), (16, 24), (77, 1000), (130, 17)])
def test_transposed_copy_of_the_input(kernels, shape):
    """X^T for the many-row products: 8 x 8 register blocks and ragged edges."""
    a = np.random.default_rng(8).standard_normal(shape).astype(np.float32)
    xt = sparse_gemm._transposed(a)
    assert xt.flags.c_contiguous and np.array_equal(xt, a.T)


def test_csr_wide_and_signed_indices(kernels):
    """K beyond uint16 (uint32 indices), and a CsrWeight built with int64 indices (converted for the kernels)."""
    w = pruned((70_000, 3), 0.99)
    x = np.random.default_rng(8).standard_normal((20, 70_000)).astype(np.float32)
    csr = CsrWeight.from_dense(w)
    assert csr.indices.dtype == np.uint32
    assert_product_close(CsrProduct(csr).product(x), x @ w)
    signed = CsrWeight(csr.shape, csr.indptr, csr.indices.astype(np.int64), csr.values)
    assert_product_close(CsrProduct(signed).product(x), x @ w)


@pytest.mark.parametrize("rows", [1, 96])
def test_products_split_over_threads(kernels, rows):
    w = pruned((256, 1024), 0.8)
    x = np.random.default_rng(3).standard_normal((rows, 256)).astype(np.float32)
    product = CsrProduct(CsrWeight.from_dense(w))
    xt = np.ascontiguousarray(x.T)
    single, single_t = product.product(x), product.transposed_product(xt)
    pool = ThreadPool(2)
    try:
        with pool.activate():
            split, split_t = product.product(x), product.transposed_product(xt)
    finally:
        pool.shutdown()
    # the same sums per column, whichever thread computes them
    assert np.array_equal(single, split) and np.array_equal(single_t, split_t)
    assert_product_close(split, x @ w)
    assert_product_close(split_t, w.T @ xt)


def test_sparse_weight_batched_input_and_output_buffer(kernels):
    w = pruned((48, 40), 0.9)
    product = CsrProduct(CsrWeight.from_dense(w))
    weight = SparseWeight(w.shape, w.shape, 0.9, None, product)
    x = np.random.default_rng(4).standard_normal((4, 100, 48)).astype(np.float32)
    assert x.nbytes >= sparse_gemm.ALLOC_MIN_BYTES
    given = []

    def alloc(shape, dtype):
        given.append(np.empty(shape, dtype))
        return given[-1]

    y = weight.product(x, alloc)
    assert_product_close(y, x @ w)
    assert len(given) == 1 and np.shares_memory(y, given[0])
    # one row: the dense GEMM was chosen (single_row is None)
    assert weight.product(x[:1, :1]) is None
    # another dtype or inner size: not this weight's product
    assert weight.product(x.astype(np.float64)) is None
    assert weight.product(x[..., :47]) is None


# --------------------------------------------------------------------------- selection


def test_prepack_follows_the_session_settings():
    w = pruned((64, 64), 0.9)
    with active_session_config({"onyxrt.sparse.select": "always"}):
        packed = sparse_prepack(w)
        assert isinstance(packed, SparseWeight) and packed.many_rows.kind == "csr"
        assert packed.sparsity == pytest.approx(0.9, abs=0.01)
        assert sparse_prepack(w.astype(np.float64)) is None  # float32 only: others stay dense
        assert sparse_prepack(w.astype(np.float16)) is None
        assert sparse_prepack(pruned((64, 64), 0.0)) is None
    with active_session_config({"onyxrt.sparse.select": "always", "onyxrt.sparse.enable": "0"}):
        assert sparse_prepack(w) is None
    with active_session_config({"onyxrt.sparse.select": "always", "onyxrt.sparse.min_sparsity": "0.95"}):
        assert sparse_prepack(w) is None
    with active_session_config({"onyxrt.sparse.select": "always", "onyxrt.sparse.min_sparsity": "0.5"}):
        packed = sparse_prepack(two_four((64, 32)))  # 2:4 weights get the 2:4 kernel
        assert packed.many_rows.kind == "2:4" and packed.single_row.kind == "2:4"


@pytest.mark.parametrize("key,value", [("onyxrt.sparse.enable", "yes"), ("onyxrt.sparse.min_sparsity", "1.5"),
                                       ("onyxrt.sparse.min_sparsity", "abc"), ("onyxrt.sparse.select", "fast")])
def test_prepack_rejects_bad_settings(key, value):
    with active_session_config({key: value}), pytest.raises(InvalidArgument, match=key):
        sparse_prepack(pruned((8, 8), 0.9))


def test_measured_selection_keeps_products_exact():
    """Whatever the timing chose (machine dependent), the chosen products equal the dense ones."""
    w = pruned((256, 512), 0.97)
    packed = sparse_prepack(w)
    x = np.random.default_rng(5).standard_normal((sparse_gemm.MEASURED_ROWS, 256)).astype(np.float32)
    for rows in (1, sparse_gemm.MEASURED_ROWS):
        y = None if packed is None else packed.product(x[:rows])
        if y is not None:
            assert_product_close(y, x[:rows] @ w)


def test_measured_selection_for_a_convolution_keeps_products_exact():
    w = pruned((128, 256), 0.95)  # W^T of a 1x1 filter: 128 input channels, 256 output channels
    packed = sparse_prepack(w, (256, 128, 1, 1), convolution=True)
    x = np.random.default_rng(7).standard_normal((128, sparse_gemm.MEASURED_PIXELS)).astype(np.float32)
    for pixels in (1, sparse_gemm.MEASURED_PIXELS):
        y = None if packed is None else packed.transposed_product(x[:, :pixels])
        if y is not None:
            assert_product_close(y, w.T @ x[:, :pixels])


def test_threshold_counts_whole_elements():
    """A weight pruned to the threshold counts whichever way its pruner rounded the element count."""
    w = np.ones((7, 11), np.float32)  # 77 elements: 80% is 61.6
    w.reshape(-1)[:61] = 0
    with active_session_config({"onyxrt.sparse.select": "always", "onyxrt.sparse.min_sparsity": "0.8"}):
        assert sparse_prepack(w) is not None
        w.reshape(-1)[60] = 1
        assert sparse_prepack(w) is None
