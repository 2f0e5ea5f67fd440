"""Pack a right-padded batch for padding-free (packed) attention, and unpack the results.

Encoder models (BERT and the like) run a batch of sequences padded to one length; with
com.microsoft ``PackedAttention`` / ``PackedMultiHeadAttention`` they run on the real tokens
only. :func:`pack_padded_batch` turns a padded batch and its attention mask into the packed
rows and the two index inputs those ops take; :func:`unpack` puts packed outputs back into
the padded layout::

    from onyxrt.packing import pack_padded_batch

    batch = pack_padded_batch(hidden_states, attention_mask)   # (B, S, D), (B, S)
    (packed_out,) = session.run(None, {
        "input": batch.packed,                                  # (token_count, D)
        "token_offset": batch.token_offset,                     # int32 (B, S)
        "cumulative_sequence_length": batch.cumulative_sequence_length,  # int32 (B + 1,)
    })
    padded_out = batch.unpack(packed_out)                       # (B, S, D_out), zeros on padding

The layout is onnxruntime's: ``cumulative_sequence_length`` = [0, len0, len0 + len1, ...];
``token_offset`` lists each real token's row in the flattened (B * S) padded batch, sequence
after sequence, followed by the padding rows. Only right padding (each mask row ones, then
zeros) can be packed, as those ops support.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PackedBatch", "pack_padded_batch", "unpack"]

_INT32_MAX = np.iinfo(np.int32).max


@dataclass(frozen=True)
class PackedBatch:
    """A padded batch reduced to its real tokens, with the index inputs of the packed attention ops.

    ``packed``: (token_count, ...) rows of the real tokens, sequence after sequence.
    ``token_offset``: int32 (batch_size, sequence_length); the first token_count entries are the
    real tokens' rows in the flattened padded batch, the rest the padding rows.
    ``cumulative_sequence_length``: int32 (batch_size + 1,), the running sum of the lengths.
    """

    packed: np.ndarray
    token_offset: np.ndarray
    cumulative_sequence_length: np.ndarray

    @property
    def batch_size(self) -> int:
        return int(self.token_offset.shape[0])

    @property
    def sequence_length(self) -> int:
        """The padded length (token_offset's second dimension)."""
        return int(self.token_offset.shape[1])

    @property
    def token_count(self) -> int:
        return int(self.cumulative_sequence_length[-1])

    @property
    def lengths(self) -> np.ndarray:
        """Each sequence's number of real tokens, int64 (batch_size,)."""
        return np.diff(self.cumulative_sequence_length.astype(np.int64))

    def unpack(self, packed_output: np.ndarray, padding_value: float = 0) -> np.ndarray:
        """``packed_output`` (token_count, ...) back in the padded (batch_size, sequence_length, ...) layout."""
        return unpack(packed_output, self.token_offset, self.cumulative_sequence_length, padding_value)


def pack_padded_batch(padded: np.ndarray, attention_mask: np.ndarray) -> PackedBatch:
    """Pack ``padded`` (batch, sequence, ...) — token ids or hidden states — keeping the tokens
    where ``attention_mask`` (batch, sequence) is non-zero.

    Raises ``ValueError`` when the shapes disagree or a mask row is not right-padded (ones
    then zeros), ``TypeError`` when the mask is not numeric or boolean.
    """
    padded = np.asarray(padded)
    mask = np.asarray(attention_mask)
    if mask.dtype.kind not in "biuf":
        raise TypeError(f"pack_padded_batch: attention_mask has element type {mask.dtype}; a numeric or bool mask is required")
    if mask.ndim != 2:
        raise ValueError(f"pack_padded_batch: attention_mask must be (batch, sequence), got shape {mask.shape}")
    if padded.ndim < 2 or padded.shape[:2] != mask.shape:
        raise ValueError(
            f"pack_padded_batch: padded batch of shape {padded.shape} does not start with the mask's shape {mask.shape}"
        )
    batch, seq = mask.shape
    if batch * seq > _INT32_MAX:
        raise ValueError(f"pack_padded_batch: {batch} x {seq} positions do not fit the ops' int32 offsets")
    valid = mask != 0
    lengths = valid.sum(axis=1)
    right_padded = valid == (np.arange(seq)[None, :] < lengths[:, None])
    bad_rows = np.flatnonzero(~right_padded.all(axis=1))
    if bad_rows.size:
        row = int(bad_rows[0])
        raise ValueError(
            f"pack_padded_batch: attention_mask row {row} is not right-padded (a padding position precedes a real "
            "token); packed attention supports right padding only"
        )
    flat_valid = valid.reshape(-1)
    real_rows = np.flatnonzero(flat_valid)
    token_offset = np.concatenate([real_rows, np.flatnonzero(~flat_valid)]).astype(np.int32).reshape(batch, seq)
    cumulative = np.zeros(batch + 1, np.int32)
    np.cumsum(lengths, out=cumulative[1:])
    packed = padded.reshape((batch * seq,) + padded.shape[2:])[real_rows]
    return PackedBatch(packed, token_offset, cumulative)


def unpack(
    packed: np.ndarray,
    token_offset: np.ndarray,
    cumulative_sequence_length: np.ndarray,
    padding_value: float = 0,
) -> np.ndarray:
    """Scatter ``packed`` (token_count, ...) into a new (batch, sequence, ...) array of
    ``padding_value``, using the packed attention ops' index inputs.

    Raises ``ValueError`` when the inputs disagree (token count, shapes, offsets out of range).
    """
    packed = np.asarray(packed)
    offsets = np.asarray(token_offset)
    cumulative = np.asarray(cumulative_sequence_length)
    if offsets.ndim != 2:
        raise ValueError(f"unpack: token_offset must be (batch, sequence), got shape {offsets.shape}")
    batch, seq = offsets.shape
    if cumulative.shape != (batch + 1,):
        raise ValueError(f"unpack: cumulative_sequence_length must have shape ({batch + 1},), got {cumulative.shape}")
    token_count = int(cumulative[-1])
    if packed.ndim < 1 or packed.shape[0] != token_count:
        raise ValueError(
            f"unpack: packed rows of shape {packed.shape} do not hold the {token_count} tokens cumulative_sequence_length ends at"
        )
    rows = offsets.reshape(-1)[:token_count].astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= batch * seq):
        raise ValueError(f"unpack: token_offset holds rows outside [0, {batch * seq})")
    out = np.full((batch * seq,) + packed.shape[1:], padding_value, dtype=packed.dtype)
    out[rows] = packed
    return out.reshape((batch, seq) + packed.shape[1:])
