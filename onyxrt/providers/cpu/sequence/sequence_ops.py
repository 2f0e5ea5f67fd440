"""Tensor-sequence kernels: a sequence value is a Python ``list`` of numpy arrays.

Sequences are immutable values in ONNX: every kernel here builds a new list and
never changes the one it was given (lists and their arrays may be shared by
several readers, or be the caller's feeds).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..kernel_table import op
from ....errors import NodeIndexError, NodeInputError, NodeInputTypeError

_INDEX_TYPES = (np.int32, np.int64)


# --------------------------------------------------------------------------- helpers


def _elem_dtype(dtype_attr: int) -> np.dtype:
    """numpy dtype of an ONNX TensorProto element type given as an attribute."""
    from ....graph.types import np_dtype

    try:
        return np_dtype(int(dtype_attr))
    except ValueError as exc:
        raise NodeInputError(f"dtype {dtype_attr} is not a supported tensor element type") from exc


def _as_sequence(value: Any, what: str = "input_sequence") -> list:
    if not isinstance(value, list):
        raise NodeInputTypeError(f"{what} must be a sequence of tensors, got {type(value).__name__}")
    return value


def _position(position: Any, what: str = "position") -> int:
    """A scalar int32/int64 ``position`` tensor as a Python int."""
    p = np.asarray(position)
    if p.dtype.type not in _INDEX_TYPES:
        raise NodeInputTypeError(f"{what} must be an int32 or int64 tensor, got {p.dtype}")
    if p.size != 1 or p.ndim > 1:
        raise NodeInputError(f"{what} must be a scalar, got shape {p.shape}")
    return int(p.reshape(-1)[0])


def _check_same_dtype(seq: list, tensor: np.ndarray) -> None:
    if seq and seq[0].dtype != tensor.dtype:
        raise NodeInputTypeError(
            f"tensor of type {tensor.dtype} cannot be inserted into a sequence of {seq[0].dtype} tensors"
        )


# --------------------------------------------------------------------------- construction


@op("SequenceEmpty", versions=(11,))
def sequence_empty(*, dtype=1):
    _elem_dtype(dtype)  # validate: an unknown element type is a model error
    return []


@op("SequenceConstruct", versions=(11,))
def sequence_construct(*inputs):
    if not inputs:
        raise NodeInputError("SequenceConstruct needs at least one input tensor")
    first = inputs[0].dtype
    for t in inputs[1:]:
        if t.dtype != first:
            raise NodeInputTypeError(f"SequenceConstruct inputs must share one type, got {first} and {t.dtype}")
    return list(inputs)


# --------------------------------------------------------------------------- access


@op("SequenceLength", versions=(11,))
def sequence_length(input_sequence):
    return np.array(len(_as_sequence(input_sequence)), dtype=np.int64)


@op("SequenceAt", versions=(11,))
def sequence_at(input_sequence, position):
    seq = _as_sequence(input_sequence)
    n = len(seq)
    p = _position(position)
    if not -n <= p < n:
        raise NodeIndexError(f"SequenceAt position {p} is out of bounds for a sequence of {n} tensors")
    return seq[p]


@op("SequenceInsert", versions=(11,))
def sequence_insert(input_sequence, tensor, position=None):
    seq = _as_sequence(input_sequence)
    if not isinstance(tensor, np.ndarray):
        raise NodeInputTypeError(f"SequenceInsert can only insert a tensor, got {type(tensor).__name__}")
    _check_same_dtype(seq, tensor)
    n = len(seq)
    if position is None:
        return seq + [tensor]
    p = _position(position)
    if not -n <= p <= n:
        raise NodeIndexError(f"SequenceInsert position {p} is out of bounds for a sequence of {n} tensors")
    if p < 0:
        p += n
    return seq[:p] + [tensor] + seq[p:]


@op("SequenceErase", versions=(11,))
def sequence_erase(input_sequence, position=None):
    seq = _as_sequence(input_sequence)
    n = len(seq)
    p = -1 if position is None else _position(position)
    if not -n <= p < n:
        raise NodeIndexError(f"SequenceErase position {p} is out of bounds for a sequence of {n} tensors")
    if p < 0:
        p += n
    return seq[:p] + seq[p + 1:]


# --------------------------------------------------------------------------- tensor <-> sequence


def _axis(axis: int, rank: int, what: str) -> int:
    if not -rank <= axis < rank:
        raise NodeInputError(f"{what} axis {axis} is out of range for a tensor of rank {rank}")
    return axis + rank if axis < 0 else axis


@op("SplitToSequence", versions=(11, 24))
def split_to_sequence(input, split=None, *, axis=0, keepdims=1):
    x = np.asarray(input)
    if x.ndim == 0:
        raise NodeInputError("SplitToSequence cannot split a scalar")
    ax = _axis(axis, x.ndim, "SplitToSequence")
    dim = x.shape[ax]
    if split is None:
        # Pieces of length 1; keepdims=0 drops the split axis.
        if keepdims:
            return list(np.split(x, dim, axis=ax)) if dim else []
        return [x[(slice(None),) * ax + (i,)] for i in range(dim)]
    s = np.asarray(split)
    if s.dtype.type not in _INDEX_TYPES:
        raise NodeInputTypeError(f"SplitToSequence split must be int32 or int64, got {s.dtype}")
    if s.ndim == 0:
        size = int(s)
        if size <= 0:
            raise NodeInputError(f"SplitToSequence split must be positive, got {size}")
        bounds = list(range(size, dim, size))
    elif s.ndim == 1:
        lengths = [int(v) for v in s]
        if any(v < 0 for v in lengths):
            raise NodeInputError(f"SplitToSequence split must not be negative, got {lengths}")
        if sum(lengths) != dim:
            raise NodeInputError(
                f"SplitToSequence split {lengths} does not add up to the dimension {dim} of axis {axis}"
            )
        if not lengths:
            return []
        bounds = list(np.cumsum(lengths[:-1]))
    else:
        raise NodeInputError(f"SplitToSequence split must be a scalar or 1-D, got shape {s.shape}")
    if dim == 0 and s.ndim == 0:
        return []
    return list(np.split(x, bounds, axis=ax))


@op("ConcatFromSequence", versions=(11,))
def concat_from_sequence(input_sequence, *, axis, new_axis=0):
    seq = _as_sequence(input_sequence)
    if not seq:
        raise NodeInputError("ConcatFromSequence needs a non-empty sequence")
    first = seq[0].dtype
    for t in seq[1:]:
        if t.dtype != first:
            raise NodeInputTypeError(f"ConcatFromSequence needs tensors of one type, got {first} and {t.dtype}")
    rank = seq[0].ndim
    if new_axis:
        ax = _axis(axis, rank + 1, "ConcatFromSequence")
        return np.stack(seq, axis=ax)
    if rank == 0:
        raise NodeInputError("ConcatFromSequence cannot concatenate scalars without new_axis=1")
    ax = _axis(axis, rank, "ConcatFromSequence")
    if len(seq) == 1:
        return seq[0]
    return np.concatenate(seq, axis=ax)


# --------------------------------------------------------------------------- SequenceMap


@op("SequenceMap", versions=(17,), multi_output=True)
def sequence_map(input_sequence, *additional_inputs, body, _outer=(), _num_outputs=1):
    seq = _as_sequence(input_sequence)
    n = len(seq)
    for i, extra in enumerate(additional_inputs):
        if isinstance(extra, list) and len(extra) != n:
            raise NodeInputError(
                f"SequenceMap additional input {i + 1} has {len(extra)} elements, "
                f"the input sequence has {n}"
            )
    n_out = len(body.output_names)
    if n_out != _num_outputs:
        raise NodeInputError(f"SequenceMap body has {n_out} outputs, the node declares {_num_outputs}")
    results: list[list] = [[] for _ in range(n_out)]
    is_seq = [isinstance(extra, list) for extra in additional_inputs]
    for j in range(n):
        args = [seq[j]]
        for extra, s in zip(additional_inputs, is_seq):
            args.append(extra[j] if s else extra)
        outs = body(*args, outer=_outer)
        for acc, value in zip(results, outs):
            acc.append(value)
    return tuple(results)
