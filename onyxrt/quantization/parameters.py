"""Scales and zero points (r = scale * (q - zero_point)) and the quantization of arrays, per tensor or per axis."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .quant_types import QuantType, integer_range, numpy_type


@dataclass(frozen=True)
class QuantParams:
    """The parameters of one quantized tensor; ``axis`` is None per tensor, else the axis ``scale`` runs along."""

    scale: np.ndarray  # float32, scalar or 1-D
    zero_point: np.ndarray  # the quantized type, same shape as scale
    quant_type: QuantType
    axis: int | None = None


def scale_and_zero_point(rmin: np.ndarray, rmax: np.ndarray, quant_type: QuantType, symmetric: bool,
                         reduce_range: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point covering [rmin, rmax] (widened to include 0), elementwise over per-channel ranges.

    Symmetric ranges become [-absmax, absmax] with the zero point in the middle of the integer range
    (0 for signed types, 128 for uint8), so every channel of a symmetric weight shares one zero point.
    A zero range gets scale 1 and zero point 0.
    """
    qmin, qmax = integer_range(quant_type, reduce_range, symmetric)
    rmin = np.minimum(np.asarray(rmin, dtype=np.float64), 0.0)
    rmax = np.maximum(np.asarray(rmax, dtype=np.float64), 0.0)
    if symmetric:
        absmax = np.maximum(-rmin, rmax)
        rmin, rmax = -absmax, absmax
    scale = (rmax - rmin) / (qmax - qmin)
    degenerate = scale.astype(np.float32) < np.finfo(np.float32).tiny
    safe_scale = np.where(degenerate, 1.0, scale)
    if symmetric:
        zero_point = np.full(scale.shape, round((qmin + qmax) / 2.0))
    else:
        zero_point = np.clip(np.round(qmin - rmin / safe_scale), qmin, qmax)
    zero_point = np.where(degenerate, 0, zero_point)
    dtype = numpy_type(quant_type)
    return safe_scale.astype(np.float32), zero_point.astype(dtype)


def quantize_array(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, quant_type: QuantType,
                   axis: int | None = None, reduce_range: bool = False, symmetric: bool = False) -> np.ndarray:
    """``clip(round(values / scale) + zero_point)`` with scale/zero_point broadcast along ``axis`` (round half to even)."""
    qmin, qmax = integer_range(quant_type, reduce_range, symmetric)
    scale = np.asarray(scale, dtype=np.float32)
    zero_point = np.asarray(zero_point).astype(np.int64)
    if axis is not None and scale.ndim == 1:
        shape = [1] * values.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    quantized = np.rint(values.astype(np.float32) / scale) + zero_point
    return np.clip(quantized, qmin, qmax).astype(numpy_type(quant_type))


def weight_params(weight: np.ndarray, quant_type: QuantType, axis: int | None, symmetric: bool,
                  reduce_range: bool = False) -> tuple[QuantParams, np.ndarray]:
    """Parameters from the weight's own range (per tensor, or per slice along ``axis``) and the quantized weight."""
    data = np.asarray(weight, dtype=np.float32)
    if axis is None:
        rmin, rmax = np.array(data.min() if data.size else 0.0), np.array(data.max() if data.size else 0.0)
    else:
        axis = axis % data.ndim
        moved = np.moveaxis(data, axis, 0).reshape(data.shape[axis], -1)
        rmin, rmax = moved.min(axis=1), moved.max(axis=1)
    scale, zero_point = scale_and_zero_point(rmin, rmax, quant_type, symmetric, reduce_range)
    quantized = quantize_array(data, scale, zero_point, quant_type, axis, reduce_range, symmetric)
    return QuantParams(scale, zero_point, quant_type, axis), quantized


def dequantize_array(quantized: np.ndarray, params: QuantParams) -> np.ndarray:
    scale, zero_point = params.scale, params.zero_point.astype(np.float32)
    if params.axis is not None and scale.ndim == 1:
        shape = [1] * quantized.ndim
        shape[params.axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return (quantized.astype(np.float32) - zero_point) * scale
