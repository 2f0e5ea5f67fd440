"""Memory-efficient (flash-style) scaled dot-product attention on CPU.

Shared by the standard Attention (opset 23+) and the com.microsoft attention ops. The keys
are walked in blocks, the queries too when there are many, with an online softmax: per
query row a running maximum ``m``, a running sum ``l`` of exp(score - m) and an accumulator
of exp(score - m) @ V, each rescaled by exp(m_old - m_new) when the maximum grows. Only one
(batch, heads, query block, key block) score block lives at a time, so the extra memory is
bounded by :data:`BLOCK_BYTES` (plus the output) instead of a (heads, q_len, kv_len) matrix.

Masks, biases and windows are applied per block by the caller's ``adjust`` callback (which
slices its own inputs) and ``visible`` callback (which computes a block of the causal /
window / length rule from indices), so no seq x seq mask is built. Grouped-query heads are
folded into the query rows of their key/value head, as in the untiled path: K/V are never
repeated.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..gemm import matmul as pool_matmul

# One score block (batch x heads x query rows x keys) is kept near this size: big enough that
# each matmul is a sizeable BLAS call (the per-block Python overhead stays a few percent), small
# enough to stay in the last-level cache of a typical CPU and far below a seq x seq matrix.
BLOCK_BYTES = 8 << 20
MIN_BLOCK_KEYS = 512

# The tiled path is chosen when the untiled path's scores (batch x heads x q_len x kv_len x
# itemsize) would exceed this. Measured (benchmarks/attention_memory.md, 12 heads x 64): at
# 27 MiB of scores (seq 768) the untiled path's single matmul + fused softmax is still ~20%
# faster; at 48 MiB (seq 1024) the two tie; at 2048-4096 the tiled path is ~15% slower
# non-causal (its per-block exp and rescaling passes) and ~30% faster causal (it skips the
# blocks wholly in the future), while its memory stays ~linear (26 vs 792 MiB at 4096, output
# included). Below the threshold the scores cost little memory anyway.
TILED_THRESHOLD_BYTES = 32 << 20

Adjust = Callable[[np.ndarray, int, int, int, int], None]
Visible = Callable[[int, int, int, int], "np.ndarray | None"]


def use_tiled(batch: int, heads: int, q_len: int, kv_len: int, itemsize: int, threshold: int | None = None) -> bool:
    """Whether the untiled score matrix would be larger than ``threshold`` bytes (default :data:`TILED_THRESHOLD_BYTES`)."""
    limit = TILED_THRESHOLD_BYTES if threshold is None else threshold
    return batch * heads * q_len * kv_len * itemsize > limit


def block_of(array: np.ndarray | None, s0: int, s1: int, t0: int, t1: int) -> np.ndarray | None:
    """The (rows s0:s1, keys t0:t1) block of an array broadcastable to (..., q_len, kv_len);
    axes of size 1 are left whole (they broadcast)."""
    if array is None:
        return None
    if array.ndim == 1:
        return array if array.shape[0] == 1 else array[t0:t1]
    rows = slice(None) if array.shape[-2] == 1 else slice(s0, s1)
    keys = slice(None) if array.shape[-1] == 1 else slice(t0, t1)
    return array[..., rows, keys]


def attend_tiled(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    q_scale: float = 1.0,
    k_scale: float = 1.0,
    adjust: Adjust | None = None,
    visible: Visible | None = None,
    fill: float = -np.inf,
    empty_rows: str = "zero",
    sink: np.ndarray | None = None,
    skip_hidden_blocks: bool = True,
    block_bytes: int | None = None,
) -> np.ndarray:
    """softmax((q_scale Q)(k_scale K)^T + per-block adjustments) V, computed block by block.

    q (B, N, S, H), k (B, Nk, T, H), v (B, Nk, T, Hv) of one float dtype (the compute type),
    N a multiple of Nk. ``adjust(scores, s0, s1, t0, t1)`` modifies a (B, N, s1-s0, t1-t0)
    score block in place (softcap, additive masks, biases). ``visible(s0, s1, t0, t1)`` returns
    a bool block broadcastable to (B, N, rows, keys), or None when every key is visible; the
    invisible scores are set to ``fill`` and blocks with nothing visible are skipped. A row
    that sees no key at all yields zeros (``empty_rows="zero"``) or the mean of V
    (``"uniform"``: what a softmax over equal finite scores gives). ``sink`` (broadcastable to
    (B, N, S, 1)) adds exp(sink - max) to each row's denominator. Returns (B, N, S, Hv).

    Skipping the blocks with nothing visible is exact when ``fill`` is -inf, or when every
    visible score is far above a finite ``fill`` (so exp(fill - max) is 0); a caller whose
    biases may push visible scores down to ``fill`` passes ``skip_hidden_blocks=False``.
    """
    if block_bytes is None:
        block_bytes = BLOCK_BYTES
    B, N, S, H = q.shape
    Nk, T, Hv = k.shape[1], k.shape[2], v.shape[3]
    g = N // Nk
    dtype = q.dtype
    c = dtype.type
    itemsize = dtype.itemsize
    if S == 0:
        return np.empty((B, N, S, Hv), dtype)
    per_key_row = max(1, B * N * itemsize)
    block_q = int(max(1, min(S, block_bytes // (per_key_row * min(T, MIN_BLOCK_KEYS) or 1))))
    if block_q < S:  # a power of two: causal diagonals then fall on block edges, more blocks are skipped
        block_q = 1 << (block_q.bit_length() - 1)
    block_k = int(max(1, min(T, max(MIN_BLOCK_KEYS, block_bytes // (per_key_row * block_q)))))
    # Key blocks outside, query blocks inside: each K/V block is packed once (K transposed,
    # contiguous: BLAS runs several times faster on it than on a strided head view), and the
    # running state of every query block (max, sum, accumulator) is kept, contiguous per block:
    # O(S) per head in all; only the score block is O(block).
    q_blocks = [(s0, min(S, s0 + block_q)) for s0 in range(0, S, block_q)]
    out = np.zeros((B, Nk, g, S, Hv), dtype)  # the accumulator, then the output
    states = []
    for s0, s1 in q_blocks:
        R = B * N * (s1 - s0)
        if sink is None:
            m = np.full(R, -np.inf, dtype)
            total = np.zeros(R, dtype)
        else:  # the sink is one more logit: it starts the running max, and adds exp(0) = 1
            m = np.array(np.broadcast_to(np.asarray(sink, dtype), (B, N, S, 1))[:, :, s0:s1]).reshape(R)
            total = np.ones(R, dtype)
        states.append((m, total, out[:, :, :, s0:s1]))
    seen = None if visible is None else np.zeros((B, N, S), bool)
    score_buffer = np.empty(B * N * block_q * block_k, dtype)
    for t0 in range(0, T, block_k):
        t1 = min(T, t0 + block_k)
        keys = t1 - t0
        k_packed = v_packed = None
        for (s0, s1), (m, total, acc) in zip(q_blocks, states):
            rows = s1 - s0
            shown = None if visible is None else visible(s0, s1, t0, t1)
            if shown is not None:
                if skip_hidden_blocks and not shown.any():
                    continue
                seen[:, :, s0:s1] |= np.broadcast_to(shown, (B, N, rows, keys)).any(axis=-1)
            elif seen is not None:
                seen[:, :, s0:s1] = True
            if k_packed is None:
                k_packed = np.empty((B, Nk, H, keys), dtype)
                np.copyto(k_packed, k[:, :, t0:t1].transpose(0, 1, 3, 2))
                if k_scale != 1.0:
                    k_packed *= c(k_scale)
                v_packed = np.ascontiguousarray(v[:, :, t0:t1])
            qb = np.empty((B, N, rows, H), dtype)
            np.multiply(q[:, :, s0:s1], c(q_scale), out=qb)
            # one score buffer reused by every block (a fresh one would coexist with the last)
            scores = score_buffer[: B * N * rows * keys].reshape(B, Nk, g * rows, keys)
            pool_matmul(qb.reshape(B, Nk, g * rows, H), k_packed, out=scores)
            if adjust is not None:
                adjust(scores.reshape(B, N, rows, keys), s0, s1, t0, t1)
            if shown is not None and not shown.all():
                np.copyto(scores.reshape(B, N, rows, keys), c(fill), where=~shown)
            rescale = _online_update(scores.reshape(-1, keys), m, total)
            acc *= rescale.reshape(B, Nk, g, rows, 1)
            acc += pool_matmul(scores, v_packed).reshape(B, Nk, g, rows, Hv)
    for (s0, s1), (m, total, acc) in zip(q_blocks, states):
        total[total == 0] = 1  # rows that saw nothing but -inf: their accumulator is 0
        acc /= total.reshape(B, Nk, g, s1 - s0, 1)
    out = out.reshape(B, N, S, Hv)
    if seen is not None and not seen.all():
        if empty_rows == "uniform" and sink is None:
            mean = v.mean(axis=2, dtype=dtype)  # (B, Nk, Hv)
            uniform = np.broadcast_to(mean[:, :, None, None, :], (B, Nk, g, S, Hv)).reshape(B, N, S, Hv)
            out[~seen] = uniform[~seen]
        else:
            out[~seen] = 0
    return out


def _online_update(scores: np.ndarray, m: np.ndarray, total: np.ndarray) -> np.ndarray:
    """One block's online-softmax step over 2-D ``scores`` (rows, keys): exp(score - new max) in
    place, the row sums and maxima ``total`` / ``m`` updated; returns the accumulator's rescale,
    exp(old max - new max). A max still -inf shifts by 0, so its exp()s are 0, not nan.

    numpy's vectorized exp: a numba row loop (scalar exp) measured slower here."""
    rescale = np.empty_like(m)
    c = scores.dtype.type
    peak = np.maximum.reduce(scores, axis=-1)
    np.maximum(peak, m, out=peak)
    finite = np.isfinite(peak)
    shift = peak if finite.all() else np.where(finite, peak, c(0))
    scores -= shift[:, None]
    np.exp(scores, out=scores)
    np.subtract(m, shift, out=rescale)
    np.exp(rescale, out=rescale)
    total *= rescale
    total += np.add.reduce(scores, axis=-1)
    m[...] = peak
    return rescale
