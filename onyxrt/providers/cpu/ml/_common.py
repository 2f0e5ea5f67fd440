"""Helpers shared by the ai.onnx.ml kernels: score post-transforms (computed in float32 with
onnxruntime's formulas), label selection, input coercion, and ``Compiled`` (attributes compiled
once, at session creation)."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np
from ....errors import NodeInputError, NodeInputTypeError

_F32 = np.float32
_SQRT2 = _F32(np.sqrt(2.0))
_OBJ = np.dtype(object)

POST_TRANSFORMS = ("NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT")


def check_post_transform(name: str) -> str:
    if name not in POST_TRANSFORMS:
        raise NodeInputError(f"unknown post_transform '{name}' (expected one of {', '.join(POST_TRANSFORMS)})")
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
    raise NodeInputError(f"unknown post_transform '{post_transform}'")


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
    if isinstance(add_second_class, (int, np.integer)):  # one mode for all rows: same values, fewer steps
        mode = int(add_second_class)
        if mode in (2, 3):
            return np.stack([logistic(-s), logistic(s)] if post_transform == "LOGISTIC" else [-s, s], axis=1)
        if post_transform == "LOGISTIC":
            s = logistic(s)
        if mode in (0, 1):
            out[:, 0] = _F32(1) - s
            out[:, 1] = s
        else:
            out[:, 0] = s
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
        raise NodeInputError(f"{what}: the input needs at least one dimension")
    if x.ndim == 1:
        return x.reshape(1, -1)
    if x.ndim > 2:
        return x.reshape(x.shape[0], -1)
    return x


def to_float32(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise NodeInputTypeError(f"{what}: unsupported input type {x.dtype}")
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


# --------------------------------------------------------------------------- compiled attributes


class Compiled:
    """What a kernel derives from its attributes (a compiled tree ensemble, lookup tables), built once.

    The instance is the kernel's ``prepack``: at session creation it calls ``build`` with the node's
    attributes (the kernel's defaults filled in) and the result reaches the kernel as ``_packed``.
    Decorate the kernel with ``kernel`` (under ``@op``) so that its defaults are known; a direct call
    (``_packed`` None) builds with ``compile(locals())``. When ``build`` raises (invalid attributes),
    prepack returns None and the kernel's own build reports the error when it runs, as before.
    """

    def __init__(self, build: Callable[..., Any]) -> None:
        self._build = build
        self._defaults: dict[str, Any] = {}

    def kernel(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        params = inspect.signature(fn).parameters
        self._defaults = {name: p.default for name, p in params.items()
                          if p.kind is p.KEYWORD_ONLY and not name.startswith("_")}
        return fn

    def compile(self, scope: dict[str, Any]) -> Any:
        """Build from a kernel's keyword arguments (its ``locals()``)."""
        return self._build(**{name: scope[name] for name in self._defaults})

    def __call__(self, inputs: list, attributes: dict[str, Any]) -> Any:
        try:
            return self._build(**{**self._defaults, **attributes})
        except Exception:  # noqa: BLE001 - reported by the kernel at run time
            return None
