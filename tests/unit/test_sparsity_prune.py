"""onyxrt.sparsity.prune: which elements each pattern zeros (along the reduction axis of MatMul, Gemm and
Conv weights), which weights it leaves alone and says why, the report, and ``onyxrt prune`` / ``onyxrt info``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt
from onyxrt.cli import main
from onyxrt.sparsity import prune

K, N = 16, 24  # MatMul: reduction and outputs; Gemm (transB) reads its (K, N) weight as K outputs x N reduction


def _model(nodes, initializers, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _float_input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w_matmul": rng.standard_normal((K, N)).astype(np.float32),  # (K, N)
        "w_gemm": rng.standard_normal((K, N)).astype(np.float32),  # (outputs, reduction) with transB=1
        "w_conv": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
        "w_pointwise": rng.standard_normal((8, 8, 1, 1)).astype(np.float32),
    }


def _mixed_model() -> onnx.ModelProto:
    """MatMul -> Gemm(transB) on a vector path, Conv 3x3 -> Conv 1x1 on an image path."""
    nodes = [
        helper.make_node("MatMul", ["x", "w_matmul"], ["h"], name="matmul"),
        helper.make_node("Gemm", ["h", "w_gemm"], ["y"], name="gemm", transB=1),
        helper.make_node("Conv", ["image", "w_conv"], ["c"], name="conv3x3", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c", "w_pointwise"], ["z"], name="conv1x1"),
    ]
    return _model(nodes, _weights(), [_float_input("x", [2, K]), _float_input("image", [1, 4, 5, 5])],
                  [_float_input("y", [2, K]), _float_input("z", [1, 8, 5, 5])])


def _feeds():
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((2, K)).astype(np.float32), "image": rng.standard_normal((1, 4, 5, 5)).astype(np.float32)}


def _pruned(report) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in report.model.graph.initializer}


def _as_out_by_reduction(name: str, array: np.ndarray) -> np.ndarray:
    """The (outputs, reduction) view the patterns are defined on."""
    if name == "w_matmul":
        return array.T
    return array.reshape(array.shape[0], -1)


def test_unstructured_zeros_exactly_the_smallest_magnitudes_of_each_weight():
    original = _weights()
    report = prune(_mixed_model(), sparsity=0.7)
    pruned = _pruned(report)
    for name, weight in original.items():
        zeros = pruned[name] == 0
        assert zeros.sum() == round(0.7 * weight.size)
        assert np.abs(weight[zeros]).max() <= np.abs(weight[~zeros]).min()
        np.testing.assert_array_equal(pruned[name][~zeros], weight[~zeros])
    assert {w.name for w in report.weights} == set(original)
    assert all(w.sparsity_before == 0 and w.sparsity_after == pytest.approx(round(0.7 * np.prod(w.shape)) / np.prod(w.shape))
               for w in report.weights)


@pytest.mark.parametrize("pattern, n, m", [("2:4", 2, 4), ("4:8", 4, 8)])
def test_n_of_m_keeps_the_largest_n_of_each_m_consecutive_along_the_reduction_axis(pattern, n, m):
    original = _weights()
    report = prune(_mixed_model(), pattern=pattern, sparsity=0.9)  # N:M fixes the sparsity; 0.9 is not used
    pruned = _pruned(report)
    assert report.target_sparsity == pytest.approx(1 - n / m)
    for name in ("w_matmul", "w_gemm", "w_pointwise"):  # w_conv's reduction (4*3*3 = 36) is a multiple of 4, not of 8
        before = _as_out_by_reduction(name, original[name]).reshape(-1, m)
        after = _as_out_by_reduction(name, pruned[name]).reshape(-1, m)
        assert ((after != 0).sum(axis=1) == n).all()
        kept_smallest = np.where(after != 0, np.abs(before), np.inf).min(axis=1)
        dropped_largest = np.where(after == 0, np.abs(before), -np.inf).max(axis=1)
        assert (kept_smallest >= dropped_largest).all()
    assert next(w for w in report.weights if w.name == "w_matmul").sparsity_after == pytest.approx(1 - n / m)


def test_n_of_m_leaves_a_weight_whose_reduction_length_is_no_multiple_of_m_dense_with_a_note():
    report = prune(_mixed_model(), pattern="4:8")
    assert "w_conv" not in {w.name for w in report.weights}
    assert "reduction length 36 is not a multiple of 8" in report.skipped["conv3x3"]
    np.testing.assert_array_equal(_pruned(report)["w_conv"], _weights()["w_conv"])


@pytest.mark.parametrize("pattern, rows, columns", [("block4x1", 4, 1), ("block1x4", 1, 4), ("block2x2", 2, 2)])
def test_blocks_are_zeroed_whole_by_smallest_l2_norm(pattern, rows, columns):
    original = _weights()
    report = prune(_mixed_model(), pattern=pattern, sparsity=0.5, op_types=("MatMul",))
    matrix = _as_out_by_reduction("w_matmul", _pruned(report)["w_matmul"])
    before = _as_out_by_reduction("w_matmul", original["w_matmul"])
    blocks = matrix.reshape(N // rows, rows, K // columns, columns)
    norms = np.sqrt((before.reshape(N // rows, rows, K // columns, columns) ** 2).sum(axis=(1, 3)))
    zero_blocks = (blocks == 0).all(axis=(1, 3))
    assert ((blocks != 0).all(axis=(1, 3)) | zero_blocks).all()  # every block all kept or all zero
    assert zero_blocks.sum() == round(0.5 * zero_blocks.size)
    assert norms[zero_blocks].max() <= norms[~zero_blocks].min()
    assert {w.name for w in report.weights} == {"w_matmul"}


def test_pruned_model_computes_with_the_pruned_weights_in_onyxrt_and_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "pruned.onnx"
    prune(_mixed_model(), out, sparsity=0.8)
    pruned = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    feeds = _feeds()
    want_y = (feeds["x"] @ pruned["w_matmul"]) @ pruned["w_gemm"].T  # (2, K)
    ours = onyxrt.InferenceSession(str(out)).run(None, feeds)
    theirs = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(ours[0], want_y, rtol=1e-5, atol=1e-5)
    for mine, reference in zip(ours, theirs):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-5)


def test_the_input_model_is_not_modified():
    model = _mixed_model()
    before = model.SerializeToString()
    prune(model, sparsity=0.9)
    assert model.SerializeToString() == before


def test_conv_kernel_shapes_limits_conv_to_pointwise_convolutions():
    report = prune(_mixed_model(), sparsity=0.8, op_types=("Conv",), conv_kernel_shapes=((1, 1),))
    assert [w.name for w in report.weights] == ["w_pointwise"]
    assert report.skipped == {"conv3x3": "kernel 3x3 not among conv_kernel_shapes"}


def test_excluded_nodes_and_unknown_exclusions():
    report = prune(_mixed_model(), nodes_to_exclude=["gemm"])
    assert report.skipped["gemm"] == "excluded"
    np.testing.assert_array_equal(_pruned(report)["w_gemm"], _weights()["w_gemm"])
    with pytest.raises(ValueError, match="no node named 'gemn'"):
        prune(_mixed_model(), nodes_to_exclude=["gemn"])


def test_weights_from_constant_nodes_are_pruned_and_computed_weights_are_left_with_a_note():
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((K, N)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w_const"], value=numpy_helper.from_array(weight, "w_const")),
        helper.make_node("MatMul", ["x", "w_const"], ["a"], name="from_constant"),
        helper.make_node("Transpose", ["w_t"], ["w_transposed"], name="transpose"),
        helper.make_node("MatMul", ["x", "w_transposed"], ["b"], name="through_transpose"),
        helper.make_node("Mul", ["x", "scale"], ["scaled"], name="scale_activation"),
        helper.make_node("MatMul", ["scaled", "x_t"], ["c"], name="activation_times_input"),
    ]
    model = _model(nodes, {"w_t": weight.T.copy(), "scale": np.float32(0.5)},
                   [_float_input("x", [2, K]), _float_input("x_t", [K, 2])],
                   [_float_input("a", [2, N]), _float_input("b", [2, N]), _float_input("c", [2, 2])])
    report = prune(model, sparsity=0.5)
    assert [w.name for w in report.weights] == ["w_const"]
    assert (_pruned(report)["w_const"] == 0).sum() == K * N // 2
    # a weight computed from constants is named; a product of activations is no weight and needs no note
    assert report.skipped == {"through_transpose": "weight 'w_transposed' is computed by a Transpose node, not stored"}


def test_a_weight_also_read_by_another_node_is_left_alone():
    weight = np.random.default_rng(3).standard_normal((K, K)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="matmul"),
        helper.make_node("Add", ["a", "w"], ["b"], name="add"),
        helper.make_node("MatMul", ["x", "w2"], ["c"], name="first"),
        helper.make_node("MatMul", ["c", "w2"], ["d"], name="second"),
    ]
    model = _model(nodes, {"w": weight, "w2": weight + 1}, [_float_input("x", [K, K])],
                   [_float_input("b", [K, K]), _float_input("d", [K, K])])
    report = prune(model, sparsity=0.5)
    assert report.skipped == {"matmul": "weight 'w' is also read by add"}
    assert [(w.name, w.nodes) for w in report.weights] == [("w2", ("first", "second"))]


def test_weights_that_are_no_single_matrix_are_left_alone_with_a_note():
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("MatMul", ["x3", "w_batched"], ["a"], name="batched"),
        helper.make_node("MatMul", ["x", "w_square"], ["b"], name="plain"),
        helper.make_node("Gemm", ["x", "w_square"], ["c"], name="transposed", transB=1),
    ]
    model = _model(nodes, {"w_batched": rng.standard_normal((2, K, K)).astype(np.float32),
                           "w_square": rng.standard_normal((K, K)).astype(np.float32)},
                   [_float_input("x3", [2, K, K]), _float_input("x", [K, K])],
                   [_float_input("a", [2, K, K]), _float_input("b", [K, K]), _float_input("c", [K, K])])
    report = prune(model)
    assert not report.weights
    assert report.skipped == {
        "batched": "weight 'w_batched': a weight of rank 3 is not a matrix for MatMul",
        "plain": "weight 'w_square': read as a matrix in two layouts (Gemm transB differs)",
        "transposed": "weight 'w_square': read as a matrix in two layouts (Gemm transB differs)",
    }


@pytest.mark.parametrize("arguments, message", [
    ({"pattern": "2:2"}, "pattern '2:2'"),
    ({"pattern": "block1x1"}, "pattern 'block1x1'"),
    ({"sparsity": 1.0}, r"sparsity must be in \[0, 1\)"),
    ({"op_types": ("Einsum",)}, "Einsum"),
])
def test_bad_options_raise_value_errors_naming_them(arguments, message):
    with pytest.raises(ValueError, match=message):
        prune(_mixed_model(), **arguments)


def test_report_summary_and_table():
    report = prune(_mixed_model(), sparsity=0.9, store_sparse=True, op_types=("MatMul", "Gemm"))
    assert report.summary().startswith("pruned 2 weights (unstructured, target 90%) to 90.1% zeros; 0 nodes left alone; "
                                       "2 stored sparse: weight bytes 3.00 KiB -> ")
    table = report.table()
    assert table[0].split() == ["weight", "op", "shape", "before", "after", "dense", "stored"]
    assert table[1].split()[:5] == ["w_matmul", "MatMul", "16x24", "0.0%", "90.1%"]
    assert table[1].endswith("sparse")


def test_store_sparse_keeps_a_weight_dense_where_values_and_indices_take_more_bytes():
    report = prune(_mixed_model(), pattern="2:4", store_sparse=True, op_types=("MatMul",))
    (weight,) = report.weights
    assert not weight.stored_sparse and weight.stored_bytes == weight.dense_bytes == K * N * 4
    assert weight.note == "stored dense: its sparse form would be larger"
    assert not report.model.graph.sparse_initializer


def test_cli_prune_prints_the_report_and_info_shows_the_sparsity(tmp_path, capsys):
    source, out = tmp_path / "model.onnx", tmp_path / "pruned.onnx"
    onnx.save(_mixed_model(), str(source))
    assert main(["prune", str(source), str(out), "--sparsity", "0.75", "--pattern", "block1x4", "--op-types", "MatMul,Conv",
                 "--conv-kernel", "1x1", "--exclude", "matmul", "--store-sparse"]) == 0
    printed = capsys.readouterr().out
    assert "w_pointwise" in printed and "left alone: matmul: excluded" in printed
    assert "left alone: conv3x3: kernel 3x3 not among conv_kernel_shapes" in printed
    assert "pruned 1 weights (block1x4, target 75%) to 75.0% zeros; 2 nodes left alone" in printed
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sparse weights (>= 10% zeros): 1 of 4 weight matrices" in printed
    assert [line.split() for line in printed.splitlines() if "w_pointwise" in line] == [
        ["w_pointwise", "8x8x1x1", "75.0%", "zeros", "stored", "sparse"]]


def test_info_without_sparse_weights_prints_no_sparsity_section(tmp_path, capsys):
    source = tmp_path / "model.onnx"
    onnx.save(_mixed_model(), str(source))
    assert main(["info", str(source)]) == 0
    assert "sparse weights" not in capsys.readouterr().out


def _exit_code(argv: list[str]) -> int:
    """``main``'s exit code, also when argparse rejects an argument (it exits)."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.mark.parametrize("arguments, message", [
    (["--sparsity", "1.5"], "argument --sparsity: must be in [0, 1)"),
    (["--pattern", "3:4:5"], "argument --pattern: pattern '3:4:5'"),
    (["--op-types", "MatMul,Relu"], "argument --op-types: 'MatMul,Relu'"),
    (["--conv-kernel", "1by1"], "argument --conv-kernel: '1by1' must look like KHxKW"),
    (["--exclude", "nowhere"], "nodes_to_exclude: the model has no node named 'nowhere'"),
])
def test_cli_prune_usage_errors_exit_2(tmp_path, capsys, arguments, message):
    source = tmp_path / "model.onnx"
    onnx.save(_mixed_model(), str(source))
    assert _exit_code(["prune", str(source), str(tmp_path / "out.onnx"), *arguments]) == 2
    assert message in capsys.readouterr().err


def test_cli_prune_missing_model_exits_2(tmp_path, capsys):
    assert main(["prune", str(tmp_path / "none.onnx"), str(tmp_path / "out.onnx")]) == 2
    assert "none.onnx: no such file" in capsys.readouterr().err
