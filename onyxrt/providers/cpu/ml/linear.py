"""ai.onnx.ml linear models: LinearClassifier and LinearRegressor (float32 math, onnxruntime's rules)."""

from __future__ import annotations

import numpy as np

from ..kernel_table import op
from ._common import (
    Compiled,
    as_2d_features,
    binary_scores,
    check_post_transform,
    labels_array,
    probit,
    to_float32,
    transform_rows,
)
from ....errors import NodeInputError

_F32 = np.float32


def _coefficients(coef: np.ndarray, rows: int, n_features: int, what: str) -> np.ndarray:
    if rows <= 0 or coef.size != rows * n_features:
        raise NodeInputError(f"{what}: {coef.size} coefficients do not fit {rows} x {n_features} features")
    return coef.reshape(rows, n_features)


def _array(values) -> np.ndarray:
    return np.asarray(values if values is not None else [], dtype=_F32)


class _LinearClassifier:
    """A compiled LinearClassifier: coefficient, intercept and label arrays, built once."""

    def __init__(self, *, coefficients, classlabels_ints, classlabels_strings, intercepts, multi_class,
                 post_transform) -> None:
        check_post_transform(post_transform)
        self.post_transform = post_transform
        self.using_strings = using_strings = bool(classlabels_strings)
        self.labels = labels = list(classlabels_strings) if using_strings else list(classlabels_ints or [])
        self.n_coef = len(coefficients or [])
        self.coef = _array(coefficients)
        self.n_intercepts = len(intercepts) if intercepts else 0
        self.intercepts = np.asarray(intercepts, dtype=_F32) if intercepts else None
        self.label_array = labels_array(labels, using_strings)
        self.no_labels = labels_array([], using_strings)
        if len(labels) == 2:
            pos_label, neg_label = labels[1], labels[0]
        else:
            pos_label, neg_label = ("1", "0") if using_strings else (1, 0)
        self.binary_labels = labels_array([neg_label, pos_label], using_strings)

    def __call__(self, x) -> tuple[np.ndarray, np.ndarray]:
        post_transform, labels = self.post_transform, self.labels
        x2 = to_float32(as_2d_features(x, "LinearClassifier"), "LinearClassifier")
        n, f = x2.shape
        class_count = self.n_intercepts if self.n_intercepts else (self.n_coef // f if f else 0)
        coef = _coefficients(self.coef, class_count, f, "LinearClassifier")
        scores = x2 @ coef.T
        if self.intercepts is not None:
            scores += self.intercepts
        scores = scores.astype(_F32, copy=False)
        if class_count == 1:
            winner = scores[:, 0] > 0
            y = self.binary_labels[winner.astype(np.intp)]
            if len(labels) == 2:  # one score, two classes: onnxruntime writes [1 - s, s] (no transform but PROBIT)
                z = binary_scores(scores[:, 0], post_transform, 1, batched=True)
            elif post_transform == "PROBIT":
                z = probit(scores)
            else:
                z = scores
            return y, z
        if len(labels) < class_count:
            raise NodeInputError(f"LinearClassifier: {class_count} classes but {len(labels)} class labels")
        y = self.label_array[np.argmax(scores, axis=1)] if n else self.no_labels
        return y, transform_rows(scores, post_transform)


_LINEAR_CLASSIFIER = Compiled(_LinearClassifier)


@op("LinearClassifier", versions=1, domain="ai.onnx.ml", multi_output=True, prepack=_LINEAR_CLASSIFIER)
@_LINEAR_CLASSIFIER.kernel
def linear_classifier(x, *, coefficients=None, classlabels_ints=None, classlabels_strings=None, intercepts=None,
                      multi_class=0, post_transform="NONE", _packed=None):
    return (_packed if _packed is not None else _LINEAR_CLASSIFIER.compile(locals()))(x)


class _LinearRegressor:
    """A compiled LinearRegressor."""

    def __init__(self, *, coefficients, intercepts, post_transform, targets) -> None:
        check_post_transform(post_transform)
        self.post_transform, self.targets = post_transform, targets
        self.coef = _array(coefficients)
        self.intercepts = np.asarray(intercepts, dtype=_F32) if intercepts and len(intercepts) == targets else None

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim > 2:
            raise NodeInputError(f"LinearRegressor: the input has more than 2 dimensions ({x.ndim})")
        x2 = to_float32(x.reshape(1, -1) if x.ndim <= 1 else x, "LinearRegressor")
        coef = _coefficients(self.coef, int(self.targets), x2.shape[1], "LinearRegressor")
        y = x2 @ coef.T
        if self.intercepts is not None:
            y += self.intercepts
        y = y.astype(_F32, copy=False)
        if self.targets == 1:
            return probit(y) if self.post_transform == "PROBIT" else y
        return transform_rows(y, self.post_transform)


_LINEAR_REGRESSOR = Compiled(_LinearRegressor)


@op("LinearRegressor", versions=1, domain="ai.onnx.ml", prepack=_LINEAR_REGRESSOR)
@_LINEAR_REGRESSOR.kernel
def linear_regressor(x, *, coefficients=None, intercepts=None, post_transform="NONE", targets=1, _packed=None):
    return (_packed if _packed is not None else _LINEAR_REGRESSOR.compile(locals()))(x)
