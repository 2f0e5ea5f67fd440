"""Shape-manipulation kernels: Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Shape,
Size, Expand, Tile, Identity, DepthToSpace, SpaceToDepth.

These sit on the hot path of transformer graphs, so they return numpy views whenever
possible, and declare it (``alias``): the buffer planner then keeps the input's memory
alive while the view is and never overwrites it in place.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ....framework.thread_pool import current_pool
from ..jit import optional_module
from ..kernel_table import op
from .._helpers import ConstantInputs, as_int_list, constant_inputs, normalize_axis, shape_keyed_fast_path
from ....errors import NodeInputError, NodeInvalidArgument


def ints(values) -> list[int]:
    """A shape/axes/pads tensor (or list) as Python ints; fast for int arrays."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        return values.reshape(-1).tolist()
    return as_int_list(values)

# --------------------------------------------------------------------------- Reshape


def _reshape_target(in_shape: tuple[int, ...], shape: list[int], allowzero: int) -> tuple[int, ...]:
    out = list(shape)
    unknown = -1
    for i, d in enumerate(out):
        if d == -1:
            if unknown >= 0:
                raise NodeInputError(f"Reshape: more than one -1 in shape {shape}")
            unknown = i
        elif d == 0:
            if allowzero:
                continue
            if i >= len(in_shape):
                raise NodeInputError(f"Reshape: 0 at index {i} of shape {shape} has no matching input dim {in_shape}")
            out[i] = in_shape[i]
        elif d < -1:
            raise NodeInputError(f"Reshape: invalid dim {d} in shape {shape}")
    if unknown >= 0:
        if allowzero and 0 in out:
            raise NodeInputError(f"Reshape: -1 together with 0 when allowzero=1 in shape {shape}")
        known = 1
        for i, d in enumerate(out):
            if i != unknown:
                known *= d
        total = math.prod(in_shape)
        if known == 0:
            if total != 0:
                raise NodeInputError(f"Reshape: cannot reshape input of shape {in_shape} to {shape}")
            out[unknown] = 0
        else:
            if total % known:
                raise NodeInputError(f"Reshape: cannot reshape input of shape {in_shape} to {shape}")
            out[unknown] = total // known
    return tuple(out)


def _reshape(data: np.ndarray, shape, allowzero: int = 0) -> np.ndarray:
    shape = ints(shape)
    if 0 not in shape and shape.count(-1) <= 1 and all(d >= -1 for d in shape):
        try:
            return data.reshape(shape)  # numpy resolves a single -1 itself
        except ValueError:
            raise NodeInputError(f"Reshape: cannot reshape input of shape {data.shape} to {shape}") from None
    target = _reshape_target(data.shape, shape, allowzero)
    if target == data.shape:
        return data
    try:
        return data.reshape(target)
    except ValueError:
        raise NodeInputError(f"Reshape: cannot reshape input of shape {data.shape} to {list(target)}") from None


@op("Reshape", versions=1, alias={0: 0})
def reshape_1(data, *, shape=None, consumed_inputs=None):
    if shape is None:
        raise NodeInputError("Reshape-1 requires the 'shape' attribute")
    return _reshape(data, shape)


def _reshape_prepack(inputs, attributes) -> ConstantInputs | None:
    """A constant target shape: the output shape is worked out once per input shape."""
    return constant_inputs(inputs, 1, 1)


@op("Reshape", versions=(5, 13), alias={0: 0}, prepack=_reshape_prepack)
def reshape_5(data, shape, *, _packed=None):
    return _reshape(data, shape)


@op("Reshape", versions=(14, 19, 21, 23, 24, 25), alias={0: 0}, prepack=_reshape_prepack)
def reshape_14(data, shape, *, allowzero=0, _packed=None):
    return _reshape(data, shape, allowzero)


def _reshaped(kernel: Callable[..., np.ndarray]):
    """A ``shape_keyed_fast_path`` for an op that reshapes its input by constant parameters (Reshape, Squeeze,
    Unsqueeze: their checks cost ~1-3 us a run): ``kernel(data, *params, **keywords)``'s output shape per input
    shape."""
    return shape_keyed_fast_path(lambda data, params, keywords: kernel(data, *params, **keywords).shape,
                                 lambda data, shape: data.reshape(shape))


reshape_5.fast_path = reshape_14.fast_path = _reshaped(
    lambda data, shape, allowzero=0, **_: _reshape(data, shape, allowzero))


# --------------------------------------------------------------------------- Flatten


@op("Flatten", versions=(1, 9, 11, 13, 21, 23, 24, 25), alias={0: 0})
def flatten(x, *, axis=1):
    rank = x.ndim
    if not -rank <= axis <= rank:
        raise NodeInputError(f"Flatten: axis {axis} out of range for rank {rank}")
    if axis < 0:
        axis += rank
    outer = math.prod(x.shape[:axis])
    inner = math.prod(x.shape[axis:])
    return x.reshape(outer, inner)


# --------------------------------------------------------------------------- Squeeze / Unsqueeze


def _squeeze(data: np.ndarray, axes) -> np.ndarray:
    if axes is None:
        return data.reshape(tuple(d for d in data.shape if d != 1))
    axes = ints(axes)
    if not axes:
        return data.reshape(tuple(d for d in data.shape if d != 1))
    norm = {normalize_axis(a, data.ndim) for a in axes}
    for a in norm:
        if data.shape[a] != 1:
            raise NodeInputError(f"Squeeze: dimension {a} of shape {data.shape} is not 1")
    return data.reshape(tuple(d for i, d in enumerate(data.shape) if i not in norm))


@op("Squeeze", versions=(1, 11), alias={0: 0})
def squeeze_1(data, *, axes=None):
    return _squeeze(data, axes)


def _axes_prepack(inputs, attributes) -> ConstantInputs | None:
    """Constant axes (or none given): the output shape is worked out once per input shape."""
    return constant_inputs(inputs, 1, 0)


@op("Squeeze", versions=(13, 21, 23, 24, 25), alias={0: 0}, prepack=_axes_prepack)
def squeeze_13(data, axes=None, *, _packed=None):
    return _squeeze(data, axes)


def _unsqueeze(data: np.ndarray, axes) -> np.ndarray:
    axes = ints(axes)
    out_rank = data.ndim + len(axes)
    if len(axes) == 1:
        a = axes[0]
        if a < 0:
            a += out_rank
        if not 0 <= a < out_rank:
            raise NodeInputError(f"Unsqueeze: axis {axes[0]} out of range for output rank {out_rank}")
        shape = data.shape
        return data.reshape(shape[:a] + (1,) + shape[a:])
    norm = sorted(normalize_axis(a, out_rank) for a in axes)
    if len(set(norm)) != len(norm):
        raise NodeInputError(f"Unsqueeze: repeated axes {axes}")
    shape = list(data.shape)
    for a in norm:
        shape.insert(a, 1)
    return data.reshape(shape)


@op("Unsqueeze", versions=(1, 11), alias={0: 0})
def unsqueeze_1(data, *, axes):
    return _unsqueeze(data, axes)


@op("Unsqueeze", versions=(13, 21, 23, 24, 25), alias={0: 0}, prepack=_axes_prepack)
def unsqueeze_13(data, axes, *, _packed=None):
    return _unsqueeze(data, axes)


squeeze_13.fast_path = _reshaped(lambda data, axes=None, **_: _squeeze(data, axes))
unsqueeze_13.fast_path = _reshaped(lambda data, axes, **_: _unsqueeze(data, axes))


# --------------------------------------------------------------------------- Transpose


@op("Transpose", versions=(1, 13, 21, 23, 24, 25), alias={0: 0})
def transpose(data, *, perm=None):
    if perm is None:
        return data.T if data.ndim > 1 else data
    key = (tuple(perm), data.ndim)
    kind = _PERM_KINDS.get(key)
    if kind is None:
        kind = _perm_kind(*key)
    if kind is _KEEP:
        return data
    if kind is not _VIEW and data.dtype == _F32 and data.size >= _CHANNEL_MIN_SIZE and data.flags.c_contiguous:
        moved = _channels_moved(data, kind is _TO_LAST)
        if moved is not None:
            return moved
    return data.transpose(key[0])


# NCHW -> NHWC and back: float32 tensors of this many elements or more are copied by ``tensor/channels_last`` (0.5x
# and 0.14x the time of numpy's strided copy on 32x112x112 and back, which the next kernel would make of the view
# anyway); smaller ones stay views.
_CHANNEL_PERMS = ((0, 2, 3, 1), (0, 3, 1, 2))
_CHANNEL_MIN_SIZE = 1 << 12
_CHANNEL_PARALLEL_SIZE = 1 << 16  # elements from which a pool that splits products shares the transpose out
_F32 = np.dtype(np.float32)
# what a permutation of a rank does (worked out once per pair: a run's transposes skip the checks)
_KEEP, _VIEW, _TO_LAST, _TO_FIRST = "keep", "view", "to channels-last", "to channels-first"
_PERM_KINDS: dict[tuple[tuple[int, ...], int], str] = {}


def _perm_kind(perm: tuple[int, ...], rank: int) -> str:
    if sorted(perm) != list(range(rank)):
        raise NodeInvalidArgument(f"Transpose: perm {list(perm)} is not a permutation of the input's {rank} axes")
    if perm == tuple(range(rank)):
        kind = _KEEP
    else:
        kind = _TO_LAST if perm == _CHANNEL_PERMS[0] else _TO_FIRST if perm == _CHANNEL_PERMS[1] else _VIEW
    if len(_PERM_KINDS) < 256:
        _PERM_KINDS[(perm, rank)] = kind
    return kind


def _channels_moved(data: np.ndarray, to_last: bool) -> np.ndarray | None:
    """A C-contiguous float32 copy of 4-D ``data`` transposed to channels-last (``to_last``) or channels-first, by
    the compiled transposes over the session's pool; None where they cannot run (no numba)."""
    module = optional_module("onyxrt.providers.cpu.tensor.channels_last")
    if module is None:
        return None
    n, a, b, c = data.shape
    rows, columns = (a, b * c) if to_last else (a * b, c)
    out = np.empty((n, b, c, a) if to_last else (n, c, a, b), _F32)
    if data.size >= _CHANNEL_PARALLEL_SIZE:
        pool = current_pool()
        if pool.splits_gemms and pool.runs_native_tasks:
            pool.run_native(module.transpose_part.address,
                            module.task_args(data.reshape(n, rows, columns), out.reshape(n, columns, rows)),
                            pool.num_threads)
            return out
    module.transpose_images(data.reshape(n, rows, columns), out.reshape(n, columns, rows))
    return out


# --------------------------------------------------------------------------- Shape / Size


@op("Shape", versions=(1, 13))
def shape_1(data):
    return np.array(data.shape, dtype=np.int64)


@op("Shape", versions=(15, 19, 21, 23, 24, 25))
def shape_15(data, *, start=0, end=None):
    rank = data.ndim
    start = int(start)
    end = rank if end is None else int(end)
    if start < 0:
        start += rank
    if end < 0:
        end += rank
    start = min(max(start, 0), rank)
    end = min(max(end, 0), rank)
    return np.array(data.shape[start:end], dtype=np.int64)


@op("Size", versions=(1, 13, 19, 21, 23, 24, 25))
def size(data):
    return np.array(data.size, dtype=np.int64)


# --------------------------------------------------------------------------- Expand / Tile


@op("Expand", versions=(8, 13), alias={0: 0})
def expand(x, shape):
    shape = ints(shape)
    rank = max(len(shape), x.ndim)
    a = (1,) * (rank - x.ndim) + x.shape
    b = (1,) * (rank - len(shape)) + tuple(shape)
    out = []
    for da, db in zip(a, b):
        if da == db or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            raise NodeInvalidArgument(f"Expand: input shape {x.shape} cannot broadcast to {shape}")
    out = tuple(out)
    if out == x.shape:
        return x
    return np.broadcast_to(x, out)


@op("Tile", versions=1)
def tile_1(x, tiles, axis):
    reps = [1] * x.ndim
    reps[normalize_axis(int(np.asarray(axis).reshape(-1)[0]), x.ndim)] = int(np.asarray(tiles).reshape(-1)[0])
    return np.tile(x, reps)


@op("Tile", versions=(6, 13), alias={0: 0})
def tile_6(x, repeats):
    reps = ints(repeats)
    if len(reps) != x.ndim:
        raise NodeInputError(f"Tile: repeats {reps} must have one entry per input dim ({x.ndim})")
    if all(r == 1 for r in reps):
        return x
    return np.tile(x, reps)


# --------------------------------------------------------------------------- Identity


@op("Identity", versions=(1, 13, 14, 16, 19, 21, 23, 24, 25), alias={0: 0})
def identity(x):
    return x


# --------------------------------------------------------------------------- DepthToSpace / SpaceToDepth


def _depth_to_space(x: np.ndarray, blocksize: int, mode: str) -> np.ndarray:
    if x.ndim != 4:
        raise NodeInputError(f"DepthToSpace: expected a 4-D input, got shape {x.shape}")
    b, c, h, w = x.shape
    bs = int(blocksize)
    if c % (bs * bs):
        raise NodeInputError(f"DepthToSpace: channels {c} not divisible by blocksize^2 = {bs * bs}")
    if mode == "DCR":
        tmp = x.reshape(b, bs, bs, c // (bs * bs), h, w).transpose(0, 3, 4, 1, 5, 2)
    elif mode == "CRD":
        tmp = x.reshape(b, c // (bs * bs), bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        raise NodeInputError(f"DepthToSpace: unknown mode {mode!r}")
    return tmp.reshape(b, c // (bs * bs), h * bs, w * bs)


@op("DepthToSpace", versions=1, alias={0: 0})
def depth_to_space_1(x, *, blocksize):
    return _depth_to_space(x, blocksize, "DCR")


@op("DepthToSpace", versions=(11, 13, 28), alias={0: 0})
def depth_to_space_11(x, *, blocksize, mode="DCR"):
    return _depth_to_space(x, blocksize, mode)


def _space_to_depth(x: np.ndarray, blocksize: int, mode: str) -> np.ndarray:
    if x.ndim != 4:
        raise NodeInputError(f"SpaceToDepth: expected a 4-D input, got shape {x.shape}")
    b, c, h, w = x.shape
    bs = int(blocksize)
    if h % bs or w % bs:
        raise NodeInputError(f"SpaceToDepth: spatial dims {(h, w)} not divisible by blocksize {bs}")
    tmp = x.reshape(b, c, h // bs, bs, w // bs, bs)
    if mode == "DCR":
        tmp = tmp.transpose(0, 3, 5, 1, 2, 4)
    elif mode == "CRD":
        tmp = tmp.transpose(0, 1, 3, 5, 2, 4)
    else:
        raise NodeInputError(f"SpaceToDepth: unknown mode {mode!r}")
    return tmp.reshape(b, c * bs * bs, h // bs, w // bs)


@op("SpaceToDepth", versions=(1, 13), alias={0: 0})
def space_to_depth_1(x, *, blocksize):
    return _space_to_depth(x, blocksize, "DCR")


@op("SpaceToDepth", versions=28, alias={0: 0})
def space_to_depth_28(x, *, blocksize, mode="DCR"):
    return _space_to_depth(x, blocksize, mode)
