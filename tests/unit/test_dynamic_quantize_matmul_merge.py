"""DynamicQuantizeMatMul nodes sharing their activation merge into one and a Split, with identical results
(``optimizer/dynamic_quantize_matmul_merge.py``)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt as ort

_MS = "com.microsoft"
_PASS = "dynamic_quantize_matmul_merge"
rng = np.random.default_rng(0)


def _model(projections, *, opset=17, k=24, outputs_are_graph_outputs=True):
    """x (b, s, k) -> one DynamicQuantizeMatMul per ``projections`` entry (n, b_dtype, per_column, zero, bias),
    each output + 1 (or the output itself when ``outputs_are_graph_outputs``)."""
    nodes, inits, outputs = [], [], []
    for i, (n, dtype, per_column, zero, bias) in enumerate(projections):
        info = np.iinfo(dtype)
        inits.append(numpy_helper.from_array(rng.integers(info.min, info.max + 1, (k, n)).astype(dtype), f"w{i}"))
        scale = rng.uniform(1e-3, 1e-2, n if per_column else ()).astype(np.float32)
        inits.append(numpy_helper.from_array(scale, f"s{i}"))
        inputs = ["x", f"w{i}", f"s{i}"]
        if zero:
            inits.append(numpy_helper.from_array(rng.integers(-5, 6, n if per_column else ()).astype(dtype)
                                                 if dtype == np.int8 else
                                                 rng.integers(120, 136, n if per_column else ()).astype(dtype), f"z{i}"))
            inputs.append(f"z{i}")
        if bias:
            if not zero:
                inputs.append("")
            inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), f"b{i}"))
            inputs.append(f"b{i}")
        product = f"y{i}" if outputs_are_graph_outputs else f"p{i}"
        nodes.append(helper.make_node("DynamicQuantizeMatMul", inputs, [product], domain=_MS, name=f"dq{i}"))
        if not outputs_are_graph_outputs:
            inits.append(numpy_helper.from_array(np.ones((), np.float32), f"one{i}"))
            nodes.append(helper.make_node("Add", [product, f"one{i}"], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", k])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(_MS, 1)])
    return model.SerializeToString()


def _run(data, feeds, merged: bool):
    disabled = [] if merged else [_PASS]
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    return session.run(None, feeds), Counter(node.op_type for node in session._model.graph), session


@pytest.mark.parametrize("opset", [17, 11])
@pytest.mark.parametrize("graph_outputs", [True, False])
def test_siblings_merge_with_identical_results(opset, graph_outputs):
    projections = [(16, np.int8, True, True, True), (8, np.int8, False, False, True), (24, np.int8, True, False, True)]
    data = _model(projections, opset=opset, outputs_are_graph_outputs=graph_outputs)
    feeds = {"x": rng.standard_normal((2, 5, 24)).astype(np.float32)}
    merged, counts, session = _run(data, feeds, merged=True)
    separate, separate_counts, _ = _run(data, feeds, merged=False)
    assert counts["DynamicQuantizeMatMul"] == 1 and counts["Split"] == 1
    assert separate_counts["DynamicQuantizeMatMul"] == 3
    assert [o.name for o in session.get_outputs()] == ["y0", "y1", "y2"]
    for a, b in zip(merged, separate):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_only_compatible_siblings_merge():
    """Different weight dtypes, different K or bias on some but not all stay apart."""
    projections = [(8, np.int8, True, True, True), (8, np.uint8, True, True, True),  # dtypes differ
                   (8, np.int8, False, True, False), (8, np.uint8, False, False, True)]
    data = _model(projections)
    feeds = {"x": rng.standard_normal((1, 3, 24)).astype(np.float32)}
    merged, counts, _ = _run(data, feeds, merged=True)
    separate, _, _ = _run(data, feeds, merged=False)
    # int8 with bias + int8 without bias: different groups; uint8 with bias x2: merged
    assert counts["DynamicQuantizeMatMul"] == 3 and counts["Split"] == 1
    for a, b in zip(merged, separate):
        np.testing.assert_array_equal(a, b)


@pytest.mark.zoo
def test_onnxruntime_quantized_minilm_merges_its_projections(zoo_model, tmp_path):
    quantization = pytest.importorskip("onnxruntime.quantization")
    path = tmp_path / "minilm_int8.onnx"
    quantization.quantize_dynamic(str(zoo_model("minilm_l6")), str(path))
    ids = rng.integers(0, 1000, (1, 32)).astype(np.int64)
    names = {i.name for i in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()}
    feeds = {k: v for k, v in {"input_ids": ids, "attention_mask": np.ones_like(ids),
                               "token_type_ids": np.zeros_like(ids)}.items() if k in names}
    merged, counts, _ = _run(str(path), feeds, merged=True)
    separate, separate_counts, _ = _run(str(path), feeds, merged=False)
    assert counts["DynamicQuantizeMatMul"] == separate_counts["DynamicQuantizeMatMul"] - 12  # Q, K, V: one per layer
    for a, b in zip(merged, separate):
        np.testing.assert_array_equal(a, b)
