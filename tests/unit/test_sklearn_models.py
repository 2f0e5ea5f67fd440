"""scikit-learn models converted with skl2onnx: onyxrt must give scikit-learn's labels and
probabilities, and onnxruntime's outputs (when onnxruntime is installed)."""

from __future__ import annotations


import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
skl2onnx = pytest.importorskip("skl2onnx")

from skl2onnx import convert_sklearn, to_onnx  # noqa: E402
from skl2onnx.common.data_types import FloatTensorType, StringTensorType  # noqa: E402
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.ensemble import (  # noqa: E402
    GradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: E402
from sklearn.svm import SVC, SVR  # noqa: E402

import onyxrt  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    x = rng.randn(400, 5).astype(np.float32)
    y2 = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] > 0).astype(np.int64)
    y3 = np.digitize(x[:, 0] - x[:, 3], [-0.6, 0.6]).astype(np.int64)
    return x, y2, y3


def _run(model_proto, feeds):
    sess = onyxrt.InferenceSession(model_proto.SerializeToString())
    return sess.run(None, feeds)


def _run_ort(model_proto, feeds):
    try:
        import onnxruntime
    except ImportError:
        return None
    sess = onnxruntime.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _probabilities(value, classes) -> np.ndarray:
    """ZipMap output (a list of dicts) or a probability tensor, as an [N, C] array in ``classes`` order."""
    if isinstance(value, list):
        return np.array([[row[c] for c in classes] for row in value], dtype=np.float64)
    return np.asarray(value, dtype=np.float64)


def _check_classifier(model, x, feeds=None, zipmap=True, atol=1e-5):
    options = None if zipmap else {id(model): {"zipmap": False}}
    proto = to_onnx(model, x[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    feeds = feeds or {"X": x}
    got = _run(proto, feeds)
    classes = [c.item() if hasattr(c, "item") else c for c in model.classes_]
    np.testing.assert_array_equal(got[0], model.predict(x))
    np.testing.assert_allclose(_probabilities(got[1], classes), model.predict_proba(x), atol=atol, rtol=1e-4)
    expect = _run_ort(proto, feeds)
    if expect is not None:
        np.testing.assert_array_equal(got[0], expect[0])
        np.testing.assert_allclose(_probabilities(got[1], classes), _probabilities(expect[1], classes),
                                   atol=1e-6, rtol=1e-5)
    return got


def test_random_forest_classifier(data):
    x, _, y3 = data
    model = RandomForestClassifier(n_estimators=20, max_depth=8, random_state=0).fit(x, y3)
    got = _check_classifier(model, x)
    assert isinstance(got[1], list) and isinstance(got[1][0], dict)  # ZipMap: a list of dicts


def test_random_forest_classifier_binary_string_labels(data):
    x, y2, _ = data
    labels = np.array(["no", "yes"])[y2]
    model = RandomForestClassifier(n_estimators=15, random_state=1).fit(x, labels)
    _check_classifier(model, x, zipmap=False)


def test_random_forest_regressor(data):
    x, _, _ = data
    target = x[:, 0] * 2 - x[:, 1] ** 2
    model = RandomForestRegressor(n_estimators=20, max_depth=10, random_state=0).fit(x, target)
    proto = to_onnx(model, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    got = _run(proto, {"X": x})[0]
    np.testing.assert_allclose(got[:, 0], model.predict(x), rtol=1e-4, atol=1e-4)
    expect = _run_ort(proto, {"X": x})
    if expect is not None:
        np.testing.assert_allclose(got, expect[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_gradient_boosting_classifier(data, n_classes):
    x, y2, y3 = data
    model = GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0)
    model.fit(x, y2 if n_classes == 2 else y3)
    _check_classifier(model, x, atol=1e-4)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_logistic_regression(data, n_classes):
    x, y2, y3 = data
    model = LogisticRegression(max_iter=500).fit(x, y2 if n_classes == 2 else y3)
    _check_classifier(model, x)


def test_svc_with_probabilities(data):
    x, _, y3 = data
    model = SVC(probability=True, random_state=0).fit(x, y3)
    proto = to_onnx(model, x[:1], options={id(model): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    got = _run(proto, {"X": x})
    np.testing.assert_array_equal(got[0], model.predict(x))
    # libsvm's pairwise coupling runs in double precision in scikit-learn, float32 in ONNX
    np.testing.assert_allclose(got[1], model.predict_proba(x), atol=2e-3)
    expect = _run_ort(proto, {"X": x})
    if expect is not None:
        np.testing.assert_array_equal(got[0], expect[0])
        np.testing.assert_allclose(got[1], expect[1], atol=1e-4)


def test_svc_binary_decision(data):
    x, y2, _ = data
    model = SVC(kernel="poly", degree=2).fit(x, y2)
    proto = to_onnx(model, x[:1], options={id(model): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    got = _run(proto, {"X": x})
    np.testing.assert_array_equal(got[0], model.predict(x))
    expect = _run_ort(proto, {"X": x})
    if expect is not None:
        np.testing.assert_allclose(got[1], expect[1], atol=1e-4, rtol=1e-4)


def test_svr(data):
    x, _, _ = data
    model = SVR(C=2.0).fit(x, x[:, 0] - x[:, 4])
    proto = to_onnx(model, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    got = _run(proto, {"X": x})[0]
    np.testing.assert_allclose(got[:, 0], model.predict(x), rtol=1e-4, atol=1e-4)
    expect = _run_ort(proto, {"X": x})
    if expect is not None:
        np.testing.assert_allclose(got, expect[0], rtol=1e-5, atol=1e-5)


def test_pipeline_scaler_one_hot_logistic_regression():
    rng = np.random.RandomState(0)
    n = 300
    num = rng.randn(n, 3).astype(np.float32)
    cat = rng.choice(["red", "green", "blue"], size=(n, 2)).astype(object)
    y = ((num[:, 0] > 0) ^ (cat[:, 0] == "red") | (cat[:, 1] == "blue")).astype(np.int64)
    table = np.concatenate([num.astype(object), cat], axis=1)
    pre = ColumnTransformer([("num", StandardScaler(), [0, 1, 2]),
                             ("cat", OneHotEncoder(handle_unknown="ignore"), [3, 4])])
    pipe = Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=500))]).fit(table, y)
    proto = convert_sklearn(pipe, initial_types=[("num", FloatTensorType([None, 3])),
                                                 ("cat", StringTensorType([None, 2]))],
                            target_opset={"": 17, "ai.onnx.ml": 3})
    ops = {node.op_type for node in proto.graph.node}
    assert {"Scaler", "OneHotEncoder", "LinearClassifier", "ZipMap"} <= ops
    feeds = {"num": num, "cat": cat}
    got = _run(proto, feeds)
    np.testing.assert_array_equal(got[0], pipe.predict(table))
    np.testing.assert_allclose(_probabilities(got[1], [0, 1]), pipe.predict_proba(table), atol=1e-5)
    # an unseen category is all zeros (handle_unknown="ignore")
    unseen = {"num": num[:2], "cat": np.array([["purple", "red"], ["blue", "??"]], dtype=object)}
    got_unseen = _run(proto, unseen)
    expect = _run_ort(proto, feeds)
    if expect is not None:
        np.testing.assert_array_equal(got[0], expect[0])
        np.testing.assert_allclose(_probabilities(got[1], [0, 1]), _probabilities(expect[1], [0, 1]), atol=1e-6)
        expect_unseen = _run_ort(proto, unseen)
        np.testing.assert_array_equal(got_unseen[0], expect_unseen[0])


@pytest.mark.parametrize("kind", ["forest_binary", "forest_multiclass", "boosting", "forest_regressor"])
def test_tree_models_give_the_same_rows_in_any_batch(data, kind):
    """One row at a time (the small-batch walk), a few rows, or all 400 (the batched walk): bit for bit
    the same outputs, which also match onnxruntime's."""
    x, y2, y3 = data
    if kind == "forest_binary":
        model = RandomForestClassifier(n_estimators=25, random_state=0).fit(x, y2)  # deep trees
    elif kind == "forest_multiclass":
        model = RandomForestClassifier(n_estimators=25, max_depth=9, random_state=0).fit(x, y3)
    elif kind == "boosting":
        model = GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0).fit(x, y2)
    else:
        model = RandomForestRegressor(n_estimators=25, random_state=0).fit(x, x[:, 0] - x[:, 2])
    options = {id(model): {"zipmap": False}} if kind != "forest_regressor" else None
    proto = to_onnx(model, x[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    sess = onyxrt.InferenceSession(proto.SerializeToString())
    whole = sess.run(None, {"X": x})
    for rows in [slice(i, i + 1) for i in range(0, 400, 37)] + [slice(5, 12), slice(100, 300)]:
        part = sess.run(None, {"X": x[rows]})
        for w, p in zip(whole, part):
            assert w[rows].tobytes() == p.tobytes(), rows
    expect = _run_ort(proto, {"X": x})
    if expect is not None:
        for w, e in zip(whole, expect):
            if w.dtype.kind == "f":
                np.testing.assert_allclose(w, e, rtol=1e-5, atol=1e-5)
            else:
                np.testing.assert_array_equal(w, e)


@pytest.mark.heavy
def test_large_forest_matches_onnxruntime():
    """200 deep trees on 10,000 rows: same labels and probabilities as onnxruntime (speed: benchmarks/latency.py)."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.RandomState(0)
    x = rng.randn(20000, 20).astype(np.float32)
    y = (x[:, :5].sum(axis=1) + 0.5 * rng.randn(20000) > 0).astype(np.int64)
    model = RandomForestClassifier(n_estimators=200, max_depth=12, n_jobs=-1, random_state=0).fit(x[:5000], y[:5000])
    proto = to_onnx(model, x[:1], options={id(model): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    data = proto.SerializeToString()
    test = x[10000:]
    got = onyxrt.InferenceSession(data).run(None, {"X": test})
    expect = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"X": test})
    np.testing.assert_array_equal(got[0], expect[0])
    np.testing.assert_allclose(got[1], expect[1], atol=1e-5)
