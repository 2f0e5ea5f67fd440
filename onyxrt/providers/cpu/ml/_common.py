"""Helpers shared by the ai.onnx.ml kernels: score post-transforms (computed in float32 with
onnxruntime's formulas), label selection, input coercion and a small attribute-keyed cache."""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np

_F32 = np.float32
_SQRT2 = _F32(np.sqrt(2.0))
_OBJ = np.dtype(object)

POST_TRANSFORMS = ("NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT")


def check_post_transform(name: str) -> str:
    if name not in POST_TRANSFORMS:
        raise ValueError(f"unknown post_transform '{name}' (expected one of {', '.join(POST_TRANSFORMS)})")
    return name


def logistic(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=_F32)
    e = _F32(1) / (_F32(1) + np.exp(-np.abs(v)))
    return np.where(v < 0, _F32(1) - e, e).astype(_F32, copy=False)


def _erfinv(x: np.ndarray) -> np.ndarray:
    """The closed-form approximation of erf^-1 (a = 0.147) onnxruntime uses for PROBIT."""
    x = np.asarray(x, dtype=_F32)
    sgn = np.where(x < 0, _F32(-1), _F32(1))
    t = (_F32(1) - x) * (_F32(1) + x)
    lg = np.log(t)
    v = _F32(2) / (_F32(np.pi) * _F32(0.147)) + _F32(0.5) * lg
    v2 = _F32(1) / _F32(0.147) * lg
    v3 = -v + np.sqrt(v * v - v2)
    return (sgn * np.sqrt(v3)).astype(_F32, copy=False)


def probit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=_F32)
    return (_SQRT2 * _erfinv(_F32(2) * v - _F32(1))).astype(_F32, copy=False)


def softmax(s: np.ndarray) -> np.ndarray:
    s = np.asarray(s, dtype=_F32)
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(_F32, copy=False)


def softmax_zero(s: np.ndarray) -> np.ndarray:
    """Softmax over the non-zero scores of each row; (near) zero scores stay (near) zero."""
    s = np.asarray(s, dtype=_F32)
    vmax = s.max(axis=1, keepdims=True)
    nonzero = (s > _F32(1e-7)) | (s < _F32(-1e-7))
    e = np.where(nonzero, np.exp(s - vmax), s * np.exp(-vmax))
    total = np.where(nonzero, e, _F32(0)).sum(axis=1, keepdims=True)
    return (e / total).astype(_F32, copy=False)


def transform_rows(scores: np.ndarray, post_transform: str) -> np.ndarray:
    """Apply a post-transform to each row of [N, C] scores (C >= 2 in onnxruntime's rules)."""
    if post_transform == "NONE":
        return np.asarray(scores, dtype=_F32)
    if post_transform == "LOGISTIC":
        return logistic(scores)
    if post_transform == "SOFTMAX":
        return softmax(scores)
    if post_transform == "SOFTMAX_ZERO":
        return softmax_zero(scores)
    if post_transform == "PROBIT":
        return probit(scores)
    raise ValueError(f"unknown post_transform '{post_transform}'")


def binary_scores(score: np.ndarray, post_transform: str, add_second_class: np.ndarray | int,
                  batched: bool = False) -> np.ndarray:
    """onnxruntime's expansion of one score per row into two columns.

    ``add_second_class`` (per row or scalar): 0/1 -> [1 - s, s]; 2/3 -> [-s, s] or, with LOGISTIC,
    [logistic(-s), logistic(s)]; -1 -> [s, 0]; LOGISTIC turns s into p = logistic(s) before [1 - p, p].
    PROBIT gives [probit(s), 0], or [probit(s), s] with ``batched`` (the linear and SVM classifiers).
    """
    s = np.asarray(score, dtype=_F32)
    out = np.zeros((s.shape[0], 2), dtype=_F32)
    if post_transform == "PROBIT":
        out[:, 0] = probit(s)
        if batched:
            out[:, 1] = s
        return out
    mode = np.broadcast_to(np.asarray(add_second_class), s.shape)
    prob_like = (mode == 0) | (mode == 1)
    mixed = (mode == 2) | (mode == 3)
    if post_transform == "LOGISTIC":
        mixed0, mixed1 = logistic(-s), logistic(s)
        s = logistic(s)
    else:
        mixed0, mixed1 = -s, s
    out[:, 0] = np.where(prob_like, _F32(1) - s, np.where(mixed, mixed0, s))
    out[:, 1] = np.where(prob_like | mixed, np.where(mixed, mixed1, s), _F32(0))
    return out


def as_2d_features(x: np.ndarray, what: str) -> np.ndarray:
    """[C] -> [1, C]; [N, C] as is; more dims -> [N, -1] (rows are the first axis, as in onnxruntime)."""
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError(f"{what}: the input needs at least one dimension")
    if x.ndim == 1:
        return x.reshape(1, -1)
    if x.ndim > 2:
        return x.reshape(x.shape[0], -1)
    return x


def to_float32(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{what}: unsupported input type {x.dtype}")
    return x.astype(_F32, copy=False)


def labels_array(labels: list, strings: bool) -> np.ndarray:
    if strings:
        out = np.empty(len(labels), dtype=object)
        out[:] = list(labels)
        return out
    return np.asarray(labels, dtype=np.int64)


def obj_array(values, shape=None) -> np.ndarray:
    values = list(values)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out if shape is None else out.reshape(shape)


# --------------------------------------------------------------------------- compiled-attribute cache


class AttributeCache:
    """Caches what a kernel derives from its attribute values (e.g. a compiled tree ensemble).

    Kernels are called with the same attribute objects on every run of a session, so the key is
    the identity of those objects; the entry keeps them alive so their ids cannot be reused.
    """

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._entries: dict[tuple, tuple[tuple, Any]] = {}
        self._lock = threading.Lock()

    def get(self, attrs: tuple, build: Callable[[], Any]) -> Any:
        key = tuple(id(a) for a in attrs)
        entry = self._entries.get(key)
        if entry is not None and all(a is b for a, b in zip(entry[0], attrs)):
            return entry[1]
        value = build()
        with self._lock:
            if len(self._entries) >= self._size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (attrs, value)
        return value
