"""RNN/GRU/LSTM against onnxruntime on the cases the node suite leaves out: reverse, bidirectional, sequence_lens, layout 1."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onyxrt

ort = pytest.importorskip("onnxruntime")

SEQ, BATCH, INPUT, HIDDEN = 5, 3, 4, 6
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def recurrent_model(op: str, direction: str, layout: int, extra: dict) -> bytes:
    dirs = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    x_shape = [SEQ, BATCH, INPUT] if layout == 0 else [BATCH, SEQ, INPUT]
    inputs = [
        helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape),
        helper.make_tensor_value_info("W", TensorProto.FLOAT, [dirs, g * HIDDEN, INPUT]),
        helper.make_tensor_value_info("R", TensorProto.FLOAT, [dirs, g * HIDDEN, HIDDEN]),
        helper.make_tensor_value_info("B", TensorProto.FLOAT, [dirs, 2 * g * HIDDEN]),
        helper.make_tensor_value_info("L", TensorProto.INT32, [BATCH]),
    ]
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, ["X", "W", "R", "B", "L"], outputs, hidden_size=HIDDEN, direction=direction, layout=layout, **extra)
    graph = helper.make_graph([node], "rnn", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]).SerializeToString()


@pytest.mark.parametrize("op,extra", [("RNN", {}), ("GRU", {}), ("GRU", {"linear_before_reset": 1}), ("LSTM", {}), ("LSTM", {"clip": 0.5})])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_matches_onnxruntime(op, extra, direction, layout):
    model = recurrent_model(op, direction, layout, extra)
    rng = np.random.default_rng(1)
    dirs = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    feeds = {
        "X": rng.standard_normal([SEQ, BATCH, INPUT] if layout == 0 else [BATCH, SEQ, INPUT]).astype(np.float32),
        "W": rng.standard_normal((dirs, g * HIDDEN, INPUT)).astype(np.float32) / 2,
        "R": rng.standard_normal((dirs, g * HIDDEN, HIDDEN)).astype(np.float32) / 2,
        "B": rng.standard_normal((dirs, 2 * g * HIDDEN)).astype(np.float32) / 4,
        "L": np.array([SEQ, 2, 4], dtype=np.int32),
    }
    got = onyxrt.InferenceSession(model).run(None, feeds)
    if layout == 0:
        want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)
    else:  # onnxruntime has no batch-first kernels: compare with its sequence-first result, transposed
        seq_first = ort.InferenceSession(recurrent_model(op, direction, 0, extra), providers=["CPUExecutionProvider"])
        want = seq_first.run(None, {**feeds, "X": feeds["X"].transpose(1, 0, 2)})
        want = [want[0].transpose(2, 0, 1, 3)] + [state.transpose(1, 0, 2) for state in want[1:]]
    for g_out, w_out in zip(got, want):
        np.testing.assert_allclose(g_out, w_out, rtol=1e-4, atol=1e-5)
