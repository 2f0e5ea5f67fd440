"""Sparse storage of a constant matrix product's weight ``W`` (``Y = X @ W``, ``W`` of shape K x N).

Both formats are *output-major*: for each output column ``n`` they hold the nonzeros of
``W[:, n]`` along the reduction axis ``K`` (the layout of a Linear layer's ``N x K`` weight),
so a kernel computes each output column from the rows of ``X^T`` it needs.

* :class:`CsrWeight`: unstructured. ``W^T`` in CSR (equivalently ``W`` in CSC): ``indptr``
  (N + 1, int64), ``indices`` (the k of each nonzero, increasing within a column; uint16 when K
  allows, else uint32), ``values``.
* :class:`SemiStructuredWeight`: 2:4 structured sparsity, the format of torch's
  semi-structured tensors and cuSPARSELt before their hardware-specific reordering: in every
  group of 4 consecutive elements along K at most 2 are nonzero; ``values`` (N x K/2) holds
  each group's two kept elements in increasing k, and ``metadata`` (N x ceil(K/16), uint16)
  4 bits per group, ``first_index | second_index << 2``, group ``g`` in bits ``4*(g % 4)``
  of word ``g // 4`` (torch's int16 packing of the quads). A group with fewer than two
  nonzeros keeps explicit zeros at unused positions. Values + metadata take
  ``K/2 * itemsize + K/8`` bytes per output: about half the dense bytes.

Zeros are counted exactly (``== 0``; ``-0.0`` is a zero, NaN is not).
"""

from __future__ import annotations

import numpy as np

_GROUP = 4  # 2:4: a group of 4 along K keeps 2
_KEPT = 2
_GROUPS_PER_WORD = 4  # 4-bit entries in a uint16 metadata word


def zero_fraction(weight: np.ndarray) -> float:
    """The fraction of elements of ``weight`` that are exactly zero (0.0 for an empty array)."""
    return 0.0 if weight.size == 0 else 1.0 - np.count_nonzero(weight) / weight.size


def _check_matrix(weight: np.ndarray) -> np.ndarray:
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"a sparse weight must be a 2-D matrix (K x N), got shape {weight.shape}")
    return weight


class CsrWeight:
    """An unstructured sparse ``K x N`` weight, its nonzeros grouped by output column (see the module)."""

    __slots__ = ("shape", "indptr", "indices", "values")

    def __init__(self, shape: tuple[int, int], indptr: np.ndarray, indices: np.ndarray, values: np.ndarray) -> None:
        k, n = shape
        if indptr.shape != (n + 1,) or indices.shape != values.shape or indices.ndim != 1:
            raise ValueError(f"CSR arrays do not describe a {k}x{n} matrix: indptr {indptr.shape}, "
                             f"indices {indices.shape}, values {values.shape}")
        if indptr[0] != 0 or indptr[-1] != indices.size or np.any(np.diff(indptr) < 0):
            raise ValueError("CSR indptr must start at 0, never decrease and end at the number of nonzeros")
        if indices.size and (indices.min() < 0 or indices.max() >= k):
            raise ValueError(f"CSR indices must lie in [0, {k})")
        self.shape = (int(k), int(n))
        self.indptr = indptr
        self.indices = indices
        self.values = values

    @classmethod
    def from_dense(cls, weight: np.ndarray) -> CsrWeight:
        """The nonzeros of ``weight`` (K x N)."""
        weight = _check_matrix(weight)
        k, n = weight.shape
        transposed = np.ascontiguousarray(weight.T).reshape(-1)  # by output column, k increasing
        positions = np.flatnonzero(transposed)
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.count_nonzero(transposed.reshape(n, k), axis=1), out=indptr[1:])
        if k > np.iinfo(np.uint32).max + 1:
            raise ValueError(f"a CSR weight's reduction axis must hold at most 2**32 elements, got {k}")
        # unsigned: numba's indexing skips its negative-index check (a third faster one-row product)
        index_type = np.uint16 if k <= np.iinfo(np.uint16).max + 1 else np.uint32
        return cls(weight.shape, indptr, (positions % max(k, 1)).astype(index_type), transposed[positions])

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    @property
    def nnz(self) -> int:
        return int(self.values.size)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays."""
        return self.indptr.nbytes + self.indices.nbytes + self.values.nbytes

    def to_dense(self) -> np.ndarray:
        """The ``K x N`` matrix."""
        dense = np.zeros(self.shape, self.values.dtype)
        columns = np.repeat(np.arange(self.shape[1]), np.diff(self.indptr))
        dense[self.indices, columns] = self.values
        return dense


def is_semi_structured(weight: np.ndarray) -> bool:
    """Whether ``weight`` (K x N) has at most 2 nonzeros in every group of 4 along K (K a multiple of 4)."""
    weight = _check_matrix(weight)
    k, n = weight.shape
    if k % _GROUP or k == 0:
        return False
    counts = np.count_nonzero(weight.T.reshape(n, k // _GROUP, _GROUP), axis=2)
    return bool(np.all(counts <= _KEPT))


class SemiStructuredWeight:
    """A ``K x N`` weight in 2:4 structured sparsity along K (see the module)."""

    __slots__ = ("shape", "values", "metadata")

    def __init__(self, shape: tuple[int, int], values: np.ndarray, metadata: np.ndarray) -> None:
        k, n = shape
        groups = k // _GROUP
        words = -(-groups // _GROUPS_PER_WORD)
        if k % _GROUP or values.shape != (n, groups * _KEPT) or metadata.shape != (n, words) or metadata.dtype != np.uint16:
            raise ValueError(f"2:4 arrays do not describe a {k}x{n} matrix: values {values.shape}, "
                             f"metadata {metadata.shape} {metadata.dtype}")
        self.shape = (int(k), int(n))
        self.values = values
        self.metadata = metadata

    @classmethod
    def from_dense(cls, weight: np.ndarray) -> SemiStructuredWeight:
        """``weight`` (K x N, K a multiple of 4) in 2:4 form; ValueError when a group holds more than 2 nonzeros."""
        weight = _check_matrix(weight)
        k, n = weight.shape
        if k % _GROUP or k == 0:
            raise ValueError(f"2:4 sparsity needs K (the reduction axis) a positive multiple of 4, got {k}")
        groups = k // _GROUP
        quads = weight.T.reshape(n, groups, _GROUP)
        nonzero = quads != 0
        if np.any(nonzero.sum(axis=2) > _KEPT):
            raise ValueError("the weight is not 2:4 sparse: a group of 4 along K holds more than 2 nonzeros")
        # sort positions so nonzeros come first (stable: increasing k), then unused positions from the
        # top (3, 2, ...): the two kept positions, put back in increasing order
        rank = np.where(nonzero, np.arange(_GROUP), _GROUP + (_GROUP - 1 - np.arange(_GROUP)))
        kept = np.sort(np.argsort(rank, axis=2, kind="stable")[:, :, :_KEPT], axis=2)
        values = np.ascontiguousarray(np.take_along_axis(quads, kept, axis=2).reshape(n, groups * _KEPT))
        nibbles = (kept[:, :, 0] | (kept[:, :, 1] << 2)).astype(np.uint16)
        words = -(-groups // _GROUPS_PER_WORD)
        padded = np.zeros((n, words * _GROUPS_PER_WORD), np.uint16)
        padded[:, :groups] = nibbles
        shifts = (np.arange(_GROUPS_PER_WORD, dtype=np.uint16) * 4)
        metadata = np.bitwise_or.reduce(padded.reshape(n, words, _GROUPS_PER_WORD) << shifts, axis=2).astype(np.uint16)
        return cls((k, n), values, metadata)

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays (values + metadata)."""
        return self.values.nbytes + self.metadata.nbytes

    def kept_indices(self, first: int = 0, stop: int | None = None) -> np.ndarray:
        """The k of every stored value of output columns ``first:stop`` (all: N x K/2, int64), from the metadata."""
        groups = self.shape[0] // _GROUP
        shifts = np.arange(_GROUPS_PER_WORD, dtype=np.uint16) * 4
        metadata = self.metadata[first:stop]
        n = metadata.shape[0]
        nibbles = ((metadata[:, :, None] >> shifts) & 0xF).reshape(n, -1)[:, :groups].astype(np.int64)
        offsets = np.stack((nibbles & 3, nibbles >> 2), axis=2)
        return (offsets + (np.arange(groups) * _GROUP)[None, :, None]).reshape(n, groups * _KEPT)

    def to_dense(self) -> np.ndarray:
        """The ``K x N`` matrix."""
        k, n = self.shape
        transposed = np.zeros((n, k), self.values.dtype)
        np.put_along_axis(transposed, self.kept_indices(), self.values, axis=1)
        return np.ascontiguousarray(transposed.T)
