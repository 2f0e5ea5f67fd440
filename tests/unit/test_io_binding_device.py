"""A provider on its own "device" through InferenceSession, OrtValue and IOBinding: copies only at borders.

The separate-memory test provider's tensors are not numpy arrays, so any value that
reached a CPU kernel without a copy would fail the run; its data transfer counts copies.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt as ort
from onyxrt.framework.device import Device, data_transfer_for
from onyxrt.framework.partitioner import FUSED_DOMAIN
from onyxrt.providers import register_execution_provider, unregister_execution_provider
from separate_memory_provider import DEVICE_TYPE, DeviceArray, SeparateMemoryProvider

SEP = SeparateMemoryProvider.name
PROVIDERS = [SEP, "CPUExecutionProvider"]
RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 4)).astype(np.float32)
W = RNG.standard_normal((4, 4)).astype(np.float32)
B = RNG.standard_normal((4,)).astype(np.float32)


@pytest.fixture
def transfer():
    register_execution_provider(SeparateMemoryProvider)
    counter = data_transfer_for(Device(DEVICE_TYPE, 0))
    counter.reset_counts()
    yield counter
    unregister_execution_provider(SEP)


def _model(nodes, outputs=("y",)) -> bytes:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [3, 4]) for name in outputs],
        initializer=[numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


# MatMul -> Sub -> Relu on the device, Softmax on the CPU, Mul -> Tanh on the device again. Sub, not Add:
# the optimizer would fuse MatMul + Add into a Gemm, which the test device does not run.
TWO_REGIONS = _model([
    helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Sub", ["m", "b"], ["a"]),
    helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Softmax", ["r"], ["s"]),
    helper.make_node("Mul", ["s", "r"], ["p"]), helper.make_node("Tanh", ["p"], ["y"]),
])
# Everything on the device.
ONE_REGION = _model([
    helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Sub", ["m", "b"], ["a"]),
    helper.make_node("Relu", ["a"], ["y"]),
])


def _cpu_result(model: bytes) -> np.ndarray:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]


def test_device_arrays_are_not_host_arrays():
    with pytest.raises(TypeError, match="copy to the host is missing"):
        np.add(DeviceArray(X), 1)


def test_regions_fuse_and_copies_happen_only_at_borders(transfer):
    session = ort.InferenceSession(TWO_REGIONS, providers=PROVIDERS)
    graph = session._plan.graph
    ops = [node.op_type if node.domain != FUSED_DOMAIN else "fused" for node in graph]
    # the Mul's read of the Relu output gets its own copy back: a device value crosses to the host once
    assert ops == ["fused", "MemcpyToHost", "Softmax", "MemcpyFromHost", "fused"]
    assert transfer.to_device_count == 2  # w and b, once, at session creation
    transfer.reset_counts()

    (y,) = session.run(None, {"x": X})
    np.testing.assert_allclose(y, _cpu_result(TWO_REGIONS), rtol=1e-5)
    # x in, Relu's output out to Softmax, Softmax's output in, y out
    assert (transfer.to_device_count, transfer.to_host_count) == (2, 2)


def test_io_binding_on_the_device_skips_the_input_and_output_copies(transfer):
    session = ort.InferenceSession(TWO_REGIONS, providers=PROVIDERS)
    x_on_device = ort.OrtValue.ortvalue_from_numpy(X, DEVICE_TYPE, 0)
    assert x_on_device.device_name() == DEVICE_TYPE and x_on_device.shape() == [3, 4]
    transfer.reset_counts()

    binding = session.io_binding()
    binding.bind_ortvalue_input("x", x_on_device)
    binding.bind_output("y", DEVICE_TYPE, 0)
    session.run_with_iobinding(binding)
    assert (transfer.to_device_count, transfer.to_host_count) == (1, 1)  # the Softmax border only
    (y,) = binding.get_outputs()
    assert y.device_name() == DEVICE_TYPE and isinstance(y.value, DeviceArray)
    np.testing.assert_allclose(binding.copy_outputs_to_cpu()[0], _cpu_result(TWO_REGIONS), rtol=1e-5)


def test_a_region_bound_on_its_device_runs_with_zero_copies(transfer):
    session = ort.InferenceSession(ONE_REGION, providers=PROVIDERS)
    assert [node.domain for node in session._plan.graph] == [FUSED_DOMAIN]
    x_on_device = ort.OrtValue.ortvalue_from_numpy(X, DEVICE_TYPE, 0)
    out = ort.OrtValue.ortvalue_from_shape_and_type([3, 4], np.float32, DEVICE_TYPE, 0)
    binding = session.io_binding()
    binding.bind_ortvalue_input("x", x_on_device)
    binding.bind_ortvalue_output("y", out)
    transfer.reset_counts()
    for _ in range(3):
        session.run_with_iobinding(binding)
    assert transfer.copies == 0
    assert binding.get_outputs()[0] is out  # written into the bound tensor
    np.testing.assert_allclose(out.numpy(), _cpu_result(ONE_REGION), rtol=1e-5)


def test_inputs_and_outputs_bound_by_device_address(transfer):
    session = ort.InferenceSession(ONE_REGION, providers=PROVIDERS)
    x_on_device = ort.OrtValue.ortvalue_from_numpy(X, DEVICE_TYPE, 0)
    out = ort.OrtValue.ortvalue_from_shape_and_type([3, 4], np.float32, DEVICE_TYPE, 0)
    binding = session.io_binding()
    binding.bind_input("x", DEVICE_TYPE, 0, np.float32, [3, 4], x_on_device.data_ptr())
    binding.bind_output("y", DEVICE_TYPE, 0, np.float32, [3, 4], out.data_ptr())
    transfer.reset_counts()
    session.run_with_iobinding(binding)
    assert transfer.copies == 0
    (y,) = binding.get_outputs()
    assert y.device_name() == DEVICE_TYPE and y.data_ptr() == out.data_ptr()
    np.testing.assert_allclose(out.numpy(), _cpu_result(ONE_REGION), rtol=1e-5)


def test_device_output_bound_to_the_host_or_a_host_buffer(transfer):
    session = ort.InferenceSession(ONE_REGION, providers=PROVIDERS)
    expected = _cpu_result(ONE_REGION)
    binding = session.io_binding()
    binding.bind_cpu_input("x", X)
    binding.bind_output("y")
    session.run_with_iobinding(binding)
    (y,) = binding.get_outputs()
    assert y.device_name() == "cpu"
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5)

    target = ort.OrtValue.ortvalue_from_shape_and_type([3, 4], np.float32)
    binding.bind_output("y", "cpu", 0, np.float32, [3, 4], target.data_ptr())
    session.run_with_iobinding(binding)
    np.testing.assert_allclose(target.numpy(), expected, rtol=1e-5)


def test_run_with_ort_values_takes_device_values(transfer):
    session = ort.InferenceSession(TWO_REGIONS, providers=PROVIDERS)
    (y,) = session.run_with_ort_values(None, {"x": ort.OrtValue.ortvalue_from_numpy(X, DEVICE_TYPE, 0)})
    assert y.device_name() == "cpu"
    np.testing.assert_allclose(y.numpy(), _cpu_result(TWO_REGIONS), rtol=1e-5)


def test_a_bound_buffer_of_the_wrong_shape_is_rejected(transfer):
    session = ort.InferenceSession(ONE_REGION, providers=PROVIDERS)
    binding = session.io_binding()
    binding.bind_cpu_input("x", X)
    binding.bind_ortvalue_output("y", ort.OrtValue.ortvalue_from_shape_and_type([2, 2], np.float32, DEVICE_TYPE, 0))
    with pytest.raises(RuntimeError, match="Error in execution: .*bound output buffer"):  # onnxruntime's class
        session.run_with_iobinding(binding)


def test_a_device_input_is_checked_without_a_copy(transfer):
    session = ort.InferenceSession(ONE_REGION, providers=PROVIDERS)
    wrong = ort.OrtValue.ortvalue_from_numpy(X.astype(np.float64), DEVICE_TYPE, 0)
    transfer.reset_counts()
    with pytest.raises(ort.OnyxRuntimeError, match="Unexpected input data type"):
        session.run(None, {"x": wrong})
    assert transfer.copies == 0


def test_ort_value_on_the_device(transfer):
    value = ort.OrtValue.ortvalue_from_numpy(X, DEVICE_TYPE, 0)
    assert value.data_type() == "tensor(float)" and value.element_type() == TensorProto.FLOAT
    assert value.data_ptr() != X.ctypes.data  # a copy, in the device's memory
    value.update_inplace(np.zeros_like(X))
    np.testing.assert_array_equal(value.numpy(), np.zeros_like(X))
    with pytest.raises(Exception, match="Unsupported device type: nodevice"):  # onnxruntime's bare Exception
        ort.OrtValue.ortvalue_from_numpy(X, "nodevice", 0)


def test_set_providers_partitions_the_model_afresh(transfer):
    session = ort.InferenceSession(TWO_REGIONS, providers=["CPUExecutionProvider"])
    session.set_providers(PROVIDERS)
    assert any(node.domain == FUSED_DOMAIN for node in session._plan.graph)
    session.set_providers(["CPUExecutionProvider"])
    assert not any(node.domain == FUSED_DOMAIN for node in session._plan.graph)
    np.testing.assert_allclose(session.run(None, {"x": X})[0], _cpu_result(TWO_REGIONS), rtol=1e-5)


def test_profile_names_each_node_s_provider(transfer, tmp_path):
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    session = ort.InferenceSession(TWO_REGIONS, options, providers=PROVIDERS)
    session.run(None, {"x": X})
    events = json.loads(open(session.end_profiling()).read())
    providers = {e["args"]["op_name"]: e["args"]["provider"] for e in events if e["cat"] == "Node"}
    assert providers["Softmax"] == "CPUExecutionProvider" and providers[SEP] == SEP


@pytest.mark.zoo
@pytest.mark.heavy
@pytest.mark.parametrize("name", ["resnet50", "minilm_l6", "llama_tiny"])
def test_zoo_models_on_the_device_give_the_cpu_results(transfer, zoo_model, name):
    from feeds import decoder_feeds, encoder_feeds, vision_feeds

    feeds = {"resnet50": lambda: vision_feeds(1), "minilm_l6": lambda: encoder_feeds("minilm_l6", 1, 8),
             "llama_tiny": lambda: decoder_feeds(1, 4, 2)}[name]()
    path = zoo_model(name)
    session = ort.InferenceSession(path, providers=PROVIDERS)
    copy_nodes = sum(node.op_type.startswith("Memcpy") for node in session._plan.graph)
    assert any(node.domain == FUSED_DOMAIN for node in session._plan.graph)
    transfer.reset_counts()
    got = session.run(None, feeds)
    # the CPU provider's fusions run only on what the device left: compare with the unfused graph on the CPU
    basic = ort.SessionOptions()
    basic.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    want = ort.InferenceSession(path, basic, providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)  # (float rounding: products split differently)
    # every copy is a border: a copy node, or a graph input/output moved at the start/end of the run
    moved = len(feeds) + len(want)
    assert copy_nodes <= transfer.copies <= copy_nodes + moved


def test_cpu_fusions_leave_the_nodes_a_device_ahead_of_the_cpu_claims(transfer):
    # Gemm + Relu fuses into com.microsoft FusedGemm for the CPU, which would take the Relu from the device
    gemm_relu = _model([helper.make_node("Gemm", ["x", "w", "b"], ["g"]), helper.make_node("Relu", ["g"], ["y"])])
    on_cpu = ort.InferenceSession(gemm_relu, providers=["CPUExecutionProvider"])
    assert [node.op_type for node in on_cpu._model.graph] == ["FusedGemm"]
    with_device = ort.InferenceSession(gemm_relu, providers=PROVIDERS)
    assert [node.op_type for node in with_device._model.graph if not node.op_type.startswith("Memcpy")] == ["Gemm", SEP]
    assert with_device.get_providers() == PROVIDERS
    np.testing.assert_allclose(with_device.run(None, {"x": X})[0], on_cpu.run(None, {"x": X})[0], rtol=1e-6)
