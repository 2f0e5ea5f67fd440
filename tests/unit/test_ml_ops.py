"""ai.onnx.ml kernels: direct calls with hand-computed results, and one-node models checked
against onnxruntime (when it is installed)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from onnx import TensorProto, helper

from onyxrt.providers.cpu.ml import encoders, linear, preprocessing, svm, tree_ensemble
from onyxrt.providers.cpu.ml._common import probit, softmax_zero

ML = "ai.onnx.ml"
F32 = np.float32


# --------------------------------------------------------------------------- direct calls


def test_array_feature_extractor():
    x = np.arange(12, dtype=F32).reshape(3, 4)
    np.testing.assert_array_equal(preprocessing.array_feature_extractor(x, np.array([0, 3])), x[:, [0, 3]])
    one = preprocessing.array_feature_extractor(np.array([5, 6, 7], dtype=np.int64), np.array([2, 0]))
    assert one.shape == (1, 2) and one.tolist() == [[7, 5]]
    s = np.array([["a", "b"], ["c", "d"]], dtype=object)
    assert preprocessing.array_feature_extractor(s, np.array([1])).tolist() == [["b"], ["d"]]
    with pytest.raises(IndexError):
        preprocessing.array_feature_extractor(x, np.array([4]))


def test_binarizer():
    x = np.array([[-1.0, 0.0, 0.5, 2.0]], dtype=F32)
    np.testing.assert_array_equal(preprocessing.binarizer(x), [[0, 0, 1, 1]])
    y = preprocessing.binarizer(x, threshold=1.0)
    assert y.dtype == F32 and y.tolist() == [[0, 0, 0, 1]]
    assert preprocessing.binarizer(np.array([1, 5], dtype=np.int64), threshold=2.0).tolist() == [0, 1]
    with pytest.raises(ValueError, match="NaN"):
        preprocessing.binarizer(np.array([np.nan], dtype=F32))


def test_feature_vectorizer_pads_and_truncates():
    a = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)
    b = np.array([[0.5], [1.5]], dtype=np.float64)
    y = preprocessing.feature_vectorizer(a, b, inputdimensions=[2, 3])
    assert y.dtype == F32
    np.testing.assert_array_equal(y, [[1, 2, 0.5, 0, 0], [4, 5, 1.5, 0, 0]])


def test_imputer():
    x = np.array([[1.0, np.nan], [np.nan, 4.0]], dtype=F32)
    y = preprocessing.imputer(x, imputed_value_floats=[10.0, 20.0], replaced_value_float=np.nan)
    np.testing.assert_array_equal(y, [[1, 20], [10, 4]])
    y = preprocessing.imputer(np.array([[0, 3], [3, 0]], dtype=np.int64), imputed_value_int64s=[7])
    assert y.dtype == np.int64 and y.tolist() == [[7, 3], [3, 7]]


def test_normalizer():
    x = np.array([[1.0, -2.0, 2.0], [0.0, 0.0, 0.0]], dtype=F32)
    np.testing.assert_allclose(preprocessing.normalizer(x, norm="MAX"), [[0.5, -1, 1], [0, 0, 0]])
    np.testing.assert_allclose(preprocessing.normalizer(x, norm="L1"), [[0.2, -0.4, 0.4], [0, 0, 0]])
    np.testing.assert_allclose(preprocessing.normalizer(x, norm="L2"), [[1 / 3, -2 / 3, 2 / 3], [0, 0, 0]], rtol=1e-6)


def test_scaler():
    x = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float64)
    y = preprocessing.scaler(x, offset=[1.0, 2.0], scale=[2.0, 0.5])
    assert y.dtype == F32
    np.testing.assert_allclose(y, [[0, 0], [4, 1]])
    np.testing.assert_allclose(preprocessing.scaler(x, offset=[1.0], scale=[3.0]), [[0, 3], [6, 9]])
    with pytest.raises(ValueError):
        preprocessing.scaler(x, offset=[1.0, 2.0, 3.0], scale=[1.0, 1.0, 1.0])


def test_label_encoder_versions():
    x = np.array(["a", "b", "zz"], dtype=object)
    assert encoders.label_encoder_1(x, classes_strings=["a", "b"]).tolist() == [0, 1, -1]
    back = encoders.label_encoder_1(np.array([1, 0, 5], dtype=np.int64), classes_strings=["a", "b"])
    assert back.tolist() == ["b", "a", "_Unused"]
    y = encoders.label_encoder_2(x, keys_strings=["a", "b"], values_floats=[0.5, 1.5])
    assert y.dtype == F32 and y[:2].tolist() == [0.5, 1.5] and np.signbit(y[2])
    y = encoders.label_encoder_2(np.array([3, 4], dtype=np.int64), keys_int64s=[4], values_strings=["four"],
                                 default_string="?")
    assert y.tolist() == ["?", "four"]
    y = encoders.label_encoder_4(np.array([np.nan, 1.0, 2.0], dtype=F32), keys_floats=[np.nan, 1.0],
                                 values_int64s=[7, 8])
    assert y.tolist() == [7, 8, -1]
    keys = helper.make_tensor("k", TensorProto.INT64, (2,), [1, 2])
    vals = helper.make_tensor("v", TensorProto.DOUBLE, (2,), [0.25, 0.5])
    from onnx import numpy_helper
    y = encoders.label_encoder_4(np.array([2, 9], dtype=np.int64), keys_tensor=numpy_helper.to_array(keys),
                                 values_tensor=numpy_helper.to_array(vals),
                                 default_tensor=np.array([-5.0]))
    assert y.dtype == np.float64 and y.tolist() == [0.5, -5.0]


def test_category_mapper_and_one_hot():
    y = encoders.category_mapper(np.array([["a", "q"]], dtype=object), cats_strings=["a", "b"], cats_int64s=[5, 6])
    assert y.tolist() == [[5, -1]]
    y = encoders.category_mapper(np.array([6, 1], dtype=np.int64), cats_strings=["a", "b"], cats_int64s=[5, 6],
                                 default_string="none")
    assert y.tolist() == ["b", "none"]
    y = encoders.one_hot_encoder(np.array([[1, 3], [2, 9]], dtype=np.int64), cats_int64s=[1, 2, 3])
    assert y.shape == (2, 2, 3) and y.dtype == F32
    assert y.tolist() == [[[1, 0, 0], [0, 0, 1]], [[0, 1, 0], [0, 0, 0]]]
    y = encoders.one_hot_encoder(np.array(["b", "a"], dtype=object), cats_strings=["a", "b"])
    assert y.tolist() == [[0, 1], [1, 0]]
    with pytest.raises(ValueError):
        encoders.one_hot_encoder(np.array([7], dtype=np.int64), cats_int64s=[1], zeros=0)


def test_dict_vectorizer_cast_map_zip_map():
    y = encoders.dict_vectorizer({"b": 2.0, "z": 1.0}, string_vocabulary=["a", "b"])
    assert y.dtype == F32 and y.tolist() == [[0, 2]]
    y = encoders.dict_vectorizer({3: np.float64(1.5)}, int64_vocabulary=[1, 3])
    assert y.dtype == np.float64 and y.tolist() == [[0, 1.5]]
    assert encoders.cast_map({2: 1.5, 0: 2.5}).tolist() == [[2.5, 1.5]]
    assert encoders.cast_map({1: "3", 0: "4"}, cast_to="TO_INT64").tolist() == [[4, 3]]
    y = encoders.cast_map({1: 0.5}, cast_to="TO_STRING", map_form="SPARSE", max_map=3)
    assert y.tolist() == [["0.f", "0.500000", "0.f"]]
    z = encoders.zip_map(np.array([[0.25, 0.75]], dtype=F32), classlabels_strings=["no", "yes"])
    assert z == [{"no": 0.25, "yes": 0.75}]
    z = encoders.zip_map(np.array([[0.1, 0.9], [0.6, 0.4]], dtype=F32), classlabels_int64s=[7, 3])
    assert list(z[0]) == [3, 7] and z[1][7] == pytest.approx(0.6)


def test_linear_models():
    x = np.array([[1.0, 2.0], [-1.0, 0.5]], dtype=F32)
    y = linear.linear_regressor(x, coefficients=[1.0, 1.0, 2.0, -1.0], intercepts=[0.5, 0.0], targets=2)
    np.testing.assert_allclose(y, [[3.5, 0.0], [0.0, -2.5]])
    labels, scores = linear.linear_classifier(x, coefficients=[1.0, 0.0, 0.0, 1.0], intercepts=[0.0, 0.0],
                                              classlabels_strings=["A", "B"], post_transform="SOFTMAX")
    assert labels.tolist() == ["B", "B"]
    e = np.exp([[1.0, 2.0], [-1.0, 0.5]])
    np.testing.assert_allclose(scores, e / e.sum(1, keepdims=True), rtol=1e-6)
    labels, scores = linear.linear_classifier(x, coefficients=[1.0, 1.0], intercepts=[-1.0], classlabels_ints=[4, 9])
    assert labels.tolist() == [9, 4]
    np.testing.assert_allclose(scores, [[-1.0, 2.0], [2.5, -1.5]])  # [1 - s, s]


def test_svm_regressor_linear_and_rbf():
    x = np.array([[1.0, 2.0]], dtype=F32)
    y = svm.svm_regressor(x, coefficients=[2.0, 3.0], rho=[1.0])
    assert y.shape == (1, 1) and y[0, 0] == pytest.approx(9.0)
    y = svm.svm_regressor(x, coefficients=[1.0, -1.0], rho=[0.5], n_supports=2, kernel_type="RBF",
                          kernel_params=[0.5, 0.0, 0.0], support_vectors=[1.0, 2.0, 0.0, 0.0])
    assert y[0, 0] == pytest.approx(1.0 - np.exp(-2.5) + 0.5, rel=1e-6)
    assert svm.svm_regressor(x, coefficients=[2.0, 3.0], rho=[-100.0], one_class=1)[0, 0] == -1.0


def test_post_transform_helpers():
    np.testing.assert_allclose(probit(np.array([0.5, 0.8413447], dtype=F32)), [0.0, 1.0], atol=2e-3)
    z = softmax_zero(np.array([[0.0, 1.0, 2.0]], dtype=F32))
    assert z[0, 0] == 0.0 and z[0, 1:].sum() == pytest.approx(1.0)


# --------------------------------------------------------------------------- tree ensembles


def _tiny_forest(**extra):
    """Two trees on feature 0 / feature 1 (BRANCH_LEQ), leaves carrying one weight each."""
    attrs = dict(
        nodes_treeids=[0, 0, 0, 1, 1, 1], nodes_nodeids=[0, 1, 2, 0, 1, 2], nodes_featureids=[0, 0, 0, 1, 0, 0],
        nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF", "BRANCH_LEQ", "LEAF", "LEAF"],
        nodes_values=[0.5, 0, 0, 1.5, 0, 0], nodes_truenodeids=[1, 0, 0, 1, 0, 0],
        nodes_falsenodeids=[2, 0, 0, 2, 0, 0],
    )
    attrs.update(extra)
    return attrs


def test_tree_regressor_aggregates():
    x = np.array([[0.0, 0.0], [1.0, 2.0], [0.0, 3.0]], dtype=F32)
    weights = dict(target_treeids=[0, 0, 1, 1], target_nodeids=[1, 2, 1, 2], target_ids=[0, 0, 0, 0],
                   target_weights=[1.0, 2.0, 10.0, 20.0])
    for agg, expect in (("SUM", [11, 22, 21]), ("AVERAGE", [5.5, 11, 10.5]), ("MIN", [1, 2, 1]),
                        ("MAX", [10, 20, 20])):
        y = tree_ensemble.tree_ensemble_regressor(x, n_targets=1, aggregate_function=agg, base_values=[0.5],
                                                  **_tiny_forest(**weights))
        assert y.dtype == F32 and y.shape == (3, 1)
        np.testing.assert_allclose(y[:, 0], np.array(expect) + 0.5)


def test_tree_modes_and_missing_values():
    x = np.array([[0.5], [0.7], [np.nan]], dtype=F32)
    for mode, expect in (("BRANCH_LT", [2, 2, 2]), ("BRANCH_LEQ", [1, 2, 2]), ("BRANCH_GT", [2, 1, 2]),
                         ("BRANCH_GTE", [1, 1, 2]), ("BRANCH_EQ", [1, 2, 2]), ("BRANCH_NEQ", [2, 1, 1])):
        y = tree_ensemble.tree_ensemble_regressor(
            x, n_targets=1, nodes_treeids=[0, 0, 0], nodes_nodeids=[0, 1, 2], nodes_featureids=[0, 0, 0],
            nodes_modes=[mode, "LEAF", "LEAF"], nodes_values=[0.5, 0, 0], nodes_truenodeids=[1, 0, 0],
            nodes_falsenodeids=[2, 0, 0], target_treeids=[0, 0], target_nodeids=[1, 2], target_ids=[0, 0],
            target_weights=[1.0, 2.0])
        assert y[:, 0].tolist() == expect, mode
    y = tree_ensemble.tree_ensemble_regressor(
        x, n_targets=1, nodes_treeids=[0, 0, 0], nodes_nodeids=[0, 1, 2], nodes_featureids=[0, 0, 0],
        nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"], nodes_values=[0.5, 0, 0], nodes_truenodeids=[1, 0, 0],
        nodes_falsenodeids=[2, 0, 0], nodes_missing_value_tracks_true=[1, 0, 0], target_treeids=[0, 0],
        target_nodeids=[1, 2], target_ids=[0, 0], target_weights=[1.0, 2.0])
    assert y[:, 0].tolist() == [1, 2, 1]


def test_tree_classifier_binary_and_multiclass():
    x = np.array([[0.0, 0.0], [1.0, 2.0]], dtype=F32)
    forest = _tiny_forest(class_treeids=[0, 0, 1, 1], class_nodeids=[1, 2, 1, 2], class_ids=[0, 0, 0, 0],
                          class_weights=[0.1, 0.4, 0.1, 0.5])
    labels, z = tree_ensemble.tree_ensemble_classifier(x, classlabels_int64s=[3, 8], **forest)
    assert labels.tolist() == [3, 8]  # one weight column: class 1 wins above 0.5
    np.testing.assert_allclose(z, [[0.8, 0.2], [0.1, 0.9]], rtol=1e-6)
    forest = _tiny_forest(class_treeids=[0, 0, 0, 1, 1, 1], class_nodeids=[1, 2, 2, 1, 2, 2],
                          class_ids=[0, 1, 2, 0, 2, 1], class_weights=[1.0, 2.0, 1.0, 1.0, 3.0, 0.5])
    labels, z = tree_ensemble.tree_ensemble_classifier(x, classlabels_strings=["a", "b", "c"],
                                                       post_transform="SOFTMAX", **forest)
    assert labels.tolist() == ["a", "c"]
    e = np.exp([[2.0, 0.0, 0.0], [0.0, 2.5, 4.0]])
    np.testing.assert_allclose(z, e / e.sum(1, keepdims=True), rtol=1e-6)


def test_tree_ensemble_v5_membership():
    x = np.array([[1.0], [4.0], [7.0], [np.nan]], dtype=F32)
    y = tree_ensemble.tree_ensemble(
        x, n_targets=2, aggregate_function=1, tree_roots=[0], nodes_modes=np.array([6], dtype=np.uint8),
        nodes_featureids=[0], nodes_splits=np.array([0.0], dtype=F32), nodes_truenodeids=[0], nodes_trueleafs=[1],
        nodes_falsenodeids=[1], nodes_falseleafs=[1], nodes_missing_value_tracks_true=[1],
        membership_values=np.array([1.0, 7.0, np.nan], dtype=F32), leaf_targetids=[0, 1],
        leaf_weights=np.array([3.0, 5.0], dtype=F32))
    assert y.dtype == F32
    assert y.tolist() == [[3, 0], [0, 5], [3, 0], [3, 0]]


def test_tree_ensemble_many_trees_vectorized():
    """A random forest of depth-limited trees agrees with a per-sample Python walk."""
    rng = np.random.default_rng(0)
    n_trees, depth, n_feat = 30, 5, 6
    attrs = dict(nodes_treeids=[], nodes_nodeids=[], nodes_featureids=[], nodes_modes=[], nodes_values=[],
                 nodes_truenodeids=[], nodes_falsenodeids=[], target_treeids=[], target_nodeids=[], target_ids=[],
                 target_weights=[])
    trees = []
    for t in range(n_trees):
        nodes = {}
        for i in range(2 ** (depth + 1) - 1):
            leaf = i >= 2 ** depth - 1
            f, v = int(rng.integers(n_feat)), float(rng.normal())
            nodes[i] = (leaf, f, v)
            attrs["nodes_treeids"].append(t)
            attrs["nodes_nodeids"].append(i)
            attrs["nodes_featureids"].append(f)
            attrs["nodes_modes"].append("LEAF" if leaf else "BRANCH_LEQ")
            attrs["nodes_values"].append(v)
            attrs["nodes_truenodeids"].append(0 if leaf else 2 * i + 1)
            attrs["nodes_falsenodeids"].append(0 if leaf else 2 * i + 2)
            if leaf:
                for target in range(2):
                    attrs["target_treeids"].append(t)
                    attrs["target_nodeids"].append(i)
                    attrs["target_ids"].append(target)
                    attrs["target_weights"].append(float(rng.normal()))
        trees.append(nodes)
    weights = {(t, n, k): w for t, n, k, w in zip(attrs["target_treeids"], attrs["target_nodeids"],
                                                  attrs["target_ids"], attrs["target_weights"])}
    x = rng.normal(size=(200, n_feat)).astype(F32)
    y = tree_ensemble.tree_ensemble_regressor(x, n_targets=2, **attrs)
    expect = np.zeros((200, 2))
    for r in range(200):
        for t, nodes in enumerate(trees):
            i = 0
            while not nodes[i][0]:
                i = 2 * i + 1 if x[r, nodes[i][1]] <= F32(nodes[i][2]) else 2 * i + 2
            expect[r] += [weights[(t, i, 0)], weights[(t, i, 1)]]
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- against onnxruntime


def _node_model(op_type, inputs, outputs, opset_ml=3, **attrs):
    node = helper.make_node(op_type, [n for n, _ in inputs], [n for n, _ in outputs], domain=ML, **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, t, None) for n, t in inputs],
                              [helper.make_tensor_value_info(n, t, None) for n, t in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ML, opset_ml)],
                             ir_version=8)


def _compare(model, feeds, rtol=1e-5, atol=1e-6):
    ort = pytest.importorskip("onnxruntime")
    import onyxrt

    data = model.SerializeToString()
    expect = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    got = onyxrt.InferenceSession(data).run(None, feeds)
    for e, g in zip(expect, got):
        if isinstance(e, list):
            assert e == pytest.approx(g) if not e or not isinstance(e[0], dict) else \
                all(a.keys() == b.keys() and list(a.values()) == pytest.approx(list(b.values())) for a, b in zip(e, g))
            continue
        assert e.shape == g.shape and e.dtype == g.dtype, (e.shape, g.shape, e.dtype, g.dtype)
        if e.dtype == object:
            assert e.tolist() == g.tolist()
        else:
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


FLOAT, INT64, STRING, DOUBLE = TensorProto.FLOAT, TensorProto.INT64, TensorProto.STRING, TensorProto.DOUBLE


def _regressor_attrs(rng, n_trees=4, depth=3, n_feat=3, n_targets=2, modes=("BRANCH_LEQ",), mtt=False):
    attrs = {k: [] for k in ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes", "nodes_values",
                             "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true",
                             "target_treeids", "target_nodeids", "target_ids", "target_weights")}
    for t in range(n_trees):
        for i in range(2 ** (depth + 1) - 1):
            leaf = i >= 2 ** depth - 1
            attrs["nodes_treeids"].append(t)
            attrs["nodes_nodeids"].append(i)
            attrs["nodes_featureids"].append(int(rng.integers(n_feat)))
            attrs["nodes_modes"].append("LEAF" if leaf else str(rng.choice(modes)))
            attrs["nodes_values"].append(float(np.round(rng.normal(), 1)))
            attrs["nodes_truenodeids"].append(0 if leaf else 2 * i + 1)
            attrs["nodes_falsenodeids"].append(0 if leaf else 2 * i + 2)
            attrs["nodes_missing_value_tracks_true"].append(int(mtt and rng.random() < 0.5))
            if leaf:
                for k in range(n_targets):
                    if n_targets > 1 and rng.random() < 0.3:
                        continue
                    attrs["target_treeids"].append(t)
                    attrs["target_nodeids"].append(i)
                    attrs["target_ids"].append(k)
                    attrs["target_weights"].append(float(rng.normal()))
                if not attrs["target_nodeids"] or attrs["target_nodeids"][-1] != i or attrs["target_treeids"][-1] != t:
                    attrs["target_treeids"].append(t)
                    attrs["target_nodeids"].append(i)
                    attrs["target_ids"].append(0)
                    attrs["target_weights"].append(float(rng.normal()))
    if not mtt:
        del attrs["nodes_missing_value_tracks_true"]
    return attrs


def _tree_input(rng, n_feat=3, n=40):
    x = np.round(rng.normal(size=(n, n_feat)), 1).astype(F32)
    x[rng.random(x.shape) < 0.1] = np.nan
    return x


@pytest.mark.parametrize("aggregate", ["SUM", "AVERAGE", "MIN", "MAX"])
@pytest.mark.parametrize("post", ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT"])
@pytest.mark.parametrize("n_targets", [1, 3])
def test_tree_regressor_vs_onnxruntime(aggregate, post, n_targets):
    rng = np.random.default_rng(zlib.crc32(f"{aggregate}{post}{n_targets}".encode()))
    attrs = _regressor_attrs(rng, n_targets=n_targets, modes=("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GT",
                                                              "BRANCH_GTE", "BRANCH_EQ", "BRANCH_NEQ"), mtt=True)
    if post == "PROBIT":  # probit needs scores in (0, 1)
        attrs["target_weights"] = [abs(w) % 0.2 + 0.01 for w in attrs["target_weights"]]
    base = [0.05] * n_targets
    model = _node_model("TreeEnsembleRegressor", [("X", FLOAT)], [("Y", FLOAT)], n_targets=n_targets,
                        aggregate_function=aggregate, post_transform=post, base_values=base, **attrs)
    _compare(model, {"X": _tree_input(rng)}, rtol=1e-4, atol=1e-4 if post == "PROBIT" else 1e-5)


@pytest.mark.parametrize("case", ["binary_one_column", "binary_positive", "binary_base1", "binary_both",
                                  "multiclass", "multiclass_base", "binary_base2", "strings"])
@pytest.mark.parametrize("post", ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT"])
def test_tree_classifier_vs_onnxruntime(case, post):
    rng = np.random.default_rng(zlib.crc32(f"{case}{post}".encode()))
    n_classes = 3 if case.startswith("multiclass") else 2
    one_column = case in ("binary_one_column", "binary_positive", "binary_base1")
    if post == "PROBIT" and n_classes == 2 and case != "binary_base2":
        pytest.skip("onnxruntime leaves the second score column of one-score PROBIT rows uninitialized")
    attrs = _regressor_attrs(rng, n_targets=1 if one_column else n_classes)
    attrs = {k.replace("target_", "class_"): v for k, v in attrs.items()}
    if case == "binary_positive" or post == "PROBIT":
        attrs["class_weights"] = [abs(w) % 0.4 + 0.01 for w in attrs["class_weights"]]
    extra = {}
    if case == "binary_base2":
        extra["base_values"] = [0.1, -0.2]
    if case == "binary_base1":
        extra["base_values"] = [0.1]
    if case == "multiclass_base":
        extra["base_values"] = [0.1, -0.2, 0.3]
    if case == "strings":
        extra["classlabels_strings"] = ["neg", "pos"]
    else:
        extra["classlabels_int64s"] = list(range(10, 10 + n_classes))
    out_type = STRING if case == "strings" else INT64
    model = _node_model("TreeEnsembleClassifier", [("X", FLOAT)], [("Y", out_type), ("Z", FLOAT)],
                        post_transform=post, **attrs, **extra)
    _compare(model, {"X": _tree_input(rng)}, rtol=1e-4, atol=1e-3 if post == "PROBIT" else 1e-5)


def test_tree_ensemble_v5_vs_onnxruntime():
    rng = np.random.default_rng(5)
    n_int, n_leaves = 7, 8  # one perfect tree of depth 3, every branch mode once
    modes = np.array([0, 1, 2, 3, 4, 5, 0], dtype=np.uint8)
    attrs = dict(
        n_targets=2, aggregate_function=1, post_transform=0, tree_roots=[0],
        nodes_modes=helper.make_tensor("m", TensorProto.UINT8, (n_int,), modes),
        nodes_featureids=[int(v) for v in rng.integers(0, 3, n_int)],
        nodes_splits=helper.make_tensor("s", FLOAT, (n_int,), np.round(rng.normal(size=n_int), 1)),
        nodes_truenodeids=[1, 3, 5, 0, 2, 4, 6], nodes_trueleafs=[0, 0, 0, 1, 1, 1, 1],
        nodes_falsenodeids=[2, 4, 6, 1, 3, 5, 7], nodes_falseleafs=[0, 0, 0, 1, 1, 1, 1],
        leaf_targetids=[i % 2 for i in range(n_leaves)],
        leaf_weights=helper.make_tensor("w", FLOAT, (n_leaves,), rng.normal(size=n_leaves)),
    )
    model = _node_model("TreeEnsemble", [("X", FLOAT)], [("Y", FLOAT)], opset_ml=5, **attrs)
    _compare(model, {"X": _tree_input(rng)})


@pytest.mark.parametrize("post", ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT"])
@pytest.mark.parametrize("n_classes,labels", [(1, 2), (2, 2), (3, 3)])
def test_linear_classifier_vs_onnxruntime(post, n_classes, labels):
    rng = np.random.default_rng(n_classes)
    x = rng.normal(size=(6, 4)).astype(F32)
    coef = (rng.normal(size=n_classes * 4) * (0.05 if post == "PROBIT" else 1)).tolist()
    inter = ([0.5] * n_classes) if post == "PROBIT" else rng.normal(size=n_classes).tolist()
    model = _node_model("LinearClassifier", [("X", FLOAT)], [("Y", INT64), ("Z", FLOAT)], coefficients=coef,
                        intercepts=inter, classlabels_ints=list(range(labels)), post_transform=post)
    if post == "PROBIT" and n_classes == 1:
        pytest.skip("onnxruntime packs PROBIT scores of a one-column binary model oddly")
    _compare(model, {"X": x}, atol=1e-4)


def test_simple_ops_vs_onnxruntime():
    x = np.array([[1.0, -2.0, 0.0], [0.5, 3.0, -1.0]], dtype=F32)
    _compare(_node_model("Binarizer", [("X", FLOAT)], [("Y", FLOAT)]), {"X": x})
    _compare(_node_model("Normalizer", [("X", FLOAT)], [("Y", FLOAT)], norm="L2"), {"X": x})
    _compare(_node_model("Normalizer", [("X", FLOAT)], [("Y", FLOAT)]), {"X": x})
    _compare(_node_model("Scaler", [("X", FLOAT)], [("Y", FLOAT)], offset=[1.0, 0, 0], scale=[2.0, 1, 1]), {"X": x})
    _compare(_node_model("Imputer", [("X", FLOAT)], [("Y", FLOAT)], imputed_value_floats=[9.0],
                         replaced_value_float=0.0), {"X": x})
    _compare(_node_model("ArrayFeatureExtractor", [("X", FLOAT), ("I", INT64)], [("Y", FLOAT)]),
             {"X": x[0], "I": np.array([2, 0], dtype=np.int64)})
    _compare(_node_model("OneHotEncoder", [("X", INT64)], [("Y", FLOAT)], cats_int64s=[3, 1]),
             {"X": np.array([[1, 3, 2]], dtype=np.int64)})
    _compare(_node_model("LabelEncoder", [("X", STRING)], [("Y", INT64)], opset_ml=2, keys_strings=["a", "b"],
                         values_int64s=[4, 5]), {"X": np.array(["b", "c", "a"], dtype=object)})
    _compare(_node_model("CategoryMapper", [("X", INT64)], [("Y", STRING)], cats_int64s=[1, 2],
                         cats_strings=["one", "two"]), {"X": np.array([2, 7], dtype=np.int64)})
    _compare(_zipmap_model(), {"X": x[:, :2]})


def _zipmap_model():
    node = helper.make_node("ZipMap", ["X"], ["Z"], domain=ML, classlabels_strings=["b", "a"])
    seq = helper.make_sequence_type_proto(helper.make_map_type_proto(STRING, helper.make_tensor_type_proto(FLOAT, [])))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", FLOAT, None)],
                              [helper.make_value_info("Z", seq)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ML, 3)],
                             ir_version=8)


def test_svm_classifier_vs_onnxruntime():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 3)).astype(F32)
    sv = rng.normal(size=(6, 3)).astype(F32)
    common = dict(vectors_per_class=[2, 2, 2], support_vectors=sv.reshape(-1).tolist(),
                  coefficients=rng.normal(size=2 * 6).tolist(), rho=rng.normal(size=3).tolist(),
                  kernel_type="RBF", kernel_params=[0.3, 0.0, 3.0], classlabels_ints=[0, 1, 2])
    model = _node_model("SVMClassifier", [("X", FLOAT)], [("Y", INT64), ("Z", FLOAT)], **common)
    _compare(model, {"X": x}, atol=1e-5)
    model = _node_model("SVMClassifier", [("X", FLOAT)], [("Y", INT64), ("Z", FLOAT)],
                        prob_a=[-2.0, -1.5, -1.0], prob_b=[0.1, 0.0, -0.1], **common)
    _compare(model, {"X": x}, atol=1e-4)


# --------------------------------------------------------------------------- compiled at session creation


def _deep_forest(rng, n_trees, n_feat, max_depth, n_targets=1):
    """Unbalanced random trees (leaves at every depth up to ``max_depth``), nodes after the root shuffled."""
    attrs = {k: [] for k in ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes", "nodes_values",
                             "nodes_truenodeids", "nodes_falsenodeids", "target_treeids", "target_nodeids",
                             "target_ids", "target_weights")}
    for t in range(n_trees):
        nodes = []

        def build(depth):
            i = len(nodes)
            nodes.append(None)
            if depth == max_depth or (depth and rng.random() < 0.15 + 0.03 * depth):
                nodes[i] = None
            else:
                nodes[i] = (int(rng.integers(n_feat)), float(np.round(rng.normal(), 2)), build(depth + 1),
                            build(depth + 1))
            return i

        build(0)
        for i in [0] + list(1 + rng.permutation(len(nodes) - 1)):  # the root first
            node = nodes[i]
            feature, value, true_id, false_id = node if node is not None else (0, 0.0, 0, 0)
            for key, v in (("treeids", t), ("nodeids", int(i)), ("featureids", feature), ("values", value),
                           ("truenodeids", true_id), ("falsenodeids", false_id)):
                attrs["nodes_" + key].append(v)
            attrs["nodes_modes"].append("LEAF" if node is None else "BRANCH_LEQ")
            if node is None:
                for k in range(n_targets):
                    attrs["target_treeids"].append(t)
                    attrs["target_nodeids"].append(int(i))
                    attrs["target_ids"].append(k)
                    attrs["target_weights"].append(float(np.round(rng.normal(), 3)))
    return attrs


def _reference_walk(attrs, x, n_targets):
    """Per-row, per-tree Python walk of a BRANCH_LEQ forest: the sum of the reached leaves' weights."""
    nodes = {(t, i): k for k, (t, i) in enumerate(zip(attrs["nodes_treeids"], attrs["nodes_nodeids"]))}
    weights = {}
    for t, i, k, w in zip(attrs["target_treeids"], attrs["target_nodeids"], attrs["target_ids"],
                          attrs["target_weights"]):
        weights[(t, i, k)] = w
    out = np.zeros((x.shape[0], n_targets))
    for r in range(x.shape[0]):
        for t in sorted(set(attrs["nodes_treeids"])):
            k = nodes[(t, 0)]
            while attrs["nodes_modes"][k] != "LEAF":
                go_true = x[r, attrs["nodes_featureids"][k]] <= F32(attrs["nodes_values"][k])
                k = nodes[(t, attrs["nodes_truenodeids"][k] if go_true else attrs["nodes_falsenodeids"][k])]
            for target in range(n_targets):
                out[r, target] += weights[(t, attrs["nodes_nodeids"][k], target)]
    return out


def test_tree_walks_agree_for_every_batch_size():
    """Deep unbalanced trees: the one-row walk (every step on every pair), the batched walks (finished pairs
    dropped, blocks of trees on threads) and a Python walk give the same scores, bit for bit between batches."""
    rng = np.random.default_rng(11)
    attrs = _deep_forest(rng, n_trees=40, n_feat=4, max_depth=18, n_targets=2)
    x = np.round(rng.normal(size=(4000, 4)), 2).astype(F32)  # 160,000 (tree, row) pairs: two blocks
    packed = tree_ensemble._REGRESSOR(None, dict(attrs, n_targets=2))
    whole = tree_ensemble.tree_ensemble_regressor(x, n_targets=2, _packed=packed, **attrs)
    np.testing.assert_allclose(whole[:60], _reference_walk(attrs, x[:60], 2), rtol=1e-5, atol=1e-5)
    for rows in (slice(0, 1), slice(7, 8), slice(100, 103), slice(0, 300)):
        part = tree_ensemble.tree_ensemble_regressor(x[rows], n_targets=2, _packed=packed, **attrs)
        assert part.tobytes() == whole[rows].tobytes(), rows


def _counting(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_tree_ensembles_compile_once_at_session_creation(monkeypatch):
    import onyxrt

    calls = _counting(monkeypatch, tree_ensemble, "_compile_v3")
    rng = np.random.default_rng(2)
    attrs = _regressor_attrs(rng, n_targets=2)
    model = _node_model("TreeEnsembleRegressor", [("X", FLOAT)], [("Y", FLOAT)], n_targets=2, **attrs)
    session = onyxrt.InferenceSession(model.SerializeToString())
    assert calls == ["_compile_v3"]
    x = _tree_input(rng)
    first = session.run(None, {"X": x})[0]
    for rows in (x, x[:1], x[3:5]):
        session.run(None, {"X": rows})
    assert calls == ["_compile_v3"]
    np.testing.assert_array_equal(session.run(None, {"X": x})[0], first)


def test_compiled_models_are_shared_by_concurrent_runs():
    """Runs on threads share one compiled forest (including its tables for double inputs, built on demand)."""
    import concurrent.futures

    import onyxrt

    rng = np.random.default_rng(4)
    attrs = _regressor_attrs(rng, n_trees=12, depth=5, n_targets=3)
    model = _node_model("TreeEnsembleRegressor", [("X", DOUBLE)], [("Y", FLOAT)], n_targets=3, **attrs)
    session = onyxrt.InferenceSession(model.SerializeToString())
    xs = [_tree_input(rng, n=n).astype(np.float64) for n in (1, 5, 300, 2000)] * 4
    expect = [tree_ensemble.tree_ensemble_regressor(x, n_targets=3, **attrs) for x in xs]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: session.run(None, {"X": x})[0], xs))
    for e, g in zip(expect, got):
        assert e.tobytes() == g.tobytes()


def test_invalid_attributes_are_reported_when_the_kernel_runs():
    """Prepack declines attributes it cannot compile; the kernel then reports the error itself."""
    x = np.zeros((2, 2), dtype=F32)
    attrs = _tiny_forest(target_treeids=[0, 1], target_nodeids=[1, 1], target_ids=[0, 0], target_weights=[1.0, 2.0])
    assert tree_ensemble._REGRESSOR(None, dict(attrs, n_targets=1)) is None
    with pytest.raises(ValueError, match="target is missing"):
        tree_ensemble.tree_ensemble_regressor(x, n_targets=1, **attrs)
    assert svm._SVM_CLASSIFIER(None, dict(coefficients=[1.0], classlabels_ints=[0, 1])) is None
    with pytest.raises(ValueError, match="rho is required"):
        svm.svm_classifier(x, coefficients=[1.0], classlabels_ints=[0, 1])


def _ml_prepack_cases():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(6, 3)).astype(F32)
    sv = dict(vectors_per_class=[2, 1, 2], support_vectors=rng.normal(size=15).tolist(),
              coefficients=rng.normal(size=10).tolist(), rho=[0.1, -0.2, 0.3], kernel_type="RBF",
              kernel_params=[0.4, 0.0, 3.0], classlabels_strings=["a", "b", "c"])
    strings = np.array([["a", "q"], ["b", "a"]], dtype=object)
    ints = np.array([[2, 7], [1, 2]], dtype=np.int64)
    return [
        (tree_ensemble.tree_ensemble_classifier, tree_ensemble._CLASSIFIER, x,
         dict({k.replace("target_", "class_"): v for k, v in _regressor_attrs(rng, n_targets=1).items()},
              classlabels_int64s=[4, 5], post_transform="LOGISTIC")),
        (tree_ensemble.tree_ensemble_regressor, tree_ensemble._REGRESSOR, x[:, :2],
         dict(_tiny_forest(target_treeids=[0, 0, 1, 1], target_nodeids=[1, 2, 1, 2], target_ids=[0, 1, 1, 0],
                           target_weights=[1.0, 2.0, 3.0, 4.0]), n_targets=2, aggregate_function="MAX")),
        (svm.svm_classifier, svm._SVM_CLASSIFIER, x, sv),
        (svm.svm_classifier, svm._SVM_CLASSIFIER, x, dict(sv, prob_a=[-1.0, -2.0, -0.5], prob_b=[0.1, 0.0, 0.2])),
        (svm.svm_regressor, svm._SVM_REGRESSOR, x,
         dict(coefficients=[1.0, -0.5], n_supports=2, support_vectors=rng.normal(size=6).tolist(), rho=[0.3],
              kernel_type="POLY", kernel_params=[0.5, 1.0, 2.0])),
        (linear.linear_classifier, linear._LINEAR_CLASSIFIER, x,
         dict(coefficients=rng.normal(size=9).tolist(), intercepts=[0.1, 0.2, 0.3], classlabels_ints=[7, 8, 9],
              post_transform="SOFTMAX")),
        (linear.linear_regressor, linear._LINEAR_REGRESSOR, x,
         dict(coefficients=rng.normal(size=6).tolist(), intercepts=[1.0, 2.0], targets=2)),
        (encoders.label_encoder_1, encoders._LABEL_ENCODER_1, ints, dict(classes_strings=["x", "y", "z"])),
        (encoders.label_encoder_2, encoders._LABEL_ENCODER_2, strings, dict(keys_strings=["a", "b"],
                                                                            values_floats=[0.5, 1.5])),
        (encoders.label_encoder_4, encoders._LABEL_ENCODER_4, ints,
         dict(keys_int64s=[2, 1], values_strings=["two", "one"])),
        (encoders.category_mapper, encoders._CATEGORY_MAPPER, strings,
         dict(cats_strings=["a", "b"], cats_int64s=[1, 2])),
        (encoders.category_mapper, encoders._CATEGORY_MAPPER, ints, dict(cats_strings=["a", "b"], cats_int64s=[1, 2])),
        (encoders.one_hot_encoder, encoders._ONE_HOT_ENCODER, ints, dict(cats_int64s=[2, 7, 9])),
    ]


@pytest.mark.parametrize("index", range(len(_ml_prepack_cases())))
def test_prepacked_kernels_match_direct_calls(index):
    kernel, prepack, x, attrs = _ml_prepack_cases()[index]
    packed = prepack([None], attrs)
    assert packed is not None
    expect = kernel(x, **attrs)
    got = kernel(x, **attrs, _packed=packed)
    for e, g in zip(expect if isinstance(expect, tuple) else [expect], got if isinstance(got, tuple) else [got]):
        assert e.dtype == g.dtype and e.shape == g.shape
        assert e.tolist() == g.tolist() if e.dtype == object else e.tobytes() == g.tobytes()
