"""The OpenVINO execution provider: options, what it claims, regions split around unsupported nodes, dynamic shapes, threads."""

from __future__ import annotations

import json
import threading
import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt as ort
from onyxrt.errors import InvalidArgument
from onyxrt.framework.partitioner import FUSED_GROUP, PROVIDER_KEY
from onyxrt.providers.openvino.options import parse_options

pytest.importorskip("openvino")

OV = "OpenVINOExecutionProvider"
CPU = "CPUExecutionProvider"
FP32 = {"precision": "FP32"}


def _model(nodes, inputs, outputs, initializers=(), value_info=(), opsets=(("", 17),)) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers), value_info=list(value_info))
    opset_imports = [helper.make_opsetid(domain, version) for domain, version in opsets]
    return helper.make_model(graph, opset_imports=opset_imports).SerializeToString()


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _sessions(model: bytes, options=FP32):
    openvino = ort.InferenceSession(model, providers=[(OV, dict(options)), CPU])
    cpu = ort.InferenceSession(model, providers=[CPU])
    return openvino, cpu


def _placement(session) -> list[tuple[str, str]]:
    """(op or fused provider, provider) of each node of the session's partitioned graph."""
    return [(node.op_type, node.meta[PROVIDER_KEY]) for node in session._plan.graph]


def _openvino_provider(session):
    (provider,) = [p for p in session._providers if p.name == OV]
    return provider


def _assert_close(got, want, rtol=1e-4):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * max(float(np.max(np.abs(w), initial=0.0)), 1e-6))


def _mlp_model() -> bytes:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["o"]),
        helper.make_node("Softmax", ["o"], ["probs"], axis=-1),
        helper.make_node("ArgMax", ["probs"], ["label"], axis=-1, keepdims=0),
        helper.make_node("Greater", ["probs", "half"], ["confident"]),
    ]
    initializers = [
        numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.float32(0.5), "half"),
    ]
    return _model(nodes, [_vi("x", ["batch", "seq", 8])],
                  [_vi("probs", ["batch", "seq", 4]), _vi("label", ["batch", "seq"], TensorProto.INT64),
                   _vi("confident", ["batch", "seq", 4], TensorProto.BOOL)], initializers)


# ---------------------------------------------------------------------------------------------- availability


def test_listed_ahead_of_the_cpu_where_openvino_imports():
    assert ort.get_available_providers()[:1] == [OV] and CPU in ort.get_available_providers()


def test_no_providers_given_means_the_cpu_provider_only():
    model = _mlp_model()
    assert ort.InferenceSession(model).get_providers() == [CPU]


def test_where_openvino_is_missing_asking_for_it_warns_and_runs_on_the_cpu():
    from onyxrt.providers import OpenVINOExecutionProvider, register_execution_provider, unregister_execution_provider

    unregister_execution_provider(OV)  # as a build without openvino
    try:
        assert OV not in ort.get_available_providers()
        with pytest.warns(UserWarning, match="Specified provider 'OpenVINOExecutionProvider' is not in available"):
            session = ort.InferenceSession(_mlp_model(), providers=[OV, CPU])
        assert session.get_providers() == [CPU]
    finally:
        register_execution_provider(OpenVINOExecutionProvider)


# ---------------------------------------------------------------------------------------------- options


def test_unknown_option_names_the_option_and_lists_the_valid_ones():
    with pytest.raises(InvalidArgument, match=r"'num_threads'.*Valid options: device_type, precision, num_of_threads"):
        ort.InferenceSession(_mlp_model(), providers=[(OV, {"num_threads": "2"}), CPU])


@pytest.mark.parametrize("option,value,expected", [
    ("device_type", "TPU", "Invalid device_type 'TPU'"),
    ("device_type", "HETERO:TPU,CPU", "Invalid device_type 'HETERO:TPU,CPU'"),
    ("precision", "INT3", "Invalid precision 'INT3'.*FP32, FP16, ACCURACY"),
    ("num_of_threads", "-1", "Invalid num_of_threads '-1'"),
    ("num_streams", "many", "Invalid num_streams 'many'"),
    ("disable_dynamic_shapes", "maybe", "Invalid disable_dynamic_shapes 'maybe'"),
    ("model_priority", "URGENT", "Invalid model_priority 'URGENT'"),
    ("load_config", "{not json", "Invalid load_config"),
    ("load_config", '{"CPU": 3}', "expected a JSON object of devices"),
])
def test_bad_option_values_are_named(option, value, expected):
    with pytest.raises(InvalidArgument, match=expected):
        parse_options({option: value})


def test_a_device_this_machine_lacks_is_an_error_naming_it():
    import openvino as ov

    if "NPU" in {d.partition(".")[0] for d in ov.Core().available_devices}:
        pytest.skip("this machine has an NPU")
    with pytest.raises(InvalidArgument, match="names NPU, not available on this machine"):
        ort.InferenceSession(_mlp_model(), providers=[(OV, {"device_type": "NPU"}), CPU])


def test_options_become_openvino_properties(tmp_path):
    import openvino as ov

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"CPU": {"PERFORMANCE_HINT": "LATENCY"}, "GPU": {"PERFORMANCE_HINT": "THROUGHPUT"}}))
    settings = parse_options({"precision": "FP32", "num_of_threads": "2", "num_streams": "1", "cache_dir": str(tmp_path),
                              "model_priority": "high", "load_config": str(config)})
    properties = settings.compile_properties()
    assert properties["INFERENCE_PRECISION_HINT"] == ov.Type.f32 and properties["INFERENCE_NUM_THREADS"] == 2
    assert properties["NUM_STREAMS"] == 1 and properties["CACHE_DIR"] == str(tmp_path)
    assert settings.device_properties() == {"CPU": {"PERFORMANCE_HINT": "LATENCY"}}
    accuracy = parse_options({"precision": "ACCURACY"}).compile_properties()
    assert list(accuracy) == ["EXECUTION_MODE_HINT"]
    # no precision: OpenVINO's default for the device (bf16 on CPUs that have it), so no hint at all
    assert parse_options({}).compile_properties() == {}
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        legacy = parse_options({"device_type": "CPU_FP16"})
    assert (legacy.device_type, legacy.precision) == ("CPU", "FP16")


def test_session_threads_are_the_default_thread_count():
    from onyxrt.session.providers import create_providers

    options = ort.SessionOptions()
    options.intra_op_num_threads = 3
    (provider, _) = create_providers([(OV, {}), (CPU, {})], options)
    assert provider.settings.num_of_threads == 3
    (explicit, _) = create_providers([(OV, {"num_of_threads": "2"}), (CPU, {})], options)
    assert explicit.settings.num_of_threads == 2
    # OpenVINO caps the count at the machine's cores: one thread is below it everywhere
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(_mlp_model(), options, providers=[OV, CPU])
    (region,) = _openvino_provider(session).regions
    assert region._compiled.get_property("INFERENCE_NUM_THREADS") == 1


# ---------------------------------------------------------------------------------------------- whole graphs


def test_a_supported_graph_is_one_region_with_the_cpu_results_and_dtypes():
    openvino, cpu = _sessions(_mlp_model())
    assert _placement(openvino) == [(OV, OV)]
    x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32)
    _assert_close(openvino.run(None, {"x": x}), cpu.run(None, {"x": x}))


def test_dynamic_dims_stay_dynamic_one_compile_for_every_length():
    openvino, cpu = _sessions(_mlp_model())
    rng = np.random.default_rng(2)
    for batch, seq in [(1, 5), (2, 17), (1, 1), (3, 64)]:
        x = rng.standard_normal((batch, seq, 8)).astype(np.float32)
        _assert_close(openvino.run(None, {"x": x}), cpu.run(None, {"x": x}))
    assert [region.compilations for region in _openvino_provider(openvino).regions] == [1]


def test_disable_dynamic_shapes_compiles_once_per_input_shape():
    openvino, cpu = _sessions(_mlp_model(), {"precision": "FP32", "disable_dynamic_shapes": "true"})
    rng = np.random.default_rng(3)
    for seq in (5, 7, 5):
        x = rng.standard_normal((1, seq, 8)).astype(np.float32)
        _assert_close(openvino.run(None, {"x": x}), cpu.run(None, {"x": x}))
    assert [region.compilations for region in _openvino_provider(openvino).regions] == [2]


def test_outputs_of_one_run_survive_the_next():
    openvino, _ = _sessions(_mlp_model())
    first_x = np.ones((1, 2, 8), np.float32)
    first = openvino.run(["probs"], {"x": first_x})[0]
    kept = first.copy()
    openvino.run(["probs"], {"x": -first_x})
    np.testing.assert_array_equal(first, kept)


def test_eight_threads_on_one_session_get_their_own_results():
    openvino, cpu = _sessions(_mlp_model())
    rng = np.random.default_rng(4)
    feeds = [rng.standard_normal((1 + i % 3, 4 + i, 8)).astype(np.float32) for i in range(8)]
    expected = [cpu.run(None, {"x": x}) for x in feeds]
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for _ in range(20):
                _assert_close(openvino.run(None, {"x": feeds[index]}), expected[index])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]


# ---------------------------------------------------------------------------------------------- split graphs


def test_an_op_openvino_lacks_splits_the_graph_around_it():
    """com.microsoft BiasSoftmax: the CPU provider has it, OpenVINO's frontend does not."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["scores"]),
        helper.make_node("BiasSoftmax", ["scores", "bias"], ["probs"], domain="com.microsoft", axis=-1),
        helper.make_node("Mul", ["probs", "x"], ["weighted"]),
        helper.make_node("Tanh", ["weighted"], ["y"]),
    ]
    rng = np.random.default_rng(5)
    model = _model(
        nodes, [_vi("x", ["n", 6])], [_vi("y", ["n", 6])],
        [numpy_helper.from_array(rng.standard_normal((6, 6)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal((1, 6)).astype(np.float32), "bias")],
        value_info=[_vi("probs", ["n", 6])], opsets=(("", 17), ("com.microsoft", 1)),
    )
    openvino, cpu = _sessions(model)
    assert _placement(openvino) == [(OV, OV), ("BiasSoftmax", CPU), (OV, OV)]
    before, after = (node for node in openvino._plan.graph if FUSED_GROUP in node.meta)
    assert [n.op_type for n in before.meta[FUSED_GROUP].nodes] == ["MatMul"]
    assert [n.op_type for n in after.meta[FUSED_GROUP].nodes] == ["Mul", "Tanh"]
    x = rng.standard_normal((3, 6)).astype(np.float32)
    _assert_close(openvino.run(None, {"x": x}), cpu.run(None, {"x": x}))


def test_string_nodes_stay_on_the_cpu():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Cast", ["r"], ["text"], to=TensorProto.STRING),
        helper.make_node("Cast", ["text"], ["back"], to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["back"], ["s"]),
        helper.make_node("Add", ["s", "x"], ["y"]),
    ]
    model = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3]), _vi("text", [2, 3], TensorProto.STRING)])
    openvino, cpu = _sessions(model)
    assert _placement(openvino) == [(OV, OV), ("Cast", CPU), ("Cast", CPU), (OV, OV)]
    x = np.array([[0.25, 4.0, -1.0], [9.0, 2.5, 0.0]], np.float32)
    got, want = openvino.run(None, {"x": x}), cpu.run(None, {"x": x})
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    assert got[1].tolist() == want[1].tolist()


def test_regions_of_shape_bookkeeping_alone_stay_on_the_cpu():
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Cast", ["x"], ["text"], to=TensorProto.STRING),
        helper.make_node("Reshape", ["text", "shape"], ["y"]),
    ]
    model = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3], TensorProto.STRING)])
    openvino, _ = _sessions(model)
    assert {provider for _, provider in _placement(openvino)} == {CPU}


def test_regions_inside_a_branch_run_on_openvino_the_if_on_the_cpu():
    def branch(name, op):
        nodes = [helper.make_node("MatMul", ["x", "w"], [f"{name}_m"]), helper.make_node(op, [f"{name}_m"], [f"{name}_y"])]
        return helper.make_graph(nodes, name, [], [_vi(f"{name}_y", ["n", 3])])

    rng = np.random.default_rng(6)
    model = _model(
        [helper.make_node("If", ["flag"], ["y"], then_branch=branch("then", "Tanh"), else_branch=branch("else", "Sigmoid"))],
        [_vi("x", ["n", 3]), _vi("flag", [], TensorProto.BOOL)], [_vi("y", ["n", 3])],
        [numpy_helper.from_array(rng.standard_normal((3, 3)).astype(np.float32), "w")],
    )
    openvino, cpu = _sessions(model)
    assert _placement(openvino) == [("If", CPU)]
    assert len(_openvino_provider(openvino).regions) == 2
    x = rng.standard_normal((4, 3)).astype(np.float32)
    for flag in (True, False):
        feeds = {"x": x, "flag": np.array(flag)}
        _assert_close(openvino.run(None, feeds), cpu.run(None, feeds))


def test_a_graph_openvino_cannot_read_runs_on_the_cpu(monkeypatch, capfd):
    from onyxrt.providers.openvino import capability

    def unreadable(*args):
        raise RuntimeError("frontend failure")

    monkeypatch.setattr(capability, "_convert_partially", unreadable)
    openvino, cpu = _sessions(_mlp_model())
    assert {provider for _, provider in _placement(openvino)} == {CPU}
    assert "OpenVINOExecutionProvider takes no nodes of graph" in capfd.readouterr().err
    x = np.ones((1, 2, 8), np.float32)
    _assert_close(openvino.run(None, {"x": x}), cpu.run(None, {"x": x}))


def _lstm_model(layout: int) -> bytes:
    rng = np.random.default_rng(7)
    hidden, features = 5, 3
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in [("W", (1, 4 * hidden, features)), ("R", (1, 4 * hidden, hidden))]]
    x_shape = [2, 4, features] if layout else [4, 2, features]
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["", "h"], hidden_size=hidden, layout=layout),
             helper.make_node("Tanh", ["h"], ["y"])]
    return _model(nodes, [_vi("x", x_shape)], [_vi("y", None)], weights)


def test_an_optional_output_left_out_stays_left_out():
    """LSTM with its first output omitted (""): OpenVINO gets the node as written and runs it."""
    openvino, cpu = _sessions(_lstm_model(layout=0))
    assert _placement(openvino) == [(OV, OV)]
    x = np.random.default_rng(8).standard_normal((4, 2, 3)).astype(np.float32)
    _assert_close(openvino.run(None, {"x": x}), cpu.run(None, {"x": x}))


def test_nodes_openvino_computes_wrongly_stay_on_the_cpu():
    """Batch-first recurrences: OpenVINO 2026.4 returns them in the other layout."""
    openvino, cpu = _sessions(_lstm_model(layout=1))
    assert ("LSTM", CPU) in _placement(openvino)
    x = np.random.default_rng(9).standard_normal((2, 4, 3)).astype(np.float32)
    _assert_close(openvino.run(None, {"x": x}), cpu.run(None, {"x": x}))


def test_a_region_openvino_cannot_compile_runs_on_cpu_kernels(monkeypatch, capfd):
    from onyxrt.errors import EPFail
    from onyxrt.providers.openvino import provider

    def uncompilable(*args):
        raise EPFail("OpenVINOExecutionProvider could not compile region R for CPU: shape inference failed")

    monkeypatch.setattr(provider, "CompiledRegion", uncompilable)
    openvino, cpu = _sessions(_mlp_model())
    assert _placement(openvino) == [(OV, OV)] and _openvino_provider(openvino).regions == []
    assert "its 7 nodes run on CPUExecutionProvider" in capfd.readouterr().err
    x = np.random.default_rng(10).standard_normal((2, 3, 8)).astype(np.float32)
    _assert_close(openvino.run(None, {"x": x}), cpu.run(None, {"x": x}))


def test_overridable_initializers_are_fed_not_folded():
    nodes = [helper.make_node("Mul", ["x", "scale"], ["m"]), helper.make_node("Exp", ["m"], ["y"])]
    graph = helper.make_graph(nodes, "g", [_vi("x", [2]), _vi("scale", [2])], [_vi("y", [2])],
                              initializer=[numpy_helper.from_array(np.full(2, 2.0, np.float32), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    openvino, cpu = _sessions(model)
    x = np.array([0.5, 1.0], np.float32)
    for feeds in ({"x": x}, {"x": x, "scale": np.array([3.0, -1.0], np.float32)}):
        _assert_close(openvino.run(None, feeds), cpu.run(None, feeds))
