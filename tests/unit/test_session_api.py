"""The onnxruntime-compatible session API: construction, introspection, run, options, errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt as ort
from onyxrt.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph, NoSuchFile


def make_model(nodes, inputs, outputs, initializers=(), opset=17, **kwargs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kwargs)


def linear_model() -> onnx.ModelProto:
    """y = relu(x @ W + b) with a symbolic batch dim."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "W")
    b = numpy_helper.from_array(np.array([-1.0, 0.0, 1.0], dtype=np.float32), "b")
    return make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"], name="matmul"),
            helper.make_node("Add", ["xw", "b"], ["pre"], name="add"),
            helper.make_node("Relu", ["pre"], ["y"], name="relu"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [w, b],
        producer_name="unit-test",
        doc_string="a linear layer",
    )


def linear_reference(x: np.ndarray) -> np.ndarray:
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    return np.maximum(x @ w + np.array([-1.0, 0.0, 1.0], dtype=np.float32), 0)


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "linear.onnx"
    onnx.save(linear_model(), path)
    return str(path)


X = np.arange(8, dtype=np.float32).reshape(2, 4)


def test_loads_from_path_bytes_and_proto(model_path):
    for source in (model_path, open(model_path, "rb").read(), linear_model()):
        session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
        (y,) = session.run(None, {"x": X})
        np.testing.assert_allclose(y, linear_reference(X), rtol=1e-6)


def test_introspection_matches_onnxruntime_conventions(model_path):
    session = ort.InferenceSession(model_path)
    (arg,) = session.get_inputs()
    assert (arg.name, arg.shape, arg.type) == ("x", ["batch", 4], "tensor(float)")
    (out,) = session.get_outputs()
    assert (out.name, out.shape, out.type) == ("y", ["batch", 3], "tensor(float)")
    assert session.get_overridable_initializers() == []
    meta = session.get_modelmeta()
    assert meta.producer_name == "unit-test" and meta.description == "a linear layer" and meta.graph_name == "g"
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert session.get_provider_options() == {"CPUExecutionProvider": {}}
    assert isinstance(session.get_session_options(), ort.SessionOptions)
    assert ort.get_available_providers()[-1] == "CPUExecutionProvider"  # OpenVINO's ahead where it is installed
    assert ort.get_device() == "CPU" and isinstance(ort.__version__, str)


def test_run_output_selection(model_path):
    session = ort.InferenceSession(model_path)
    for names in (None, [], ["y"]):
        (y,) = session.run(names, {"x": X})
        assert y.dtype == np.float32 and y.shape == (2, 3)


def test_python_lists_are_converted_to_the_input_type(model_path):
    session = ort.InferenceSession(model_path)
    (y,) = session.run(None, {"x": X.tolist()})
    np.testing.assert_allclose(y, linear_reference(X), rtol=1e-6)


@pytest.mark.parametrize(
    "feed,error,message",
    [
        ({"x": X, "z": X}, InvalidArgument, "Invalid input name: z"),
        ({"x": X.astype(np.float64)}, InvalidArgument, "Actual: (tensor(double)) , expected: (tensor(float))"),
        ({"x": X.reshape(2, 2, 2)}, InvalidArgument, "Invalid rank for input: x Got: 3 Expected: 2"),
        ({"x": np.zeros((2, 5), np.float32)}, InvalidArgument, "index: 1 Got: 5 Expected: 4"),
        ({}, ValueError, "Required inputs (['x']) are missing"),
        ({"z": X}, ValueError, "Required inputs (['x']) are missing"),  # (missing inputs are reported first)
    ],
)
def test_bad_feeds_are_rejected_with_onnxruntime_messages(model_path, feed, error, message):
    session = ort.InferenceSession(model_path)
    with pytest.raises(error) as info:
        session.run(None, feed)
    assert message in str(info.value)
    (y,) = session.run(None, {"x": X})  # the session is unharmed
    np.testing.assert_allclose(y, linear_reference(X), rtol=1e-6)


def test_unknown_output_name(model_path):
    with pytest.raises(InvalidArgument, match="Invalid output name: nope"):
        ort.InferenceSession(model_path).run(["nope"], {"x": X})


def test_missing_and_corrupt_model_files(tmp_path):
    with pytest.raises(NoSuchFile, match="File doesn't exist"):
        ort.InferenceSession(str(tmp_path / "missing.onnx"))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not a protobuf\xff\xff")
    with pytest.raises(ort.InvalidProtobuf):
        ort.InferenceSession(str(corrupt))
    with pytest.raises(ort.InvalidProtobuf):
        ort.InferenceSession(b"\xff\xff\xff garbage")


def test_unknown_ops_are_all_listed_at_creation_as_unregistered():
    model = make_model(
        [
            helper.make_node("NoSuchOp", ["x"], ["t"], name="first", domain="my.domain"),
            helper.make_node("AlsoMissing", ["t"], ["y"], name="second", domain="my.domain"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model.opset_import.append(helper.make_opsetid("my.domain", 1))
    with pytest.raises(Fail, match="not registered functions or ops") as info:  # onnxruntime: FAIL
        ort.InferenceSession(model.SerializeToString())
    text = str(info.value)
    assert "node 'first' (op my.domain::NoSuchOp)" in text and "node 'second' (op my.domain::AlsoMissing)" in text


def test_unknown_attribute_is_refused_not_ignored():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="r", bogus=3)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    with pytest.raises(InvalidGraph, match="unrecognized attribute .bogus."):
        ort.InferenceSession(model.SerializeToString())


def test_kernel_failure_names_the_node():
    model = make_model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="bad_reshape")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6]), helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    session = ort.InferenceSession(model.SerializeToString())
    with pytest.raises(ort.Fail, match="Reshape node. Name:'bad_reshape'"):
        session.run(None, {"x": np.zeros(6, np.float32), "shape": np.array([4, 4], np.int64)})


def test_invalid_graph_is_reported():
    model = make_model(
        [helper.make_node("Relu", ["undefined_value"], ["y"], name="r")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    with pytest.raises(InvalidArgument, match="undefined_value"):  # onnxruntime's class for the main graph
        ort.InferenceSession(model.SerializeToString())


def test_providers_argument_forms(model_path):
    session = ort.InferenceSession(model_path, providers=[("CPUExecutionProvider", {"arena_extend_strategy": 1})])
    assert session.get_provider_options() == {"CPUExecutionProvider": {"arena_extend_strategy": "1"}}
    with pytest.warns(UserWarning, match="Specified provider 'CUDAExecutionProvider' is not in available provider names"):
        session = ort.InferenceSession(model_path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="same length"):
        ort.InferenceSession(model_path, providers=["CPUExecutionProvider"], provider_options=[{}, {}])


def test_outputs_never_alias_weights_or_inputs():
    w = numpy_helper.from_array(np.ones(3, np.float32), "W")
    model = make_model(
        [helper.make_node("Identity", ["W"], ["w_out"]), helper.make_node("Identity", ["x"], ["x_out"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("w_out", TensorProto.FLOAT, [3]), helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [3])],
        [w],
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.zeros(3, np.float32)
    w_out, x_out = session.run(None, {"x": x})
    w_out += 5
    x_out += 7
    assert x.tolist() == [0, 0, 0]
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], np.ones(3, np.float32))


def test_overridable_initializers():
    w = numpy_helper.from_array(np.full(2, 2.0, np.float32), "w")
    model = make_model(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]), helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [w],
    )
    session = ort.InferenceSession(model.SerializeToString())
    assert [a.name for a in session.get_inputs()] == ["x"]
    assert [a.name for a in session.get_overridable_initializers()] == ["w"]
    x = np.ones(2, np.float32)
    assert session.run(None, {"x": x})[0].tolist() == [2, 2]
    assert session.run(None, {"x": x, "w": np.full(2, 5.0, np.float32)})[0].tolist() == [5, 5]


def test_free_dimension_override(model_path):
    options = ort.SessionOptions()
    options.add_free_dimension_override_by_name("batch", 2)
    session = ort.InferenceSession(model_path, options)
    assert session.get_inputs()[0].shape == [2, 4]
    with pytest.raises(InvalidArgument, match="index: 0 Got: 3 Expected: 2"):
        session.run(None, {"x": np.zeros((3, 4), np.float32)})


def test_session_options_fields_and_config_entries():
    options = ort.SessionOptions()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 2
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.load_model_format", "ONNX")
    assert options.get_session_config_entry("session.load_model_format") == "ONNX"
    with pytest.raises(RuntimeError, match="does not have configuration with key: missing.key"):  # onnxruntime's class
        options.get_session_config_entry("missing.key")


def test_optimized_model_is_saved_and_runs(model_path, tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model_path, options).run(None, {"x": X})
    again = ort.InferenceSession(options.optimized_model_filepath)
    np.testing.assert_allclose(again.run(None, {"x": X})[0], linear_reference(X), rtol=1e-6)


def test_constant_subgraphs_are_folded_at_creation():
    shape = numpy_helper.from_array(np.array([2, 2], np.int64), "shape")
    model = make_model(
        [
            helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.arange(4, dtype=np.float32))),
            helper.make_node("Reshape", ["c", "shape"], ["c2"]),
            helper.make_node("Add", ["x", "c2"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        [shape],
    )
    session = ort.InferenceSession(model.SerializeToString())
    assert [n.op_type for n in session._plan.nodes] == ["Add"]
    assert session.run(None, {"x": np.zeros((2, 2), np.float32)})[0].tolist() == [[0, 1], [2, 3]]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    unoptimized = ort.InferenceSession(model.SerializeToString(), options)
    assert [n.op_type for n in unoptimized._plan.nodes] == ["Constant", "Reshape", "Add"]


def test_profiling_writes_a_chrome_trace(model_path, tmp_path):
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "prof")
    session = ort.InferenceSession(model_path, options)
    session.run(None, {"x": X})
    path = session.end_profiling()
    events = json.loads(open(path).read())
    # MatMul + Add + Relu run as one FusedGemm (MatMulAddFusion, then GemmActivationFusion)
    assert {e["args"].get("op_name") for e in events if e["cat"] == "Node"} == {"FusedGemm"}


def test_ort_value_and_io_binding(model_path):
    session = ort.InferenceSession(model_path)
    value = ort.OrtValue.ortvalue_from_numpy(X)
    assert value.shape() == [2, 4] and value.data_type() == "tensor(float)" and value.device_name() == "cpu"
    (result,) = session.run_with_ort_values(["y"], {"x": value})
    np.testing.assert_allclose(result.numpy(), linear_reference(X), rtol=1e-6)

    binding = session.io_binding()
    binding.bind_cpu_input("x", X)
    binding.bind_output("y")
    session.run_with_iobinding(binding)
    np.testing.assert_allclose(binding.copy_outputs_to_cpu()[0], linear_reference(X), rtol=1e-6)

    target = ort.OrtValue.ortvalue_from_shape_and_type([2, 3], np.float32)
    binding = session.io_binding()
    binding.bind_input("x", "cpu", 0, np.float32, [2, 4], value.data_ptr())
    binding.bind_ortvalue_output("y", target)
    session.run_with_iobinding(binding)
    np.testing.assert_allclose(target.numpy(), linear_reference(X), rtol=1e-6)


def test_errors_importable_like_onnxruntime():
    from onyxrt.capi.onnxruntime_pybind11_state import RuntimeException

    assert issubclass(RuntimeException, ort.OnyxRuntimeError)
    assert issubclass(Fail, Exception)
    assert str(InvalidArgument("bad")) == "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : bad"


def test_terminate_flag(model_path):
    options = ort.RunOptions()
    options.terminate = True
    with pytest.raises(Fail):
        ort.InferenceSession(model_path).run(None, {"x": X}, options)


def test_run_async_calls_back_with_outputs_or_error(model_path):
    import threading

    session = ort.InferenceSession(model_path)
    done = threading.Event()
    results = {}

    def callback(outputs, user_data, error):
        results[user_data] = (outputs, error)
        if len(results) == 2:
            done.set()

    session.run_async(None, {"x": X}, callback, "ok")
    session.run_async(None, {"x": X.astype(np.float64)}, callback, "bad")
    assert done.wait(10)
    outputs, error = results["ok"]
    assert error == "" and np.allclose(outputs[0], linear_reference(X))
    outputs, error = results["bad"]
    assert outputs is None and "INVALID_ARGUMENT" in error


def test_version_and_build_info():
    assert ort.get_version_string() == ort.__version__
    assert "onyxrt" in ort.get_build_info()
