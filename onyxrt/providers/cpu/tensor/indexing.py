"""Indexing kernels: Gather*, Scatter*, Slice, OneHot, NonZero, Compress, Trilu, Unique,
ReverseSequence."""

from __future__ import annotations

import numpy as np

from ..kernel_table import op
from .shape_ops import ints
from .._helpers import ConstantInputs, constant_inputs, normalize_axis, shape_keyed_fast_path
from ....errors import NodeIndexError, NodeIndexOutOfRange, NodeInputError, NodeInvalidArgument


def _fix_indices(indices: np.ndarray, dim: int, what: str) -> np.ndarray:
    """Indices as intp with negative values wrapped; raises on out-of-range values."""
    idx = np.asarray(indices)
    if idx.dtype != np.intp:
        idx = idx.astype(np.intp)
    if idx.size:
        lo = idx.min()
        hi = idx.max()
        if lo < -dim or hi >= dim:
            bad = lo if lo < -dim else hi
            raise NodeIndexError(f"{what}: index {bad} is out of bounds for a dimension of size {dim}")
        if lo < 0:
            idx = np.where(idx < 0, idx + dim, idx)
    return idx


# --------------------------------------------------------------------------- Gather


@op("Gather", versions=(1, 11, 13))
def gather(data, indices, *, axis=0):
    axis = normalize_axis(axis, data.ndim)
    idx = np.asarray(indices)
    if idx.ndim == 0:
        i = int(idx)
        dim = data.shape[axis]
        if not -dim <= i < dim:
            raise _gather_out_of_range(i, dim)
        # basic indexing: a view
        return data[(slice(None),) * axis + (i,)]
    # np.take accepts negative indices and checks the range itself (no extra pass on the hot path)
    try:
        return np.take(data, idx, axis=axis)
    except IndexError:
        dim = data.shape[axis]
        bad = idx.ravel()[(idx.ravel() < -dim) | (idx.ravel() >= dim)]
        if not bad.size:
            raise
        raise _gather_out_of_range(int(bad[0]), dim) from None


def _gather_out_of_range(index: int, dim: int) -> NodeIndexOutOfRange:
    """onnxruntime's INVALID_ARGUMENT for a Gather index outside ``[-dim, dim - 1]``, in its words."""
    return NodeIndexOutOfRange(
        f"indices element out of data bounds, idx={index} must be within the inclusive range [{-dim},{dim - 1}]"
    )


def _element_index(indices: np.ndarray, axis: int, data_shape: tuple[int, ...], what: str) -> tuple:
    """Advanced-index tuple addressing data[..., indices[...], ...] along ``axis``."""
    for d, (n, size) in enumerate(zip(indices.shape, data_shape)):
        if d != axis and n > size:
            raise NodeIndexError(f"{what}: indices dim {d} is {n}, beyond data's {size} (data shape {list(data_shape)})")
    idx = _fix_indices(indices, data_shape[axis], what)
    grids = []
    for d, n in enumerate(idx.shape):
        if d == axis:
            grids.append(idx)
        else:
            shape = [1] * idx.ndim
            shape[d] = n
            grids.append(np.arange(n, dtype=np.intp).reshape(shape))
    return tuple(grids)


@op("GatherElements", versions=(11, 13))
def gather_elements(data, indices, *, axis=0):
    axis = normalize_axis(axis, data.ndim)
    indices = np.asarray(indices)
    if indices.ndim != data.ndim:
        raise NodeInputError(f"GatherElements: indices rank {indices.ndim} != data rank {data.ndim}")
    if indices.shape == data.shape:
        idx = _fix_indices(indices, data.shape[axis], "GatherElements")
        return np.take_along_axis(data, idx, axis=axis)
    return data[_element_index(indices, axis, data.shape, "GatherElements")]


def _nd_index(data_shape: tuple[int, ...], indices: np.ndarray, batch_dims: int, what: str):
    """(batch-flattened index tuple, batch shape, k) for GatherND/ScatterND style indices."""
    indices = np.asarray(indices)
    k = indices.shape[-1]
    if k > len(data_shape) - batch_dims:
        raise NodeInputError(f"{what}: last indices dim {k} is too large for data rank {len(data_shape)}")
    cols = []
    for j in range(k):
        dim = data_shape[batch_dims + j]
        cols.append(_fix_indices(indices[..., j], dim, what))
    return cols, k


@op("GatherND", versions=11)
def gather_nd_11(data, indices):
    return _gather_nd(data, indices, 0)


@op("GatherND", versions=(12, 13))
def gather_nd(data, indices, *, batch_dims=0):
    return _gather_nd(data, indices, int(batch_dims))


def _gather_nd(data: np.ndarray, indices: np.ndarray, b: int) -> np.ndarray:
    indices = np.asarray(indices)
    cols, k = _nd_index(data.shape, indices, b, "GatherND")
    if b == 0:
        return data[tuple(cols)]
    batch_shape = data.shape[:b]
    if indices.shape[:b] != batch_shape:
        raise NodeInputError(f"GatherND: batch dims of indices {indices.shape[:b]} != data {batch_shape}")
    nb = int(np.prod(batch_shape, dtype=np.int64))
    flat = data.reshape((nb,) + data.shape[b:])
    mid = indices.shape[b:-1]
    bidx = np.arange(nb, dtype=np.intp).reshape((nb,) + (1,) * len(mid))
    cols = [c.reshape((nb,) + mid) for c in cols]
    out = flat[(bidx, *cols)]
    return out.reshape(batch_shape + out.shape[1:])


# --------------------------------------------------------------------------- Scatter


_REDUCE_UFUNC = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter_into(data: np.ndarray, index: tuple, updates: np.ndarray, reduction: str, what: str) -> np.ndarray:
    out = data.copy()
    updates = np.asarray(updates, dtype=data.dtype)
    if reduction == "none":
        out[index] = updates
    else:
        uf = _REDUCE_UFUNC.get(reduction)
        if uf is None:
            raise NodeInputError(f"{what}: unsupported reduction {reduction!r}")
        if out.dtype == np.bool_ and reduction in ("add", "mul"):
            uf = np.logical_or if reduction == "add" else np.logical_and
        uf.at(out, index, updates)
    return out


def _scatter_elements(data, indices, updates, axis, reduction, what):
    axis = normalize_axis(axis, data.ndim)
    indices = np.asarray(indices)
    if indices.shape != np.shape(updates):
        raise NodeInputError(f"{what}: indices shape {indices.shape} != updates shape {np.shape(updates)}")
    if indices.ndim != data.ndim:
        raise NodeInputError(f"{what}: indices rank {indices.ndim} != data rank {data.ndim}")
    index = _element_index(indices, axis, data.shape, what)
    return _scatter_into(data, index, updates, reduction, what)


@op("Scatter", versions=(9, 11))
def scatter(data, indices, updates, *, axis=0):
    return _scatter_elements(data, indices, updates, axis, "none", "Scatter")


@op("ScatterElements", versions=(11, 13))
def scatter_elements_11(data, indices, updates, *, axis=0):
    return _scatter_elements(data, indices, updates, axis, "none", "ScatterElements")


@op("ScatterElements", versions=(16, 18))
def scatter_elements_16(data, indices, updates, *, axis=0, reduction="none"):
    return _scatter_elements(data, indices, updates, axis, reduction, "ScatterElements")


def _scatter_nd(data, indices, updates, reduction):
    indices = np.asarray(indices)
    cols, k = _nd_index(data.shape, indices, 0, "ScatterND")
    expected = indices.shape[:-1] + data.shape[k:]
    if np.shape(updates) != expected:
        raise NodeInputError(f"ScatterND: updates shape {np.shape(updates)} != expected {expected}")
    return _scatter_into(data, tuple(cols), updates, reduction, "ScatterND")


@op("ScatterND", versions=(11, 13))
def scatter_nd_11(data, indices, updates):
    return _scatter_nd(data, indices, updates, "none")


@op("ScatterND", versions=(16, 18))
def scatter_nd_16(data, indices, updates, *, reduction="none"):
    return _scatter_nd(data, indices, updates, reduction)


# --------------------------------------------------------------------------- Slice


def _slice(data: np.ndarray, starts, ends, axes=None, steps=None) -> np.ndarray:
    return data[_slice_index(data.shape, starts, ends, axes, steps)]


def _slice_index(shape: tuple[int, ...], starts, ends, axes=None, steps=None) -> tuple[slice, ...]:
    """The numpy index of Slice's window of a tensor of ``shape`` (raising the op's errors)."""
    starts = ints(starts)
    ends = ints(ends)
    n = len(starts)
    if len(ends) != n:
        raise NodeInvalidArgument(f"Slice: starts {starts} and ends {ends} differ in length")
    rank = len(shape)
    axes = list(range(n)) if axes is None else ints(axes)
    steps = None if steps is None else ints(steps)
    if len(axes) != n or (steps is not None and len(steps) != n):
        raise NodeInvalidArgument("Slice: starts, ends, axes and steps must have the same length")
    index = [slice(None)] * rank
    seen = set()
    for i in range(n):
        start, end, axis = starts[i], ends[i], axes[i]
        step = 1 if steps is None else steps[i]
        if axis < 0:
            axis += rank
        if not 0 <= axis < rank or axis in seen:
            raise NodeInvalidArgument(f"Slice: invalid or repeated axis {axes[i]} for rank {rank}")
        seen.add(axis)
        dim = shape[axis]
        if start < 0:
            start += dim
        if end < 0:
            end += dim
        if step > 0:
            start = 0 if start < 0 else (dim if start > dim else start)
            end = 0 if end < 0 else (dim if end > dim else end)
            index[axis] = slice(start, end, step)
        elif step < 0:
            start = 0 if start < 0 else (dim - 1 if start > dim - 1 else start)
            end = -1 if end < -1 else (dim - 1 if end > dim - 1 else end)
            index[axis] = slice(start, end if end >= 0 else None, step)
        else:
            raise NodeInvalidArgument("Slice: step cannot be 0")
    return tuple(index)


@op("Slice", versions=1)
def slice_1(data, *, starts, ends, axes=None):
    return _slice(data, starts, ends, axes)


def _slice_prepack(inputs, attributes) -> ConstantInputs | None:
    """Constant starts and ends (and axes, steps where given): the window is worked out once per input shape."""
    return constant_inputs(inputs, 1, 2)


@op("Slice", versions=(10, 11, 13), prepack=_slice_prepack)
def slice_10(data, starts, ends, axes=None, steps=None, *, _packed=None):
    return _slice(data, starts, ends, axes, steps)


# (a small model's Slices spent ~2 us a run converting and checking constant parameters)
slice_10.fast_path = shape_keyed_fast_path(lambda data, params, keywords: _slice_index(data.shape, *params),
                                           lambda data, index: data[index])


# --------------------------------------------------------------------------- OneHot


@op("OneHot", versions=(9, 11, 28))
def one_hot(indices, depth, values, *, axis=-1):
    indices = np.asarray(indices)
    depth_v = np.asarray(depth).reshape(-1)[0]
    depth_i = int(depth_v)
    if depth_i < 1:
        raise NodeInputError(f"OneHot: depth must be positive, got {depth_v}")
    values = np.asarray(values).reshape(-1)
    if values.size != 2:
        raise NodeInputError("OneHot: values must hold [off_value, on_value]")
    rank = indices.ndim
    if not -rank - 1 <= axis <= rank:
        raise NodeInputError(f"OneHot: axis {axis} out of range for indices rank {rank}")
    if axis < 0:
        axis += rank + 1
    idx = indices.astype(np.int64) if indices.dtype.kind != "i" else indices
    idx = np.where(idx < 0, idx + depth_i, idx)
    idx = np.expand_dims(idx, axis)
    shape = [1] * (rank + 1)
    shape[axis] = depth_i
    hot = idx == np.arange(depth_i, dtype=idx.dtype).reshape(shape)
    return np.where(hot, values[1], values[0])


# --------------------------------------------------------------------------- NonZero / Compress


@op("NonZero", versions=(9, 13))
def non_zero(x):
    x = np.asarray(x)
    if x.ndim == 0:
        x = x.reshape(1)
    return np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)


@op("Compress", versions=(9, 11, 28))
def compress(x, condition, *, axis=None):
    cond = np.asarray(condition).reshape(-1).astype(np.bool_, copy=False)
    if axis is None:
        flat = x.reshape(-1)
        if cond.size > flat.size:
            cond = cond[: flat.size]
        return flat[np.nonzero(cond)[0]]
    axis = normalize_axis(axis, x.ndim)
    if cond.size > x.shape[axis]:
        cond = cond[: x.shape[axis]]
    return np.compress(cond, x, axis=axis)


# --------------------------------------------------------------------------- Trilu


@op("Trilu", versions=14)
def trilu(x, k=None, *, upper=1):
    if x.ndim < 2:
        raise NodeInputError(f"Trilu: input must have rank >= 2, got {x.ndim}")
    kk = 0 if k is None else int(np.asarray(k).reshape(-1)[0])
    n, m = x.shape[-2:]
    rows = np.arange(n).reshape(n, 1)
    cols = np.arange(m).reshape(1, m)
    keep = (cols - rows >= kk) if upper else (cols - rows <= kk)
    return np.where(keep, x, np.zeros((), dtype=x.dtype))


# --------------------------------------------------------------------------- Unique


@op("Unique", versions=(11, 28), multi_output=True)
def unique(x, *, axis=None, sorted=1, _num_outputs=4):
    x = np.asarray(x)
    if axis is None:
        flat = x.reshape(-1)
        y, first, inverse, counts = np.unique(flat, return_index=True, return_inverse=True, return_counts=True)
    else:
        ax = normalize_axis(axis, x.ndim)
        if x.dtype == object:
            raise NotImplementedError("Unique: 'axis' is not supported for string tensors")
        y, first, inverse, counts = np.unique(
            x, return_index=True, return_inverse=True, return_counts=True, axis=ax
        )
    inverse = inverse.reshape(-1)
    if not sorted:
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        first = first[order]
        counts = counts[order]
        inverse = rank[inverse]
        y = y[order] if axis is None else np.take(y, order, axis=normalize_axis(axis, x.ndim))
    outs = (
        y,
        first.astype(np.int64, copy=False),
        inverse.astype(np.int64, copy=False),
        counts.astype(np.int64, copy=False),
    )
    return outs[: max(1, _num_outputs)]


# --------------------------------------------------------------------------- ReverseSequence


@op("ReverseSequence", versions=(10, 28))
def reverse_sequence(x, sequence_lens, *, batch_axis=1, time_axis=0):
    if x.ndim < 2:
        raise NodeInputError("ReverseSequence: input must have rank >= 2")
    batch_axis = normalize_axis(batch_axis, x.ndim)
    time_axis = normalize_axis(time_axis, x.ndim)
    if {batch_axis, time_axis} != {0, 1}:
        raise NodeInputError("ReverseSequence: batch_axis and time_axis must be 0 and 1")
    lens = np.asarray(sequence_lens).reshape(-1).astype(np.intp)
    nb, nt = x.shape[batch_axis], x.shape[time_axis]
    if lens.size != nb:
        raise NodeInputError(f"ReverseSequence: sequence_lens has {lens.size} entries for batch size {nb}")
    if lens.size and (lens.min() < 0 or lens.max() > nt):
        raise NodeInputError(f"ReverseSequence: sequence_lens must be in [0, {nt}]")
    t = np.arange(nt, dtype=np.intp).reshape(1, nt)
    L = lens.reshape(nb, 1)
    src = np.where(t < L, L - 1 - t, t)  # [batch, time]
    b = np.arange(nb, dtype=np.intp).reshape(nb, 1)
    if batch_axis == 0:
        return x[b, src]
    return x[src.T, b.T]
