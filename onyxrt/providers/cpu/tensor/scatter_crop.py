"""Col2Im, TensorScatter (KV-cache update) and CenterCropPad."""

from __future__ import annotations

import itertools

import numpy as np

from .._helpers import as_int_list, normalize_axis
from ..kernel_table import op
from ....errors import NodeInputError


# --------------------------------------------------------------------------- Col2Im


@op("Col2Im", versions=18)
def col2im(input, image_shape, block_shape, *, dilations=None, pads=None, strides=None):
    """Sum column blocks ``[N, C * prod(block), L]`` back into images ``[N, C, *image_shape]``."""
    x = np.asarray(input)
    image = as_int_list(image_shape)
    block = as_int_list(block_shape)
    nd = len(image)
    if len(block) != nd or nd < 1:
        raise NodeInputError(f"Col2Im: image_shape {image} and block_shape {block} must have the same (>0) length")
    dilations = list(dilations) if dilations else [1] * nd
    strides = list(strides) if strides else [1] * nd
    pads = list(pads) if pads else [0] * (2 * nd)
    if len(dilations) != nd or len(strides) != nd or len(pads) != 2 * nd:
        raise NodeInputError("Col2Im: dilations/strides must have one value per spatial axis and pads two")
    if x.ndim != 3:
        raise NodeInputError(f"Col2Im: input must have rank 3 [N, C*prod(block_shape), L], got shape {x.shape}")
    if x.dtype == object:
        raise NodeInputError("Col2Im: string tensors are not supported")
    kernel_size = int(np.prod(block))
    n, ck, length = x.shape
    if kernel_size == 0 or ck % kernel_size:
        raise NodeInputError(f"Col2Im: input dim 1 ({ck}) is not a multiple of prod(block_shape)={kernel_size}")
    channels = ck // kernel_size
    padded = [image[i] + pads[i] + pads[i + nd] for i in range(nd)]
    counts = [(padded[i] - (dilations[i] * (block[i] - 1) + 1)) // strides[i] + 1 for i in range(nd)]
    if any(c < 1 for c in counts) or int(np.prod(counts)) != length:
        raise NodeInputError(
            f"Col2Im: input dim 2 ({length}) does not match the number of blocks {counts} "
            f"for image_shape {image}, block_shape {block}, pads {pads}, strides {strides}, dilations {dilations}"
        )
    acc_dt = np.dtype(np.int64) if x.dtype == np.bool_ else x.dtype
    cols = x.reshape([n, channels] + block + counts)
    out = np.zeros([n, channels] + padded, dtype=acc_dt)
    for k in itertools.product(*(range(b) for b in block)):
        region = tuple(
            slice(k[i] * dilations[i], k[i] * dilations[i] + strides[i] * (counts[i] - 1) + 1, strides[i])
            for i in range(nd)
        )
        out[(slice(None), slice(None)) + region] += cols[(slice(None), slice(None)) + k]
    crop = tuple(slice(pads[i], pads[i] + image[i]) for i in range(nd))
    out = out[(slice(None), slice(None)) + crop]
    if acc_dt != x.dtype:
        out = out.astype(x.dtype)
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------- TensorScatter


@op("TensorScatter", versions=24)
def tensor_scatter(past_cache, update, write_indices=None, *, axis=-2, mode="linear"):
    """Write ``update`` into a copy of ``past_cache`` along ``axis`` at each batch's write index."""
    past = np.asarray(past_cache)
    upd = np.asarray(update)
    if mode not in ("linear", "circular"):
        raise NodeInputError(f"TensorScatter: mode must be 'linear' or 'circular', got {mode!r}")
    rank = past.ndim
    if upd.ndim != rank:
        raise NodeInputError(f"TensorScatter: update rank {upd.ndim} differs from past_cache rank {rank}")
    ax = normalize_axis(axis, rank)
    if ax == 0:
        raise NodeInputError("TensorScatter: axis cannot be 0 (the batch dimension)")
    if any(u != p for i, (u, p) in enumerate(zip(upd.shape, past.shape)) if i != ax):
        raise NodeInputError(f"TensorScatter: update shape {upd.shape} must match past_cache shape {past.shape} "
                         f"except on axis {ax}")
    max_len, seq_len = past.shape[ax], upd.shape[ax]
    if seq_len > max_len:
        raise NodeInputError(f"TensorScatter: update sequence length {seq_len} exceeds the cache's {max_len}")
    batch = past.shape[0]
    if write_indices is None:
        starts = np.zeros(batch, dtype=np.int64)
    else:
        starts = np.asarray(write_indices, dtype=np.int64).reshape(-1)
        if starts.shape[0] != batch:
            raise NodeInputError(f"TensorScatter: write_indices has {starts.shape[0]} entries for batch size {batch}")
    out = past.copy()
    if seq_len == 0:
        return out
    if mode == "linear":
        if np.any(starts < 0) or np.any(starts + seq_len > max_len):
            raise NodeInputError(
                f"TensorScatter: linear mode needs 0 <= write_indices and write_indices + {seq_len} <= {max_len}, "
                f"got write_indices {starts.tolist()}"
            )
    if mode == "linear" and np.all(starts == starts[0]):
        s = int(starts[0])
        out[(slice(None),) * ax + (slice(s, s + seq_len),)] = upd
        return out
    steps = np.arange(seq_len, dtype=np.int64)
    for b in range(batch):
        idx = starts[b] + steps
        if mode == "circular":
            idx %= max_len
        dst = np.moveaxis(out[b], ax - 1, 0)  # a view: writes land in ``out``
        dst[idx] = np.moveaxis(upd[b], ax - 1, 0)
    return out


# --------------------------------------------------------------------------- CenterCropPad


@op("CenterCropPad", versions=18)
def center_crop_pad(input_data, shape, *, axes=None):
    """Center-crop or zero-pad ``input_data`` to ``shape`` on ``axes``."""
    x = np.asarray(input_data)
    target = as_int_list(shape)
    rank = x.ndim
    ax = [normalize_axis(a, rank) for a in axes] if axes else list(range(rank))
    if len(ax) != len(target):
        raise NodeInputError(f"CenterCropPad: shape has {len(target)} values for {len(ax)} axes")
    if len(set(ax)) != len(ax):
        raise NodeInputError(f"CenterCropPad: repeated axis in {axes}")
    out_shape = list(x.shape)
    src = [slice(None)] * rank
    dst = [slice(None)] * rank
    for a, t in zip(ax, target):
        if t < 0:
            raise NodeInputError(f"CenterCropPad: negative target size {t}")
        d = x.shape[a]
        out_shape[a] = t
        if d >= t:  # crop: start rounded down
            start = (d - t) // 2
            src[a] = slice(start, start + t)
        else:  # pad: the odd pixel goes to the end
            start = (t - d) // 2
            dst[a] = slice(start, start + d)
    if all(s == slice(None) for s in dst):
        return np.ascontiguousarray(x[tuple(src)])
    if x.dtype == object:
        out = np.full(out_shape, "", dtype=object)
    else:
        out = np.zeros(out_shape, dtype=x.dtype)
    out[tuple(dst)] = x[tuple(src)]
    return out
