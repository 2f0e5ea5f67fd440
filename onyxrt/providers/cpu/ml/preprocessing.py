"""ai.onnx.ml feature preprocessing: ArrayFeatureExtractor, Binarizer, FeatureVectorizer, Imputer,
Normalizer, Scaler."""

from __future__ import annotations

import numpy as np

from ..kernel_table import op
from ....errors import NodeIndexError, NodeInputError, NodeInputTypeError

_F32 = np.float32
_NUMERIC = "fiu"


def _numeric(x, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in _NUMERIC:
        raise NodeInputTypeError(f"{what}: unsupported input type {x.dtype}")
    return x


def _stride(x: np.ndarray, what: str) -> int:
    """onnxruntime's feature count: the only dim of a 1-D input, else dim 1."""
    if x.ndim == 0:
        raise NodeInputError(f"{what}: the input has no dimensions")
    return x.shape[0] if x.ndim == 1 else x.shape[1]


@op("ArrayFeatureExtractor", versions=1, domain="ai.onnx.ml")
def array_feature_extractor(x, y):
    x = np.asarray(x)
    if x.ndim == 0:
        raise NodeInputError("ArrayFeatureExtractor: X has no dimensions")
    idx = np.asarray(y).astype(np.int64, copy=False).reshape(-1)
    if idx.size == 0:
        raise NodeInputError("ArrayFeatureExtractor: Y holds no indices")
    stride = x.shape[-1]
    bad = (idx >= stride) | (idx < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise NodeIndexError(f"ArrayFeatureExtractor: index is out of range: Y[{i}] ({idx[i]}) >= {stride}")
    out = np.take(x, idx, axis=-1)
    return out.reshape(1, -1) if x.ndim == 1 else out


@op("Binarizer", versions=1, domain="ai.onnx.ml")
def binarizer(x, *, threshold=0.0):
    x = _numeric(x, "Binarizer")
    if x.dtype.kind == "f":
        nan = np.isnan(x)
        if nan.any():
            raise NodeInputError(f"Binarizer: input data with index {int(np.flatnonzero(nan.reshape(-1))[0])} is NaN")
        thr = x.dtype.type(threshold)
    else:
        thr = np.float64(threshold)
    return (x > thr).astype(x.dtype)


@op("FeatureVectorizer", versions=1, domain="ai.onnx.ml")
def feature_vectorizer(*inputs, inputdimensions=None):
    dims = [int(d) for d in (inputdimensions or [])]
    if len(dims) != len(inputs):
        raise NodeInputError(f"FeatureVectorizer: {len(inputs)} inputs but {len(dims)} inputdimensions values")
    if not inputs:
        raise NodeInputError("FeatureVectorizer needs at least one input")
    first = np.asarray(inputs[0])
    n = 1 if first.ndim <= 1 else first.shape[0]
    out = np.zeros((n, sum(dims)), dtype=_F32)
    offset = 0
    for value, width in zip(inputs, dims):
        v = _numeric(value, "FeatureVectorizer")
        rows = v.reshape(1, -1) if v.ndim <= 1 else v.reshape(v.shape[0], -1)
        if rows.shape[0] != n:
            raise NodeInputError("FeatureVectorizer: the inputs have different batch sizes")
        take = min(width, rows.shape[1])
        out[:, offset: offset + take] = rows[:, :take]
        offset += width
    return out


@op("Imputer", versions=1, domain="ai.onnx.ml")
def imputer(x, *, imputed_value_floats=None, imputed_value_int64s=None, replaced_value_float=0.0,
            replaced_value_int64=0):
    x = _numeric(x, "Imputer")
    if bool(imputed_value_floats) == bool(imputed_value_int64s):
        raise NodeInputError("Imputer: provide exactly one of imputed_value_floats or imputed_value_int64s")
    if x.dtype.kind == "f":
        if not imputed_value_floats:
            raise NodeInputError("Imputer: a float input needs imputed_value_floats")
        values = np.asarray(imputed_value_floats, dtype=x.dtype)
        replaced = x.dtype.type(replaced_value_float)
        hit = np.isnan(x) if np.isnan(replaced) else x == replaced
    else:
        if not imputed_value_int64s:
            raise NodeInputError("Imputer: an integer input needs imputed_value_int64s")
        values = np.asarray(imputed_value_int64s, dtype=np.int64).astype(x.dtype)
        hit = x == replaced_value_int64
    if x.size == 0:
        return x.copy()
    stride = _stride(x, "Imputer")
    if values.size == stride and stride > 0:
        feature = np.arange(x.size).reshape(x.shape) % stride
        fill = values[feature]
    else:
        fill = values[0]
    return np.where(hit, fill, x).astype(x.dtype, copy=False)


@op("Normalizer", versions=1, domain="ai.onnx.ml")
def normalizer(x, *, norm="MAX"):
    x = _numeric(x, "Normalizer")
    if x.ndim > 2:
        raise NodeInputError(f"Normalizer: the input rank must be at most 2, got {x.ndim}")
    shape = x.shape
    rows = x.reshape(1, -1) if x.ndim <= 1 else x
    xf = rows.astype(_F32)
    if norm == "MAX":
        d = xf.max(axis=1, keepdims=True) if xf.shape[1] else np.zeros((xf.shape[0], 1), _F32)
        out = np.where(d != 0, xf / np.where(d != 0, d, _F32(1)), xf)
    elif norm == "L1":
        d = np.abs(xf).sum(axis=1, keepdims=True, dtype=_F32)
        out = np.where(d != 0, xf / np.where(d != 0, d, _F32(1)), xf)
    elif norm == "L2":
        sq = (rows * rows).astype(_F32) if rows.dtype.kind == "f" else np.square(xf)
        d = sq.sum(axis=1, keepdims=True, dtype=_F32)
        mag = np.sqrt(sq / np.where(d != 0, d, _F32(1)))
        out = np.where(d != 0, np.where(rows < 0, -mag, mag), xf)
    else:
        raise NodeInputError(f"Normalizer: unknown norm '{norm}' (expected MAX, L1 or L2)")
    return out.astype(_F32, copy=False).reshape(shape)


@op("Scaler", versions=1, domain="ai.onnx.ml")
def scaler(x, *, offset=None, scale=None):
    x = _numeric(x, "Scaler")
    scale = list(scale or [])
    offset = list(offset or [])
    if not scale:
        raise NodeInputError("Scaler: empty scale attribute")
    if len(scale) != len(offset):
        raise NodeInputError(f"Scaler: scale size ({len(scale)}) != offset size ({len(offset)})")
    work = np.float64 if x.dtype == np.float64 else _F32
    xs = x.astype(work, copy=False)
    sc = np.asarray(scale, dtype=_F32).astype(work)
    off = np.asarray(offset, dtype=_F32).astype(work)
    stride = _stride(x, "Scaler")
    if len(scale) == stride:
        if x.ndim <= 2:
            out = (xs - off) * sc
        else:  # onnxruntime cycles the per-feature values over the flat data
            feature = np.arange(x.size).reshape(x.shape) % stride
            out = (xs - off[feature]) * sc[feature]
    elif len(scale) == 1:
        out = (xs - off[0]) * sc[0]
    else:
        raise NodeInputError(f"Scaler: either both scale and offset can be of feature size ({stride}) or 1")
    return out.astype(_F32, copy=False)
