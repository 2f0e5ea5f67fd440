"""Scaled dot-product Attention (opset 23+) and RotaryEmbedding (opset 23).

Attention handles MHA, GQA and MQA without repeating K/V heads: query heads are
grouped per KV head and the matmuls broadcast over the group axis. Causal and
sliding-window frontiers are bottom-right aligned with the cache offset (past
length, or ``nonpad_kv_seqlen - q_len`` per batch for an external cache); a
query row with no attendable key yields zeros, as the spec's errata says. Large float32/64
score matrices without a qk output are computed block by block (nn/attention_tiled.py).
"""

from __future__ import annotations

import numpy as np

from ....errors import NodeIndexError, NodeInputError
from ....graph.types import np_dtype
from ..kernel_table import op
from . import attention_tiled


def _heads_first(x: np.ndarray, heads: int | None, what: str) -> np.ndarray:
    """[B, S, H*D] -> [B, H, S, D]; 4-D inputs pass through."""
    if x.ndim == 4:
        return x
    if x.ndim != 3 or heads is None:
        raise NodeInputError(f"{what} must be 4-D, or 3-D with its num_heads attribute set; got shape {x.shape}")
    if heads < 1:
        raise NodeInputError(f"{what}'s num_heads attribute must be positive, got {heads}")
    b, s, hidden = x.shape
    if hidden % heads:
        raise NodeInputError(f"{what} hidden size {hidden} is not divisible by {heads} heads")
    return x.reshape(b, s, heads, hidden // heads).transpose(0, 2, 1, 3)


def _frontier(q_len: int, kv_len: int, offset, left: int, right: int, causal: bool,
              q_start: int = 0, kv_start: int = 0) -> np.ndarray | None:
    """Allowed (query, key) pairs from the causal and window rules: [q, kv] or [B, 1, q, kv]; None = all.

    ``q_start`` / ``kv_start`` give the block's first query row / key (the tiled path asks
    for one block at a time)."""
    if not causal and left < 0 and right < 0:
        return None
    i = np.arange(q_start, q_start + q_len)[:, None]
    j = np.arange(kv_start, kv_start + kv_len)[None, :]
    if np.ndim(offset):
        i = i[None, :, :] + np.asarray(offset).reshape(-1, 1, 1)
    else:
        i = i + int(offset)
    allowed = np.ones(np.broadcast_shapes(i.shape, j.shape), dtype=bool)
    if causal:
        allowed &= j <= i
    if left >= 0:
        allowed &= i - j <= left
    if right >= 0:
        allowed &= j - i <= right
    return allowed[:, None] if allowed.ndim == 3 else allowed


def _stable_softmax(scores: np.ndarray) -> np.ndarray:
    peak = scores.max(axis=-1, keepdims=True)
    peak[~np.isfinite(peak)] = 0  # fully masked rows stay finite (then zeroed by the caller)
    np.subtract(scores, peak, out=scores)
    np.exp(scores, out=scores)
    total = scores.sum(axis=-1, keepdims=True)
    total[total == 0] = 1
    np.divide(scores, total, out=scores)
    return scores


@op("Attention", versions=(23, 24, 25), multi_output=True)
def attention(q, k, v, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None, *, is_causal=0,
              kv_num_heads=None, q_num_heads=None, qk_matmul_output_mode=0, scale=None, softcap=0.0,
              softmax_precision=None, left_window_size=-1, right_window_size=-1, _num_outputs=1):
    """softmax(Q K^T * scale (+ softcap) + mask) V, with optional KV cache concatenation."""
    if (past_key is None) != (past_value is None):
        raise NodeInputError("past_key and past_value must be given together")
    if nonpad_kv_seqlen is not None and past_key is not None:
        raise NodeInputError("nonpad_kv_seqlen cannot be combined with past_key/past_value")
    three_d = q.ndim == 3
    dtype = q.dtype
    qh = _heads_first(q, q_num_heads, "Q")
    kh = _heads_first(k, kv_num_heads, "K")
    vh = _heads_first(v, kv_num_heads, "V")
    if past_key is not None:
        kh = np.concatenate((past_key, kh), axis=2)
        vh = np.concatenate((past_value, vh), axis=2)
    present_key, present_value = kh, vh
    batch, heads, q_len, head_size = qh.shape
    kv_heads, kv_len = kh.shape[1], kh.shape[2]
    if kv_heads == 0 or heads % kv_heads:
        raise NodeInputError(f"{heads} query heads are not a multiple of {kv_heads} key/value heads")
    group = heads // kv_heads

    # float16 stays float16 (as the spec computes it); ml_dtypes types (bfloat16, float8) compute in float32
    compute = dtype if dtype in (np.float16, np.float32, np.float64) else np.dtype(np.float32)
    scalar = compute.type
    factor = (1 / np.sqrt(head_size)) if scale is None else scale
    root = np.sqrt(np.asarray(factor, dtype=np.float64)).astype(dtype)  # scale is split over Q and K, per spec
    if past_key is not None:
        offset = past_key.shape[2]
    elif nonpad_kv_seqlen is not None:
        offset = np.asarray(nonpad_kv_seqlen).reshape(-1).astype(np.int64) - q_len
    else:
        offset = 0
    softmax_dtype = compute
    if softmax_precision is not None:
        softmax_dtype = np_dtype(softmax_precision)
        if softmax_dtype.kind != "f":
            raise NodeInputError(f"Attention: softmax_precision {softmax_precision} is not a float type")
    # tiled: not when the scores are an output, nor where the untiled path rounds the
    # probabilities to a narrower type (float16 / bfloat16) or softmaxes in another precision
    if (_num_outputs < 4 and compute == dtype and dtype in (np.float32, np.float64) and softmax_dtype == compute
            and attention_tiled.use_tiled(batch, heads, q_len, kv_len, compute.itemsize)):
        out = _attention_tiled(qh, kh, vh, root, softcap, attn_mask, offset, nonpad_kv_seqlen,
                               int(left_window_size), int(right_window_size), bool(is_causal))
        if three_d:
            out = out.transpose(0, 2, 1, 3).reshape(batch, q_len, -1)
        return out, present_key, present_value
    qs = (qh * root).astype(compute).reshape(batch, kv_heads, group, q_len, head_size)
    ks = (kh * root).astype(compute)[:, :, None]
    scores = qs @ np.swapaxes(ks, -1, -2)  # [B, Hkv, G, q, kv]
    scores = scores.reshape(batch, heads, q_len, kv_len)
    raw = scores
    if softcap and softcap > 0:
        scores = np.tanh(scores / scalar(softcap)) * scalar(softcap)
    capped = scores

    bias = np.zeros((q_len, kv_len), dtype=compute)
    if attn_mask is not None:
        mask = attn_mask
        if mask.shape[-1] < kv_len:  # a mask may cover only the leading keys
            pad = [(0, 0)] * (mask.ndim - 1) + [(0, kv_len - mask.shape[-1])]
            mask = np.pad(mask, pad, constant_values=False if mask.dtype == np.bool_ else -np.inf)
        if mask.dtype == np.bool_:
            mask = np.where(mask, scalar(0), scalar(-np.inf))
        bias = bias + mask.astype(compute)
    allowed = _frontier(q_len, kv_len, offset, int(left_window_size), int(right_window_size), bool(is_causal))
    if allowed is not None:
        bias = bias + np.where(allowed, scalar(0), scalar(-np.inf))
    if nonpad_kv_seqlen is not None:
        valid = np.arange(kv_len)[None, :] < np.asarray(nonpad_kv_seqlen).reshape(-1, 1)
        bias = bias + np.where(valid, scalar(0), scalar(-np.inf)).reshape(batch, 1, 1, kv_len)

    biased = capped + bias
    probs = _stable_softmax(biased.astype(softmax_dtype, copy=True))
    empty_rows = np.isneginf(bias.max(axis=-1, keepdims=True))
    if empty_rows.any():
        probs = np.where(empty_rows, 0, probs)
    probs = probs.astype(dtype).astype(compute)

    out = probs.reshape(batch, kv_heads, group, q_len, kv_len) @ vh.astype(compute)[:, :, None]
    out = out.reshape(batch, heads, q_len, -1).astype(dtype)
    if three_d:
        out = out.transpose(0, 2, 1, 3).reshape(batch, q_len, -1)
    if _num_outputs < 4:
        return out, present_key, present_value
    mode = int(qk_matmul_output_mode)
    if mode == 0:
        qk = raw
    elif mode == 1:
        qk = capped if softcap and softcap > 0 else raw + bias
    elif mode == 2:
        qk = biased
    elif mode == 3:
        qk = probs
    else:
        raise NodeInputError(f"qk_matmul_output_mode must be 0..3, got {mode}")
    return out, present_key, present_value, np.asarray(qk).astype(dtype)


def _attention_tiled(qh, kh, vh, root, softcap, attn_mask, offset, nonpad_kv_seqlen, left, right, causal):
    """The float32/float64 Attention without its qk output, one block of scores at a time."""
    batch, _, q_len, _ = qh.shape
    kv_len = kh.shape[2]
    scalar = qh.dtype.type
    mask = attn_mask
    mask_keys = kv_len if mask is None else min(kv_len, mask.shape[-1])  # keys past the mask's width are masked
    if mask is not None and mask.dtype != np.bool_:
        mask = mask.astype(qh.dtype, copy=False)
    valid = None if nonpad_kv_seqlen is None else np.asarray(nonpad_kv_seqlen).reshape(-1, 1, 1, 1).astype(np.int64)

    def adjust(block, s0, s1, t0, t1):
        if softcap and softcap > 0:
            block /= scalar(softcap)
            np.tanh(block, out=block)
            block *= scalar(softcap)
        if mask is not None and t0 < mask_keys:
            end = min(t1, mask_keys)
            part = attention_tiled.block_of(mask, s0, s1, t0, end)
            target = block[..., : end - t0]
            if part.dtype == np.bool_:
                np.copyto(target, scalar(-np.inf), where=~part)
            else:
                target += part

    def visible(s0, s1, t0, t1):
        shown = _frontier(s1 - s0, t1 - t0, offset, left, right, causal, q_start=s0, kv_start=t0)
        if mask is not None and t1 > mask_keys:
            inside = np.arange(t0, t1) < mask_keys
            shown = inside[None, :] if shown is None else shown & inside
        if valid is not None:
            inside = np.arange(t0, t1)[None, None, None, :] < valid  # (B, 1, 1, keys)
            shown = inside if shown is None else shown & inside
        return shown

    root_value = float(root)
    return attention_tiled.attend_tiled(qh, kh, vh, q_scale=root_value, k_scale=root_value, adjust=adjust,
                                        visible=visible, fill=-np.inf, empty_rows="zero")


@op("RotaryEmbedding", versions=23)
def rotary_embedding(x, cos_cache, sin_cache, position_ids=None, *, interleaved=0, num_heads=0, rotary_embedding_dim=0):
    """Rotate the first ``rotary_embedding_dim`` features of each head by position-dependent angles."""
    original_shape = x.shape
    if x.ndim == 3:  # [B, S, H*D] -> [B, S, H, D]
        if not num_heads:
            raise NodeInputError("RotaryEmbedding on a 3-D input needs num_heads")
        x = x.reshape(x.shape[0], x.shape[1], num_heads, -1)
    else:  # [B, H, S, D] -> [B, S, H, D]
        x = x.transpose(0, 2, 1, 3)
    head_size = x.shape[-1]
    rot = int(rotary_embedding_dim) or head_size
    if position_ids is not None:
        position_ids = np.asarray(position_ids)
        if position_ids.size and not 0 <= position_ids.min() <= position_ids.max() < cos_cache.shape[0]:
            raise NodeIndexError(f"RotaryEmbedding: position ids must be in [0, {cos_cache.shape[0]}), the cache's length")
        cos, sin = cos_cache[position_ids], sin_cache[position_ids]  # [B, S, rot/2]
    else:
        cos, sin = cos_cache, sin_cache  # already [B, S, rot/2]
    if cos.ndim != 3 or sin.shape != cos.shape:
        raise NodeInputError(
            f"RotaryEmbedding: cos/sin caches must be [batch, sequence, rotary/2] without position_ids "
            f"(or [positions, rotary/2] with them); got {list(np.shape(cos_cache))} and {list(np.shape(sin_cache))}"
        )
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    rotated, rest = x[..., :rot], x[..., rot:]
    if interleaved:
        first, second = rotated[..., 0::2], rotated[..., 1::2]
    else:
        first, second = rotated[..., : rot // 2], rotated[..., rot // 2:]
    out_first = first * cos - second * sin
    out_second = second * cos + first * sin
    if interleaved:
        merged = np.stack((out_first, out_second), axis=-1).reshape(rotated.shape)
    else:
        merged = np.concatenate((out_first, out_second), axis=-1)
    y = np.concatenate((merged, rest), axis=-1).astype(x.dtype, copy=False)
    if len(original_shape) == 3:
        return y.reshape(original_shape)
    return np.ascontiguousarray(y.transpose(0, 2, 1, 3))
