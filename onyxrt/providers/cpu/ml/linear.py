"""ai.onnx.ml linear models: LinearClassifier and LinearRegressor (float32 math, onnxruntime's rules)."""

from __future__ import annotations

import numpy as np

from ..registry import op
from ._common import (
    as_2d_features,
    binary_scores,
    check_post_transform,
    labels_array,
    probit,
    to_float32,
    transform_rows,
)

_F32 = np.float32


def _coefficients(coefficients, rows: int, n_features: int, what: str) -> np.ndarray:
    coef = np.asarray(coefficients if coefficients is not None else [], dtype=_F32)
    if rows <= 0 or coef.size != rows * n_features:
        raise ValueError(f"{what}: {coef.size} coefficients do not fit {rows} x {n_features} features")
    return coef.reshape(rows, n_features)


@op("LinearClassifier", versions=1, domain="ai.onnx.ml", multi_output=True)
def linear_classifier(x, *, coefficients=None, classlabels_ints=None, classlabels_strings=None, intercepts=None,
                      multi_class=0, post_transform="NONE"):
    check_post_transform(post_transform)
    x2 = to_float32(as_2d_features(x, "LinearClassifier"), "LinearClassifier")
    n, f = x2.shape
    using_strings = bool(classlabels_strings)
    labels = list(classlabels_strings) if using_strings else list(classlabels_ints or [])
    n_coef = len(coefficients or [])
    class_count = len(intercepts) if intercepts else (n_coef // f if f else 0)
    coef = _coefficients(coefficients, class_count, f, "LinearClassifier")
    scores = x2 @ coef.T
    if intercepts:
        scores += np.asarray(intercepts, dtype=_F32)
    scores = scores.astype(_F32, copy=False)
    if class_count == 1:
        if len(labels) == 2:
            pos_label, neg_label = labels[1], labels[0]
        else:
            pos_label, neg_label = ("1", "0") if using_strings else (1, 0)
        winner = scores[:, 0] > 0
        label_values = labels_array([neg_label, pos_label], using_strings)
        y = label_values[winner.astype(np.intp)]
        if len(labels) == 2:  # one score, two classes: onnxruntime writes [1 - s, s] (no transform but PROBIT)
            z = binary_scores(scores[:, 0], post_transform, 1, batched=True)
        elif post_transform == "PROBIT":
            z = probit(scores)
        else:
            z = scores
        return y, z
    if len(labels) < class_count:
        raise ValueError(f"LinearClassifier: {class_count} classes but {len(labels)} class labels")
    y = labels_array(labels, using_strings)[np.argmax(scores, axis=1)] if n else labels_array([], using_strings)
    return y, transform_rows(scores, post_transform)


@op("LinearRegressor", versions=1, domain="ai.onnx.ml")
def linear_regressor(x, *, coefficients=None, intercepts=None, post_transform="NONE", targets=1):
    check_post_transform(post_transform)
    x = np.asarray(x)
    if x.ndim > 2:
        raise ValueError(f"LinearRegressor: the input has more than 2 dimensions ({x.ndim})")
    x2 = to_float32(x.reshape(1, -1) if x.ndim <= 1 else x, "LinearRegressor")
    coef = _coefficients(coefficients, int(targets), x2.shape[1], "LinearRegressor")
    y = x2 @ coef.T
    if intercepts and len(intercepts) == targets:
        y += np.asarray(intercepts, dtype=_F32)
    y = y.astype(_F32, copy=False)
    if targets == 1:
        return probit(y) if post_transform == "PROBIT" else y
    return transform_rows(y, post_transform)
