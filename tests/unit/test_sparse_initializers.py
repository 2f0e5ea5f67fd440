"""Models whose weights are ONNX sparse initializers (written by ``prune(store_sparse=True)`` or by onnx's
helper with linear or [NNZ, rank] indices) load and give the outputs of the same model with dense weights,
in onyxrt and in onnxruntime; pruned to 90%, the file is smaller."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt
from onyxrt.sparsity import prune

ort = pytest.importorskip("onnxruntime")

IN, HIDDEN, OUT = 64, 128, 32


def _dense_model(seed: int = 0) -> onnx.ModelProto:
    """x -> MatMul(w1) -> Relu -> Gemm(w2, transB) + bias -> Conv 1x1 on the same x reshaped."""
    rng = np.random.default_rng(seed)
    initializers = [
        numpy_helper.from_array(rng.standard_normal((IN, HIDDEN)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((OUT, HIDDEN)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(OUT).astype(np.float32), "bias"),
        numpy_helper.from_array(rng.standard_normal((16, IN, 1, 1)).astype(np.float32), "w_conv"),
        numpy_helper.from_array(np.array([1, IN, 1, 1], np.int64), "image_shape"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="matmul"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "bias"], ["y"], name="gemm", transB=1),
        helper.make_node("Reshape", ["x", "image_shape"], ["image"]),
        helper.make_node("Conv", ["image", "w_conv"], ["z"], name="conv"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, OUT]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 16, 1, 1])],
        initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(5).standard_normal((1, IN)).astype(np.float32)}


def _outputs(path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    feeds = _feeds()
    return (onyxrt.InferenceSession(str(path)).run(None, feeds),
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds))


def _assert_same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    for value, reference in zip(got, want):
        np.testing.assert_allclose(value, reference, rtol=1e-5, atol=1e-5)


def test_prune_store_sparse_writes_a_smaller_file_that_gives_the_dense_outputs(tmp_path):
    dense_path, sparse_path = tmp_path / "pruned_dense.onnx", tmp_path / "pruned_sparse.onnx"
    prune(_dense_model(), dense_path, sparsity=0.9)
    report = prune(_dense_model(), sparse_path, sparsity=0.9, store_sparse=True)
    written = onnx.load(str(sparse_path))
    assert sorted(s.values.name for s in written.graph.sparse_initializer) == ["w1", "w2", "w_conv"]
    assert {t.name for t in written.graph.initializer} == {"bias", "image_shape"}
    sparse = written.graph.sparse_initializer[0]
    assert sparse.indices.data_type == TensorProto.INT64 and len(sparse.indices.dims) == 1  # linear COO indices
    onnx.checker.check_model(written)
    ours_dense, theirs_dense = _outputs(dense_path)
    ours_sparse, theirs_sparse = _outputs(sparse_path)
    _assert_same(ours_dense, theirs_dense)
    _assert_same(ours_sparse, ours_dense)
    _assert_same(theirs_sparse, ours_dense)
    # 10% of the values, each with an 8-byte index: 30% of the dense fp32 bytes
    assert report.stored_bytes == pytest.approx(0.3 * report.dense_bytes, rel=0.01)
    assert sparse_path.stat().st_size < 0.4 * dense_path.stat().st_size
    assert report.file_bytes_after == sparse_path.stat().st_size


@pytest.mark.parametrize("index_form", ["linear", "coordinates"])
def test_sparse_initializers_made_by_onnx_helper_give_the_dense_outputs(tmp_path, index_form):
    model = _dense_model(seed=1)
    pruned = prune(model, sparsity=0.8).model
    dense_path = tmp_path / "dense.onnx"
    onnx.save(pruned, str(dense_path))
    weights = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    sparse_model = onnx.ModelProto()
    sparse_model.CopyFrom(pruned)
    kept = [t for t in sparse_model.graph.initializer if t.name not in ("w1", "w2", "w_conv")]
    del sparse_model.graph.initializer[:]
    sparse_model.graph.initializer.extend(kept)
    for name in ("w1", "w2", "w_conv"):
        array = weights[name]
        linear = np.flatnonzero(array).astype(np.int64)
        indices = linear if index_form == "linear" else np.stack(np.unravel_index(linear, array.shape), axis=1).astype(np.int64)
        sparse_model.graph.sparse_initializer.append(helper.make_sparse_tensor(
            numpy_helper.from_array(array.reshape(-1)[linear], name), numpy_helper.from_array(indices, name + "_indices"),
            list(array.shape)))
    onnx.checker.check_model(sparse_model)
    sparse_path = tmp_path / "sparse.onnx"
    onnx.save(sparse_model, str(sparse_path))
    ours_dense, _ = _outputs(dense_path)
    ours_sparse, theirs_sparse = _outputs(sparse_path)
    _assert_same(ours_sparse, ours_dense)
    _assert_same(theirs_sparse, ours_dense)


@pytest.mark.parametrize("enable, select", [("0", "measure"), ("1", "always")])
def test_sparse_initializers_under_sparse_execution_give_the_dense_outputs(tmp_path, enable, select):
    """Weights loaded from sparse initializers feed the sparse kernels (forced with select=always) as dense ones do."""
    dense_path, sparse_path = tmp_path / "pruned_dense.onnx", tmp_path / "pruned_sparse.onnx"
    prune(_dense_model(seed=2), dense_path, sparsity=0.9)
    prune(_dense_model(seed=2), sparse_path, sparsity=0.9, store_sparse=True)
    options = onyxrt.SessionOptions()
    for key, value in (("onyxrt.sparse.enable", enable), ("onyxrt.sparse.select", select), ("onyxrt.sparse.min_sparsity", "0.5")):
        options.add_session_config_entry(key, value)
    got = onyxrt.InferenceSession(str(sparse_path), options).run(None, _feeds())
    want = ort.InferenceSession(str(dense_path), providers=["CPUExecutionProvider"]).run(None, _feeds())
    _assert_same(got, want)


def test_a_constant_node_with_a_sparse_value_feeds_a_matmul_as_its_dense_weight(tmp_path):
    """The kernel test of Constant(sparse_value) calls the op; here a model's loader densifies it for MatMul."""
    weight = prune(_dense_model(seed=3), sparsity=0.9).model
    w1 = next(numpy_helper.to_array(t) for t in weight.graph.initializer if t.name == "w1")
    linear = np.flatnonzero(w1).astype(np.int64)
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(w1.reshape(-1)[linear], "w1"),
                                       numpy_helper.from_array(linear, "w1_indices"), list(w1.shape))
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["w1"], sparse_value=sparse), helper.make_node("MatMul", ["x", "w1"], ["h"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, IN])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, HIDDEN])])
    path = tmp_path / "constant_sparse.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    ours, theirs = _outputs(path)
    np.testing.assert_allclose(ours[0], _feeds()["x"] @ w1, rtol=1e-5, atol=1e-5)
    _assert_same(ours, theirs)
