"""The optimizer in onnxruntime's order around a region provider (``session/placement.py``).

Provider-independent passes run on the whole graph, the region provider claims its nodes
(fused, opaque), the CPU provider's fusions run on what is left, the CPU provider takes it.
The separate-memory test provider claims elementwise ops and MatMul, not Gemm, LeakyRelu,
Softmax or the reductions.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt as ort
from onyxrt.framework.partitioner import FUSED_DOMAIN, FUSED_GROUP, PROVIDER_KEY, partition
from onyxrt.framework.constant_evaluator import provider_evaluator
from onyxrt.optimizer import optimize
from onyxrt.providers import (
    CPUExecutionProvider,
    ExecutionProvider,
    register_execution_provider,
    unregister_execution_provider,
)
from separate_memory_provider import SeparateMemoryProvider

SEP = SeparateMemoryProvider.name
CPU = "CPUExecutionProvider"
RNG = np.random.default_rng(7)
X = RNG.standard_normal((3, 4)).astype(np.float32)
W = RNG.standard_normal((4, 4)).astype(np.float32)
B = RNG.standard_normal((4,)).astype(np.float32)


@pytest.fixture
def device():
    register_execution_provider(SeparateMemoryProvider)
    yield
    unregister_execution_provider(SEP)


class LeakyReluOnlyProvider(ExecutionProvider):
    """A per-node provider on the host taking LeakyRelu (with the CPU provider's kernel)."""

    name = "LeakyReluOnlyExecutionProvider"

    def can_run(self, node: ir.Node, opset: int) -> bool:
        return node.op_type == "LeakyRelu" and node.domain == ""

    def compile_node(self, node, opset, attributes, constants=()):
        return CPUExecutionProvider().compile_node(node, opset, attributes, constants)


def _model(nodes, initializers=(("w", W), ("b", B)), output_shape=(3, 4)) -> bytes:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(output_shape))],
        initializer=[numpy_helper.from_array(array, name) for name, array in initializers],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


# Gemm + LeakyRelu is the CPU provider's (FusedGemm); Sub -> Tanh is the device's region.
GEMM_THEN_REGION = _model([
    helper.make_node("Gemm", ["x", "w", "b"], ["g"]), helper.make_node("LeakyRelu", ["g"], ["l"], alpha=0.2),
    helper.make_node("Sub", ["l", "b"], ["s"]), helper.make_node("Tanh", ["s"], ["y"]),
])


def _ops(graph: ir.Graph) -> list[str]:
    return [node.op_type for node in graph if not node.op_type.startswith("Memcpy")]


def _cpu_result(model: bytes) -> np.ndarray:
    return ort.InferenceSession(model, providers=[CPU]).run(None, {"x": X})[0]


def test_cpu_fusions_run_on_the_nodes_the_region_provider_left(device):
    session = ort.InferenceSession(GEMM_THEN_REGION, providers=[SEP, CPU])
    assert _ops(session._plan.graph) == ["FusedGemm", SEP]
    fused = next(node for node in session._plan.graph if node.domain == FUSED_DOMAIN)
    assert [node.op_type for node in fused.meta[FUSED_GROUP].nodes] == ["Sub", "Tanh"]
    assert "gemm_activation_fusion" in session.applied_optimizations
    np.testing.assert_allclose(session.run(None, {"x": X})[0], _cpu_result(GEMM_THEN_REGION), rtol=1e-5)


def test_at_the_basic_level_no_cpu_fusion_runs_around_a_region(device):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(GEMM_THEN_REGION, options, providers=[SEP, CPU])
    assert _ops(session._plan.graph) == ["Gemm", "LeakyRelu", SEP]
    np.testing.assert_allclose(session.run(None, {"x": X})[0], _cpu_result(GEMM_THEN_REGION), rtol=1e-5)


def test_provider_independent_passes_run_before_the_region_provider_claims(device):
    # MatMul + Add becomes a Gemm (a BASIC pass) first, so the device, which has no Gemm, gets the Tanh only;
    # the Identity inside what would be the device's region is gone before it claims
    model = _model([
        helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
        helper.make_node("Identity", ["a"], ["i"]), helper.make_node("Tanh", ["i"], ["y"]),
    ])
    session = ort.InferenceSession(model, providers=[SEP, CPU])
    assert _ops(session._plan.graph) == ["Gemm", SEP]
    assert session._plan.graph[0].meta[PROVIDER_KEY] == CPU
    np.testing.assert_allclose(session.run(None, {"x": X})[0], _cpu_result(model), rtol=1e-5)


def test_a_cpu_fusion_never_reaches_into_a_region(device):
    # LayerNormalization spelled out: the device claims its Sub/Mul/Div/Add, so the CPU's LayerNormFusion,
    # which would need them, finds no pattern and the result stays the graph's own arithmetic
    scale, bias = np.full((4,), 1.5, np.float32), np.full((4,), 0.25, np.float32)
    model = _model([
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[-1]), helper.make_node("Sub", ["x", "mean"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["sq"]), helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["n"]), helper.make_node("Mul", ["n", "scale"], ["ns"]),
        helper.make_node("Add", ["ns", "bias"], ["y"]),
    ], initializers=(("two", np.array(2.0, np.float32)), ("eps", np.array(1e-5, np.float32)),
                     ("scale", scale), ("bias", bias)))
    assert _ops(ort.InferenceSession(model, providers=[CPU])._plan.graph) == ["LayerNormalization"]
    session = ort.InferenceSession(model, providers=[SEP, CPU])
    ops = _ops(session._plan.graph)
    assert "LayerNormalization" not in ops and SEP in ops
    claimed = [n.op_type for node in session._plan.graph if node.domain == FUSED_DOMAIN
               for n in node.meta[FUSED_GROUP].nodes]
    assert sorted(claimed) == ["Add", "Add", "Div", "Mul", "Sub"]
    np.testing.assert_allclose(session.run(None, {"x": X})[0], _cpu_result(model), rtol=1e-5, atol=1e-6)


def test_passes_leave_a_fused_node_and_its_body_alone():
    # a region whose inputs are all constants: constant folding, CSE and dead-code elimination keep it
    model = ir.serde.deserialize_model(onnx.load_from_string(_model([
        helper.make_node("Neg", ["w"], ["n"]), helper.make_node("Tanh", ["n"], ["t"]),
        helper.make_node("Softmax", ["t"], ["u"]), helper.make_node("Add", ["x", "u"], ["y"]),
    ], initializers=(("w", W),))))
    partition(model.graph, model.opset_imports, [SeparateMemoryProvider()], complete=False)
    before = [(node.op_type, [n.op_type for n in node.meta[FUSED_GROUP].nodes] if FUSED_GROUP in node.meta else None)
              for node in model.graph]
    assert before[0] == (SEP, ["Neg", "Tanh"])
    report = optimize(model, 99, providers=[CPU], evaluator=provider_evaluator(CPUExecutionProvider()))
    after = [(node.op_type, [n.op_type for n in node.meta[FUSED_GROUP].nodes] if FUSED_GROUP in node.meta else None)
             for node in model.graph]
    assert after == before and not report.counts


def test_unassigned_nodes_stay_free_in_an_incomplete_partition():
    graph = ir.serde.deserialize_model(onnx.load_from_string(GEMM_THEN_REGION)).graph
    partition(graph, {"": 17}, [SeparateMemoryProvider()], complete=False)
    assert [(node.op_type, node.meta.get(PROVIDER_KEY)) for node in graph] == [
        ("Gemm", None), ("LeakyRelu", None), (SEP, SEP)]
    partition(graph, {"": 17}, [CPUExecutionProvider()])  # the region keeps its provider
    assert [node.meta[PROVIDER_KEY] for node in graph] == [CPU, CPU, SEP]


def test_set_providers_prepares_the_model_again_for_the_new_list(device):
    session = ort.InferenceSession(GEMM_THEN_REGION, providers=[CPU])
    assert _ops(session._plan.graph) == ["FusedGemm", "Sub", "Tanh"]
    session.set_providers([SEP, CPU])
    assert _ops(session._plan.graph) == ["FusedGemm", SEP] and session.get_providers() == [SEP, CPU]
    session.set_providers([CPU])
    assert _ops(session._plan.graph) == ["FusedGemm", "Sub", "Tanh"]
    np.testing.assert_allclose(session.run(None, {"x": X})[0], _cpu_result(GEMM_THEN_REGION), rtol=1e-6)


def test_a_per_node_provider_ahead_of_the_cpu_keeps_its_nodes_from_cpu_fusions():
    register_execution_provider(LeakyReluOnlyProvider)
    try:
        session = ort.InferenceSession(GEMM_THEN_REGION, providers=[LeakyReluOnlyProvider.name, CPU])
    finally:
        unregister_execution_provider(LeakyReluOnlyProvider.name)
    assert [(node.op_type, node.meta[PROVIDER_KEY]) for node in session._plan.graph] == [
        ("Gemm", CPU), ("LeakyRelu", LeakyReluOnlyProvider.name), ("Sub", CPU), ("Tanh", CPU)]
    np.testing.assert_allclose(session.run(None, {"x": X})[0], _cpu_result(GEMM_THEN_REGION), rtol=1e-5)


def test_optimized_model_file_with_a_region_provider_holds_the_provider_independent_stage(device, tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    model = _model([
        helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
        helper.make_node("LeakyRelu", ["a"], ["l"]), helper.make_node("Tanh", ["l"], ["y"]),
    ])
    session = ort.InferenceSession(model, options, providers=[SEP, CPU])
    assert _ops(session._plan.graph) == ["FusedGemm", SEP]
    saved = onnx.load(options.optimized_model_filepath)
    assert [node.op_type for node in saved.graph.node] == ["Gemm", "LeakyRelu", "Tanh"]
    reloaded = ort.InferenceSession(saved.SerializeToString(), providers=[CPU])
    np.testing.assert_allclose(reloaded.run(None, {"x": X})[0], session.run(None, {"x": X})[0], rtol=1e-5)


def test_profile_shows_each_region_as_one_event_with_its_nodes(device, tmp_path):
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    session = ort.InferenceSession(GEMM_THEN_REGION, options, providers=[SEP, CPU])
    session.run(None, {"x": X})
    events = [e for e in json.loads(open(session.end_profiling()).read()) if e["cat"] == "Node"]
    regions = [e for e in events if e["args"]["provider"] == SEP and not e["args"]["op_name"].startswith("Memcpy")]
    assert len(regions) == 1
    region = regions[0]["args"]
    assert region["op_name"] == SEP and region["fused_op_types"] == ["Sub", "Tanh"]
    assert len(region["fused_nodes"]) == 2
    cpu = [e["args"] for e in events if e["args"]["provider"] == CPU]
    assert [a["op_name"] for a in cpu if not a["op_name"].startswith("Memcpy")] == ["FusedGemm"]
    assert all("fused_nodes" not in a for a in cpu)


def test_openvino_regions_stay_standard_onnx(tmp_path):
    pytest.importorskip("openvino")
    # Gemm + activation, twice, around a com.microsoft op OpenVINO's frontend lacks (BiasSoftmax): OpenVINO
    # gets both pairs as they are written, no FusedGemm takes them first
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["g"]), helper.make_node("LeakyRelu", ["g"], ["l"], alpha=0.2),
        helper.make_node("BiasSoftmax", ["l", "b"], ["f"], domain="com.microsoft", axis=-1),
        helper.make_node("Gemm", ["f", "w", "b"], ["g2"]), helper.make_node("Relu", ["g2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
        initializer=[numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b")],
        value_info=[helper.make_tensor_value_info("f", TensorProto.FLOAT, [3, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)]).SerializeToString()
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    openvino = "OpenVINOExecutionProvider"
    session = ort.InferenceSession(model, options, providers=[(openvino, {"precision": "FP32"}), CPU])
    placed = [(node.op_type, node.meta[PROVIDER_KEY]) for node in session._plan.graph]
    assert placed == [(openvino, openvino), ("BiasSoftmax", CPU), (openvino, openvino)]
    bodies = [[n.op_type for n in node.meta[FUSED_GROUP].nodes] for node in session._plan.graph
              if FUSED_GROUP in node.meta]
    assert bodies == [["Gemm", "LeakyRelu"], ["Gemm", "Relu"]]
    got = session.run(None, {"x": X})[0]
    np.testing.assert_allclose(got, ort.InferenceSession(model, providers=[CPU]).run(None, {"x": X})[0], rtol=1e-5)
    events = [e["args"] for e in json.loads(open(session.end_profiling()).read()) if e["cat"] == "Node"]
    regions = [args for args in events if args["op_name"] == openvino]
    assert [(args["provider"], args["fused_op_types"]) for args in regions] == [
        (openvino, ["Gemm", "LeakyRelu"]), (openvino, ["Gemm", "Relu"])]


def test_providers_get_the_session_options_on_creation_and_on_set_providers(device, monkeypatch):
    seen = []
    monkeypatch.setattr(SeparateMemoryProvider, "use_session_options",
                        lambda self, options: seen.append(options.intra_op_num_threads), raising=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(GEMM_THEN_REGION, options, providers=[SEP, CPU])
    session.set_providers([SEP, CPU])
    assert seen == [1, 1]
