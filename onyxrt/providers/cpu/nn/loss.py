"""Loss kernels: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss.

Both ops have (context-dependent) function bodies; these kernels compute the same
thing directly: one gather of each sample's target-class value, the optional class
weights, ``ignore_index`` masking, then the reduction (``mean`` divides by the sum
of the applied weights, i.e. the number of non-ignored samples without weights).
float16/bfloat16 are computed in float32.
"""

from __future__ import annotations

import numpy as np

from ..kernel_table import op
from ....errors import NodeInputError

_REDUCTIONS = ("none", "sum", "mean")


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _as_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _targets(target, input_shape, ignore_index, op_name: str):
    """Class indices (ignored samples mapped to class 0) and the ignored mask (None if nothing is ignored)."""
    if len(input_shape) < 2:
        raise NodeInputError(f"{op_name} input must have rank >= 2 (N, C, ...), got shape {input_shape}")
    target = np.asarray(target)
    expected = (input_shape[0], *input_shape[2:])
    if target.shape != expected:
        raise NodeInputError(f"{op_name} target shape {target.shape} does not match input shape {input_shape}")
    C = input_shape[1]
    t = target.astype(np.intp, copy=False)
    ignored = None
    if ignore_index is not None:
        ignored = t == int(ignore_index)
        if ignored.any():
            t = np.where(ignored, 0, t)
        else:
            ignored = None
    if t.size and (t.min() < 0 or t.max() >= C):
        raise NodeInputError(f"{op_name} target values must be in [0, {C}) (or equal ignore_index)")
    return t, ignored


def _reduce_loss(loss, t, ignored, weight, reduction: str, C: int, op_name: str) -> np.ndarray:
    """Weight, mask and reduce the per-sample losses ``loss`` (-log-probability of each target)."""
    reduction = _as_str(reduction)
    if reduction not in _REDUCTIONS:
        raise NodeInputError(f"{op_name} reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    cdt = loss.dtype
    w = None
    if weight is not None:
        weight = np.asarray(weight).astype(cdt, copy=False).reshape(-1)
        if weight.size != C:
            raise NodeInputError(f"{op_name} weight must have {C} values, got {weight.size}")
        w = weight[t]
        loss = loss * w
    if ignored is not None:
        loss = np.where(ignored, cdt.type(0), loss)
        if w is not None:
            w = np.where(ignored, cdt.type(0), w)
    if reduction == "none":
        return loss
    total = loss.sum(dtype=cdt)
    if reduction == "sum":
        return np.asarray(total, dtype=cdt)
    if w is not None:
        denom = w.sum(dtype=cdt)
    elif ignored is not None:
        denom = cdt.type(ignored.size - np.count_nonzero(ignored))
    else:
        denom = cdt.type(loss.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(total / denom, dtype=cdt)


@op("NegativeLogLikelihoodLoss", versions=(12, 13, 22))
def negative_log_likelihood_loss(input, target, weight=None, *, ignore_index=None, reduction="mean"):
    name = "NegativeLogLikelihoodLoss"
    x = np.asarray(input)
    t, ignored = _targets(target, x.shape, ignore_index, name)
    cdt = _compute_dtype(x.dtype)
    picked = np.take_along_axis(x, t[:, None], axis=1)[:, 0].astype(cdt, copy=False)
    loss = _reduce_loss(-picked, t, ignored, weight, reduction, x.shape[1], name)
    return loss.astype(x.dtype, copy=False)


@op("SoftmaxCrossEntropyLoss", versions=(12, 13), multi_output=True)
def softmax_cross_entropy_loss(scores, labels, weights=None, *, ignore_index=None, reduction="mean", _num_outputs=1):
    name = "SoftmaxCrossEntropyLoss"
    x = np.asarray(scores)
    t, ignored = _targets(labels, x.shape, ignore_index, name)
    cdt = _compute_dtype(x.dtype)
    xc = x.astype(cdt, copy=False)
    peak = xc.max(axis=1, keepdims=True)
    shifted = xc - peak
    log_sum = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    # -log_softmax at the target class: only the picked entries are needed for the loss
    picked = np.take_along_axis(shifted, t[:, None], axis=1)
    loss = _reduce_loss((log_sum - picked)[:, 0], t, ignored, weights, reduction, x.shape[1], name)
    if _num_outputs >= 2:
        np.subtract(shifted, log_sum, out=shifted)
        return loss.astype(x.dtype, copy=False), shifted.astype(x.dtype, copy=False)
    return (loss.astype(x.dtype, copy=False),)
