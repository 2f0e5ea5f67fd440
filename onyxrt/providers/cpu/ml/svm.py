"""ai.onnx.ml support vector machines: SVMClassifier and SVMRegressor (onnxruntime's rules: one-vs-one
votes, Platt probabilities coupled with libsvm's pairwise method, binary score columns)."""

from __future__ import annotations

import numpy as np

from ..kernel_table import op
from ._common import (
    Compiled,
    as_2d_features,
    binary_scores,
    check_post_transform,
    labels_array,
    logistic,
    probit,
    to_float32,
    transform_rows,
)
from ....errors import NodeInputError

_F32 = np.float32
_KERNELS = ("LINEAR", "POLY", "RBF", "SIGMOID")


def _kernel_params(kernel_params) -> tuple[float, float, float]:
    params = list(kernel_params or [])
    if not params:
        return 0.0, 0.0, 0.0
    if len(params) < 3:
        raise NodeInputError("SVM: kernel_params must hold gamma, coef0 and degree")
    return float(params[0]), float(params[1]), float(params[2])


class _Vectors:
    """Support vectors [V, F] (float32), with their float64 copy and squared norms for RBF."""

    def __init__(self, vectors: np.ndarray, kernel: str) -> None:
        self.f32 = vectors
        self.f64 = vectors.astype(np.float64) if kernel == "RBF" else None
        self.norms = (self.f64 * self.f64).sum(axis=1)[None, :] if kernel == "RBF" else None


def _kernel_dot(x: np.ndarray, vectors: _Vectors, kernel: str, gamma: float, coef0: float, degree: float,
                constant: float = 0.0) -> np.ndarray:
    """[N, F] x [V, F] -> [N, V] kernel values (float32 results)."""
    if kernel == "RBF":
        x64 = x.astype(np.float64)
        v64 = vectors.f64
        d2 = (x64 * x64).sum(axis=1)[:, None] + vectors.norms - 2.0 * (x64 @ v64.T)
        np.maximum(d2, 0.0, out=d2)
        return np.exp(-_F32(gamma) * d2.astype(_F32)).astype(_F32)
    dot = x @ vectors.f32.T
    if kernel == "LINEAR":
        return (dot + _F32(constant)).astype(_F32, copy=False) if constant else dot.astype(_F32, copy=False)
    z = _F32(gamma) * dot + _F32(coef0)
    if kernel == "POLY":
        return np.power(z, _F32(degree)).astype(_F32, copy=False)
    return np.tanh(z).astype(_F32, copy=False)


def _multiclass_probability(r: np.ndarray) -> np.ndarray:
    """libsvm's pairwise coupling (Wu, Lin and Weng, method 2), for all rows at once.

    ``r``: [N, K, K] pairwise probabilities; returns [N, K] (float32, as onnxruntime computes it).
    """
    n, k, _ = r.shape
    r = r.astype(_F32)
    q = np.zeros((n, k, k), dtype=_F32)
    for i in range(k):
        for j in range(i):
            q[:, i, i] += r[:, j, i] * r[:, j, i]
            q[:, i, j] = q[:, j, i]
        for j in range(i + 1, k):
            q[:, i, i] += r[:, j, i] * r[:, j, i]
            q[:, i, j] = -r[:, j, i] * r[:, i, j]
    p = np.full((n, k), _F32(1.0 / k), dtype=_F32)
    eps = _F32(0.005 / k)
    active = np.arange(n)
    for _ in range(100):
        if active.size == 0:
            break
        qa, pa = q[active], p[active]
        qp = np.einsum("nij,nj->ni", qa, pa).astype(_F32)
        pqp = (pa * qp).sum(axis=1, dtype=_F32)
        err = np.abs(qp - pqp[:, None]).max(axis=1)
        going = err >= eps
        active, qa, pa, qp, pqp = active[going], qa[going], pa[going], qp[going], pqp[going]
        for i in range(k):
            qii = qa[:, i, i]
            diff = (-qp[:, i] + pqp) / qii
            pa[:, i] += diff
            pqp = (pqp + diff * (diff * qii + _F32(2) * qp[:, i])) / (_F32(1) + diff) / (_F32(1) + diff)
            qp = (qp + diff[:, None] * qa[:, i, :]) / (_F32(1) + diff[:, None])
            pa = pa / (_F32(1) + diff[:, None])
        p[active] = pa
    return p


def _try(fn):
    """``fn()``, or None when it raises: the run repeats the step where the error belongs."""
    try:
        return fn()
    except Exception:  # noqa: BLE001
        return None


class _SVC:
    """A compiled SVMClassifier: validated attributes, arrays and the pair structure, built once."""

    def __init__(self, *, classlabels_ints, classlabels_strings, coefficients, kernel_params, kernel_type,
                 post_transform, prob_a, prob_b, rho, support_vectors, vectors_per_class) -> None:
        check_post_transform(post_transform)
        if kernel_type not in _KERNELS:
            raise NodeInputError(f"SVMClassifier: unknown kernel_type '{kernel_type}'")
        if not coefficients:
            raise NodeInputError("SVMClassifier: coefficients are required")
        if rho is None:
            raise NodeInputError("SVMClassifier: rho is required")
        proba_a = list(prob_a or [])
        proba_b = list(prob_b or [])
        if len(proba_a) != len(proba_b):
            raise NodeInputError("SVMClassifier: prob_a and prob_b differ in length")
        if not classlabels_strings and not classlabels_ints:
            raise NodeInputError("SVMClassifier: classlabels_strings or classlabels_ints is required")
        self.post_transform = post_transform
        self.kernel_type = kernel_type
        self.using_strings = using_strings = bool(classlabels_strings)
        labels = list(classlabels_strings) if using_strings else list(classlabels_ints)
        self.class_count = class_count = len(labels)
        self.lab = labels_array(labels, using_strings)
        self.one_class_labels = labels_array(["1", "0"] if using_strings else [1, 0], using_strings)
        self.per_class = per_class = [int(v) for v in (vectors_per_class or [])]
        self.vector_count = vector_count = sum(per_class)
        self.gamma, self.coef0, self.degree = _kernel_params(kernel_params)
        self.coef_all = coef_all = np.asarray(coefficients, dtype=_F32)
        self.rho_v = np.asarray(rho, dtype=_F32)
        self.all_positive = bool((coef_all >= 0).all())
        self.have_proba = len(proba_a) > 0
        self.svc = vector_count > 0
        if not self.svc:  # liblinear mode: one linear score per class
            self.f = f = coef_all.size // class_count
            self.vectors = _try(lambda: _Vectors(coef_all.reshape(class_count, f), "LINEAR"))
            return
        self.sv = sv = np.asarray(support_vectors, dtype=_F32)
        self.f = f = sv.size // vector_count
        self.vectors = _try(lambda: _Vectors(sv.reshape(vector_count, f), kernel_type))
        self.coef = _try(lambda: coef_all.reshape(-1, vector_count).astype(np.float64))
        self.starts = np.concatenate([[0], np.cumsum(per_class)[:-1]]).astype(np.int64)
        self.pairs = [(i, j) for i in range(class_count - 1) for j in range(i + 1, class_count)]
        self.pa = np.asarray(proba_a, dtype=_F32)
        self.pb = np.asarray(proba_b, dtype=_F32)

    def __call__(self, x) -> tuple[np.ndarray, np.ndarray]:
        post_transform, class_count, per_class = self.post_transform, self.class_count, self.per_class
        rho_v, gamma, coef0, degree = self.rho_v, self.gamma, self.coef0, self.degree
        x2 = to_float32(as_2d_features(x, "SVMClassifier"), "SVMClassifier")
        n = x2.shape[0]
        votes = None
        write_additional = -1
        f = self.f
        if not self.svc:  # liblinear mode: one linear score per class
            if f != x2.shape[1]:
                raise NodeInputError(f"SVMClassifier: the model has {f} features, the input {x2.shape[1]}")
            vectors = self.vectors or _Vectors(self.coef_all.reshape(class_count, f), "LINEAR")
            scores = _kernel_dot(x2, vectors, "LINEAR", 0, 0, 0, float(rho_v[0]))
            n_scores = class_count
        else:
            if f != x2.shape[1]:
                raise NodeInputError(f"SVMClassifier: the support vectors have {f} features, the input {x2.shape[1]}")
            vectors = self.vectors or _Vectors(self.sv.reshape(self.vector_count, f), self.kernel_type)
            kern = _kernel_dot(x2, vectors, self.kernel_type, gamma, coef0, degree).astype(np.float64)
            coef = self.coef if self.coef is not None else \
                self.coef_all.reshape(-1, self.vector_count).astype(np.float64)
            starts, pairs = self.starts, self.pairs
            if rho_v.size < len(pairs):
                raise NodeInputError(f"SVMClassifier: rho holds {rho_v.size} values for {len(pairs)} classifiers")
            pair_scores = np.empty((n, len(pairs)), dtype=np.float64)
            votes = np.zeros((n, class_count), dtype=np.int64)
            rows = np.arange(n)
            for idx, (i, j) in enumerate(pairs):
                si, ni, sj, nj = starts[i], per_class[i], starts[j], per_class[j]
                s = kern[:, si: si + ni] @ coef[j - 1, si: si + ni] + kern[:, sj: sj + nj] @ coef[i, sj: sj + nj]
                s = s + float(rho_v[idx])
                pair_scores[:, idx] = s
                np.add.at(votes, (rows, np.where(s > 0, i, j)), 1)
            pair_scores = pair_scores.astype(_F32)
            if self.have_proba:
                pa, pb = self.pa, self.pb
                r = np.zeros((n, class_count, class_count), dtype=_F32)
                for idx, (i, j) in enumerate(pairs):
                    val = _F32(1) - logistic(pair_scores[:, idx] * pa[idx] + pb[idx])
                    val = np.minimum(np.maximum(val, _F32(1e-7)), _F32(1) - _F32(1e-7))
                    r[:, i, j] = val
                    r[:, j, i] = _F32(1) - val
                scores = _multiclass_probability(r)
                n_scores = class_count
            else:
                scores = pair_scores
                n_scores = len(pairs)
                if class_count <= 2:
                    write_additional = 2 if post_transform == "NONE" else 0
        # labels
        if votes is not None:
            maxclass = np.argmax(votes, axis=1)
            max_weight = np.zeros(n, dtype=_F32)
        else:
            maxclass = np.argmax(scores, axis=1)
            max_weight = scores[np.arange(n), maxclass] if n else np.zeros(0, _F32)
        lab = self.lab
        if class_count == 2:  # one classifier: onnxruntime's binary rules
            if self.have_proba:
                pick = maxclass
            elif self.all_positive:
                pick = np.where(max_weight >= 0.5, 1, maxclass)
            else:
                pick = np.where(max_weight > 0, 1, maxclass)
            y = lab[pick]
        elif class_count == 1:
            y = self.one_class_labels[np.where(max_weight > 0, 0, 1)]
        else:
            y = lab[maxclass]
        # scores
        if n_scores > 1:
            z = transform_rows(scores, post_transform)
        elif write_additional >= 0:
            z = binary_scores(scores[:, 0], post_transform, write_additional, batched=True)
        else:
            z = probit(scores) if post_transform == "PROBIT" else scores.astype(_F32)
        return y, z


_SVM_CLASSIFIER = Compiled(_SVC)


@op("SVMClassifier", versions=1, domain="ai.onnx.ml", multi_output=True, prepack=_SVM_CLASSIFIER)
@_SVM_CLASSIFIER.kernel
def svm_classifier(x, *, classlabels_ints=None, classlabels_strings=None, coefficients=None, kernel_params=None,
                   kernel_type="LINEAR", post_transform="NONE", prob_a=None, prob_b=None, rho=None,
                   support_vectors=None, vectors_per_class=None, _packed=None):
    return (_packed if _packed is not None else _SVM_CLASSIFIER.compile(locals()))(x)


class _SVR:
    """A compiled SVMRegressor."""

    def __init__(self, *, coefficients, kernel_params, kernel_type, n_supports, one_class, post_transform, rho,
                 support_vectors) -> None:
        check_post_transform(post_transform)  # onnxruntime does not apply it
        if kernel_type not in _KERNELS:
            raise NodeInputError(f"SVMRegressor: unknown kernel_type '{kernel_type}'")
        if not coefficients:
            raise NodeInputError("SVMRegressor: coefficients are required")
        if not rho:
            raise NodeInputError("SVMRegressor: rho is required")
        self.kernel_type, self.n_supports, self.one_class = kernel_type, n_supports, one_class
        self.gamma, self.coef0, self.degree = _kernel_params(kernel_params)
        self.coef = np.asarray(coefficients, dtype=_F32)
        self.rho0 = _F32(rho[0])
        if n_supports > 0:
            self.sv = sv = np.asarray(support_vectors, dtype=_F32)
            self.f = f = sv.size // n_supports
            self.vectors = _try(lambda: _Vectors(sv.reshape(n_supports, f), kernel_type))
            self.coef_sv = self.coef[:n_supports]

    def __call__(self, x) -> np.ndarray:
        x2 = to_float32(as_2d_features(x, "SVMRegressor"), "SVMRegressor")
        coef, n_supports = self.coef, self.n_supports
        if n_supports > 0:
            f = self.f
            if f != x2.shape[1]:
                raise NodeInputError(f"SVMRegressor: the support vectors have {f} features, the input {x2.shape[1]}")
            vectors = self.vectors or _Vectors(self.sv.reshape(n_supports, f), self.kernel_type)
            kern = _kernel_dot(x2, vectors, self.kernel_type, self.gamma, self.coef0, self.degree)
            y = kern @ self.coef_sv + self.rho0
        else:
            if coef.size != x2.shape[1]:
                raise NodeInputError(f"SVMRegressor: {coef.size} coefficients for {x2.shape[1]} features")
            y = x2 @ coef + self.rho0
        y = y.astype(_F32).reshape(-1, 1)
        if self.one_class:
            y = np.where(y > 0, _F32(1), _F32(-1))
        return y


_SVM_REGRESSOR = Compiled(_SVR)


@op("SVMRegressor", versions=1, domain="ai.onnx.ml", prepack=_SVM_REGRESSOR)
@_SVM_REGRESSOR.kernel
def svm_regressor(x, *, coefficients=None, kernel_params=None, kernel_type="LINEAR", n_supports=0, one_class=0,
                  post_transform="NONE", rho=None, support_vectors=None, _packed=None):
    return (_packed if _packed is not None else _SVM_REGRESSOR.compile(locals()))(x)
