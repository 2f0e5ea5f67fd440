"""ExecutionMode.ORT_PARALLEL (framework/parallel_executor.py): independent branches run at the same time,
with the sequential run's results, errors and profiles."""

import json

import numpy as np
import pytest
from onnx import TensorProto, helper

import onyxrt as ort


def _branches(count: int = 4, size: int = 384) -> bytes:
    """``count`` independent MatMul chains from one input, summed: y = sum_i relu(x @ w_i) @ w_i."""
    rng = np.random.default_rng(0)
    nodes, inits, partial = [], [], []
    for i in range(count):
        w = (rng.standard_normal((size, size)) / size**0.5).astype(np.float32)
        inits.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, w.shape, w.ravel()))
        nodes += [helper.make_node("MatMul", ["x", f"w{i}"], [f"a{i}"], name=f"first{i}"),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}"),
                  helper.make_node("MatMul", [f"r{i}", f"w{i}"], [f"b{i}"], name=f"second{i}")]
        partial.append(f"b{i}")
    nodes.append(helper.make_node("Sum", partial, ["y"], name="sum"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("r0", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _session(model: bytes, parallel: bool, **options) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if parallel:
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        so.inter_op_num_threads = 2
    for name, value in options.items():
        setattr(so, name, value)
    return ort.InferenceSession(model, so)


def test_parallel_runs_equal_sequential_ones():
    model = _branches()
    x = np.random.default_rng(1).standard_normal((64, 384)).astype(np.float32)
    sequential = _session(model, False).run(None, {"x": x})
    parallel = _session(model, True)
    for _ in range(3):  # (the third runs the plan specialized to these shapes, in parallel too)
        for got, want in zip(parallel.run(None, {"x": x}), sequential):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert parallel._plan._parallel is not None


def test_independent_branches_overlap_in_the_profile(tmp_path):
    """Each branch's first product releases the GIL in BLAS: with two inter-op threads two of them run at once."""
    model = _branches(count=2, size=1024)
    session = _session(model, True, enable_profiling=True, profile_file_prefix=str(tmp_path / "p"))
    x = np.ones((512, 1024), np.float32)
    overlapped = False
    for _ in range(5):
        session.run(None, {"x": x})
    events = [e for e in json.loads(open(session.end_profiling()).read()) if e["cat"] == "Node"]
    runs = {}
    for event in events:
        name = event["name"].rsplit("_kernel_time", 1)[0]
        runs.setdefault(name, []).append((event["ts"], event["ts"] + event["dur"]))
    for (s0, e0), (s1, e1) in zip(runs["first0"], runs["first1"]):
        overlapped |= s0 < e1 and s1 < e0
    assert overlapped
    assert {"first0", "relu0", "second0", "first1", "relu1", "second1", "sum"} <= set(runs)


def test_a_failing_node_is_reported_with_its_name():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"], name="left"),
         helper.make_node("Reshape", ["x", "shape"], ["b"], name="bad_reshape"),
         helper.make_node("Add", ["a", "a"], ["y"], name="add")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
              helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None), helper.make_tensor_value_info("b", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    session = _session(model, True)
    with pytest.raises(ort.OnyxRuntimeError, match="bad_reshape"):
        session.run(None, {"x": np.ones((2, 3), np.float32), "shape": np.array([4, 4], np.int64)})
    y, b = session.run(None, {"x": np.ones((2, 3), np.float32), "shape": np.array([3, 2], np.int64)})
    np.testing.assert_array_equal(y, np.full((2, 3), 2, np.float32))
    assert b.shape == (3, 2)


def test_io_binding_outputs_arrive_in_parallel_mode():
    model = _branches(count=2, size=64)
    session = _session(model, True)
    x = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    binding = session.io_binding()
    binding.bind_cpu_input("x", x)
    out = np.empty((4, 64), np.float32)
    binding.bind_output("y", "cpu", 0, np.float32, out.shape, out.ctypes.data)
    session.run_with_iobinding(binding)
    np.testing.assert_allclose(out, _session(model, False).run(["y"], {"x": x})[0], rtol=1e-5, atol=1e-5)
