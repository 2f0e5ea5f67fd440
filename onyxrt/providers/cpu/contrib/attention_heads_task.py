"""Scaled dot-product attention head by head as one native task (``framework.native_spin``): for each
(batch, query head) a ``cblas_sgemm`` of the scores Q K^T into a per-thread buffer, the scale, additive
mask and causal rule and the softmax applied row by row while the scores are in cache, and a second
``cblas_sgemm`` of the weights with V written straight into the merged-heads output (B, S, N * Hv).

Q, K and V are read where they lie: the (B, N, S, H) views of a (B, S, N * H) projection (or of a packed
QKV) are strided matrices BLAS takes as they are, so nothing is transposed or copied, and grouped-query
heads read their key/value head without repeating it. ``attention._attend`` runs it for float32 inputs
whose score matrices are small enough to keep whole (``attention_tiled.use_tiled`` decides the rest),
shared out over the pool's spinning workers, a block of heads each with single-threaded products (the
split-GEMM mode); on one thread ``_attend``'s batched products are the faster.

Imported by ``attention`` on first use (it imports numba at its top). Task arguments (:func:`pack`): an
int64 array, see the ``_*`` indices below; strides are in elements.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types

from ..jit_rows import softmax_row
from ..native_sgemm import NO_TRANS, SGEMM, TRANS, _call
from ..native_tasks import float32_array, int64_array

_F32_BYTES = 4
_LOWEST = np.float32(np.finfo(np.float32).min)
(_FN, _WIDE, _BATCH, _HEADS, _KV_HEADS, _ROWS, _KEYS, _HEAD_SIZE, _VALUE_SIZE,
 _Q, _Q_BATCH, _Q_HEAD, _Q_ROW, _K, _K_BATCH, _K_HEAD, _K_ROW, _V, _V_BATCH, _V_HEAD, _V_ROW,
 _OUT, _MASK, _MASK_BATCH, _MASK_HEAD, _MASK_ROW, _CAUSAL, _PAST, _SCRATCH, _SCALE, _ARGS) = range(31)


@numba.njit(inline="always", fastmath={"reassoc", "contract"}, error_model="numpy", cache=True)
def weigh_rows(d, b, h, scores, stride, scale):
    """The attention weights of (batch ``b``, head ``h``) in place: each of its rows of scores (``stride`` apart in
    ``scores``, the task's keys each) scaled, the additive mask and the causal rule applied, then softmaxed."""
    rows, keys = d[_ROWS], d[_KEYS]
    masked = d[_MASK] != 0
    for s in range(rows):
        row = scores[s * stride: s * stride + keys]
        if masked:
            mask = float32_array(d[_MASK] + (b * d[_MASK_BATCH] + h * d[_MASK_HEAD] + s * d[_MASK_ROW])
                                 * _F32_BYTES, keys)
            for j in range(keys):
                row[np.uintp(j)] = row[np.uintp(j)] * scale + mask[np.uintp(j)]
        else:
            for j in range(keys):
                row[np.uintp(j)] *= scale
        if d[_CAUSAL] != 0:
            for j in range(max(0, d[_PAST] + s + 1), keys):
                row[np.uintp(j)] = _LOWEST
        softmax_row(row)


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True,
             fastmath={"reassoc", "contract"}, error_model="numpy")
def attention_heads_part(args, part, parts):
    """Native task: the (batch, head) pairs [U * part / parts, U * (part + 1) / parts) of the attention at
    ``args``, U = batch * heads; part ``part`` uses its own rows x keys block of the scratch buffer."""
    d = int64_array(args, _ARGS)
    fn, wide = d[_FN], d[_WIDE]
    heads, group = d[_HEADS], d[_HEADS] // d[_KV_HEADS]
    rows, keys, head_size, value_size = d[_ROWS], d[_KEYS], d[_HEAD_SIZE], d[_VALUE_SIZE]
    scale = float32_array(d[_SCALE], 1)[0]
    scores_at = d[_SCRATCH] + part * rows * keys * _F32_BYTES
    scores = float32_array(scores_at, rows * keys)
    units = d[_BATCH] * heads
    for unit in range(units * part // parts, units * (part + 1) // parts):
        b, h = unit // heads, unit % heads
        kv = h // group
        q = d[_Q] + (b * d[_Q_BATCH] + h * d[_Q_HEAD]) * _F32_BYTES
        k = d[_K] + (b * d[_K_BATCH] + kv * d[_K_HEAD]) * _F32_BYTES
        v = d[_V] + (b * d[_V_BATCH] + kv * d[_V_HEAD]) * _F32_BYTES
        _call(wide, fn, TRANS, rows, keys, head_size, q, d[_Q_ROW], k, d[_K_ROW], scores_at, keys)
        weigh_rows(d, b, h, scores, keys, scale)
        out = d[_OUT] + (b * rows * heads + h) * value_size * _F32_BYTES
        _call(wide, fn, NO_TRANS, rows, value_size, keys, scores_at, keys, v, d[_V_ROW], out, heads * value_size)


def pack(q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray, mask: np.ndarray | None,
         causal_past: int | None, scale: np.ndarray, scratch: np.ndarray) -> np.ndarray | None:
    """The task's arguments for ``out`` (B, S, N, Hv) C-contiguous = attention of ``q`` (B, N, S, H), ``k``
    (B, Nk, T, H), ``v`` (B, Nk, T, Hv): float32 arrays whose last axis is contiguous and whose other strides
    are whole elements (views of projections), ``mask`` None or an additive (B, N, S, T) float32 view (zero
    strides where it broadcasts) with a contiguous last axis, ``scale`` a float32 array of one value and
    ``scratch`` a float32 buffer of at least parts * S * T values (``attention_tiles_task.scratch_size`` a part for
    that task, which takes these arguments too). None when a layout does not fit."""
    args = np.empty(_ARGS, np.int64)
    fn, wide = (SGEMM.address, SGEMM.wide) if SGEMM is not None else (0, 0)  # (the tiles' task calls no BLAS)
    masked = mask is not None
    fits = _fill(args, fn, wide, q, k, v, out, mask if masked else _NO_MASK, masked, causal_past is not None,
                 causal_past or 0, scale, scratch)
    return args if fits else None


_NO_MASK = np.zeros((0, 0, 0, 0), np.float32)


@numba.njit(cache=True, inline="always")
def _element_strides(a, d, at):
    """``a``'s strides of its first three axes in elements into d[at:at + 3]; False where its last axis is not
    contiguous or a stride is not whole elements or negative."""
    if a.strides[3] != _F32_BYTES:
        return False
    for axis in range(3):
        stride = a.strides[axis]
        if stride % _F32_BYTES or stride < 0:
            return False
        d[at + axis] = stride // _F32_BYTES
    return True


@numba.njit(cache=True)
def _fill(d, fn, wide, q, k, v, out, mask, masked, causal, past, scale, scratch):
    """:func:`pack`'s arguments into ``d`` (one compiled call: reading six addresses in Python costs ~1 us
    each); False where a layout does not fit."""
    if not (_element_strides(q, d, _Q_BATCH) and _element_strides(k, d, _K_BATCH)
            and _element_strides(v, d, _V_BATCH)):
        return False
    if d[_Q_ROW] < q.shape[3] or d[_K_ROW] < k.shape[3] or d[_V_ROW] < v.shape[3]:
        return False  # (rows must not overlap: BLAS's leading dimension is at least a row)
    if masked:
        if not _element_strides(mask, d, _MASK_BATCH):
            return False
        d[_MASK] = mask.ctypes.data
    else:
        d[_MASK] = d[_MASK_BATCH] = d[_MASK_HEAD] = d[_MASK_ROW] = 0
    d[_FN], d[_WIDE] = fn, wide
    d[_BATCH], d[_HEADS], d[_KV_HEADS], d[_ROWS] = q.shape[0], q.shape[1], k.shape[1], q.shape[2]
    d[_KEYS], d[_HEAD_SIZE], d[_VALUE_SIZE] = k.shape[2], q.shape[3], v.shape[3]
    d[_Q], d[_K], d[_V], d[_OUT] = q.ctypes.data, k.ctypes.data, v.ctypes.data, out.ctypes.data
    d[_CAUSAL], d[_PAST] = 1 if causal else 0, past
    d[_SCRATCH], d[_SCALE] = scratch.ctypes.data, scale.ctypes.data
    return True
