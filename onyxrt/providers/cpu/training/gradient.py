"""Kernels behind ai.onnx.preview.training::Gradient.

A Gradient node is defined over the graph it sits in (it differentiates the
subgraph computing ``y`` from ``xs``), which no kernel can see: the node is
replaced before partitioning by the ops computing the gradients
(:func:`onyxrt.graph.autodiff.expand_gradient_nodes`). So there is deliberately
no kernel for Gradient itself: an unexpanded Gradient node is reported as
NOT_IMPLEMENTED at session creation.

The expansion uses standard ONNX ops where they fit the model's opset, and the
small private ops below (domain :data:`AUTODIFF_DOMAIN`, version 1) for what
standard ops cannot express without knowing element types or ranks when the
graph is built: constants of another tensor's type, summing a broadcast
gradient back to an input's shape, and the gradients of Softmax, MatMul, Slice,
Concat and Gather.
"""

from __future__ import annotations

import numpy as np

from ....graph.autodiff import AUTODIFF_DOMAIN
from .._helpers import as_int_list, normalize_axis
from ..kernel_table import op
from ....errors import NodeInputError


def _autodiff_op(name: str, multi_output: bool = False):
    return op(name, versions=1, domain=AUTODIFF_DOMAIN, multi_output=multi_output)


def sum_to_shape(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``x`` over the axes numpy broadcasting added or stretched to reach ``x.shape`` from ``shape``."""
    shape = tuple(shape)
    if x.shape == shape:
        return x
    lead = x.ndim - len(shape)
    if lead < 0:
        raise NodeInputError(f"SumToShape: cannot reduce shape {x.shape} to the larger rank shape {shape}")
    axes = list(range(lead))
    for i, dim in enumerate(shape):
        have = x.shape[lead + i]
        if dim == 1 and have != 1:
            axes.append(lead + i)
        elif dim != have:
            raise NodeInputError(f"SumToShape: shape {x.shape} is not a broadcast of {shape}")
    out = np.sum(x, axis=tuple(axes), keepdims=True) if axes else x
    return np.asarray(out.reshape(shape), dtype=x.dtype)


@_autodiff_op("ConstLike")
def const_like(ref, *, value=0.0, scalar=1):
    """``value`` in ``ref``'s element type: a 0-d tensor (scalar=1) or a tensor of ``ref``'s shape."""
    if scalar:
        return np.asarray(value, dtype=ref.dtype)
    if value == 0.0:
        return np.zeros(ref.shape, dtype=ref.dtype)
    if value == 1.0:
        return np.ones(ref.shape, dtype=ref.dtype)
    return np.full(ref.shape, value, dtype=ref.dtype)


@_autodiff_op("SumToShape")
def sum_to_shape_kernel(x, ref):
    """``x`` summed over its broadcast axes down to ``ref``'s shape (the adjoint of broadcasting)."""
    return sum_to_shape(x, ref.shape)


@_autodiff_op("BroadcastLike")
def broadcast_like(x, ref):
    """``x`` broadcast to ``ref``'s shape."""
    if x.shape == ref.shape:
        return x
    return np.broadcast_to(x, ref.shape)


@_autodiff_op("ReshapeLike")
def reshape_like(x, ref):
    return x.reshape(ref.shape)


@_autodiff_op("CastLike")
def cast_like(x, ref):
    return x.astype(ref.dtype, copy=False)


def _reduced_axes(rank: int, axes_input, axes, noop_with_empty_axes: int) -> tuple[int, ...]:
    if axes_input is not None and np.asarray(axes_input).size:
        listed = as_int_list(axes_input)
    elif axes:
        listed = list(axes)
    else:
        return () if noop_with_empty_axes else tuple(range(rank))
    return tuple(sorted({normalize_axis(a, rank) for a in listed}))


@_autodiff_op("Unreduce")
def unreduce(dy, x, axes_input=None, *, axes=None, keepdims=1, noop_with_empty_axes=0, mean=0):
    """The gradient of ReduceSum/ReduceMean(x): ``dy`` (the reduced shape) broadcast back to ``x``'s shape."""
    reduced = _reduced_axes(x.ndim, axes_input, axes, noop_with_empty_axes)
    kept = tuple(1 if i in reduced else d for i, d in enumerate(x.shape))
    out = np.broadcast_to(dy.reshape(kept), x.shape)
    if mean:
        count = int(np.prod([x.shape[i] for i in reduced], dtype=np.int64))
        out = out / dy.dtype.type(max(count, 1))
    return out


@_autodiff_op("ReduceLike")
def reduce_like(g, ref, axes_input=None, *, axes=None, keepdims=1, noop_with_empty_axes=0, mean=0):
    """The adjoint of Unreduce: ``g`` summed (averaged) over the reduced axes, in ``ref``'s (reduced) shape."""
    reduced = _reduced_axes(g.ndim, axes_input, axes, noop_with_empty_axes)
    out = np.sum(g, axis=reduced, keepdims=True) if reduced else g
    if mean:
        count = int(np.prod([g.shape[i] for i in reduced], dtype=np.int64))
        out = out / g.dtype.type(max(count, 1))
    return np.asarray(out, dtype=g.dtype).reshape(ref.shape)


@_autodiff_op("SoftmaxGrad")
def softmax_grad(dy, y, *, axis=-1, legacy=0, log=0):
    """Gradient of Softmax (log=0) or LogSoftmax (log=1) from the output ``y``.

    ``legacy=1``: the opset < 13 definition, over the input coerced to 2-D at ``axis``.
    """
    shape = y.shape
    if legacy:
        axis = normalize_axis(axis, max(y.ndim, 1)) if y.ndim else 0
        rows = int(np.prod(shape[:axis], dtype=np.int64))
        dy = dy.reshape(rows, -1)
        y = y.reshape(rows, -1)
        axis = 1
    else:
        axis = normalize_axis(axis, y.ndim)
    if log:
        dx = dy - np.exp(y) * np.sum(dy, axis=axis, keepdims=True)
    else:
        prod = dy * y
        dx = prod - y * np.sum(prod, axis=axis, keepdims=True)
    return np.asarray(dx.reshape(shape), dtype=y.dtype)


@_autodiff_op("MatMulGrad")
def matmul_grad(dy, a, b, *, which=0):
    """Gradient of MatMul(a, b) w.r.t. ``a`` (which=0) or ``b`` (which=1), numpy matmul rules (1-D, batch broadcast)."""
    a2 = a.reshape(1, -1) if a.ndim == 1 else a
    b2 = b.reshape(-1, 1) if b.ndim == 1 else b
    if a.ndim == 1 and b.ndim == 1:
        dy2 = dy.reshape(1, 1)
    elif a.ndim == 1:
        dy2 = np.expand_dims(dy, -2)
    elif b.ndim == 1:
        dy2 = np.expand_dims(dy, -1)
    else:
        dy2 = dy
    if which == 0:
        grad = np.matmul(dy2, np.swapaxes(b2, -1, -2))
        return sum_to_shape(grad, a2.shape).reshape(a.shape)
    grad = np.matmul(np.swapaxes(a2, -1, -2), dy2)
    return sum_to_shape(grad, b2.shape).reshape(b.shape)


def slice_index(shape, starts, ends, axes, steps) -> tuple[slice, ...]:
    """The numpy index ONNX Slice selects (its clamping rules, negative steps included)."""
    rank = len(shape)
    index = [slice(None)] * rank
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = normalize_axis(axis, rank)
        dim = shape[axis]
        if step == 0:
            raise NodeInputError("Slice: step cannot be 0")
        if start < 0:
            start += dim
        if end < 0:
            end += dim
        if step > 0:
            start = min(max(start, 0), dim)
            end = min(max(end, 0), dim)
        else:
            start = min(max(start, 0), dim - 1)
            end = min(max(end, -1), dim - 1)
        index[axis] = slice(start, end if end >= 0 else None, step)
    return tuple(index)


@_autodiff_op("SliceGrad")
def slice_grad(dy, x, starts_in=None, ends_in=None, axes_in=None, steps_in=None, *, starts=None, ends=None, axes=None):
    """Gradient of Slice: zeros of ``x``'s shape with ``dy`` written where the slice was taken.

    Slice-10+ passes starts/ends/axes/steps as inputs; Slice-1 as the attributes.
    """
    if starts_in is not None:
        starts, ends = as_int_list(starts_in), as_int_list(ends_in)
        axes = as_int_list(axes_in) if axes_in is not None else None
        steps = as_int_list(steps_in) if steps_in is not None else None
    else:
        steps = None
    out = np.zeros(x.shape, dtype=dy.dtype)
    out[slice_index(x.shape, starts, ends, axes, steps)] = dy
    return out


@_autodiff_op("ConcatGrad", multi_output=True)
def concat_grad(dy, *inputs, axis=0):
    """Gradient of Concat: ``dy`` split back into the inputs' extents along ``axis``."""
    axis = normalize_axis(axis, dy.ndim)
    bounds = np.cumsum([x.shape[axis] for x in inputs])[:-1]
    return tuple(np.split(dy, bounds, axis=axis))


@_autodiff_op("GatherGrad")
def gather_grad(dy, data, indices, *, axis=0):
    """Gradient of Gather: ``dy`` scatter-added into zeros of ``data``'s shape (repeated indices sum)."""
    axis = normalize_axis(axis, data.ndim)
    indices = np.asarray(indices, dtype=np.int64)
    indices = np.where(indices < 0, indices + data.shape[axis], indices)
    out = np.zeros(data.shape, dtype=dy.dtype)
    np.add.at(out, (slice(None),) * axis + (indices,), dy)
    return out


@_autodiff_op("GatherElementsGrad")
def gather_elements_grad(dy, data, indices, *, axis=0):
    """Gradient of GatherElements (and TopK's values): ``dy`` scatter-added along ``axis`` into zeros like ``data``."""
    axis = normalize_axis(axis, data.ndim)
    indices = np.asarray(indices, dtype=np.int64)
    indices = np.where(indices < 0, indices + data.shape[axis], indices)
    out = np.zeros(data.shape, dtype=dy.dtype)
    grid = list(np.indices(indices.shape, sparse=True))
    grid[axis] = indices
    np.add.at(out, tuple(grid), dy)
    return out


@_autodiff_op("TileGrad")
def tile_grad(dy, x):
    """Gradient of Tile: the sum of ``dy``'s tiles, in ``x``'s shape."""
    if dy.shape == x.shape:
        return dy
    split = []
    for dim_out, dim_in in zip(dy.shape, x.shape):
        split += [dim_out // dim_in if dim_in else 0, dim_in]
    return np.asarray(dy.reshape(split).sum(axis=tuple(range(0, 2 * x.ndim, 2))), dtype=dy.dtype)


@_autodiff_op("DropoutGrad")
def dropout_grad(dy, mask, ratio=None, training_mode=None):
    """Gradient of Dropout-12+: ``dy`` where the mask kept elements, scaled by 1/(1-ratio), in training mode."""
    if training_mode is None or not bool(np.asarray(training_mode).reshape(-1)[0]):
        return dy
    rate = 0.5 if ratio is None else float(np.asarray(ratio).reshape(-1)[0])
    if rate == 0.0:
        return dy
    return np.asarray(dy * mask.astype(dy.dtype) * dy.dtype.type(1.0 / (1.0 - rate)))
