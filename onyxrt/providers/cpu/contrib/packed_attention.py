"""com.microsoft PackedAttention and PackedMultiHeadAttention: padding-free attention.

The batch arrives packed: only the real tokens, sequence after sequence, as
``(token_count, ...)`` rows. ``cumulative_sequence_length`` (batch + 1,) gives where each
sequence's rows start and end; ``token_offset`` (batch, sequence_length) gives each packed
token's row in the padded (batch * sequence_length) layout, real tokens first, then the
padding positions. As in onnxruntime, only right padding exists: token ``i`` of sequence
``b`` sits at ``b * sequence_length + i``. Both are checked against each other and the
token count, and a mismatch is refused naming the input.

Attention runs per sequence on its own rows only (one batched-over-heads matmul for the
scores, an in-place softmax, one for the values), so no work is spent on padding and no
mask is needed: the result equals the padded Attention / MultiHeadAttention with a key
padding mask on the real tokens (there the padded keys get ``mask_filter_value`` added,
which underflows to zero weight). ``attention_bias`` (batch or 1, num_heads or 1,
sequence_length, sequence_length) is indexed in padded coordinates, so sequence ``b`` uses
its top-left ``length x length`` corner. float16 inputs are computed in float32.
"""

from __future__ import annotations

import math

import numpy as np

from .. import row_kernels
from ..gemm import matmul as pool_matmul
from ..kernel_table import op
from ....errors import NodeInputTypeError, NodeInvalidArgument

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


def _compute_dtype(op_name: str, named: dict[str, np.ndarray | None]) -> np.dtype:
    """float64 when every float input is float64, else float32; non-float inputs are refused."""
    dtypes = []
    for name, array in named.items():
        if array is None:
            continue
        if array.dtype.kind not in "fV":
            raise NodeInputTypeError(f"{op_name}: input '{name}' has element type {array.dtype}; a float type is required")
        dtypes.append(array.dtype)
    return _F64 if dtypes and all(d == _F64 for d in dtypes) else _F32


def _default_scale(scale: float | None, head_size: int) -> float:
    if scale is None or float(scale) == 0.0:
        return 1.0 / math.sqrt(head_size) if head_size else 1.0
    return float(scale)


def _sequence_bounds(op_name: str, token_offset, cumulative_sequence_length, token_count: int):
    """Validate the packing inputs; returns (batch_size, sequence_length, starts, lengths) as int64."""
    offsets = np.asarray(token_offset)
    cumulative = np.asarray(cumulative_sequence_length)
    for name, array in (("token_offset", offsets), ("cumulative_sequence_length", cumulative)):
        if array.dtype.kind not in "iu":
            raise NodeInputTypeError(f"{op_name}: input '{name}' has element type {array.dtype}; int32 is required")
    if offsets.ndim != 2:
        raise NodeInvalidArgument(
            f"{op_name}: input 'token_offset' must have 2 dimensions (batch_size, sequence_length), got shape {offsets.shape}"
        )
    batch, seq = offsets.shape
    if cumulative.shape != (batch + 1,):
        raise NodeInvalidArgument(
            f"{op_name}: input 'cumulative_sequence_length' must have shape (batch_size + 1,) = ({batch + 1},), "
            f"got {cumulative.shape}"
        )
    cumulative = cumulative.astype(np.int64)
    lengths = np.diff(cumulative)
    if cumulative[0] != 0:
        raise NodeInvalidArgument(f"{op_name}: input 'cumulative_sequence_length' must start at 0, got {int(cumulative[0])}")
    bad = np.flatnonzero((lengths < 0) | (lengths > seq))
    if bad.size:
        b = int(bad[0])
        raise NodeInvalidArgument(
            f"{op_name}: input 'cumulative_sequence_length' gives sequence {b} the length {int(lengths[b])}, "
            f"outside [0, sequence_length = {seq}] (token_offset's second dimension)"
        )
    if cumulative[-1] != token_count:
        raise NodeInvalidArgument(
            f"{op_name}: input 'cumulative_sequence_length' ends at {int(cumulative[-1])} but the packed input has "
            f"{token_count} tokens"
        )
    # Real tokens are right-padded: token i of sequence b came from padded row b * seq + i.
    starts = cumulative[:-1]
    expected = np.repeat(np.arange(batch, dtype=np.int64) * seq - starts, lengths) + np.arange(token_count, dtype=np.int64)
    got = offsets.reshape(-1)[:token_count].astype(np.int64)
    wrong = np.flatnonzero(got != expected)
    if wrong.size:
        t = int(wrong[0])
        b = int(np.searchsorted(cumulative, t, side="right") - 1)
        raise NodeInvalidArgument(
            f"{op_name}: input 'token_offset' does not match 'cumulative_sequence_length': packed token {t} "
            f"(sequence {b}, position {t - int(starts[b])}) has offset {int(got[t])}, expected {int(expected[t])} "
            "(only right padding is supported)"
        )
    return batch, seq, starts, lengths


def _check_attention_bias(op_name: str, attention_bias, batch: int, heads: int, seq: int) -> None:
    if attention_bias is None:
        return
    shape = attention_bias.shape
    if (
        len(shape) != 4
        or shape[0] not in (1, batch)
        or shape[1] not in (1, heads)
        or shape[2] != seq
        or shape[3] != seq
    ):
        raise NodeInvalidArgument(
            f"{op_name}: input 'attention_bias' must have shape (batch_size or 1, num_heads or 1, sequence_length, "
            f"sequence_length) = ({batch} or 1, {heads} or 1, {seq}, {seq}), got {shape}"
        )


def _softmax_last_axis(scores: np.ndarray) -> None:
    if row_kernels.softmax_in_place(scores):
        return
    scores -= np.maximum.reduce(scores, axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= np.add.reduce(scores, axis=-1, keepdims=True)


def _attend_sequences(q, k, v, starts, lengths, scale: float, attention_bias, out: np.ndarray) -> None:
    """Self-attention of each packed sequence over its own tokens, written into ``out``.

    q, k (tokens, N, H) and v (tokens, N, Hv) may be strided views; ``attention_bias`` is
    None or (B|1, N|1, S, S); ``out`` is (tokens, N * Hv), C-contiguous.
    """
    tokens, heads, v_head = v.shape
    c = q.dtype.type
    out_heads = out.reshape(tokens, heads, v_head)
    for b, (start, length) in enumerate(zip(starts.tolist(), lengths.tolist())):
        if length == 0:
            continue
        end = start + length
        scaled_q = np.multiply(q[start:end].transpose(1, 0, 2), c(scale))  # (N, L, H), contiguous
        scores = pool_matmul(scaled_q, k[start:end].transpose(1, 2, 0))  # (N, L, L)
        if attention_bias is not None:
            scores += attention_bias[b if attention_bias.shape[0] > 1 else 0, :, :length, :length]
        _softmax_last_axis(scores)
        context = pool_matmul(scores, v[start:end].transpose(1, 0, 2))  # (N, L, Hv)
        out_heads[start:end] = context.transpose(1, 0, 2)


@op("PackedAttention", versions=1, domain="com.microsoft")
def packed_attention(
    x,
    weights,
    bias,
    token_offset,
    cumulative_sequence_length,
    attention_bias=None,
    *,
    num_heads,
    qkv_hidden_sizes=None,
    scale=0.0,
):
    name = "PackedAttention"
    heads = int(num_heads)
    if heads <= 0:
        raise NodeInvalidArgument(f"{name}: num_heads must be positive, got {heads}")
    if bias is None:
        raise NodeInvalidArgument(f"{name}: input 'bias' is required")
    ct = _compute_dtype(name, {"input": x, "weights": weights, "bias": bias, "attention_bias": attention_bias})
    if x.ndim != 2:
        raise NodeInvalidArgument(f"{name}: input 'input' must have 2 dimensions (token_count, hidden), got shape {x.shape}")
    tokens, input_hidden = x.shape
    if weights.ndim != 2 or weights.shape[0] != input_hidden:
        raise NodeInvalidArgument(
            f"{name}: input 'weights' of shape {weights.shape} must be (input_hidden_size = {input_hidden}, ...)"
        )
    if bias.ndim != 1 or bias.shape[0] != weights.shape[1]:
        raise NodeInvalidArgument(f"{name}: input 'bias' of shape {bias.shape} must be ({weights.shape[1]},), as weights' columns")
    if qkv_hidden_sizes:
        if len(qkv_hidden_sizes) != 3:
            raise NodeInvalidArgument(f"{name}: qkv_hidden_sizes must have 3 elements, got {list(qkv_hidden_sizes)}")
        q_hidden, k_hidden, v_hidden = (int(s) for s in qkv_hidden_sizes)
    else:
        q_hidden = k_hidden = v_hidden = bias.shape[0] // 3
    if q_hidden != k_hidden:
        raise NodeInvalidArgument(f"{name}: qkv_hidden_sizes' first element {q_hidden} must equal the second {k_hidden}")
    if q_hidden % heads or v_hidden % heads:
        raise NodeInvalidArgument(f"{name}: hidden sizes {(q_hidden, k_hidden, v_hidden)} must be multiples of num_heads {heads}")
    if q_hidden + k_hidden + v_hidden != bias.shape[0]:
        raise NodeInvalidArgument(
            f"{name}: input 'bias' has {bias.shape[0]} elements, not the sum of the Q/K/V hidden sizes "
            f"{(q_hidden, k_hidden, v_hidden)}"
        )
    batch, seq, starts, lengths = _sequence_bounds(name, token_offset, cumulative_sequence_length, tokens)
    _check_attention_bias(name, attention_bias, batch, heads, seq)

    qkv = pool_matmul(x.astype(ct, copy=False), weights.astype(ct, copy=False))  # only the real tokens
    qkv += bias.astype(ct, copy=False)
    head, v_head = q_hidden // heads, v_hidden // heads
    q = qkv[:, :q_hidden].reshape(tokens, heads, head)
    k = qkv[:, q_hidden : 2 * q_hidden].reshape(tokens, heads, head)
    v = qkv[:, 2 * q_hidden :].reshape(tokens, heads, v_head)
    out = np.empty((tokens, v_hidden), ct)
    ab = None if attention_bias is None else attention_bias.astype(ct, copy=False)
    _attend_sequences(q, k, v, starts, lengths, _default_scale(scale, head), ab, out)
    return out.astype(x.dtype, copy=False)


@op("PackedMultiHeadAttention", versions=1, domain="com.microsoft")
def packed_multi_head_attention(
    query,
    key=None,
    value=None,
    bias=None,
    token_offset=None,
    cumulative_sequence_length=None,
    attention_bias=None,
    *,
    num_heads,
    scale=0.0,
    mask_filter_value=-10000.0,
):
    # mask_filter_value has nothing to fill: each sequence attends over its own tokens only.
    name = "PackedMultiHeadAttention"
    heads = int(num_heads)
    if heads <= 0:
        raise NodeInvalidArgument(f"{name}: num_heads must be positive, got {heads}")
    for input_name, array in (("token_offset", token_offset), ("cumulative_sequence_length", cumulative_sequence_length)):
        if array is None:
            raise NodeInvalidArgument(f"{name}: input '{input_name}' is required")
    named = {"query": query, "key": key, "value": value, "bias": bias, "attention_bias": attention_bias}
    ct = _compute_dtype(name, named)
    tokens = query.shape[0] if query.ndim else 0
    if query.ndim == 4:
        # packed QKV (token_count, num_heads, 3, head_size)
        if key is not None or value is not None:
            raise NodeInvalidArgument(f"{name}: inputs 'key' and 'value' must be absent when 'query' is packed QKV (4-D)")
        if query.shape[1] != heads or query.shape[2] != 3:
            raise NodeInvalidArgument(
                f"{name}: packed QKV input 'query' of shape {query.shape} must be (token_count, num_heads = {heads}, 3, head_size)"
            )
        head = v_head = query.shape[3]
        hidden = v_hidden = heads * head
    elif query.ndim == 2:
        hidden = query.shape[1]
        if key is None or value is None:
            raise NodeInvalidArgument(f"{name}: inputs 'key' and 'value' are required when 'query' has 2 dimensions")
        if key.shape != query.shape:
            raise NodeInvalidArgument(f"{name}: input 'key' of shape {key.shape} must have the query's shape {query.shape}")
        if value.ndim != 2 or value.shape[0] != tokens:
            raise NodeInvalidArgument(f"{name}: input 'value' of shape {value.shape} must be (token_count = {tokens}, v_hidden_size)")
        v_hidden = value.shape[1]
        if hidden % heads or v_hidden % heads:
            raise NodeInvalidArgument(f"{name}: hidden sizes {hidden} and {v_hidden} must be multiples of num_heads {heads}")
        head, v_head = hidden // heads, v_hidden // heads
    else:
        raise NodeInvalidArgument(f"{name}: input 'query' must have 2 or 4 dimensions in packing mode, got shape {query.shape}")
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != 2 * hidden + v_hidden):
        raise NodeInvalidArgument(f"{name}: input 'bias' of shape {bias.shape} must be ({2 * hidden + v_hidden},)")
    batch, seq, starts, lengths = _sequence_bounds(name, token_offset, cumulative_sequence_length, tokens)
    _check_attention_bias(name, attention_bias, batch, heads, seq)

    bc = None if bias is None else bias.astype(ct, copy=False)
    if query.ndim == 4:
        qkv = query.astype(ct, copy=False)
        if bc is not None:
            qkv = qkv + bc.reshape(3, heads, head).transpose(1, 0, 2)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    else:
        qx, kx, vx = query.astype(ct, copy=False), key.astype(ct, copy=False), value.astype(ct, copy=False)
        if bc is not None:
            qx, kx, vx = qx + bc[:hidden], kx + bc[hidden : 2 * hidden], vx + bc[2 * hidden :]
        q = qx.reshape(tokens, heads, head)
        k = kx.reshape(tokens, heads, head)
        v = vx.reshape(tokens, heads, v_head)
    out = np.empty((tokens, v_hidden), ct)
    ab = None if attention_bias is None else attention_bias.astype(ct, copy=False)
    _attend_sequences(q, k, v, starts, lengths, _default_scale(scale, head), ab, out)
    return out.astype(query.dtype, copy=False)
