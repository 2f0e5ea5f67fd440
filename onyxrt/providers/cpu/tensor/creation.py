"""Tensor-creating kernels: Constant, ConstantOfShape, Range, EyeLike, Random*, Multinomial,
Bernoulli."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ....graph.types import np_dtype
from ..kernel_table import op
from ..random_state import NodeGenerator, node_generator, random_op_prepack
from .shape_ops import ints
from ....errors import NodeInputError, NodeInputTypeError


# --------------------------------------------------------------------------- Constant


def _to_str(v) -> str:
    return v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else str(v)


def _dense_from_sparse(sparse) -> np.ndarray:
    """A dense ndarray for a SparseTensorProto (or an already converted value)."""
    if isinstance(sparse, np.ndarray):
        return sparse
    if hasattr(sparse, "todense"):  # scipy-like
        return np.asarray(sparse.todense())
    if not isinstance(sparse, onnx.SparseTensorProto):
        raise NodeInputTypeError(f"Constant: unsupported sparse_value of type {type(sparse).__name__}")
    values = numpy_helper.to_array(sparse.values).reshape(-1)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    dims = tuple(int(d) for d in sparse.dims)
    dense = np.zeros(dims, dtype=values.dtype) if values.dtype != object else np.full(dims, "", dtype=object)
    if indices.ndim == 1 or (indices.ndim == 2 and indices.shape[1] == 1 and len(dims) != 1):
        dense.reshape(-1)[indices.reshape(-1)] = values
    else:
        dense[tuple(indices.T)] = values
    return dense


def _constant(value=None, sparse_value=None, value_float=None, value_floats=None, value_int=None,
              value_ints=None, value_string=None, value_strings=None):
    given = [n for n, v in (("value", value), ("sparse_value", sparse_value), ("value_float", value_float),
                            ("value_floats", value_floats), ("value_int", value_int), ("value_ints", value_ints),
                            ("value_string", value_string), ("value_strings", value_strings)) if v is not None]
    if len(given) != 1:
        raise NodeInputError(f"Constant: exactly one value attribute must be set, got {given or 'none'}")
    if value is not None:
        if isinstance(value, onnx.TensorProto):
            return numpy_helper.to_array(value)
        return np.asarray(value)
    if sparse_value is not None:
        return _dense_from_sparse(sparse_value)
    if value_float is not None:
        return np.array(value_float, dtype=np.float32)
    if value_floats is not None:
        return np.array(list(value_floats), dtype=np.float32).reshape(-1)
    if value_int is not None:
        return np.array(value_int, dtype=np.int64)
    if value_ints is not None:
        return np.array(list(value_ints), dtype=np.int64).reshape(-1)
    if value_string is not None:
        out = np.empty((), dtype=object)
        out[()] = _to_str(value_string)
        return out
    strs = [_to_str(s) for s in value_strings]
    out = np.empty(len(strs), dtype=object)
    out[:] = strs
    return out


@op("Constant", versions=(1, 9))
def constant_1(*, value):
    return _constant(value=value)


@op("Constant", versions=11)
def constant_11(*, value=None, sparse_value=None):
    return _constant(value=value, sparse_value=sparse_value)


@op("Constant", versions=(12, 13, 19, 21, 23, 24, 25))
def constant_12(*, value=None, sparse_value=None, value_float=None, value_floats=None, value_int=None,
                value_ints=None, value_string=None, value_strings=None):
    return _constant(value, sparse_value, value_float, value_floats, value_int, value_ints, value_string,
                     value_strings)


# --------------------------------------------------------------------------- ConstantOfShape


@op("ConstantOfShape", versions=(9, 20, 21, 23, 24, 25))
def constant_of_shape(input, *, value=None):
    shape = ints(input)
    if any(d < 0 for d in shape):
        raise NodeInputError(f"ConstantOfShape: negative dimension in {shape}")
    if value is None:
        return np.zeros(shape, dtype=np.float32)
    if isinstance(value, onnx.TensorProto):
        value = numpy_helper.to_array(value)
    value = np.asarray(value)
    if value.size != 1:
        raise NodeInputError("ConstantOfShape: 'value' must hold exactly one element")
    return np.full(shape, value.reshape(-1)[0], dtype=value.dtype)


# --------------------------------------------------------------------------- Range


def _range(start, limit, delta, stash_float: bool) -> np.ndarray:
    start = np.asarray(start)
    dtype = start.dtype
    s, l, d = (np.asarray(v).reshape(-1)[0] for v in (start, limit, delta))
    if dtype.kind in "iu":
        s, l, d = int(s), int(l), int(d)
        if d == 0:
            raise NodeInputError("Range: delta cannot be 0")
        n = max(-((s - l) // d), 0)  # ceil((l - s) / d)
        return (np.arange(n, dtype=np.int64) * d + s).astype(dtype, copy=False)
    sf, lf, df = float(s), float(l), float(d)
    if df == 0:
        raise NodeInputError("Range: delta cannot be 0")
    n = max(int(np.ceil((lf - sf) / df)), 0)
    if dtype in (np.float32, np.float64):
        work = dtype
    elif stash_float:
        work = np.dtype(np.float32)
    else:
        work = dtype
    ws, wd = np.asarray(s).astype(work), np.asarray(d).astype(work)
    out = ws + np.arange(n, dtype=work) * wd
    return out.astype(dtype, copy=False)


@op("Range", versions=11)
def range_11(start, limit, delta):
    return _range(start, limit, delta, True)


@op("Range", versions=27)
def range_27(start, limit, delta, *, stash_type=1):
    return _range(start, limit, delta, stash_type == 1)


# --------------------------------------------------------------------------- EyeLike


@op("EyeLike", versions=(9, 22))
def eye_like(input, *, dtype=None, k=0):
    if input.ndim != 2:
        raise NodeInputError(f"EyeLike: input must be 2-D, got shape {input.shape}")
    out_dtype = input.dtype if dtype is None else np_dtype(int(dtype))
    n, m = input.shape
    out = np.zeros((n, m), dtype=out_dtype)
    k = int(k)
    if -n < k < m:
        r = np.arange(max(0, -k), min(n, m - k))
        out[r, r + k] = 1
    return out


# --------------------------------------------------------------------------- random
# Each node draws from its own generator, created once per kernel (see random_state).


def _node_generator(packed: NodeGenerator | None, seed) -> NodeGenerator:
    """The node's generator (a kernel called outside a session gets a fresh one)."""
    return packed if packed is not None else node_generator(seed)


def _random_dtype(dtype) -> np.dtype:
    dt = np_dtype(int(dtype))
    if dt.kind != "f" and not str(dt).startswith("bfloat"):
        raise NodeInputError(f"random ops produce floating-point tensors, got dtype {dt}")
    return dt


def _normal(shape, dtype, mean, scale, generator: NodeGenerator) -> np.ndarray:
    with generator as rng:
        out = rng.standard_normal(size=tuple(shape), dtype=np.float64 if dtype == np.float64 else np.float32)
    out = out * scale + mean
    return out.astype(dtype, copy=False)


def _uniform(shape, dtype, low, high, generator: NodeGenerator) -> np.ndarray:
    with generator as rng:
        out = rng.random(size=tuple(shape), dtype=np.float64 if dtype == np.float64 else np.float32)
    out = out * (high - low) + low
    return out.astype(dtype, copy=False)


@op("RandomNormal", versions=(1, 22), prepack=random_op_prepack)
def random_normal(*, shape, dtype=1, mean=0.0, scale=1.0, seed=None, _packed=None):
    return _normal(ints(shape), _random_dtype(dtype), mean, scale, _node_generator(_packed, seed))


@op("RandomUniform", versions=(1, 22), prepack=random_op_prepack)
def random_uniform(*, shape, dtype=1, high=1.0, low=0.0, seed=None, _packed=None):
    return _uniform(ints(shape), _random_dtype(dtype), low, high, _node_generator(_packed, seed))


@op("RandomNormalLike", versions=(1, 22), prepack=random_op_prepack)
def random_normal_like(input, *, dtype=None, mean=0.0, scale=1.0, seed=None, _packed=None):
    dt = input.dtype if dtype is None else _random_dtype(dtype)
    return _normal(input.shape, dt, mean, scale, _node_generator(_packed, seed))


@op("RandomUniformLike", versions=(1, 22), prepack=random_op_prepack)
def random_uniform_like(input, *, dtype=None, high=1.0, low=0.0, seed=None, _packed=None):
    dt = input.dtype if dtype is None else _random_dtype(dtype)
    return _uniform(input.shape, dt, low, high, _node_generator(_packed, seed))


@op("Multinomial", versions=(7, 22), prepack=random_op_prepack)
def multinomial(input, *, dtype=6, sample_size=1, seed=None, _packed=None):
    out_dtype = np_dtype(int(dtype))
    if out_dtype not in (np.int32, np.int64):
        raise NodeInputError(f"Multinomial: dtype must be int32 or int64, got {out_dtype}")
    if input.ndim != 2:
        raise NodeInputError(f"Multinomial: input must be [batch_size, class_size], got shape {input.shape}")
    logits = input.astype(np.float64)
    logits = logits - logits.max(axis=1, keepdims=True)
    cdf = np.cumsum(np.exp(logits), axis=1)
    cdf /= cdf[:, -1:]
    with _node_generator(_packed, seed) as rng:
        u = rng.random((input.shape[0], int(sample_size)))
    out = np.empty(u.shape, dtype=out_dtype)
    last = input.shape[1] - 1
    for b in range(input.shape[0]):
        out[b] = np.minimum(np.searchsorted(cdf[b], u[b], side="right"), last)
    return out


@op("Bernoulli", versions=(15, 22), prepack=random_op_prepack)
def bernoulli(input, *, dtype=None, seed=None, _packed=None):
    out_dtype = input.dtype if dtype is None else np_dtype(int(dtype))
    with _node_generator(_packed, seed) as rng:
        u = rng.random(input.shape)
    return (u < input.astype(np.float64)).astype(out_dtype)
