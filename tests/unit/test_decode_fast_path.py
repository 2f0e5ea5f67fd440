"""A decoding step's products (one or two rows by a weight) through the MatMul kernel and a session."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt
from onyxrt.providers.cpu.math import matmul as mm

rng = np.random.default_rng(0)


def test_matmul_kernel_decode_step_shape():
    """A (1, 1, K) activation by a (K, N) weight, as a decoding step's projections are: the MatMul kernel
    equals numpy, with and without a planner buffer."""
    a = rng.standard_normal((1, 1, 300), dtype=np.float32)
    b = rng.standard_normal((300, 200), dtype=np.float32)
    packed = mm._matmul_prepack([a, b], {})
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(mm.matmul(a, b, _packed=packed), expected, rtol=1e-4, atol=1e-4)
    calls = []

    def alloc(shape, dtype):
        calls.append(shape)
        return np.full(shape, np.nan, dtype)

    big = rng.standard_normal((1, 1, 16384), dtype=np.float32)  # large enough to ask the planner for a buffer
    weight = rng.standard_normal((16384, 8), dtype=np.float32)
    np.testing.assert_allclose(mm.matmul(big, weight, _alloc=alloc),
                               np.matmul(big.astype(np.float64), weight.astype(np.float64)), rtol=1e-3, atol=1e-3)
    assert calls == [(1, 1, 8)]  # the kernel wrote into the planner's (NaN-filled) buffer


def test_decode_step_session_matches_onnxruntime():
    """A two-projection decoder-like graph at batch 1, sequence 1 (the GEMV path) equals onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    w1 = rng.standard_normal((96, 160), dtype=np.float32) * 0.1
    w2 = rng.standard_normal((160, 96), dtype=np.float32) * 0.1
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    ours = onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"])
    theirs = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    for shape in ((1, 1, 96), (2, 1, 96), (1, 5, 96)):
        x = rng.standard_normal(shape, dtype=np.float32)
        np.testing.assert_allclose(ours.run(None, {"x": x})[0], theirs.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)


