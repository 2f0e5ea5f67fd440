"""GroupQueryAttention's decoding step (one new token per sequence) as one compiled call (numba).

A decoding step's attention is little arithmetic (a head's 64 values against a few hundred keys) and
many small steps: rotate the new query and key, build the presents (the past rows, then the new one),
scores, softmax, weighted values. As numpy and BLAS calls each costs microseconds of dispatch, about
three quarters of the op's time on llama_tiny's shapes. Here they run in one loop nest per sequence:
the key/value rows each written once into the presents, each query head's scores over the keys it sees
(rows up to its own position) kept in a scratch row.

The rotation is :func:`jit_rows.rotate_head`, the RotaryEmbedding kernel's (no contraction: the same
products); the scores and weighted sums are ordered differently from BLAS's (within float
rounding of the general path). Imported by ``attention`` on first use (it imports numba at its top).
"""

from __future__ import annotations

import numba
import numpy as np

from ..jit_rows import _row_max, exp_nonpositive, rotate_head


@numba.njit(cache=True, nogil=True, error_model="numpy")  # (no contraction, unlike decode_step: see rotate_head)
def _rotate(src, dst, cos, sin, position, interleaved):
    rotate_head(src, dst, cos[position], sin[position], interleaved)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def decode_step(q, k, v, past_k, past_v, present_k, present_v, copy_past, past_lengths, positions, cos, sin,
                rotary, interleaved, bias, scale, out, scratch):
    """One decoding step for every sequence b: the presents' rows past_lengths[b] get the new key (rotated at
    positions[b] where ``rotary``) and value, their rows below it the past's (where ``copy_past``; the
    presents are the pasts otherwise) and the rows after it zeros; ``out[b, h]`` = attention of query head
    h (rotated, times ``scale``) over keys 0..past_lengths[b] of its key/value head, plus ``bias[b, h]``
    (dims of size 1 broadcast; no bias where it has no rows).

    q (B, N, H), k and v (B, Nkv, H), past_k and past_v (B, Nkv, P, H), present_k and present_v
    (B, Nkv, T, H), out (B, N, Hv), scratch (T + H,): float32."""
    B, N, H = q.shape
    Nkv = k.shape[1]
    group = N // Nkv
    T = present_k.shape[2]
    biased = bias.shape[2] > 0
    zero = np.float32(0.0)
    row = scratch[:T]
    query = scratch[T:T + H]
    for b in range(B):
        p = past_lengths[b]
        for j in range(Nkv):
            key_rows, value_rows = present_k[b, j], present_v[b, j]
            # (element loops: numba's slice assignment tests the operands for overlap on every row)
            if copy_past:
                past_key_rows, past_value_rows = past_k[b, j], past_v[b, j]
                for t in range(p):
                    for i in range(H):
                        key_rows[t, i] = past_key_rows[t, i]
                        value_rows[t, i] = past_value_rows[t, i]
                for t in range(p + 1, T):
                    for i in range(H):
                        key_rows[t, i] = zero
                        value_rows[t, i] = zero
            if rotary:
                _rotate(k[b, j], key_rows[p], cos, sin, positions[b], interleaved)
            else:
                for i in range(H):
                    key_rows[p, i] = k[b, j, i]
            for i in range(H):
                value_rows[p, i] = v[b, j, i]
        for h in range(N):
            key_rows, value_rows = present_k[b, h // group], present_v[b, h // group]
            if rotary:
                _rotate(q[b, h], query, cos, sin, positions[b], interleaved)
            else:
                for i in range(H):
                    query[i] = q[b, h, i]
            for i in range(H):
                query[i] *= scale
            extra = bias[b if bias.shape[0] > 1 else 0, h if bias.shape[1] > 1 else 0] if biased else row
            for t in range(p + 1):
                total = zero
                keys = key_rows[t]
                for i in range(H):
                    total += query[i] * keys[i]
                row[t] = total + extra[t] if biased else total
            top = _row_max(row.ctypes.data, p + 1)
            norm = zero
            for t in range(p + 1):
                e = exp_nonpositive(row[t] - top)
                row[t] = e
                norm += e
            inverse = np.float32(1.0) / norm
            result = out[b, h]
            for i in range(result.shape[0]):
                result[i] = zero
            for t in range(p + 1):
                weight = row[t] * inverse
                values = value_rows[t]
                for i in range(result.shape[0]):
                    result[i] += weight * values[i]
