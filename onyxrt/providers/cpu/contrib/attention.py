"""com.microsoft attention ops: Attention, MultiHeadAttention, GroupQueryAttention,
RotaryEmbedding.

All of them share :func:`_attend`: scores = (scale * Q) K^T as one batched matmul over
(batch, kv head) -- grouped-query heads are folded into the query rows, so no K/V is
repeated --, the masks and biases added in place, an in-place float32 softmax, and one
batched matmul with V. float16/bfloat16 inputs are computed in float32. Where that score
matrix would be large (``attention_tiled.use_tiled``) and is not itself an output, the same
semantics run block by block with an online softmax (nn/attention_tiled.py), for prompts and
decode steps alike.

Mask semantics follow onnxruntime's CPU kernels: a padding mask adds
``mask_filter_value`` (default -10000) to the masked scores, a causal mask replaces
them with the lowest float, ``attention_bias`` is added after both; in
GroupQueryAttention keys outside the causal / local window / sequence length get no
weight at all.

GroupQueryAttention's decoding step (one new token per sequence after a past, float32, no window, softcap,
sink or scores output) runs as one compiled call (``gqa_decode``: rotation, presents and attention in one
loop nest, :func:`_decode_step`); everything else takes the general path below.

GroupQueryAttention's KV cache: the present buffers come from the plan (``_alloc``). When
the plan hands over the past buffer itself -- onnxruntime's shared-buffer mode, where an
IOBinding binds the present output to the max-length past buffer, or a past that dies at
this node -- only the new rows are written into it. Otherwise the present is another
buffer holding the valid past rows followed by the new ones, each row written once. A
caller's past array is never written unless the caller bound it as the present.
"""

from __future__ import annotations

import math

import numpy as np

from .. import row_kernels
from ..gemm import MIN_PARALLEL_MACS, own_sgemm_usable
from ..jit import LazyModuleKernel, optional_module
from ..gemm import matmul as pool_matmul
from ..math.sparse_gemm import sparse_prepack
from ..kernel_table import op
from ..nn import attention_tiled
from ....errors import NodeInputError, NodeInputTypeError
from ....framework import kv_cache
from ....framework.thread_pool import current_pool

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_LOWEST = np.finfo(np.float32).min
# query rows per key/value head up to which scores are computed as keys @ queries^T (see _attend)
_FEW_QUERY_ROWS = 16


def _ct(*arrays) -> np.dtype:
    """float64 if every float input is float64, else float32."""
    dts = [a.dtype for a in arrays if a is not None]
    for d in dts:
        if d.kind not in "fV":
            raise NodeInputTypeError(f"unsupported element type {d} (a float type is required)")
    return _F64 if dts and all(d == _F64 for d in dts) else _F32


def _f(a, ct):
    return None if a is None else a.astype(ct, copy=False)


def _heads(x: np.ndarray, n: int) -> np.ndarray:
    """(B, S, n*H) -> (B, n, S, H) view."""
    b, s, d = x.shape
    if d % n:
        raise NodeInputError(f"hidden size {d} is not a multiple of the number of heads {n}")
    return x.reshape(b, s, n, d // n).transpose(0, 2, 1, 3)


def _merge_heads(o: np.ndarray) -> np.ndarray:
    """(B, n, S, H) -> (B, S, n*H), contiguous."""
    b, n, s, h = o.shape
    return np.ascontiguousarray(o.transpose(0, 2, 1, 3)).reshape(b, s, n * h)


def _softmax_rows(scores: np.ndarray, sink=None) -> None:
    """In-place softmax over the last axis; ``sink`` (broadcastable to the rows) adds exp(sink - max)."""
    if sink is None and row_kernels.softmax_in_place(scores):
        return
    m = np.maximum.reduce(scores, axis=-1, keepdims=True)
    if sink is not None:
        np.maximum(m, sink, out=m)
    scores -= m
    np.exp(scores, out=scores)
    total = np.add.reduce(scores, axis=-1, keepdims=True)
    if sink is not None:
        extra = sink - m
        np.exp(extra, out=extra)
        total += extra
    np.reciprocal(total, out=total)
    scores *= total


def _attend(
    q,
    k,
    v,
    scale,
    *,
    add_mask=None,
    causal_past=None,
    attention_bias=None,
    softcap=0.0,
    allowed=None,
    sink=None,
    qk_stage=0,
    allowed_block=None,
):
    """Scaled dot-product attention.

    q (B, N, S, H); k (B, Nk, T, H); v (B, Nk, T, Hv) with N a multiple of Nk.
    ``add_mask`` (broadcastable to (B, N, S, T)) is added, ``causal_past`` (an int P) masks
    key j > P + s with the lowest float, ``allowed`` (bool, broadcastable) keeps only the
    allowed keys -- or ``allowed_block(s0, s1, t0, t1)`` returns its (rows, keys) block, so
    that the whole mask is built only when needed --, ``sink`` (broadcastable to
    (B, N, S, 1)) adds a softmax sink logit.
    Returns (B, N, S, Hv) and, with ``qk_stage`` 1/2, the scores before/after the softmax.

    Large score matrices (see :func:`attention_tiled.use_tiled`) are computed block by block
    with an online softmax unless the scores themselves are asked for (``qk_stage``).
    """
    B, N, S, H = q.shape
    Nk, T = k.shape[1], k.shape[2]
    if N % Nk:
        raise NodeInputError(f"{N} query heads cannot share {Nk} key/value heads")
    if attention_bias is not None and np.broadcast_shapes(attention_bias.shape, (B, N, S, T)) != (B, N, S, T):
        raise NodeInputError(f"attention_bias of shape {attention_bias.shape} does not broadcast to {(B, N, S, T)}")
    if not qk_stage and attention_tiled.use_tiled(B, N, S, T, q.dtype.itemsize):
        return _attend_tiled(q, k, v, scale, add_mask, causal_past, attention_bias, softcap, allowed,
                             allowed_block, sink), None
    if allowed is None and allowed_block is not None:
        allowed = allowed_block(0, S, 0, T)
        if allowed.all():
            allowed = None
    if allowed is None and not qk_stage and not softcap and sink is None:
        out = _attend_heads(q, k, v, scale, add_mask, causal_past, attention_bias)
        if out is not None:
            return out, None
    g = N // Nk
    c = q.dtype.type
    qs = np.empty(q.shape, q.dtype)  # contiguous (B, N, S, H)
    np.multiply(q, c(scale), out=qs)
    rows = qs.reshape(B, Nk, g * S, H)
    if g * S <= _FEW_QUERY_ROWS < T and k.strides[-1] == k.itemsize:
        # decoding: keys @ queries^T reads the keys (a KV cache, maybe a strided view of one) where they
        # lie; queries @ keys^T would first copy every key transposed (gemm.matmul's rule for batches)
        scores = np.ascontiguousarray(pool_matmul(k, rows.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2))
    else:
        scores = pool_matmul(rows, k.transpose(0, 1, 3, 2))  # (B, Nk, g*S, T)
    sc = scores.reshape(B, N, S, T)
    if softcap and softcap > 0:
        sc /= c(softcap)
        np.tanh(sc, out=sc)
        sc *= c(softcap)
    if add_mask is not None:
        sc += add_mask
    if causal_past is not None and S > 0:
        future = np.arange(T)[None, :] > (np.arange(S)[:, None] + int(causal_past))
        if future.any():
            np.copyto(sc, c(_LOWEST), where=future)
    if attention_bias is not None:
        if np.broadcast_shapes(attention_bias.shape, sc.shape) != sc.shape:
            raise NodeInputError(f"attention_bias of shape {attention_bias.shape} does not broadcast to {sc.shape}")
        sc += attention_bias
    qk = sc.copy() if qk_stage == 1 else None
    if allowed is not None:
        np.copyto(sc, c(_LOWEST), where=~allowed)
        if qk is not None:
            np.copyto(qk, c(0), where=~allowed)
    _softmax_rows(sc, sink)
    if qk_stage == 2:
        qk = sc.copy()
    out = pool_matmul(scores, v)  # (B, Nk, g*S, Hv)
    return out.reshape(B, N, S, v.shape[-1]), qk


# Query rows from which ``_attend_heads`` runs: a decoding step's few rows stay with _attend's products (BLAS's
# one-row products are slow, and there the keys are read once either way).
_HEADS_TASK_MIN_ROWS = 4


def _attend_heads(q, k, v, scale: float, add_mask, causal_past, attention_bias) -> np.ndarray | None:
    """:func:`_attend` for float32 inputs as one native task over the (batch, head) pairs: no copies of the heads,
    the mask and softmax applied per head while its scores are in cache. Returns (B, N, S, Hv) as a view of a
    (B, S, N, Hv) array (so merging the heads copies nothing), or None where no task applies (no numba, other
    dtypes, layouts the products cannot read, a causal rule with a bias after it, a decoding step's few rows).

    Where the CPU runs onyxrt's GEMM (``gemm.own_sgemm_usable``) and the value size is a multiple of its lanes, the
    products are its tiles (``attention_tiles_task``): on one thread too, as BLAS's calls per head cost more than
    small heads' multiply-adds (measured on 2 Zen 5 cores against the batched products on BLAS's two threads: 8x4
    heads of 17x16 32 -> 19 us, 4x4 of 64x16 77 -> 56, 1x12 of 128x64 ~620 -> 285). Elsewhere ``cblas_sgemm`` per
    head (``attention_heads_task``), only shared out over a pool that splits products: on one thread
    ``_attend``'s batched products are the faster there."""
    B, N, S, H = q.shape
    T, Hv = k.shape[2], v.shape[3]
    if (q.dtype != _F32 or k.dtype != _F32 or v.dtype != _F32 or S < _HEADS_TASK_MIN_ROWS
            or not (B and N and T and H and Hv) or (causal_past is not None and attention_bias is not None)):
        return None
    pool = current_pool()
    split = (pool.splits_gemms and pool.runs_native_tasks and B * N * S * T * (H + Hv) >= MIN_PARALLEL_MACS
             and B * N > 1)
    task = optional_module("onyxrt.providers.cpu.contrib.attention_heads_task")  # (its pack: both tasks' arguments)
    if task is None:
        return None
    tiles = optional_module("onyxrt.providers.cpu.contrib.attention_tiles_task") if own_sgemm_usable() else None
    if tiles is not None and tiles.fits(Hv):
        task_part, per_part = tiles.attention_tiles_part, tiles.scratch_size(S, T, H)
    elif split and task.SGEMM is not None:
        task_part, per_part = task.attention_heads_part, S * T
    else:
        return None
    mask = add_mask if attention_bias is None else attention_bias if add_mask is None else add_mask + attention_bias
    if mask is not None:
        if mask.dtype != _F32 or np.broadcast_shapes(mask.shape, (B, N, S, T)) != (B, N, S, T):
            return None  # (_attend reports a bias that does not broadcast)
        mask = np.broadcast_to(mask, (B, N, S, T))
    parts = min(pool.num_threads, B * N) if split else 1
    out = np.empty((B, S, N, Hv), _F32)
    scratch = np.empty(parts * per_part, _F32)
    scale_value = np.array([scale], _F32)
    args = task.pack(q, k, v, out, mask, causal_past, scale_value, scratch)
    if args is None:
        return None
    pool.run_native(task_part.address, args, parts)
    return out.transpose(0, 2, 1, 3)


def _attend_tiled(q, k, v, scale, add_mask, causal_past, attention_bias, softcap, allowed, allowed_block, sink):
    """:func:`_attend`'s semantics, one block of scores at a time."""
    c = q.dtype.type
    S = q.shape[2]
    # Hidden keys get the lowest float, not -inf: a row whose visible scores are all near the
    # lowest float too (a bias or mask of finfo.min, as exported GPT-2 left padding writes)
    # spreads its weight over the hidden keys as well. Where the masks and biases stay far
    # above it, hidden keys weigh exactly 0 and whole hidden blocks can be skipped; otherwise
    # every block is computed, the causal rule applied where the untiled path applies it.
    far_above_lowest = all(a is None or not a.size or float(np.min(a)) > -1e30 for a in (add_mask, attention_bias))
    causal_in_scores = causal_past is not None and not far_above_lowest

    def adjust(block, s0, s1, t0, t1):
        if softcap and softcap > 0:
            block /= c(softcap)
            np.tanh(block, out=block)
            block *= c(softcap)
        if add_mask is not None:
            block += attention_tiled.block_of(add_mask, s0, s1, t0, t1)
        if causal_in_scores:
            future = np.arange(t0, t1)[None, :] > np.arange(s0, s1)[:, None] + int(causal_past)
            if future.any():
                np.copyto(block, c(_LOWEST), where=future)
        if attention_bias is not None:
            block += attention_tiled.block_of(attention_bias, s0, s1, t0, t1)

    def visible(s0, s1, t0, t1):
        shown = None
        if causal_past is not None and not causal_in_scores:
            shown = np.arange(t0, t1)[None, :] <= np.arange(s0, s1)[:, None] + int(causal_past)
        if allowed is not None:
            part = attention_tiled.block_of(allowed, s0, s1, t0, t1)
        elif allowed_block is not None:
            part = allowed_block(s0, s1, t0, t1)
        else:
            part = None
        if part is not None:
            shown = part if shown is None else shown & part
        return shown

    needs_visible = (causal_past is not None and not causal_in_scores) or allowed is not None or allowed_block is not None
    return attention_tiled.attend_tiled(
        q, k, v, q_scale=scale, adjust=adjust, visible=visible if needs_visible and S else None,
        fill=float(_LOWEST), empty_rows="uniform", sink=sink, skip_hidden_blocks=far_above_lowest,
    )


def _visible_ranges(P_b: list, T_b: list, S: int, T: int, causal: bool, window: int) -> list | None:
    """Per batch entry, per query row, the [lo, hi) keys it sees (GroupQueryAttention's rule, which
    always leaves a contiguous range), or None when every row sees all T keys."""
    ranges, every = [], True
    for p, limit in zip(P_b, T_b):
        rows = []
        for s in range(S):
            if not causal:
                lo, hi = 0, limit
            else:
                pos = p + s
                # keys up to the row's position within the sequence; a right-padding row of a first
                # prompt (pos >= limit) sees the whole sequence, and at least key 0
                hi = pos + 1 if pos < limit else max(min(pos + 1, max(limit, 1)), limit)
                lo = max(0, pos - window + 1) if window > 0 else 0
            hi = min(hi, T)
            every = every and lo <= 0 and hi >= T
            rows.append((lo, hi))
        ranges.append(rows)
    return None if every else ranges


def _attend_few_rows(q, k, v, scale: float, ranges, attention_bias, softcap: float, sink):
    """:func:`_attend` for a few query rows per key/value head (decoding), without its general
    masks: ``ranges`` (from :func:`_visible_ranges`) says which keys each row sees.

    Query heads sharing a key/value head are one matrix of rows, so K/V are never repeated;
    the scores are keys @ rows^T, reading the keys (a cache view) where they lie.
    """
    B, N, S, H = q.shape
    Nk, T = k.shape[1], k.shape[2]
    g = N // Nk
    c = q.dtype.type
    rows = np.empty(q.shape, q.dtype)  # contiguous (B, N, S, H)
    np.multiply(q, c(scale), out=rows)
    rows = rows.reshape(B, Nk, g * S, H)
    small = B * Nk * T * g * S * H < MIN_PARALLEL_MACS  # too small for the pool to split
    product = np.matmul if small else pool_matmul
    if k.strides[-1] == k.itemsize:
        scores = np.ascontiguousarray(product(k, rows.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2))
    else:
        scores = product(rows, k.transpose(0, 1, 3, 2))
    sc = scores.reshape(B, N, S, T)
    if softcap > 0:
        sc /= c(softcap)
        np.tanh(sc, out=sc)
        sc *= c(softcap)
    if attention_bias is not None:
        sc += attention_bias
    if ranges is not None:
        lowest = c(_LOWEST)
        for b, row_ranges in enumerate(ranges):
            for s, (lo, hi) in enumerate(row_ranges):
                if hi <= lo:
                    sc[b, :, s, :] = lowest
                    continue
                if lo > 0:
                    sc[b, :, s, :lo] = lowest
                if hi < T:
                    sc[b, :, s, hi:] = lowest
    _softmax_rows(sc, sink)
    out = product(scores, v)  # (B, Nk, g*S, Hv)
    return out.reshape(B, N, S, v.shape[-1])


def _scale(scale, head_size: int) -> float:
    if scale is None or float(scale) == 0.0:
        return 1.0 / math.sqrt(head_size)
    return float(scale)


# --------------------------------------------------------------------------- masks


def _key_mask(mask, batch: int, seq: int, total: int, past: int, filter_value: float, ct, op_name: str):
    """An additive (B, 1, S|1, T) mask from an Attention mask_index / MHA key_padding_mask."""
    if mask is None:
        return None
    m = np.asarray(mask)
    fv = ct.type(filter_value)
    j = np.arange(total)
    if m.ndim == 1:
        if m.shape[0] < batch:
            raise NodeInputError(f"{op_name}: mask of shape {m.shape} is too short for batch {batch}")
        end = m[:batch].astype(np.int64)
        masked = j[None, :] >= end[:, None]
        if m.shape[0] == 2 * batch:
            start = np.minimum(m[batch:].astype(np.int64), total)
            masked |= j[None, :] < start[:, None]
        return np.where(masked, fv, ct.type(0))[:, None, None, :]
    if m.ndim == 2:
        if m.shape != (batch, total):
            raise NodeInputError(f"{op_name}: 2-D mask of shape {m.shape} does not match (batch, total) = {(batch, total)}")
        return np.where(m > 0, ct.type(0), fv)[:, None, None, :]
    if m.ndim == 3:
        if m.shape != (batch, seq, total):
            raise NodeInputError(f"{op_name}: 3-D mask of shape {m.shape} does not match {(batch, seq, total)}")
        return np.where(m > 0, ct.type(0), fv)[:, None, :, :]
    if m.ndim == 4:
        # (B, 1, max_sequence_length, max_sequence_length), as Megatron GPT-2 writes it
        if m.shape[0] != batch or m.shape[1] != 1 or m.shape[2] < past + seq or m.shape[3] < total:
            raise NodeInputError(f"{op_name}: 4-D mask of shape {m.shape} is too small for {(batch, seq, total)}")
        sub = m[:, :, past : past + seq, :total]
        return np.where(sub > 0, ct.type(0), fv)
    raise NodeInputError(f"{op_name}: mask of rank {m.ndim} is not supported")


# --------------------------------------------------------------------------- Attention


def _attention_prepack(inputs, attributes):
    """The packed QKV weight's sparse products (``sparse_gemm``) when it has many zeros."""
    return sparse_prepack(inputs[1]) if len(inputs) > 1 else None


@op("Attention", versions=1, domain="com.microsoft", multi_output=True, prepack=_attention_prepack)
def attention(
    x,
    weights,
    bias=None,
    mask_index=None,
    past=None,
    attention_bias=None,
    past_sequence_length=None,
    *,
    num_heads,
    qkv_hidden_sizes=None,
    unidirectional=0,
    scale=None,
    mask_filter_value=-10000.0,
    do_rotary=0,
    past_present_share_buffer=0,
    rotary_embedding_dim=0,
    _num_outputs=1,
    _packed=None,
):
    if do_rotary:
        raise NotImplementedError("Attention: do_rotary is not supported (use MultiHeadAttention + RotaryEmbedding)")
    if x.ndim != 3:
        raise NodeInputError(f"Attention: input must be (batch, sequence, hidden), got {x.shape}")
    N = int(num_heads)
    ct = _ct(x, weights, bias)
    B, S, Din = x.shape
    if weights.ndim != 2 or weights.shape[0] != Din:
        raise NodeInputError(f"Attention: weights of shape {weights.shape} do not match the input hidden size {Din}")
    total_w = weights.shape[1]
    if qkv_hidden_sizes:
        dq, dk, dv = (int(v) for v in qkv_hidden_sizes)
    else:
        if total_w % 3:
            raise NodeInputError(f"Attention: weights' second dimension {total_w} is not divisible by 3")
        dq = dk = dv = total_w // 3
    if dq + dk + dv != total_w or dq != dk or dq % N or dv % N:
        raise NodeInputError(f"Attention: qkv hidden sizes {(dq, dk, dv)} do not fit weights {weights.shape} / {N} heads")
    rows = x.astype(ct, copy=False).reshape(B * S, Din)
    qkv = _packed.product(rows) if _packed is not None and _packed.source_shape == weights.shape else None
    if qkv is None:
        qkv = pool_matmul(rows, weights.astype(ct, copy=False))
    if bias is not None:
        if bias.shape != (total_w,):
            raise NodeInputError(f"Attention: bias of shape {bias.shape} must be ({total_w},)")
        qkv += bias.astype(ct, copy=False)
    H = dq // N
    if dq == dv:
        parts = qkv.reshape(B, S, 3, N, H).transpose(2, 0, 3, 1, 4)
        q, k, v = parts[0], parts[1], parts[2]
    else:
        q = _heads(qkv[:, :dq].reshape(B, S, dq), N)
        k = _heads(qkv[:, dq : dq + dk].reshape(B, S, dk), N)
        v = _heads(qkv[:, dq + dk :].reshape(B, S, dv), N)

    present = None
    P = 0
    if past is not None and past.size and past.ndim == 5:
        if dq != dv:
            raise NodeInputError("Attention: with past state the Q, K and V hidden sizes must be equal")
        if past.shape[0] != 2 or past.shape[1] != B or past.shape[2] != N or past.shape[4] != H:
            raise NodeInputError(f"Attention: past of shape {past.shape} does not match (2, {B}, {N}, *, {H})")
        pc = past.astype(ct, copy=False)
        if past_present_share_buffer:
            P = 0 if past_sequence_length is None else int(np.asarray(past_sequence_length).reshape(-1)[0])
            if P + S > past.shape[3]:
                raise NodeInputError(f"Attention: past_sequence_length {P} + {S} exceeds the shared buffer {past.shape[3]}")
            present = np.array(pc, copy=True)
            present[0, :, :, P : P + S] = k
            present[1, :, :, P : P + S] = v
            k = present[0, :, :, : P + S]
            v = present[1, :, :, : P + S]
        else:
            P = past.shape[3]
            k = np.concatenate([pc[0], k], axis=2)
            v = np.concatenate([pc[1], v], axis=2)
    T = P + S
    if present is None and _num_outputs > 1:
        present = np.stack([k, v])
    add_mask = _key_mask(mask_index, B, S, T, P, mask_filter_value, ct, "Attention")
    ab = _f(attention_bias, ct)
    out, _ = _attend(
        q, k, v, _scale(scale, H), add_mask=add_mask, causal_past=P if unidirectional else None, attention_bias=ab
    )
    y = _merge_heads(out).astype(x.dtype, copy=False)
    if _num_outputs > 1:
        return y, present.astype(x.dtype, copy=False)
    return (y,)


# --------------------------------------------------------------------------- MultiHeadAttention


@op("MultiHeadAttention", versions=1, domain="com.microsoft", multi_output=True)
def multi_head_attention(
    query,
    key=None,
    value=None,
    bias=None,
    key_padding_mask=None,
    attention_bias=None,
    past_key=None,
    past_value=None,
    past_sequence_length=None,
    cache_indirection=None,
    *,
    num_heads,
    mask_filter_value=-10000.0,
    scale=None,
    unidirectional=0,
    _num_outputs=1,
):
    if cache_indirection is not None:
        raise NotImplementedError("MultiHeadAttention: cache_indirection (beam search) is not supported")
    N = int(num_heads)
    ct = _ct(query, key, value, bias)
    qx = query.astype(ct, copy=False)
    bc = _f(bias, ct)
    B, S = query.shape[:2]
    if query.ndim == 5:
        # packed QKV (B, S, N, 3, H)
        if key is not None or value is not None or query.shape[3] != 3 or query.shape[2] != N:
            raise NodeInputError(f"MultiHeadAttention: packed QKV of shape {query.shape} needs no key/value and {N} heads")
        H = query.shape[4]
        if bc is not None:
            qx = qx + bc.reshape(3, N, H).transpose(1, 0, 2)
        q = qx[:, :, :, 0].transpose(0, 2, 1, 3)
        k = qx[:, :, :, 1].transpose(0, 2, 1, 3)
        v = qx[:, :, :, 2].transpose(0, 2, 1, 3)
        D = Dv = N * H
    elif query.ndim == 3:
        D = query.shape[2]
        if D % N:
            raise NodeInputError(f"MultiHeadAttention: hidden size {D} is not a multiple of {N} heads")
        H = D // N
        if key is None:
            raise NodeInputError("MultiHeadAttention: key is required unless the query is packed QKV")
        if key.ndim == 5:
            # packed KV (B, L, N, 2, H)
            if value is not None or key.shape[2] != N or key.shape[3] != 2 or key.shape[4] != H:
                raise NodeInputError(f"MultiHeadAttention: packed KV of shape {key.shape} does not match {N} heads of {H}")
            kx = key.astype(ct, copy=False)
            if bc is not None:
                kx = kx + bc[D:].reshape(2, N, H).transpose(1, 0, 2)
            k = kx[:, :, :, 0].transpose(0, 2, 1, 3)
            v = kx[:, :, :, 1].transpose(0, 2, 1, 3)
            Dv = D
        elif key.ndim == 4:
            # key/value already projected and split into heads: (B, N, L, H)
            if value is None or value.ndim != 4:
                raise NodeInputError("MultiHeadAttention: a 4-D key needs a 4-D value")
            k = key.astype(ct, copy=False)
            v = value.astype(ct, copy=False)
            Dv = N * v.shape[3]
        elif key.ndim == 3:
            if value is None or value.ndim != 3:
                raise NodeInputError("MultiHeadAttention: a 3-D key needs a 3-D value")
            kx = key.astype(ct, copy=False)
            vx = value.astype(ct, copy=False)
            Dv = vx.shape[2]
            if bc is not None:
                kx = kx + bc[D : 2 * D]
                vx = vx + bc[2 * D : 2 * D + Dv]
            k = _heads(kx, N)
            v = _heads(vx, N)
        else:
            raise NodeInputError(f"MultiHeadAttention: key of rank {key.ndim} is not supported")
        if bc is not None:
            qx = qx + bc[:D]
        q = _heads(qx, N)
    else:
        raise NodeInputError(f"MultiHeadAttention: query of rank {query.ndim} is not supported")

    P = 0
    L = k.shape[2]
    present_k = present_v = None
    if past_key is not None and past_key.size:
        if past_value is None:
            raise NodeInputError("MultiHeadAttention: past_key needs past_value")
        pk = past_key.astype(ct, copy=False)
        pv = past_value.astype(ct, copy=False)
        if past_sequence_length is not None:
            # past and present share one (B, N, max_sequence_length, H) buffer
            P = int(np.asarray(past_sequence_length).reshape(-1)[0])
            if P + L > pk.shape[2]:
                raise NodeInputError(f"MultiHeadAttention: past_sequence_length {P} + {L} exceeds the buffer {pk.shape[2]}")
            present_k = np.array(pk, copy=True)
            present_v = np.array(pv, copy=True)
            present_k[:, :, P : P + L] = k
            present_v[:, :, P : P + L] = v
            k = present_k[:, :, : P + L]
            v = present_v[:, :, : P + L]
        else:
            P = pk.shape[2]
            k = np.concatenate([pk, k], axis=2)
            v = np.concatenate([pv, v], axis=2)
    T = k.shape[2]
    if present_k is None:
        present_k, present_v = k, v
    add_mask = None
    if key_padding_mask is not None:
        m = np.asarray(key_padding_mask)
        if m.ndim == 1 and m.shape[0] == 3 * B + 2:
            raise NotImplementedError("MultiHeadAttention: key_padding_mask of shape (3 * batch + 2) is not supported")
        add_mask = _key_mask(m, B, S, T, P, mask_filter_value, ct, "MultiHeadAttention")
    ab = _f(attention_bias, ct)
    out, qk = _attend(
        q,
        k,
        v,
        _scale(scale, H),
        add_mask=add_mask,
        causal_past=P if unidirectional else None,
        attention_bias=ab,
        qk_stage=1 if _num_outputs > 3 else 0,
    )
    y = _merge_heads(out).astype(query.dtype, copy=False)
    result = [y]
    if _num_outputs > 1:
        result += [np.ascontiguousarray(present_k).astype(query.dtype, copy=False)]
    if _num_outputs > 2:
        result += [np.ascontiguousarray(present_v).astype(query.dtype, copy=False)]
    if _num_outputs > 3:
        result += [qk.astype(query.dtype, copy=False)]
    return tuple(result)


# --------------------------------------------------------------------------- rotary embedding


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, interleaved: bool) -> np.ndarray:
    """Rotate the first 2*cos.shape[-1] features of x (..., H); cos/sin broadcast to (..., rd/2)."""
    half = cos.shape[-1]
    rd = 2 * half
    out = np.empty(np.broadcast_shapes(x.shape[:-1], cos.shape[:-1]) + x.shape[-1:], np.result_type(x, cos))
    if rd < x.shape[-1]:
        out[..., rd:] = x[..., rd:]
    first, second = (slice(0, rd, 2), slice(1, rd, 2)) if interleaved else (slice(0, half), slice(half, rd))
    x1, x2, o1, o2 = x[..., first], x[..., second], out[..., first], out[..., second]
    # x1·cos - x2·sin and x2·cos + x1·sin, written in place (same operations, same rounding)
    np.multiply(x1, cos, out=o1)
    o1 -= x2 * sin
    np.multiply(x2, cos, out=o2)
    o2 += x1 * sin
    return out


def _check_positions(cache: np.ndarray, positions: np.ndarray, op_name: str) -> None:
    if positions.size and (int(positions.min()) < 0 or int(positions.max()) >= cache.shape[0]):
        raise NodeInputError(f"{op_name}: position ids out of range [0, {cache.shape[0]})")


def _rotate_rows(x: np.ndarray, positions: np.ndarray, cos_cache: np.ndarray, sin_cache: np.ndarray,
                 interleaved: bool, ct: np.dtype, op_name: str) -> np.ndarray:
    """Rotary embedding of ``x`` (B, S, n, H) at ``positions`` (B, S) in the compute type ``ct``: float32 rows by
    the compiled kernel (``row_kernels.rotary``, the same products as :func:`_rotate`), else numpy."""
    B, S, n, H = x.shape
    if ct == _F32 and x.dtype == _F32:
        _check_positions(cos_cache, positions, op_name)
        y = row_kernels.rotary(np.ascontiguousarray(x).reshape(B * S, n, H),
                               np.ascontiguousarray(positions, np.int64).reshape(-1), cos_cache, sin_cache, interleaved)
        if y is not None:
            return y.reshape(x.shape)
    cos = _cache_rows(cos_cache.astype(ct, copy=False), positions, op_name)[:, :, None]
    sin = _cache_rows(sin_cache.astype(ct, copy=False), positions, op_name)[:, :, None]
    return _rotate(x.astype(ct, copy=False), cos, sin, interleaved)


def _cache_rows(cache: np.ndarray, positions: np.ndarray, op_name: str) -> np.ndarray:
    _check_positions(cache, positions, op_name)
    return np.take(cache, positions, axis=0)


@op("RotaryEmbedding", versions=1, domain="com.microsoft")
def rotary_embedding(
    x,
    position_ids,
    cos_cache,
    sin_cache,
    *,
    interleaved=0,
    is_packed_batching=0,
    num_heads=0,
    rotary_embedding_dim=0,
    scale=1.0,
):
    if is_packed_batching:
        raise NotImplementedError("RotaryEmbedding: is_packed_batching is not supported")
    ct = _ct(x, cos_cache, sin_cache)
    if cos_cache.ndim != 2 or sin_cache.shape != cos_cache.shape:
        raise NodeInputError(f"RotaryEmbedding: cos/sin caches of shapes {cos_cache.shape}/{sin_cache.shape} are invalid")
    half = cos_cache.shape[1]
    rd = int(rotary_embedding_dim) or 2 * half
    if rd != 2 * half:
        raise NodeInputError(f"RotaryEmbedding: rotary_embedding_dim {rd} does not match the caches' {2 * half}")
    if x.ndim == 4:  # (B, N, S, H): a position per (batch, seq) row, broadcast over the heads
        B, N, S, H = x.shape
        xh, head_axis = x.astype(ct, copy=False), 1
    elif x.ndim == 3:  # (B, S, N*H), rotated as the (B, S, N, H) view it is
        B, S, D = x.shape
        if rotary_embedding_dim and not num_heads:
            raise NodeInputError("RotaryEmbedding: num_heads is required with rotary_embedding_dim")
        N = int(num_heads) if num_heads else D // rd
        if N <= 0 or D % N:
            raise NodeInputError(f"RotaryEmbedding: hidden size {D} is not a multiple of {N} heads")
        H = D // N
        xh, head_axis = x.astype(ct, copy=False).reshape(B, S, N, H), 2
    else:
        raise NodeInputError(f"RotaryEmbedding: input must be 3-D or 4-D, got {x.shape}")
    if rd > H:
        raise NodeInputError(f"RotaryEmbedding: rotary dimension {rd} exceeds the head size {H}")
    pid = np.asarray(position_ids).astype(np.int64, copy=False)
    if pid.ndim == 1 and pid.size == 1:
        positions = np.broadcast_to(int(pid[0]) + np.arange(S), (B, S))
    elif pid.shape == (B, S):
        positions = pid
    else:  # onnxruntime's rule: no broadcasting of position_ids
        raise NodeInputError(f"RotaryEmbedding: position_ids of shape {pid.shape} is neither (1) nor (batch, seq) = {(B, S)}")
    if head_axis == 2:  # (B, S, N, H): float32 by the compiled kernel, one pass
        return _rotate_rows(xh, positions, cos_cache, sin_cache, bool(interleaved), ct, "RotaryEmbedding").reshape(
            x.shape).astype(x.dtype, copy=False)
    cos = np.expand_dims(_cache_rows(cos_cache.astype(ct, copy=False), positions, "RotaryEmbedding"), head_axis)
    sin = np.expand_dims(_cache_rows(sin_cache.astype(ct, copy=False), positions, "RotaryEmbedding"), head_axis)
    y = _rotate(xh, cos, sin, bool(interleaved))
    return y.reshape(x.shape).astype(x.dtype, copy=False)


# --------------------------------------------------------------------------- GroupQueryAttention


def _rms_heads(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    ms = np.mean(np.square(x), axis=-1, keepdims=True)
    ms += x.dtype.type(eps)
    return x / np.sqrt(ms) * weight.astype(x.dtype, copy=False)


def _same_buffer(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Whether two arrays are the same memory seen the same way (one buffer, as IOBinding may wrap it twice)."""
    if a is None or b is None:
        return False
    if a is b:
        return True
    # the cheap comparisons first: the data pointer costs a dict per array
    return (a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def _decode_step(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, cos_cache, sin_cache,
                 position_ids, attention_bias, N: int, Nkv: int, scale, do_rotary, interleaved, positions_per_row,
                 num_outputs: int, alloc) -> tuple | None:
    """GroupQueryAttention for one new token per sequence after a past, float32, as one compiled call
    (``gqa_decode``), for the cases it covers (the caller checked the attributes); None for every other
    case, which the general path computes (and reports where it is invalid)."""
    B, _, d = query.shape
    if (past_key is None or past_value is None or past_key.ndim != 4 or past_key.shape != past_value.shape
            or past_key.shape[0] != B or past_key.shape[1] != Nkv or past_key.shape[2] == 0
            or not (query.dtype == past_key.dtype == past_value.dtype == _F32)):
        return None
    H = past_key.shape[3]
    if key is None:
        if value is not None or d != (N + 2 * Nkv) * H:
            return None
        heads = query.reshape(B, N + 2 * Nkv, H)
        q, k, v = heads[:, :N], heads[:, N:N + Nkv], heads[:, N + Nkv:]
    else:
        if (value is None or key.dtype != _F32 or value.dtype != _F32 or d != N * H
                or key.shape != (B, 1, Nkv * H) or value.shape != key.shape):
            return None
        q, k, v = query.reshape(B, N, H), key.reshape(B, Nkv, H), value.reshape(B, Nkv, H)
    seqlens = np.asarray(seqlens_k).reshape(-1)
    if seqlens.shape[0] != B:
        return None
    past_lengths = seqlens.astype(np.int64)  # (one new row: the past holds seqlens_k rows)
    past_len = past_key.shape[2]
    total = int(np.asarray(total_sequence_length).reshape(-1)[0])
    shortest, longest = _int_range(past_lengths)
    if total == 1 or shortest < 0 or longest > past_len:
        return None  # (a first prompt, or lengths the general path reports)
    if kv_cache.owner_of(past_key) is not None or kv_cache.owner_of(past_value) is not None:
        return None  # (cache buffers with room: the general path appends in place)
    t_buf = max(total, past_len, longest + 1)
    if attention_tiled.use_tiled(B, N, 1, t_buf, 4):
        return None  # (the tiled path's memory bound applies: see attention_tiled)
    rotary = bool(do_rotary)
    positions = past_lengths
    cos = sin = _NO_ROTARY
    if rotary:
        if (cos_cache is None or sin_cache is None or cos_cache.dtype != _F32 or sin_cache.dtype != _F32
                or cos_cache.ndim != 2 or sin_cache.shape != cos_cache.shape or 2 * cos_cache.shape[1] > H):
            return None
        if position_ids is not None:
            ids = np.asarray(position_ids)
            if positions_per_row and ids.shape != (B, 1):
                return None
            if not positions_per_row and ids.size not in (1, B):
                return None
            ids = ids.reshape(-1)
            positions = np.ascontiguousarray(ids if ids.size == B else np.broadcast_to(ids, (B,)), np.int64)
        first, last = _int_range(positions)
        if first < 0 or last >= cos_cache.shape[0]:
            return None
        cos, sin = np.ascontiguousarray(cos_cache), np.ascontiguousarray(sin_cache)
    bias = _NO_BIAS
    if attention_bias is not None:
        ab = attention_bias
        if (ab.dtype != _F32 or ab.ndim != 4 or ab.shape[0] not in (1, B) or ab.shape[1] not in (1, N)
                or ab.shape[2] != 1 or ab.shape[3] < longest + 1):
            return None
        bias = np.ascontiguousarray(ab[:, :, 0, :])  # (a few rows: one compiled form for every bias)
    kernel = _GQA_DECODE.compiled_for("f32", *_GQA_DECODE_PROBE)
    if kernel is None:
        return None
    shape = (B, Nkv, t_buf, H)
    if alloc is not None and num_outputs > 2:
        present_k, present_v = alloc(shape, _F32, 1), alloc(shape, _F32, 2)
    else:
        present_k, present_v = np.empty(shape, _F32), np.empty(shape, _F32)
    copy_past = not (_same_buffer(present_k, past_key) and _same_buffer(present_v, past_value))
    out = np.empty((B, N, H), _F32)
    scratch = np.empty(t_buf + H, _F32)
    kernel(q, k, v, past_key, past_value, present_k, present_v, copy_past, past_lengths, positions, cos, sin, rotary,
           bool(interleaved), bias, _F32.type(_scale(scale, H)), out, scratch)
    result = (out.reshape(B, 1, N * H), present_k, present_v)
    return result[:max(1, num_outputs)]


def _int_range(values: np.ndarray) -> tuple[int, int]:
    """(min, max) of a small integer array (one element, a decoding batch of one: no reductions)."""
    if values.size == 1:
        value = int(values.reshape(-1)[0])
        return value, value
    return int(values.min()), int(values.max())


_GQA_DECODE = LazyModuleKernel("onyxrt.providers.cpu.contrib.gqa_decode", "decode_step")
_NO_ROTARY = np.zeros((1, 1), _F32)
_NO_BIAS = np.zeros((1, 1, 0), _F32)
_GQA_DECODE_PROBE = (np.zeros((0, 1, 1), _F32), np.zeros((0, 1, 1), _F32), np.zeros((0, 1, 1), _F32),
                     np.zeros((0, 1, 1, 1), _F32), np.zeros((0, 1, 1, 1), _F32), np.zeros((0, 1, 1, 1), _F32),
                     np.zeros((0, 1, 1, 1), _F32), True, np.zeros(0, np.int64), np.zeros(0, np.int64), _NO_ROTARY,
                     _NO_ROTARY, False, False, _NO_BIAS, _F32.type(1), np.zeros((0, 1, 1), _F32), np.zeros(1, _F32))


def _write_new_rows(past_key, past_value, k, v, P_b, W_b):
    """The new key/value rows of batch entry b written at rows [P_b[b], P_b[b] + W_b[b]) of the
    past buffers, which are returned as the present ones."""
    for b in range(len(P_b)):
        p, w = int(P_b[b]), int(W_b[b])
        past_key[b, :, p : p + w] = k[b, :, :w]
        past_value[b, :, p : p + w] = v[b, :, :w]
    return past_key, past_value


def _grown_cache(past_key, past_value, k, v, P_b, W_b, present_k, present_v):
    """Fill (B, Nkv, t_buf, H) caches: per batch entry b its P_b[b] valid past rows, then its
    W_b[b] new rows, then zeros; each row is written once."""
    B = k.shape[0]
    if B and len(set(P_b)) == 1 and len(set(W_b)) == 1:  # every row alike: whole-batch copies
        p, w = int(P_b[0]), int(W_b[0])
        for present, past, new in ((present_k, past_key, k), (present_v, past_value, v)):
            if p:
                present[:, :, :p] = past[:, :, :p]
            present[:, :, p : p + w] = new[:, :, :w]
            if p + w < present.shape[2]:
                present[:, :, p + w :] = 0
        return present_k, present_v
    for b in range(B):
        p, w = int(P_b[b]), int(W_b[b])
        for present, past, new in ((present_k, past_key, k), (present_v, past_value, v)):
            if p:
                present[b, :, :p] = past[b, :, :p]
            present[b, :, p : p + w] = new[b, :, :w]
            present[b, :, p + w :] = 0
    return present_k, present_v


def _append_to_cache_buffers(past_key, past_value, k, v, P_b, W_b, t_buf, dtype):
    """(present_k, present_v) with the new rows written after the pasts when they are views of
    ``framework.kv_cache`` buffers with room (the concatenation case: every row appends S rows at
    the past length); None when neither is, so the caller builds the presents as usual."""
    if kv_cache.owner_of(past_key) is None and kv_cache.owner_of(past_value) is None:
        return None
    past_len, S = past_key.shape[2], k.shape[2]
    # (lists: numpy comparisons of a few values cost more than the append itself)
    if t_buf != past_len + S or any(p != past_len for p in P_b) or any(w != S for w in W_b):
        return None
    k, v = k.astype(dtype, copy=False), v.astype(dtype, copy=False)
    present_k = kv_cache.append_in_place(past_key, k, 2)
    present_v = kv_cache.append_in_place(past_value, v, 2)
    if present_k is None and present_v is None:
        return None
    if present_k is None:
        present_k = np.concatenate([past_key, k], axis=2)
    if present_v is None:
        present_v = np.concatenate([past_value, v], axis=2)
    return present_k, present_v


@op("GroupQueryAttention", versions=1, domain="com.microsoft", multi_output=True, inplace={3: 1, 4: 2})
def group_query_attention(
    query,
    key=None,
    value=None,
    past_key=None,
    past_value=None,
    seqlens_k=None,
    total_sequence_length=None,
    cos_cache=None,
    sin_cache=None,
    position_ids=None,
    attention_bias=None,
    head_sink=None,
    k_scale=None,
    v_scale=None,
    q_norm_weight=None,
    k_norm_weight=None,
    query_seqlens=None,
    *,
    num_heads,
    kv_num_heads,
    scale=None,
    softcap=0.0,
    local_window_size=-1,
    do_rotary=0,
    rotary_interleaved=0,
    smooth_softmax=-1,
    causal=1,
    qk_output=0,
    kv_cache_bit_width=0,
    k_quant_type="NONE",
    v_quant_type="NONE",
    sliding_window_cache=0,
    qk_norm_epsilon=1e-6,
    q_norm_epsilon=None,
    k_norm_epsilon=None,
    rotary_position_ids_per_row=0,
    _num_outputs=1,
    _alloc=None,
):
    for name, value_ in (("k_quant_type", k_quant_type), ("v_quant_type", v_quant_type)):
        if (value_.decode() if isinstance(value_, bytes) else value_) not in ("NONE", ""):
            raise NotImplementedError(f"GroupQueryAttention: quantized KV cache ({name}={value_!r}) is not supported")
    if kv_cache_bit_width or k_scale is not None or v_scale is not None:
        raise NotImplementedError("GroupQueryAttention: quantized KV cache is not supported")
    if sliding_window_cache:
        raise NotImplementedError("GroupQueryAttention: sliding_window_cache is not supported")
    if seqlens_k is None or total_sequence_length is None:
        raise NodeInputError("GroupQueryAttention: seqlens_k and total_sequence_length are required")
    if (q_norm_weight is None) != (k_norm_weight is None):
        raise NodeInputError("GroupQueryAttention: q_norm_weight and k_norm_weight must be given together")
    N, Nkv = int(num_heads), int(kv_num_heads)
    if Nkv <= 0 or N % Nkv:
        raise NodeInputError(f"GroupQueryAttention: num_heads {N} is not a multiple of kv_num_heads {Nkv}")
    if (query.ndim == 3 and query.shape[1] == 1 and query_seqlens is None and q_norm_weight is None
            and head_sink is None and not softcap and not qk_output and _num_outputs <= 3
            and (smooth_softmax is None or int(smooth_softmax) <= 0)
            and (local_window_size is None or int(local_window_size) <= 0)):
        step = _decode_step(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, cos_cache,
                            sin_cache, position_ids, attention_bias, N, Nkv, scale, do_rotary, rotary_interleaved,
                            rotary_position_ids_per_row, _num_outputs, _alloc)
        if step is not None:
            return step
    ct = _ct(query, key, value)
    if query.ndim != 3:
        raise NodeInputError(f"GroupQueryAttention: query must be 3-D, got {query.shape}")
    B, S, d = query.shape
    qx = query.astype(ct, copy=False)
    if key is None:
        if value is not None or d % (N + 2 * Nkv):
            raise NodeInputError(f"GroupQueryAttention: packed QKV of width {d} does not split into {N}+2x{Nkv} heads")
        H = d // (N + 2 * Nkv)
        q = _heads(qx[..., : N * H], N)
        k = _heads(qx[..., N * H : (N + Nkv) * H], Nkv)
        v = _heads(qx[..., (N + Nkv) * H :], Nkv)
    else:
        if value is None or key.shape[:2] != (B, S) or value.shape[:2] != (B, S):
            raise NodeInputError("GroupQueryAttention: key and value must be (batch, sequence_length, kv_hidden)")
        q = _heads(qx, N)
        H = q.shape[3]
        k = _heads(key.astype(ct, copy=False), Nkv)
        v = _heads(value.astype(ct, copy=False), Nkv)
        if k.shape[3] != H:
            raise NodeInputError("GroupQueryAttention: query and key head sizes differ")
    Hv = v.shape[3]

    if q_norm_weight is not None:
        q = _rms_heads(q, q_norm_weight, qk_norm_epsilon if q_norm_epsilon is None else q_norm_epsilon)
        k = _rms_heads(k, k_norm_weight, qk_norm_epsilon if k_norm_epsilon is None else k_norm_epsilon)

    # per-batch bookkeeping in Python ints: a decoding step's few values cost more as numpy arrays
    seqlens = np.asarray(seqlens_k).reshape(-1)
    if seqlens.shape[0] != B:
        raise NodeInputError(f"GroupQueryAttention: seqlens_k must have {B} values, got {seqlens.shape}")
    total = int(np.asarray(total_sequence_length).reshape(-1)[0])
    T_b = [int(n) + 1 for n in seqlens.tolist()]
    has_past = past_key is not None and past_key.size > 0
    past_len = past_key.shape[2] if past_key is not None else 0
    first_prompt = False
    if query_seqlens is not None:
        Q_b = [int(n) for n in np.asarray(query_seqlens).reshape(-1).tolist()]
        if len(Q_b) != B or any(n < 0 or n > min(S, t) for n, t in zip(Q_b, T_b)):
            raise NodeInputError("GroupQueryAttention: query_seqlens out of range")
        P_b = [t - n for t, n in zip(T_b, Q_b)]
        W_b = Q_b  # rows written to the cache
    elif S == total:
        # first prompt (possibly right padded): every row is written, positions start at 0
        P_b = [0] * B
        W_b = [S] * B
        first_prompt = True
    else:
        P_b = [t - S for t in T_b]
        W_b = [S] * B
        if any(p < 0 for p in P_b):
            raise NodeInputError("GroupQueryAttention: seqlens_k is smaller than the new sequence")

    # rotary embedding of the new query / key rows
    if do_rotary:
        if cos_cache is None or sin_cache is None:
            raise NodeInputError("GroupQueryAttention: do_rotary needs cos_cache and sin_cache")
        if position_ids is not None and first_prompt and not rotary_position_ids_per_row:
            # onnxruntime: a first prompt reads only the first position id, for every batch entry
            start = int(np.asarray(position_ids).reshape(-1)[0])
            positions = np.broadcast_to(start + np.arange(S)[None, :], (B, S))
        elif position_ids is not None and rotary_position_ids_per_row:
            # (RotaryEmbedding's rule, whose nodes rotary_attention_packing folded in: no broadcasting)
            positions = np.asarray(position_ids).astype(np.int64, copy=False)
            if positions.shape != (B, S):
                raise NodeInputError(f"GroupQueryAttention: position_ids of shape {positions.shape} is not (batch, seq) = {(B, S)}")
        elif position_ids is not None:
            pid = np.asarray(position_ids).astype(np.int64).reshape(-1, S)
            positions = np.broadcast_to(pid, (B, S))
        else:
            positions = np.asarray(P_b, np.int64).reshape(B, 1) + np.arange(S)[None, :]
        positions = np.minimum(positions, cos_cache.shape[0] - 1) if query_seqlens is not None else positions
        if cos_cache.ndim != 2 or sin_cache.shape != cos_cache.shape:
            raise NodeInputError(f"GroupQueryAttention: cos/sin caches of shapes {cos_cache.shape}/{sin_cache.shape} are invalid")
        if 2 * cos_cache.shape[1] > H:
            raise NodeInputError("GroupQueryAttention: the rotary caches are wider than the head size")
        q, k = (_rotate_rows(h.transpose(0, 2, 1, 3), positions, cos_cache, sin_cache, bool(rotary_interleaved), ct,
                             "GroupQueryAttention").transpose(0, 2, 1, 3) for h in (q, k))

    # present = the valid past rows + the new rows, in a (B, Nkv, max(total, past buffer), H) buffer
    t_buf = max(total, past_len, max(p + w for p, w in zip(P_b, W_b)) if B else 0)
    if has_past and (past_value is None or past_key.shape[0] != B or past_key.shape[1] != Nkv
                     or past_value.shape[:3] != past_key.shape[:3]):
        raise NodeInputError(f"GroupQueryAttention: past_key of shape {past_key.shape} does not match ({B}, {Nkv}, *, {H})")
    if B and max(P_b) > (past_len if has_past else 0):
        b = next(i for i, p in enumerate(P_b) if p > (past_len if has_past else 0))
        raise NodeInputError(f"GroupQueryAttention: batch {b} needs {P_b[b]} cached tokens, the past holds {past_len}")
    shapes = ((B, Nkv, t_buf, H), (B, Nkv, t_buf, Hv))
    appended = _append_to_cache_buffers(past_key, past_value, k, v, P_b, W_b, t_buf, query.dtype) \
        if past_key is not None and past_value is not None and query_seqlens is None and B else None
    if appended is not None:
        present_k, present_v = appended
    else:
        if _alloc is not None and _num_outputs > 2:
            present_k, present_v = _alloc(shapes[0], query.dtype, 1), _alloc(shapes[1], query.dtype, 2)
        else:
            present_k, present_v = np.empty(shapes[0], query.dtype), np.empty(shapes[1], query.dtype)
        if has_past and _same_buffer(present_k, past_key) and _same_buffer(present_v, past_value):
            # the past buffers themselves are the presents (bound to both, or planned in place):
            # only the new rows are written
            present_k, present_v = _write_new_rows(present_k, present_v, k, v, P_b, W_b)
        else:
            present_k, present_v = _grown_cache(past_key if has_past else None, past_value if has_past else None,
                                                k, v, P_b, W_b, present_k, present_v)

    # which keys each query row sees
    T = min(max(total, max(p + w for p, w in zip(P_b, W_b)) if B else 0), t_buf)
    window = int(local_window_size) if local_window_size is not None else -1
    if not causal and window > 0:
        raise NodeInputError("GroupQueryAttention: local_window_size needs causal=1")

    def allowed_block(s0: int, s1: int, t0: int, t1: int) -> np.ndarray:
        """(B, 1, s1-s0, t1-t0): whether query row s sees key j (only this block is built)."""
        j = np.arange(t0, t1)[None, None, :]
        limit = np.asarray(T_b, np.int64).reshape(B, 1, 1)
        if not causal:  # without a causal mask only keys past a row's sequence length are hidden
            return np.broadcast_to(j < limit, (B, s1 - s0, t1 - t0))[:, None]
        pos = (np.asarray(P_b, np.int64).reshape(B, 1) + np.arange(s0, s1)[None, :])[:, :, None]  # (B, rows, 1)
        shown = (j <= pos) & (j < np.maximum(limit, 1))
        shown |= (j < limit) & (pos >= limit)  # right-padding rows of a first prompt see the whole sequence
        if window > 0:
            shown &= j > pos - window
        return shown[:, None]

    # None: every key seen (decided without building the mask where that is cheap to tell)
    every_key_seen = not B or (not causal and min(T_b) >= T)

    ab = _f(attention_bias, ct)
    if ab is not None:
        if ab.ndim != 4 or ab.shape[2] != S or ab.shape[3] < T:
            raise NodeInputError(f"GroupQueryAttention: attention_bias of shape {attention_bias.shape} does not fit ({B}, {N}, {S}, {T})")
        ab = ab[..., :T]
    sink = None
    if head_sink is not None:
        sink = head_sink.astype(ct, copy=False).reshape(1, N, 1, 1)
    elif smooth_softmax is not None and int(smooth_softmax) > 0:
        sink = np.zeros((1, 1, 1, 1), ct)
    keys, values = present_k[:, :, :T].astype(ct, copy=False), present_v[:, :, :T].astype(ct, copy=False)
    qk_stage = int(qk_output) if _num_outputs > 3 else 0
    if (not qk_stage and (N // Nkv) * S <= _FEW_QUERY_ROWS
            and not attention_tiled.use_tiled(B, N, S, T, q.dtype.itemsize)):
        # decoding: a few query rows, whose visible keys are ranges (no boolean masks built)
        ranges = None if every_key_seen else _visible_ranges(P_b, T_b, S, T, bool(causal), window)
        out, qk = _attend_few_rows(q, keys, values, _scale(scale, H), ranges, ab, float(softcap or 0.0), sink), None
    else:
        # every batch entry appending its S rows right after the same past, without padding, a window, a bias
        # or the scores as an output (where masked keys read 0): the visible keys are exactly the causal
        # rule's (key j for row s up to past + s)
        plain_causal = (causal and window <= 0 and ab is None and not qk_stage and B and len(set(P_b)) == 1
                        and all(w == S for w in W_b) and all(t == P_b[0] + S for t in T_b) and T == P_b[0] + S)
        out, qk = _attend(
            q,
            keys,
            values,
            _scale(scale, H),
            causal_past=P_b[0] if plain_causal else None,
            attention_bias=ab,
            softcap=float(softcap or 0.0),
            allowed_block=None if every_key_seen or plain_causal else allowed_block,
            sink=sink,
            qk_stage=qk_stage,
        )
    y = _merge_heads(out).astype(query.dtype, copy=False)
    result = [y]
    if _num_outputs > 1:
        result.append(present_k.astype(query.dtype, copy=False))
    if _num_outputs > 2:
        result.append(present_v.astype(query.dtype, copy=False))
    if _num_outputs > 3:
        qk_full = np.zeros((B, N, S, total), ct)  # onnxruntime: (batch, heads, sequence, total_sequence_length)
        if qk is not None:
            width = min(total, T)
            qk_full[..., :width] = qk[..., :width]
        result.append(qk_full.astype(query.dtype, copy=False))
    return tuple(result)
