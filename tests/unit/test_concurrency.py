"""Concurrent run() calls on one session are safe and each gets its own correct result."""

from __future__ import annotations

import threading

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import onyxrt as ort

THREADS, CALLS = 8, 50


def mlp_model(w1: np.ndarray, w2: np.ndarray):
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Tanh", ["h"], ["a"]),
            helper.make_node("MatMul", ["a", "w2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["p"], axis=-1),
            helper.make_node("Mul", ["x", "x"], ["x2"]),
            helper.make_node("ReduceSum", ["x2"], ["sq"], keepdims=0),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 10]), helper.make_tensor_value_info("sq", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def reference(x, w1, w2):
    logits = np.tanh(x @ w1) @ w2
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True), np.sum(x * x)


def test_eight_threads_fifty_runs_each_on_one_session():
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 128)).astype(np.float32) / 8
    w2 = rng.standard_normal((128, 10)).astype(np.float32) / 8
    session = ort.InferenceSession(mlp_model(w1, w2).SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = [rng.standard_normal((1 + i % 7, 64)).astype(np.float32) for i in range(THREADS * CALLS)]
    results: list = [None] * len(inputs)
    errors: list = []
    start = threading.Barrier(THREADS)

    def worker(thread: int) -> None:
        try:
            start.wait()
            for call in range(CALLS):
                index = thread * CALLS + call
                results[index] = session.run(None, {"x": inputs[index]})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for x, (p, sq) in zip(inputs, results):
        want_p, want_sq = reference(x, w1, w2)
        np.testing.assert_allclose(p, want_p, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(sq, want_sq, rtol=1e-4)


def test_concurrent_runs_through_kernels_with_worker_pools():
    """Conv and LayerNormalization split work over a small thread pool; concurrent runs must not deadlock or mix."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 1, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], group=64, pads=[1, 1, 1, 1]),
            helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
            helper.make_node("LayerNormalization", ["t", "scale"], ["y"], axis=-1),
        ],
        "dw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 56, 56])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 56, 56, 64])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones(64, np.float32), "scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    session = ort.InferenceSession(model)
    inputs = [rng.standard_normal((1, 64, 56, 56)).astype(np.float32) for _ in range(THREADS)]
    expected = [session.run(None, {"x": x})[0] for x in inputs]
    results: list = [None] * THREADS
    start = threading.Barrier(THREADS)

    def worker(index: int) -> None:
        start.wait()
        for _ in range(10):
            results[index] = session.run(None, {"x": inputs[index]})[0]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a run did not finish"
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def test_mixed_sessions_created_and_run_concurrently_each_get_their_own_results():
    # Sessions are created on the threads themselves (concurrent loading), two models interleave.
    rng = np.random.default_rng(1)
    weights = [(rng.standard_normal((64, 32)).astype(np.float32), rng.standard_normal((32, 10)).astype(np.float32))
               for _ in range(2)]
    models = [mlp_model(w1, w2).SerializeToString() for w1, w2 in weights]
    errors: list[str] = []

    def worker(seed: int) -> None:
        which = seed % 2
        session = ort.InferenceSession(models[which])
        local = np.random.default_rng(seed)
        for _ in range(CALLS):
            x = local.standard_normal((3, 64)).astype(np.float32)
            p, sq = session.run(None, {"x": x})
            want_p, want_sq = reference(x, *weights[which])
            if not (np.allclose(p, want_p, rtol=1e-4, atol=1e-5) and np.isclose(sq, want_sq, rtol=1e-4)):
                errors.append(f"thread {seed}: wrong result")

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]


def test_run_async_callbacks_each_get_their_own_result():
    rng = np.random.default_rng(2)
    w1, w2 = rng.standard_normal((64, 32)).astype(np.float32), rng.standard_normal((32, 10)).astype(np.float32)
    session = ort.InferenceSession(mlp_model(w1, w2).SerializeToString())
    inputs = [rng.standard_normal((2, 64)).astype(np.float32) for _ in range(40)]
    results: dict[int, tuple] = {}
    done = threading.Semaphore(0)

    def callback(outputs, index, error):
        results[index] = (outputs, error)
        done.release()

    for index, x in enumerate(inputs):
        session.run_async(None, {"x": x}, callback, index)
    for _ in inputs:
        assert done.acquire(timeout=60)
    for index, x in enumerate(inputs):
        outputs, error = results[index]
        assert error == ""
        np.testing.assert_allclose(outputs[0], reference(x, w1, w2)[0], rtol=1e-4, atol=1e-5)
