"""Random ops honour their seed as onnxruntime does: one generator per node, created with the
session and advanced by each run; unseeded nodes follow onyxrt.set_seed."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from onnx import TensorProto, helper

import onyxrt as ort

SHAPE = [3, 4]


def _model(op_type: str, **attributes) -> bytes:
    """A one-node model; ops with an input read ``x`` (probabilities / logits / shape source)."""
    inputs, node_inputs, dtype = [], [], TensorProto.FLOAT
    if op_type in ("RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial", "Dropout"):
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)]
        node_inputs = ["x"]
    if op_type == "Dropout":
        node_inputs += ["ratio", "training"]
        inputs += [helper.make_tensor_value_info("ratio", TensorProto.FLOAT, []),
                   helper.make_tensor_value_info("training", TensorProto.BOOL, [])]
    if op_type == "Multinomial":
        attributes.setdefault("sample_size", 5)
        dtype = TensorProto.INT32
    if op_type in ("RandomNormal", "RandomUniform"):
        attributes["shape"] = SHAPE
    graph = helper.make_graph(
        [helper.make_node(op_type, node_inputs, ["y"], **attributes)],
        "g", inputs, [helper.make_tensor_value_info("y", dtype, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _feed(op_type: str) -> dict:
    x = np.full(SHAPE, 0.5, np.float32)
    if op_type == "Dropout":
        return {"x": x, "ratio": np.array(0.5, np.float32), "training": np.array(True)}
    if op_type in ("RandomNormal", "RandomUniform"):
        return {}
    return {"x": x}


RANDOM_OPS = ["RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
              "Dropout"]


def _runs(session: ort.InferenceSession, op_type: str, count: int = 3) -> list[np.ndarray]:
    return [session.run(None, _feed(op_type))[0] for _ in range(count)]


@pytest.mark.parametrize("op_type", RANDOM_OPS)
def test_identically_seeded_sessions_give_equal_outputs_run_after_run(op_type):
    seed = 7 if op_type == "Dropout" else 7.0
    model = _model(op_type, seed=seed)
    first, second = (_runs(ort.InferenceSession(model), op_type) for _ in range(2))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    # one generator per node, advanced by each run (as onnxruntime's kernels keep theirs)
    assert not np.array_equal(first[0], first[1])


@pytest.mark.parametrize("op_type", ["RandomNormal", "Dropout"])
def test_different_seeds_give_different_outputs(op_type):
    a = _runs(ort.InferenceSession(_model(op_type, seed=1 if op_type == "Dropout" else 1.0)), op_type, 1)
    b = _runs(ort.InferenceSession(_model(op_type, seed=2 if op_type == "Dropout" else 2.0)), op_type, 1)
    assert not np.array_equal(a[0], b[0])


@pytest.mark.parametrize("op_type", RANDOM_OPS)
def test_unseeded_nodes_follow_set_seed(op_type):
    model = _model(op_type)
    ort.set_seed(123)
    first = _runs(ort.InferenceSession(model), op_type)
    ort.set_seed(123)
    second = _runs(ort.InferenceSession(model), op_type)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    ort.set_seed(124)
    assert not np.array_equal(_runs(ort.InferenceSession(model), op_type, 1)[0], first[0])


def test_concurrent_runs_of_one_session_draw_distinct_parts_of_one_stream():
    model = _model("RandomNormal", seed=3.0)
    expected = _runs(ort.InferenceSession(model), "RandomNormal", 8)
    session = ort.InferenceSession(model)
    results: list[np.ndarray] = []
    start = threading.Barrier(8, timeout=10)

    def run():
        start.wait()
        results.append(session.run(None, {})[0])

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.tobytes() for r in results) == sorted(e.tobytes() for e in expected)


def test_seeded_dropout_first_mask_is_the_onnx_reference():
    session = ort.InferenceSession(_model("Dropout", seed=0))
    y = session.run(None, _feed("Dropout"))[0]
    mask = np.random.RandomState(0).uniform(0.0, 1.0, SHAPE) >= 0.5
    np.testing.assert_array_equal(y, np.where(mask, np.float32(1.0), np.float32(0.0)))
