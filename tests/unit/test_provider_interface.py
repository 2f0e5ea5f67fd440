"""The provider interface v2: devices, per-node defaults, registration, and copies placed at device borders."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt as ort
from onyxrt.framework.device import HOST, Device, HostDataTransfer, data_transfer_for, device_of, move_to
from onyxrt.framework.memcpy import DEVICE, TO_DEVICE, TO_HOST, insert_copies
from onyxrt.framework.partitioner import FUSED_GROUP, PROVIDER_KEY, partition
from onyxrt.providers import (
    CPUExecutionProvider,
    NodeGroup,
    get_available_providers,
    register_execution_provider,
    unregister_execution_provider,
)
from separate_memory_provider import DEVICE_TYPE, SeparateMemoryProvider

SEP = SeparateMemoryProvider.name
SEP_DEVICE = Device(DEVICE_TYPE, 0)


@pytest.fixture
def registered():
    register_execution_provider(SeparateMemoryProvider)
    transfer = data_transfer_for(SEP_DEVICE)
    transfer.reset_counts()
    yield transfer
    unregister_execution_provider(SEP)


def _vi(name, shape=(2, 2), elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, list(shape))


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _partitioned(model, providers) -> ir.Graph:
    graph = ir.serde.deserialize_model(model).graph
    partition(graph, {"": 17}, providers)
    insert_copies(graph, providers)
    return graph


def test_cpu_provider_lives_on_the_host():
    cpu = CPUExecutionProvider()
    assert cpu.device == HOST and isinstance(cpu.data_transfer, HostDataTransfer)
    assert isinstance(cpu.allocate((2, 3), np.dtype(np.float32)), np.ndarray)


def test_per_node_capability_offers_each_free_runnable_node_unfused():
    graph = ir.serde.deserialize_model(_model(
        [helper.make_node("Relu", ["x"], ["t"]), helper.make_node("NoSuchOp", ["t"], ["y"], domain="custom")],
        [_vi("x")], [_vi("y")],
    )).graph
    groups = CPUExecutionProvider().get_capability(graph, {"": 17, "custom": 1})
    assert [([n.op_type for n in g.nodes], g.fused) for g in groups] == [(["Relu"], False)]
    graph[0].meta[PROVIDER_KEY] = "Other"
    assert CPUExecutionProvider().get_capability(graph, {"": 17}) == []


def test_per_node_provider_compiles_a_group_from_its_kernels():
    graph = ir.serde.deserialize_model(_model(
        [helper.make_node("Add", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
        [_vi("x")], [_vi("y")], [numpy_helper.from_array(np.full((2, 2), -1.0, np.float32), "w")],
    )).graph
    group = NodeGroup.of(list(graph), {"": 17})
    step = CPUExecutionProvider().compile(group)
    x = np.array([[0.5, 2.0], [1.0, 3.0]], np.float32)
    (y,) = step(x, np.full((2, 2), -1.0, np.float32))
    np.testing.assert_array_equal(y, np.maximum(x - 1, 0))


def test_registration_puts_a_provider_ahead_of_the_cpu_and_only_an_explicit_choice_uses_it(registered):
    assert get_available_providers()[0] == SEP and get_available_providers()[-1] == "CPUExecutionProvider"
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x")], [_vi("y")]).SerializeToString()
    assert ort.InferenceSession(model).get_providers() == ["CPUExecutionProvider"]  # as onnxruntime 1.32
    session = ort.InferenceSession(model, providers=[SEP, "CPUExecutionProvider"])
    assert session.get_providers() == [SEP, "CPUExecutionProvider"]


def test_move_between_host_and_device(registered):
    x = np.arange(4, dtype=np.float32)
    on_device = move_to(x, SEP_DEVICE)
    assert device_of(on_device) == SEP_DEVICE and move_to(on_device, SEP_DEVICE) is on_device
    np.testing.assert_array_equal(move_to(on_device, HOST), x)
    assert (registered.to_device_count, registered.to_host_count) == (1, 1)


def test_a_weight_read_on_both_devices_gets_a_twin_on_the_device(registered):
    model = _model(
        [helper.make_node("Add", ["x", "w"], ["a"]), helper.make_node("Softmax", ["w"], ["s"]),
         helper.make_node("Concat", ["a", "s"], ["y"], axis=0)],
        [_vi("x")], [_vi("y", (4, 2))], [numpy_helper.from_array(np.ones((2, 2), np.float32), "w")],
    )
    graph = _partitioned(model, [SeparateMemoryProvider(), CPUExecutionProvider()])
    weight, twin = graph.initializers["w"], graph.initializers["w_sepmem0"]
    assert weight.meta[DEVICE] == HOST and twin.meta[DEVICE] == SEP_DEVICE
    assert [n.op_type for n in graph] == [SEP, "Softmax", TO_HOST, "Concat"]
    fused, softmax, to_host, concat = graph
    assert list(fused.inputs) == [graph.inputs[0], twin] and list(softmax.inputs) == [weight]
    assert to_host.inputs[0] is fused.outputs[0] and concat.inputs[0] is to_host.outputs[0]

    session = ort.InferenceSession(model.SerializeToString(), providers=[SEP, "CPUExecutionProvider"])
    registered.reset_counts()
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    (y,) = session.run(None, {"x": x})
    assert (registered.to_device_count, registered.to_host_count) == (1, 1)  # x in, a out: not w
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, expected[0], rtol=1e-6)


def test_a_weight_read_only_on_the_device_lives_there(registered):
    graph = _partitioned(_model(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        [_vi("x")], [_vi("y")], [numpy_helper.from_array(np.ones((2, 2), np.float32), "w")],
    ), [SeparateMemoryProvider(), CPUExecutionProvider()])
    assert graph.initializers["w"].meta[DEVICE] == SEP_DEVICE and graph.inputs[0].meta[DEVICE] == SEP_DEVICE
    assert [n.op_type for n in graph] == [SEP]  # graph inputs are moved by the plan, outputs handed over by it


def test_copies_inside_a_subgraph_run_through_the_session(registered):
    branch = helper.make_graph([helper.make_node("Add", ["x", "x"], ["b1"]), helper.make_node("Relu", ["b1"], ["b"])],
                               "then", [], [_vi("b")])
    # x is read on the host here, so it stays there and the then-branch copies it in
    other = helper.make_graph([helper.make_node("Softmax", ["x"], ["c1"]), helper.make_node("Neg", ["c1"], ["c"])],
                              "else", [], [_vi("c")])
    model = _model([helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)],
                   [_vi("cond", [], TensorProto.BOOL), _vi("x")], [_vi("y")]).SerializeToString()
    session = ort.InferenceSession(model, providers=[SEP, "CPUExecutionProvider"])
    then_graph = session._plan.graph[0].attributes["then_branch"].value
    assert [n.op_type for n in then_graph] == [TO_DEVICE, SEP, TO_HOST]
    else_graph = session._plan.graph[0].attributes["else_branch"].value
    assert [n.op_type for n in else_graph] == ["Softmax", TO_DEVICE, SEP, TO_HOST]
    assert then_graph.outputs[0].name == "b" and else_graph.outputs[0].name == "c"
    reference = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = np.array([[1.0, -2.0], [3.0, -4.0]], np.float32)
    for cond in (True, False):
        feed = {"cond": np.array(cond), "x": x}
        np.testing.assert_allclose(session.run(None, feed)[0], reference.run(None, feed)[0], rtol=1e-6)


class _OtherDeviceProvider(SeparateMemoryProvider):
    """The same kind of provider on device 1, claiming Tanh only."""

    name = "OtherDeviceExecutionProvider"

    def __init__(self, options=None):
        super().__init__({"device_id": "1", **(options or {})})

    def get_capability(self, graph, opset_imports):
        return [NodeGroup.of([n], opset_imports) for n in graph if n.op_type == "Tanh" and PROVIDER_KEY not in n.meta]


def test_between_two_devices_values_go_through_the_host(registered):
    providers = [_OtherDeviceProvider(), SeparateMemoryProvider(), CPUExecutionProvider()]
    graph = _partitioned(_model(
        [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Relu", ["t"], ["y"])], [_vi("x")], [_vi("y")],
    ), providers)
    assert [(n.op_type, n.meta[PROVIDER_KEY]) for n in graph] == [
        ("OtherDeviceExecutionProvider", "OtherDeviceExecutionProvider"),
        (TO_HOST, "OtherDeviceExecutionProvider"), (TO_DEVICE, SEP), (SEP, SEP),
    ]
    assert FUSED_GROUP in graph[0].meta


def test_an_outer_value_read_only_on_the_device_passes_through_a_cpu_if(registered):
    then_branch = helper.make_graph([helper.make_node("Relu", ["x"], ["b"])], "then", [], [_vi("b")])
    else_branch = helper.make_graph([helper.make_node("Neg", ["x"], ["c"])], "else", [], [_vi("c")])
    model = _model([helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)],
                   [_vi("cond", [], TensorProto.BOOL), _vi("x")], [_vi("y")]).SerializeToString()
    session = ort.InferenceSession(model, providers=[SEP, "CPUExecutionProvider"])
    assert session._plan.graph.inputs[1].meta[DEVICE] == SEP_DEVICE
    x = np.array([[1.0, -2.0], [3.0, -4.0]], np.float32)
    registered.reset_counts()
    (y,) = session.run(None, {"cond": np.array(False), "x": x})
    np.testing.assert_array_equal(y, -x)
    assert (registered.to_device_count, registered.to_host_count) == (1, 1)
