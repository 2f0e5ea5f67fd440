"""The plan's steps as one generated function (framework/compiled_steps.py): the same results, buffer reuse and
errors as the run loop, which profiled runs and runs with bound outputs keep."""

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as onnx_numpy_helper

import onyxrt
from onyxrt.errors import Fail
from onyxrt.framework.allocation_planner import RunReport
from onyxrt.framework.compiled_steps import compile_steps


def _model(nodes, inputs, outputs, opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def _runs(session, feeds):
    """(outputs, report) of the plan's compiled run and of its loop (a profiled run takes the loop), each the third of
    its kind in a row (the arena carries freed buffers from one run to the next, and the steps' small-output hints
    settle)."""
    plan = session._plan
    inputs = session._prepare_inputs(feeds)
    results = []
    for profile in (None, []):
        for _ in range(3):
            report = RunReport()
            outputs = plan.run(inputs, profile=profile, report=report)
        results.append(([np.array(o, copy=True) for o in outputs], report))
    return results


def test_compiled_run_equals_the_loop():
    """Large intermediates (recycled and donated buffers), a multi-output step, a dead output: the same outputs and
    the same memory figures from both."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Split", ["a"], ["b", "c"], axis=0),
             helper.make_node("Sigmoid", ["b"], ["d"]), helper.make_node("Add", ["d", "c"], ["e"]),
             helper.make_node("Neg", ["e"], ["f"]), helper.make_node("Mul", ["f", "x2"], ["y"]),
             helper.make_node("Abs", ["f"], ["z"])]
    model = _model(nodes, [("x", [512, 1024]), ("x2", [256, 1024])], ["y", "z"])
    session = onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((512, 1024), dtype=np.float32),
             "x2": rng.standard_normal((256, 1024), dtype=np.float32)}
    (compiled, compiled_report), (looped, looped_report) = _runs(session, feeds)
    for c, l in zip(compiled, looped):
        np.testing.assert_array_equal(c, l)
    assert (compiled_report.peak_bytes, compiled_report.reused_bytes, compiled_report.inplace_bytes) == (
        looped_report.peak_bytes, looped_report.reused_bytes, looped_report.inplace_bytes)
    assert session._plan._compiled is not None
    a = np.maximum(feeds["x"], 0)
    f = -(1 / (1 + np.exp(-a[:256])) + a[256:])
    np.testing.assert_allclose(compiled[0], f * feeds["x2"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(compiled[1], np.abs(f), rtol=1e-5, atol=1e-6)
    assert compiled_report.reused_bytes + compiled_report.inplace_bytes > 0


def test_compiled_run_names_the_failing_node():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="first"),
             helper.make_node("Reshape", ["a", "shape"], ["y"], name="the_reshape")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
                                           helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    session = onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = np.ones(4, np.float32)
    assert session.run(None, {"x": x, "shape": np.array([2, 2])})[0].shape == (2, 2)
    with pytest.raises(Fail, match="the_reshape"):
        session.run(None, {"x": x, "shape": np.array([3, 3])})


def test_steps_without_inputs_and_an_empty_plan():
    calls = []

    def constant(*, _alloc=None):
        calls.append(_alloc)
        return np.ones(3, np.float32)

    def failing(value):
        raise ValueError("bad value")

    class Arena:
        min_bytes = 1 << 30
        step = 0

        def produced(self, value):
            pass

        def release(self, values, slot):
            values[slot] = None

    run = compile_steps([(constant, (), (1,), (), False, True, ())], lambda result, multi: 12,
                        lambda index, exc: None, RuntimeError)
    values, small = [None, None], [False]
    run(values, Arena(), small)
    assert values[1].tolist() == [1, 1, 1] and small == [True] and calls and calls[0] is not None
    run(values, Arena(), small)  # small outputs: no _alloc the second time
    assert calls[-1] is None

    failures = []
    run = compile_steps([(constant, (), (0,), (), False, False, ()), (failing, (0,), (1,), (0,), False, False, ())],
                        lambda result, multi: 0, lambda index, exc: failures.append((index, str(exc))), RuntimeError)
    run([None, None], Arena(), [False, False])
    assert failures == [(1, "bad value")]
    compile_steps([], lambda result, multi: 0, lambda index, exc: None, RuntimeError)([], Arena(), [])


def test_uncounted_runs_where_no_kernel_takes_buffers():
    """A plan none of whose kernels takes ``_alloc`` (convolutions, a transpose) runs without the arena between
    counted runs: the same outputs, its peak bytes from the last counted run (the first run counts, and every run
    asked for a report), a failing step named as in the counted runs."""
    from onyxrt.framework import execution_plan
    from onyxrt.framework.compiled_steps import compile_uncounted_steps

    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["a"], ["y"], perm=[0, 2, 3, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [onnx_numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    session = onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"])
    plan = session._plan
    assert not plan._takes_buffers
    x = rng.standard_normal((2, 4, 64, 64)).astype(np.float32)
    first = session.run(None, {"x": x})[0]
    peak = plan.peak_bytes
    assert peak > 0 and plan._uncounted is None
    for _ in range(execution_plan.UNCOUNTED_RUNS):
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], first)
        assert plan.peak_bytes == peak
    assert plan._uncounted is not None and plan._uncounted_runs == execution_plan.UNCOUNTED_RUNS
    session.run(None, {"x": x})  # counted again
    assert plan._uncounted_runs == 0
    report = RunReport()
    plan.run(session._prepare_inputs({"x": x}), report=report)
    assert report.peak_bytes == peak
    with pytest.raises(Fail, match="Conv"):
        session.run(None, {"x": np.ones((2, 3, 8, 8), np.float32)})  # (an uncounted run: 4 channels expected)
    with pytest.raises(ValueError, match="_alloc"):
        compile_uncounted_steps([(lambda *, _alloc=None: 0, (), (1,), (), False, True, ())], lambda i, e: None,
                                RuntimeError)
