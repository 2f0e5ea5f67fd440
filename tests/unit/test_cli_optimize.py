"""`onyxrt optimize IN OUT`: the optimized model is saved, reported on, and onnxruntime runs it unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from onyxrt.cli import main


def _model_with_foldable_constants() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.float32(2.0))),
        helper.make_node("Mul", ["w", "two"], ["w2"]),
        helper.make_node("MatMul", ["x", "w2"], ["h"]),
        helper.make_node("Identity", ["h"], ["i"]),
        helper.make_node("Relu", ["i"], ["y"]),
    ]
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_optimize_saves_a_model_onnxruntime_runs_with_the_same_outputs(tmp_path, capsys):
    source, target = tmp_path / "in.onnx", tmp_path / "out.onnx"
    model = _model_with_foldable_constants()
    onnx.save(model, source)
    assert main(["optimize", str(source), str(target), "--level", "extended", "--report"]) == 0
    printed = capsys.readouterr().out
    assert "5 -> 2 nodes" in printed  # Constant, Mul (folded) and Identity are gone
    assert "constant_folding" in printed and "Constant" in printed and "1 -> 0" in printed
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    want = onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    got = onnxruntime.InferenceSession(str(target)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_optimize_at_disabled_keeps_the_graph(tmp_path, capsys):
    source, target = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(_model_with_foldable_constants(), source)
    assert main(["optimize", str(source), str(target), "--level", "disabled"]) == 0
    assert "5 -> 5 nodes" in capsys.readouterr().out
