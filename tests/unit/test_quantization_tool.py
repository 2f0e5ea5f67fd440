"""onyxrt.quantization: onnxruntime.quantization's names and semantics; what it writes runs in both runtimes.

Each quantizer runs on small synthetic models: the output model gives the same values in onnxruntime and in
onyxrt (1e-5), stays within quantization tolerance of the float model, and, where onnxruntime's tool has the
same options, gives the values onnxruntime's own quantized model gives.

Without VNNI, onnxruntime's u8s8 integer kernels saturate pair sums (tests/unit/ort_int8.py): the two runtimes
are then compared on the same quantization with reduce_range (7-bit weights, which cannot saturate), and
onyxrt's full-range result is held to the float model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from ort_int8 import onnxruntime_u8s8_is_exact

import onyxrt
from onyxrt.cli import main
from onyxrt.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    MatMulNBitsQuantizer,
    QuantFormat,
    QuantizationError,
    QuantType,
    quantize_dynamic,
    quantize_static,
    quantize_weight_only,
)
from onyxrt.quantization.calibration import ArrayDataReader, calibrate_ranges
from onyxrt.quantization.weight_only import dequantize_blocks, quantize_blocks

ort = pytest.importorskip("onnxruntime")
ort_quantization = pytest.importorskip("onnxruntime.quantization")
logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's tool logs a pre-processing hint per call

RUNTIME_TOLERANCE = 1e-5


def _tensor(array: np.ndarray, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _save(model: onnx.ModelProto, path) -> str:
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return str(path)


def _encoder_block(path, opset: int = 17) -> str:
    """Gather (embedding) -> MatMul -> erf-GELU -> MatMul -> Add -> Gemm: a transformer feed-forward in small."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embed"),
        helper.make_node("MatMul", ["embedded", "w_in"], ["hidden"], name="ffn_in"),
        helper.make_node("Div", ["hidden", "sqrt2"], ["scaled"], name="gelu_div"),
        helper.make_node("Erf", ["scaled"], ["erf"], name="gelu_erf"),
        helper.make_node("Add", ["erf", "one"], ["erf1"], name="gelu_add"),
        helper.make_node("Mul", ["hidden", "erf1"], ["gelu2"], name="gelu_mul"),
        helper.make_node("Mul", ["gelu2", "half"], ["gelu"], name="gelu_half"),
        helper.make_node("MatMul", ["gelu", "w_out"], ["ffn"], name="ffn_out"),
        helper.make_node("Add", ["ffn", "embedded"], ["residual"], name="residual"),
        helper.make_node("Gemm", ["residual", "w_head", "b_head"], ["y"], name="head", transB=1),
    ]
    initializers = [
        _tensor(rng.standard_normal((100, 32)).astype(np.float32), "table"),
        _tensor(rng.standard_normal((32, 64)).astype(np.float32) * 0.2, "w_in"),
        _tensor(rng.standard_normal((64, 32)).astype(np.float32) * 0.2, "w_out"),
        _tensor(rng.standard_normal((8, 32)).astype(np.float32) * 0.2, "w_head"),
        _tensor(rng.standard_normal(8).astype(np.float32), "b_head"),
        _tensor(np.float32(np.sqrt(2)), "sqrt2"), _tensor(np.float32(1), "one"), _tensor(np.float32(0.5), "half"),
    ]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], initializers)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)


def _conv_net(path) -> str:
    """Conv -> Relu -> Add (second input) -> GlobalAveragePool -> Flatten -> Gemm, and a MaxPool branch."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "skip"], ["s"], name="add"),
        helper.make_node("MaxPool", ["s"], ["m"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["m"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="fc"),
    ]
    initializers = [
        _tensor(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w"),
        _tensor(rng.standard_normal(8).astype(np.float32) * 0.1, "b"),
        _tensor(rng.standard_normal((8, 10)).astype(np.float32) * 0.3, "wg"),
        _tensor(rng.standard_normal(10).astype(np.float32) * 0.1, "bg"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8]),
              helper.make_tensor_value_info("skip", TensorProto.FLOAT, ["n", 8, 8, 8])]
    graph = helper.make_graph(nodes, "convnet", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], initializers)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _matmul(path, k: int = 70, n: int = 24) -> str:
    weight = np.random.default_rng(2).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", n])], [_tensor(weight, "w")])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _conv_samples(count: int = 4) -> list[dict[str, np.ndarray]]:
    samples = []
    for seed in range(count):
        rng = np.random.default_rng(100 + seed)
        samples.append({"x": rng.standard_normal((1, 3, 8, 8), dtype=np.float32),
                        "skip": rng.standard_normal((1, 8, 8, 8), dtype=np.float32)})
    return samples


def _both(path, feeds) -> tuple[np.ndarray, np.ndarray]:
    """The first output from onnxruntime and from onyxrt."""
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    ours = onyxrt.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    return reference, ours


def _model_both_runtimes_run_exactly(path: Path, quantize: Callable[[Path, bool], object]) -> Path:
    """``path`` (made by ``quantize(path, False)``) where onnxruntime's u8s8 products are exact; else, as its
    u8s8 kernel saturates without VNNI, ``quantize(<path>_reduced, True)``: 7-bit weights, which cannot."""
    if onnxruntime_u8s8_is_exact():
        return path
    reduced = path.with_name(f"{path.stem}_reduced{path.suffix}")
    quantize(reduced, True)
    return reduced


def _ours(path, feeds) -> np.ndarray:
    return onyxrt.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _run_profiled(path, feeds, **session_arguments) -> tuple[np.ndarray, set[str]]:
    """onyxrt's first output and the op types its run executed."""
    options = onyxrt.SessionOptions()
    options.enable_profiling = True
    session = onyxrt.InferenceSession(str(path), options, **session_arguments)
    output = session.run(None, feeds)[0]
    events = json.loads(Path(session.end_profiling()).read_text())
    return output, {event["args"]["op_name"] for event in events if event.get("cat") == "Node"}


def _op_types(path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


# -- enums and the reader interface ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["QuantType", "QuantFormat", "CalibrationMethod"])
def test_enums_have_onnxruntimes_names_and_values(name):
    import onyxrt.quantization as ours
    theirs = {member.name: member.value for member in getattr(ort_quantization, name)}
    assert {member.name: member.value for member in getattr(ours, name)} == theirs


def test_quant_type_from_string_and_str_like_onnxruntime():
    assert QuantType.from_string("QUInt8") is QuantType.QUInt8
    assert str(QuantType.QInt8) == str(ort_quantization.QuantType.QInt8)
    assert QuantFormat.from_string("QDQ") is QuantFormat.QDQ
    with pytest.raises(ValueError, match="QInt3"):
        QuantType.from_string("QInt3")


def test_calibration_data_reader_accepts_any_object_with_get_next():
    class Reader:
        def get_next(self):
            return None

    assert isinstance(Reader(), CalibrationDataReader)
    reader = ArrayDataReader([{"x": np.zeros(1)}, {"x": np.ones(1)}])
    assert [sample["x"][0] for sample in reader] == [0.0, 1.0]
    reader.rewind()
    assert reader.get_next()["x"][0] == 0.0


# -- quantize_dynamic ----------------------------------------------------------------------------------


def test_dynamic_default_output_runs_in_both_runtimes_close_to_float(tmp_path):
    source = _encoder_block(tmp_path / "block.onnx")
    report = quantize_dynamic(source, tmp_path / "q.onnx")
    feeds = {"ids": np.array([3, 17, 42, 99, 0], dtype=np.int64)}
    compared = _model_both_runtimes_run_exactly(tmp_path / "q.onnx", lambda path, reduce_range: quantize_dynamic(
        source, path, reduce_range=reduce_range))
    reference, _ = _both(compared, feeds)
    np.testing.assert_allclose(_ours(compared, feeds), reference, rtol=0, atol=RUNTIME_TOLERANCE)
    ours = _ours(tmp_path / "q.onnx", feeds)
    float_out = ort.InferenceSession(source).run(None, feeds)[0]
    assert np.abs(ours - float_out).max() < 0.05 * np.abs(float_out).max()
    ops = _op_types(tmp_path / "q.onnx")
    assert ops.count("MatMulInteger") == 3 and "DynamicQuantizeLinear" in ops
    assert report.quantized == {
        "embed": "Gather int8 table, per-row scales",
        "ffn_in": "MatMul -> MatMulInteger",
        "ffn_out": "MatMul -> MatMulInteger (activation per row, after GELU)",
        "head": "Gemm -> MatMulInteger",
    }


def _gelu_output_rows(x: np.ndarray, weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """What the per-row ops compute, in float32 numpy: q = int8(clip(rint(x / s), -127, 127)) per row."""
    row_scale = np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.float32(1e-30)) / np.float32(127)
    q = np.clip(np.rint(x / row_scale), -127, 127).astype(np.int32)
    return (q @ weight.astype(np.int32)).astype(np.float32) * scale * row_scale


@pytest.mark.parametrize("opset", [17, 18])  # ReduceMax's axes: an attribute, then an input
def test_dynamic_after_gelu_quantizes_per_row_and_onyxrt_fuses_it_bit_for_bit(tmp_path, opset):
    source = _encoder_block(tmp_path / "block.onnx", opset)
    quantize_dynamic(source, tmp_path / "q.onnx")
    model = onnx.load(tmp_path / "q.onnx")
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weight, scale = stored["w_out_quantized"], stored["w_out_scale"]
    product = next(node for node in model.graph.node if node.op_type == "MatMulInteger" and node.input[1] == "w_out_quantized")
    assert weight.dtype == np.int8 and scale.shape == (32,) and len(product.input) == 2  # symmetric, per column

    feeds = {"ids": np.array([3, 17, 42, 99, 0, 5], dtype=np.int64)}
    fused, fused_ops = _run_profiled(tmp_path / "q.onnx", feeds)
    unfused, unfused_ops = _run_profiled(tmp_path / "q.onnx", feeds, disabled_optimizers=["RowQuantizeMatMulFusion"])
    assert "RowQuantizeMatMul" in fused_ops and "RowQuantizeMatMul" not in unfused_ops and "Round" in unfused_ops
    np.testing.assert_array_equal(fused, unfused)
    # (where onnxruntime's int8 products saturate without VNNI, both runtimes compare on 7-bit weights)
    compared = _model_both_runtimes_run_exactly(tmp_path / "q.onnx", lambda path, reduce_range: quantize_dynamic(
        source, path, reduce_range=reduce_range))
    np.testing.assert_allclose(_ours(compared, feeds), ort.InferenceSession(str(compared)).run(None, feeds)[0],
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("compiled", [True, False])
def test_row_quantize_matmul_kernel_computes_the_per_row_ops(monkeypatch, compiled):
    from onyxrt.providers.cpu.math import row_quantize_matmul as kernel

    if not compiled:
        monkeypatch.setattr(kernel._QUANTIZE_ROWS, "compiled_for", lambda *args: None)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 64)).astype(np.float32) * 3
    x[0, 2] = 0  # an all-zero row: the floor scale, zeros out
    x[1, 1, 7] = 50  # an outlier sets its own row's scale only
    weight = rng.integers(-127, 128, (64, 24)).astype(np.int8)
    scale = rng.uniform(0.001, 0.01, 24).astype(np.float32)
    row_scale = np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.float32(1e-30)) / np.float32(127)
    q = np.clip(np.rint(x / row_scale), -127, 127).astype(np.int32)
    expected = (q @ weight.astype(np.int32)).astype(np.float32) * scale * row_scale
    np.testing.assert_array_equal(kernel.row_quantize_matmul(x, weight, scale), expected)


def test_dynamic_after_gelu_in_float_keeps_an_int8_weight_behind_dequantize_linear(tmp_path):
    source = _encoder_block(tmp_path / "block.onnx")
    quantize_dynamic(source, tmp_path / "q.onnx", extra_options={"GeluOutputActivations": "float"})
    model = onnx.load(tmp_path / "q.onnx")
    ffn_out = next(node for node in model.graph.node if node.name == "ffn_out")
    assert ffn_out.op_type == "MatMul" and ffn_out.input[0] == "gelu"
    weight = next(node for node in model.graph.node if node.output[0] == ffn_out.input[1])
    assert weight.op_type == "DequantizeLinear"
    stored = {t.name: t.data_type for t in model.graph.initializer}
    assert stored[weight.input[0]] == TensorProto.INT8
    assert "w_out" not in stored and "table" not in stored


@pytest.mark.parametrize("model", ["matmul", "encoder_block"])
def test_dynamic_with_onnxruntimes_defaults_gives_onnxruntimes_values(tmp_path, model):
    if model == "matmul":
        source = _matmul(tmp_path / "mm.onnx")
        feeds = {"x": np.random.default_rng(5).standard_normal((3, 70), dtype=np.float32)}
    else:  # Gather's uint8 rows feed MatMulInteger directly, as onnxruntime chains them
        source = _encoder_block(tmp_path / "block.onnx")
        feeds = {"ids": np.array([3, 17, 42, 99, 0], dtype=np.int64)}
    quantize_dynamic(source, tmp_path / "ours.onnx", per_channel=False, extra_options={"GeluOutputActivations": "per_tensor"})
    ort_quantization.quantize_dynamic(source, tmp_path / "theirs.onnx")
    ours_in_ort, ours_in_onyxrt = _both(tmp_path / "ours.onnx", feeds)
    theirs = ort.InferenceSession(str(tmp_path / "theirs.onnx")).run(None, feeds)[0]
    np.testing.assert_allclose(ours_in_ort, theirs, rtol=0, atol=RUNTIME_TOLERANCE)
    theirs_compared = _model_both_runtimes_run_exactly(tmp_path / "theirs.onnx", lambda path, reduce_range: (
        ort_quantization.quantize_dynamic(source, path, reduce_range=reduce_range)))
    if theirs_compared != tmp_path / "theirs.onnx":
        float_out = ort.InferenceSession(source).run(None, feeds)[0]
        assert np.abs(ours_in_onyxrt - float_out).max() < 0.05 * np.abs(float_out).max()
        quantize_dynamic(source, tmp_path / "ours_reduced.onnx", per_channel=False, reduce_range=True,
                         extra_options={"FloatActivationsAfterGelu": False})
        ours_in_onyxrt = _ours(tmp_path / "ours_reduced.onnx", feeds)
        theirs = ort.InferenceSession(str(theirs_compared)).run(None, feeds)[0]
    np.testing.assert_allclose(ours_in_onyxrt, theirs, rtol=0, atol=RUNTIME_TOLERANCE)
    assert sorted(_op_types(tmp_path / "ours.onnx")) == sorted(_op_types(tmp_path / "theirs.onnx"))


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_conv_becomes_conv_integer_in_both_runtimes(tmp_path, per_channel):
    source = _conv_net(tmp_path / "net.onnx")
    report = quantize_dynamic(source, tmp_path / "q.onnx", per_channel=per_channel, op_types_to_quantize=["Conv"])
    assert report.quantized == {"conv": "Conv -> ConvInteger"}
    feeds = _conv_samples(1)[0]
    reference, ours = _both(tmp_path / "q.onnx", feeds)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=RUNTIME_TOLERANCE)
    float_out = ort.InferenceSession(source).run(None, feeds)[0]
    assert np.abs(ours - float_out).max() < 0.05 * np.abs(float_out).max()


def _attention(path, attention_bias: bool = False) -> str:
    """com.microsoft Attention (packed QKV weight), with a 2-D mask, optionally with an attention_bias input."""
    rng = np.random.default_rng(3)
    hidden, heads = 16, 2
    inputs = ["x", "qkv_weight", "qkv_bias", "mask"] + (["", "", "bias_in"] if attention_bias else [])
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, hidden]),
                    helper.make_tensor_value_info("mask", TensorProto.INT32, [2, 5])]
    if attention_bias:
        graph_inputs.append(helper.make_tensor_value_info("bias_in", TensorProto.FLOAT, [1, heads, 5, 5]))
    graph = helper.make_graph(
        [helper.make_node("Attention", inputs, ["y"], name="attention", domain="com.microsoft", num_heads=heads)], "attention",
        graph_inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, hidden])],
        [_tensor(rng.standard_normal((hidden, 3 * hidden)).astype(np.float32) * 0.3, "qkv_weight"),
         _tensor(rng.standard_normal(3 * hidden).astype(np.float32) * 0.1, "qkv_bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, path)
    return str(path)


def test_dynamic_attention_becomes_qattention_with_onnxruntimes_values(tmp_path):
    source = _attention(tmp_path / "attention.onnx")
    report = quantize_dynamic(source, tmp_path / "ours.onnx")
    assert report.quantized == {"attention": "Attention -> QAttention"}
    ort_quantization.quantize_dynamic(source, tmp_path / "theirs.onnx", per_channel=True)
    mask = np.ones((2, 5), np.int32)
    mask[1, 3:] = 0
    feeds = {"x": np.random.default_rng(4).standard_normal((2, 5, 16), dtype=np.float32), "mask": mask}
    ours_in_ort, ours_in_onyxrt = _both(tmp_path / "ours.onnx", feeds)
    theirs = ort.InferenceSession(str(tmp_path / "theirs.onnx")).run(None, feeds)[0]
    np.testing.assert_allclose(ours_in_ort, theirs, rtol=0, atol=RUNTIME_TOLERANCE)
    float_out = ort.InferenceSession(source).run(None, feeds)[0]
    assert np.abs(ours_in_onyxrt - float_out).max() < 0.05 * np.abs(float_out).max()
    compared = _model_both_runtimes_run_exactly(tmp_path / "ours.onnx", lambda path, reduce_range: quantize_dynamic(
        source, path, reduce_range=reduce_range))
    ours_in_ort, ours_in_onyxrt = _both(compared, feeds)
    np.testing.assert_allclose(ours_in_onyxrt, ours_in_ort, rtol=0, atol=RUNTIME_TOLERANCE)
    assert np.abs(ours_in_ort - float_out).max() < 0.05 * np.abs(float_out).max()


def test_dynamic_attention_with_attention_bias_stays_float(tmp_path):
    """QAttention has no attention_bias input: quantizing would drop it (onnxruntime's tool does)."""
    report = quantize_dynamic(_attention(tmp_path / "attention.onnx", attention_bias=True), tmp_path / "q.onnx")
    assert report.quantized == {} and "attention_bias" in report.skipped["attention"]
    assert _op_types(tmp_path / "q.onnx") == ["Attention"]


def _lstm(path, directions: int) -> str:
    rng = np.random.default_rng(11)
    hidden, features = 6, 5
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R", "B"], ["y", "y_h"], name="lstm", hidden_size=hidden,
                          direction="bidirectional" if directions == 2 else "forward")], "lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [7, 2, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7, directions, 2, hidden]),
         helper.make_tensor_value_info("y_h", TensorProto.FLOAT, [directions, 2, hidden])],
        [_tensor(rng.standard_normal((directions, 4 * hidden, features)).astype(np.float32) * 0.4, "W"),
         _tensor(rng.standard_normal((directions, 4 * hidden, hidden)).astype(np.float32) * 0.4, "R"),
         _tensor(rng.standard_normal((directions, 8 * hidden)).astype(np.float32) * 0.1, "B")])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)


@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_lstm_becomes_dynamic_quantize_lstm_with_onnxruntimes_values(tmp_path, directions, per_channel):
    source = _lstm(tmp_path / "lstm.onnx", directions)
    report = quantize_dynamic(source, tmp_path / "ours.onnx", per_channel=per_channel)
    assert report.quantized == {"lstm": "LSTM -> DynamicQuantizeLSTM"}
    ort_quantization.quantize_dynamic(source, tmp_path / "theirs.onnx", per_channel=per_channel)
    feeds = {"x": np.random.default_rng(12).standard_normal((7, 2, 5), dtype=np.float32)}
    ours_in_ort, ours_in_onyxrt = _both(tmp_path / "ours.onnx", feeds)
    theirs = ort.InferenceSession(str(tmp_path / "theirs.onnx")).run(None, feeds)[0]
    np.testing.assert_allclose(ours_in_ort, theirs, rtol=0, atol=RUNTIME_TOLERANCE)
    float_out = ort.InferenceSession(source).run(None, feeds)[0]
    assert np.abs(ours_in_onyxrt - float_out).max() < 0.05
    compared = _model_both_runtimes_run_exactly(tmp_path / "ours.onnx", lambda path, reduce_range: quantize_dynamic(
        source, path, per_channel=per_channel, reduce_range=reduce_range))
    ours_in_ort, ours_in_onyxrt = _both(compared, feeds)
    np.testing.assert_allclose(ours_in_onyxrt, ours_in_ort, rtol=0, atol=RUNTIME_TOLERANCE)
    assert np.abs(ours_in_ort - float_out).max() < 0.05


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_lstm_reduce_range_writes_onnxruntimes_7_bit_weights(tmp_path, per_channel):
    source = _lstm(tmp_path / "lstm.onnx", 2)
    quantize_dynamic(source, tmp_path / "ours.onnx", per_channel=per_channel, reduce_range=True)
    ort_quantization.quantize_dynamic(source, tmp_path / "theirs.onnx", per_channel=per_channel, reduce_range=True)
    ours, theirs = ({t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / name).graph.initializer}
                    for name in ("ours.onnx", "theirs.onnx"))
    for name in ("W_quantized", "R_quantized", "W_scale", "R_scale"):
        np.testing.assert_array_equal(ours[name], theirs[name])
    assert max(np.abs(ours[name]).max() for name in ("W_quantized", "R_quantized")) <= 64


def test_dynamic_nodes_to_exclude_and_nodes_to_quantize(tmp_path):
    source = _encoder_block(tmp_path / "block.onnx")
    assert set(quantize_dynamic(source, tmp_path / "a.onnx", nodes_to_exclude=["ffn_in", "embed"]).quantized) == {"ffn_out", "head"}
    assert set(quantize_dynamic(source, tmp_path / "b.onnx", nodes_to_quantize=["head"]).quantized) == {"head"}


def test_dynamic_unknown_op_type_is_ignored_with_a_warning_like_onnxruntime(tmp_path):
    source = _matmul(tmp_path / "mm.onnx")
    with pytest.warns(UserWarning, match="Bogus"):
        report = quantize_dynamic(source, tmp_path / "q.onnx", op_types_to_quantize=["Bogus"])
    assert report.quantized == {}
    ort_quantization.quantize_dynamic(source, tmp_path / "theirs.onnx", op_types_to_quantize=["Bogus"])  # no error there either
    assert _op_types(tmp_path / "q.onnx") == ["MatMul"]


def test_dynamic_accepts_a_model_proto(tmp_path):
    model = onnx.load(_matmul(tmp_path / "mm.onnx"))
    quantize_dynamic(model, tmp_path / "q.onnx")
    assert "MatMulInteger" in _op_types(tmp_path / "q.onnx")
    assert [node.op_type for node in model.graph.node] == ["MatMul"]  # the caller's proto is not modified


def test_missing_model_file_is_a_file_not_found_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.onnx"):
        quantize_dynamic(tmp_path / "nowhere.onnx", tmp_path / "q.onnx")


def test_a_file_that_is_not_a_model_is_a_quantization_error(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07not a model at all\xff")
    with pytest.raises(QuantizationError, match="junk.onnx"):
        quantize_dynamic(tmp_path / "junk.onnx", tmp_path / "q.onnx")


@pytest.mark.parametrize("weight_type", [QuantType.QInt4, QuantType.QInt16, QuantType.QFLOAT8E4M3FN])
def test_dynamic_weight_type_other_than_8_bit_is_a_value_error(tmp_path, weight_type):
    with pytest.raises(ValueError, match="weight_type"):
        quantize_dynamic(_matmul(tmp_path / "mm.onnx"), tmp_path / "q.onnx", weight_type=weight_type)


def test_dynamic_unsupported_extra_options_are_value_errors(tmp_path):
    source = _matmul(tmp_path / "mm.onnx")
    with pytest.raises(ValueError, match="MatMulConstBOnly"):
        quantize_dynamic(source, tmp_path / "q.onnx", extra_options={"MatMulConstBOnly": False})
    with pytest.raises(ValueError, match="EnableSubgraph"):
        quantize_dynamic(source, tmp_path / "q.onnx", extra_options={"EnableSubgraph": True})
    with pytest.warns(UserWarning, match="NoSuchOption"):
        quantize_dynamic(source, tmp_path / "q.onnx", extra_options={"NoSuchOption": 1})


def test_dynamic_uint8_weights_and_reduce_range_run_in_both_runtimes(tmp_path):
    source = _matmul(tmp_path / "mm.onnx")
    quantize_dynamic(source, tmp_path / "q.onnx", weight_type=QuantType.QUInt8, reduce_range=True)
    feeds = {"x": np.random.default_rng(6).standard_normal((2, 70), dtype=np.float32)}
    reference, ours = _both(tmp_path / "q.onnx", feeds)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=RUNTIME_TOLERANCE)
    zero_point = next(t for t in onnx.load(tmp_path / "q.onnx").graph.initializer if t.name == "w_zero_point")
    assert zero_point.data_type == TensorProto.UINT8


# -- quantize_static -------------------------------------------------------------------------------------


@pytest.mark.parametrize("quant_format", [QuantFormat.QDQ, QuantFormat.QOperator])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("activation_type", [QuantType.QInt8, QuantType.QUInt8])
def test_static_gives_onnxruntimes_values_in_both_runtimes(tmp_path, quant_format, per_channel, activation_type):
    source = _conv_net(tmp_path / "net.onnx")
    samples = _conv_samples()
    report = quantize_static(source, tmp_path / "ours.onnx", ArrayDataReader(samples), quant_format=quant_format,
                             per_channel=per_channel, activation_type=activation_type)
    ort_quantization.quantize_static(source, tmp_path / "theirs.onnx", ArrayDataReader(samples),
                                     quant_format=ort_quantization.QuantFormat[quant_format.name], per_channel=per_channel,
                                     activation_type=ort_quantization.QuantType[activation_type.name])
    feeds = _conv_samples(5)[4]
    ours_in_ort, ours_in_onyxrt = _both(tmp_path / "ours.onnx", feeds)
    theirs = ort.InferenceSession(str(tmp_path / "theirs.onnx")).run(None, feeds)[0]
    np.testing.assert_allclose(ours_in_ort, theirs, rtol=0, atol=RUNTIME_TOLERANCE)
    float_out = ort.InferenceSession(source).run(None, feeds)[0]
    assert np.abs(ours_in_onyxrt - float_out).max() < 0.05 * np.abs(float_out).max()
    compared = _model_both_runtimes_run_exactly(tmp_path / "ours.onnx", lambda path, reduce_range: quantize_static(
        source, path, ArrayDataReader(samples), quant_format=quant_format, per_channel=per_channel,
        activation_type=activation_type, reduce_range=reduce_range))
    ours_in_ort, ours_in_onyxrt = _both(compared, feeds)
    np.testing.assert_allclose(ours_in_onyxrt, ours_in_ort, rtol=0, atol=RUNTIME_TOLERANCE)
    assert np.abs(ours_in_ort - float_out).max() < 0.05 * np.abs(float_out).max()
    assert set(report.quantized) == {"conv", "relu", "add", "pool", "gap", "flatten", "fc"}


def test_static_16_bit_qdq_moves_to_opset_21_with_onnxruntimes_values(tmp_path):
    source = _conv_net(tmp_path / "net.onnx")
    options = dict(activation_type=QuantType.QInt16, weight_type=QuantType.QInt16)
    quantize_static(source, tmp_path / "ours.onnx", ArrayDataReader(_conv_samples()), **options)
    ort_quantization.quantize_static(source, tmp_path / "theirs.onnx", ArrayDataReader(_conv_samples()),
                                     activation_type=ort_quantization.QuantType.QInt16, weight_type=ort_quantization.QuantType.QInt16)
    assert [o.version for o in onnx.load(tmp_path / "ours.onnx").opset_import if o.domain == ""] == [21]
    feeds = _conv_samples(5)[4]
    ours_in_ort, ours_in_onyxrt = _both(tmp_path / "ours.onnx", feeds)
    theirs = ort.InferenceSession(str(tmp_path / "theirs.onnx")).run(None, feeds)[0]
    np.testing.assert_allclose(ours_in_onyxrt, ours_in_ort, rtol=0, atol=RUNTIME_TOLERANCE)
    np.testing.assert_allclose(ours_in_ort, theirs, rtol=0, atol=RUNTIME_TOLERANCE)
    with pytest.raises(ValueError, match="8-bit"):
        quantize_static(source, tmp_path / "q.onnx", ArrayDataReader(_conv_samples()), quant_format=QuantFormat.QOperator, **options)


def test_static_qoperator_writes_qlinear_operators(tmp_path):
    quantize_static(_conv_net(tmp_path / "net.onnx"), tmp_path / "q.onnx", ArrayDataReader(_conv_samples()),
                    quant_format=QuantFormat.QOperator)
    ops = _op_types(tmp_path / "q.onnx")
    assert {"QLinearConv", "QLinearAdd", "QLinearGlobalAveragePool", "QGemm", "MaxPool"} <= set(ops)
    assert "Relu" not in ops and ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 1


def test_static_qdq_stores_int8_weights_and_int32_biases(tmp_path):
    quantize_static(_conv_net(tmp_path / "net.onnx"), tmp_path / "q.onnx", ArrayDataReader(_conv_samples()), per_channel=True)
    stored = {t.name: t for t in onnx.load(tmp_path / "q.onnx").graph.initializer}
    assert stored["w_quantized"].data_type == TensorProto.INT8 and list(stored["w_scale"].dims) == [8]
    assert stored["b_quantized"].data_type == TensorProto.INT32
    assert not {"w", "b", "wg", "bg"} & set(stored)


@pytest.mark.parametrize("method", [CalibrationMethod.Entropy, CalibrationMethod.Percentile])
def test_histogram_calibration_narrows_minmax_ranges_and_stays_close_to_float(tmp_path, method):
    source = _conv_net(tmp_path / "net.onnx")
    model = onnx.load(source)
    names = ["x", "r", "s", "p"]
    samples = _conv_samples(8)
    widest = calibrate_ranges(model, names, ArrayDataReader(samples), CalibrationMethod.MinMax)
    narrowed = calibrate_ranges(model, names, ArrayDataReader(samples), method)
    for name in names:  # Percentile is symmetric by default (as in onnxruntime): compare magnitudes
        bound = max(abs(widest[name][0]), abs(widest[name][1])) + 1e-6
        assert -bound <= narrowed[name][0] <= narrowed[name][1] <= bound, name
        assert max(abs(narrowed[name][0]), abs(narrowed[name][1])) <= bound, name
    assert narrowed["x"][1] - narrowed["x"][0] > 0.5 * (widest["x"][1] - widest["x"][0])
    quantize_static(source, tmp_path / "q.onnx", ArrayDataReader(samples), calibrate_method=method)
    reference, ours = _both(tmp_path / "q.onnx", samples[0])
    np.testing.assert_allclose(ours, reference, rtol=0, atol=RUNTIME_TOLERANCE)
    float_out = ort.InferenceSession(source).run(None, samples[0])[0]
    assert np.abs(ours - float_out).max() < 0.1 * np.abs(float_out).max()


def test_minmax_calibration_sees_every_sample():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    samples = [{"x": np.array([-1, 2], np.float32)}, {"x": np.array([-3, 0.5], np.float32)}]
    assert calibrate_ranges(model, ["x", "y"], ArrayDataReader(samples)) == {"x": (-3.0, 2.0), "y": (0.0, 2.0)}
    symmetric = calibrate_ranges(model, ["x"], ArrayDataReader(samples), options={"CalibTensorRangeSymmetric": True})
    assert symmetric == {"x": (-3.0, 3.0)}


def test_static_without_a_reader_is_onnxruntimes_value_error(tmp_path):
    source = _conv_net(tmp_path / "net.onnx")
    with pytest.raises(ValueError):
        ort_quantization.quantize_static(source, tmp_path / "theirs.onnx", None)
    with pytest.raises(ValueError, match="calibration_data_reader"):
        quantize_static(source, tmp_path / "q.onnx", None)


def test_static_reader_with_no_data_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="no data"):
        quantize_static(_conv_net(tmp_path / "net.onnx"), tmp_path / "q.onnx", ArrayDataReader([]))


def test_static_distribution_method_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="Distribution"):
        quantize_static(_conv_net(tmp_path / "net.onnx"), tmp_path / "q.onnx", ArrayDataReader(_conv_samples()),
                        calibrate_method=CalibrationMethod.Distribution)


def test_static_reports_calibration_progress(tmp_path):
    calls = []
    quantize_static(_conv_net(tmp_path / "net.onnx"), tmp_path / "q.onnx", ArrayDataReader(_conv_samples(3)),
                    extra_options={"CalibProgress": lambda done, total, started: calls.append((done, total))})
    assert calls == [(1, 3), (2, 3), (3, 3)]


# -- weight-only ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block_size", [16, 32, 128])
def test_weight_only_runs_in_both_runtimes_as_its_dequantized_weight(tmp_path, bits, symmetric, block_size):
    source = _matmul(tmp_path / "mm.onnx")
    report = quantize_weight_only(source, tmp_path / "q.onnx", bits=bits, block_size=block_size, symmetric=symmetric)
    assert report.quantized == {"mm": f"MatMul -> MatMulNBits int{bits}"}
    model = onnx.load(tmp_path / "q.onnx")
    (node,) = model.graph.node
    assert node.op_type == "MatMulNBits" and node.domain == "com.microsoft"
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    zero_points = stored.get("w_zero_points")
    assert (zero_points is None) == symmetric
    weight = dequantize_blocks(stored[f"w_Q{bits}"], stored["w_scales"], zero_points, bits, 70)
    x = np.random.default_rng(7).standard_normal((3, 70), dtype=np.float32)
    reference, ours = _both(tmp_path / "q.onnx", {"x": x})
    np.testing.assert_allclose(ours, reference, rtol=0, atol=5e-5)  # the runtimes sum in different orders
    np.testing.assert_allclose(reference, x @ weight, rtol=0, atol=5e-5)
    float_weight = numpy_helper.to_array(onnx.load(source).graph.initializer[0])
    step = np.abs(float_weight).max() / (2 ** (bits - 1) - 1)
    assert np.abs(weight - float_weight).max() <= step


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_matmul_nbits_quantizer_matches_onnxruntimes_class(tmp_path, bits, symmetric):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer as TheirQuantizer

    source = _matmul(tmp_path / "mm.onnx")
    ours = MatMulNBitsQuantizer(onnx.load(source), bits=bits, block_size=32, is_symmetric=symmetric)
    ours.process()
    ours.model.save_model_to_file(tmp_path / "ours.onnx")
    theirs = TheirQuantizer(onnx.load(source), bits=bits, block_size=32, is_symmetric=symmetric)
    theirs.process()
    x = np.random.default_rng(8).standard_normal((2, 70), dtype=np.float32)
    ours_out = ort.InferenceSession(str(tmp_path / "ours.onnx")).run(None, {"x": x})[0]
    theirs_out = ort.InferenceSession(theirs.model.model.SerializeToString()).run(None, {"x": x})[0]
    ours_node, theirs_node = ours.model.model.graph.node[0], theirs.model.model.graph.node[0]
    assert {a.name: a.i for a in ours_node.attribute} == {a.name: a.i for a in theirs_node.attribute}
    assert len(ours_node.input) == len(theirs_node.input)
    np.testing.assert_allclose(ours_out, theirs_out, rtol=0, atol=1e-4)


@pytest.mark.parametrize("bits, block_size", [(3, 32), (2, 32), (4, 8), (4, 48), (8, 512), (True, 32), (4, 32.0)])
def test_weight_only_bad_bits_or_block_size_is_a_value_error(tmp_path, bits, block_size):
    with pytest.raises(ValueError, match="bits|block_size"):
        quantize_weight_only(_matmul(tmp_path / "mm.onnx"), tmp_path / "q.onnx", bits=bits, block_size=block_size)


def test_quantize_blocks_pads_k_to_whole_blocks_and_packs_nibbles_low_first():
    weight = np.zeros((20, 1), np.float32)
    weight[0, 0], weight[1, 0] = 7.0, -8.0
    packed, scales, zero_points = quantize_blocks(weight, 4, 16, symmetric=True)
    assert packed.shape == (1, 2, 8) and scales.shape == (1, 2) and zero_points is None
    assert packed[0, 0, 0] == (15 & 0x0F) | (0 << 4)  # 7 -> 7 + 8 = 15 (low nibble), -8 -> 0 (high nibble)
    np.testing.assert_allclose(dequantize_blocks(packed, scales, None, 4, 20), weight)


def test_weight_only_skips_non_constant_weights(tmp_path):
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32]),
                               helper.make_tensor_value_info("w", TensorProto.FLOAT, [32, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    source = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "g.onnx")
    report = quantize_weight_only(source, tmp_path / "q.onnx")
    assert report.quantized == {} and report.skipped == {"mm": "weight is not a constant"}


# -- the command line ---------------------------------------------------------------------------------------


def test_cli_quantize_dynamic_prints_nodes_sizes_and_error(tmp_path, capsys):
    source = _encoder_block(tmp_path / "block.onnx")
    assert main(["quantize", source, str(tmp_path / "q.onnx"), "--samples", "2", "--seq", "4"]) == 0
    out = capsys.readouterr().out
    assert "dynamic: 4 nodes quantized" in out and "size:" in out and "%)" in out
    assert "output error on 2 made-up sample(s)" in out and "y: max abs error" in out
    assert (tmp_path / "q.onnx").is_file()


def test_cli_quantize_static_calibrates_on_a_folder_with_a_progress_bar(tmp_path, capsys):
    source = _conv_net(tmp_path / "net.onnx")
    folder = tmp_path / "calib"
    folder.mkdir()
    for index, sample in enumerate(_conv_samples(3)):
        np.savez(folder / f"sample{index}.npz", **sample)
    assert main(["quantize", source, str(tmp_path / "q.onnx"), "--mode", "static", "--calib", str(folder),
                 "--per-channel", "--format", "qoperator"]) == 0
    captured = capsys.readouterr()
    assert "calibrating [" in captured.err and "3/3 samples" in captured.err
    assert "static QOperator: 7 nodes quantized" in captured.out and "output error on 3 calibration sample(s)" in captured.out
    assert "QLinearConv" in _op_types(tmp_path / "q.onnx")


def test_cli_quantize_weight_only(tmp_path, capsys):
    source = _matmul(tmp_path / "mm.onnx", k=256, n=64)
    assert main(["quantize", source, str(tmp_path / "q.onnx"), "--mode", "weight-only", "--bits", "4", "--block", "32"]) == 0
    out = capsys.readouterr().out
    assert "1 MatMul -> MatMulNBits int4" in out
    assert _op_types(tmp_path / "q.onnx") == ["MatMulNBits"]


@pytest.mark.parametrize("arguments, message", [
    (["--mode", "static"], "needs --calib"),
    (["--mode", "weight-only", "--block", "12"], "block_size"),
    (["--calib", "no_such_folder"], "not a folder"),
])
def test_cli_quantize_usage_errors_exit_2(tmp_path, capsys, arguments, message):
    source = _matmul(tmp_path / "mm.onnx")
    assert main(["quantize", source, str(tmp_path / "q.onnx"), *arguments]) == 2
    assert message in capsys.readouterr().err


def test_cli_quantize_missing_model_exits_2(tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "none.onnx"), str(tmp_path / "q.onnx")]) == 2
    assert "none.onnx: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("quant_format", [QuantFormat.QDQ, QuantFormat.QOperator])
def test_static_reads_weights_behind_identity_and_gemm_with_explicit_beta(tmp_path, quant_format):
    """Exporters route shared weights through Identity; the quantized model keeps no float copy of them."""
    model = onnx.load(_conv_net(tmp_path / "net.onnx"))
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    conv.input[2] = "b_alias"
    model.graph.node.insert(0, helper.make_node("Identity", ["b"], ["b_alias"], name="bias_identity"))
    gemm = next(node for node in model.graph.node if node.op_type == "Gemm")
    gemm.attribute.extend([helper.make_attribute("beta", 1.0), helper.make_attribute("alpha", 1.0)])
    source = _save(model, tmp_path / "aliased.onnx")
    quantize_static(source, tmp_path / "q.onnx", ArrayDataReader(_conv_samples()), quant_format=quant_format, per_channel=True)
    quantized = onnx.load(tmp_path / "q.onnx")
    assert not {"b", "w", "wg", "bg"} & {t.name for t in quantized.graph.initializer}
    assert "Identity" not in [node.op_type for node in quantized.graph.node]
    feeds = _conv_samples(5)[4]
    compared = _model_both_runtimes_run_exactly(tmp_path / "q.onnx", lambda path, reduce_range: quantize_static(
        source, path, ArrayDataReader(_conv_samples()), quant_format=quant_format, per_channel=True, reduce_range=reduce_range))
    reference, ours = _both(compared, feeds)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=RUNTIME_TOLERANCE)
    ours = _ours(tmp_path / "q.onnx", feeds)
    float_out = ort.InferenceSession(source).run(None, feeds)[0]
    assert np.abs(ours - float_out).max() < 0.05 * np.abs(float_out).max()


def test_use_external_data_format_writes_weights_beside_the_model(tmp_path):
    source = _matmul(tmp_path / "mm.onnx", k=256, n=64)
    quantize_weight_only(source, tmp_path / "out" / "q.onnx", use_external_data_format=True)
    assert (tmp_path / "out" / "q.onnx.data").is_file()
    quantize_dynamic(source, tmp_path / "out" / "d.onnx", use_external_data_format=True)
    assert (tmp_path / "out" / "d.onnx.data").is_file()
    x = np.random.default_rng(9).standard_normal((2, 256), dtype=np.float32)
    dynamic = _model_both_runtimes_run_exactly(tmp_path / "out" / "d.onnx", lambda path, reduce_range: quantize_dynamic(
        source, path, use_external_data_format=True, reduce_range=reduce_range))
    if dynamic != tmp_path / "out" / "d.onnx":
        assert dynamic.with_name(dynamic.name + ".data").is_file()
        float_out = ort.InferenceSession(source).run(None, {"x": x})[0]
        ours = _ours(tmp_path / "out" / "d.onnx", {"x": x})
        assert np.abs(ours - float_out).max() < 0.05 * np.abs(float_out).max()
    for path in (tmp_path / "out" / "q.onnx", dynamic):
        reference, ours = _both(path, {"x": x})
        np.testing.assert_allclose(ours, reference, rtol=0, atol=5e-5)


def test_static_qoperator_dequantizes_values_a_subgraph_reads(tmp_path):
    """An If branch reading a value only QLinearConv produces gets it through a DequantizeLinear."""
    model = onnx.load(_conv_net(tmp_path / "net.onnx"))
    branch = lambda scale: helper.make_graph(  # noqa: E731
        [helper.make_node("Mul", ["r", scale], ["branch_out"])], "branch", [],
        [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, ["n", 8, 8, 8])],
        [_tensor(np.float32(float(scale == "two") + 1.0), scale)])
    model.graph.node.append(helper.make_node("If", ["flag"], ["z"], name="if", then_branch=branch("two"), else_branch=branch("one")))
    model.graph.input.append(helper.make_tensor_value_info("flag", TensorProto.BOOL, []))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 8, 8, 8]))
    source = _save(model, tmp_path / "if.onnx")
    samples = [dict(sample, flag=np.array(True)) for sample in _conv_samples()]
    quantize_static(source, tmp_path / "q.onnx", ArrayDataReader(samples), quant_format=QuantFormat.QOperator)
    feeds = samples[0]
    expected = ort.InferenceSession(source).run(["z"], feeds)[0]
    for session in (ort.InferenceSession(str(tmp_path / "q.onnx")), onyxrt.InferenceSession(str(tmp_path / "q.onnx"))):
        got = session.run(["z"], feeds)[0]
        assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()


@pytest.mark.parametrize("name", ["quantize_dynamic", "quantize_static", "quantize", "quant_pre_process"])
def test_functions_take_onnxruntimes_parameters_in_its_order(name):
    import inspect

    import onyxrt.quantization as ours
    theirs = list(inspect.signature(getattr(ort_quantization, name)).parameters)
    assert list(inspect.signature(getattr(ours, name)).parameters) == theirs


@pytest.mark.parametrize("name", ["StaticQuantConfig", "DynamicQuantConfig"])
def test_config_classes_take_onnxruntimes_parameters(name):
    import inspect

    import onyxrt.quantization as ours
    theirs = list(inspect.signature(getattr(ort_quantization, name).__init__).parameters)
    assert list(inspect.signature(getattr(ours, name).__init__).parameters) == theirs


def test_matmul_nbits_quantizer_takes_onnxruntimes_parameters():
    import inspect

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer as TheirQuantizer
    theirs = list(inspect.signature(TheirQuantizer.__init__).parameters)
    assert list(inspect.signature(MatMulNBitsQuantizer.__init__).parameters) == theirs


def test_quantize_with_config_objects(tmp_path):
    from onyxrt.quantization import DynamicQuantConfig, StaticQuantConfig, quantize

    source = _conv_net(tmp_path / "net.onnx")
    quantize(source, tmp_path / "static.onnx", StaticQuantConfig(ArrayDataReader(_conv_samples()), per_channel=True))
    quantize_static(source, tmp_path / "direct.onnx", ArrayDataReader(_conv_samples()), per_channel=True)
    feeds = _conv_samples(1)[0]
    from_config = ort.InferenceSession(str(tmp_path / "static.onnx")).run(None, feeds)[0]
    np.testing.assert_array_equal(from_config, ort.InferenceSession(str(tmp_path / "direct.onnx")).run(None, feeds)[0])
    report = quantize(source, tmp_path / "dynamic.onnx", DynamicQuantConfig(op_types_to_quantize=["Conv"]))
    assert report.quantized == {"conv": "Conv -> ConvInteger"}
    assert DynamicQuantConfig().per_channel is True
    with pytest.raises(TypeError, match="StaticQuantConfig or DynamicQuantConfig"):
        quantize(source, tmp_path / "x.onnx", object())


def test_quant_pre_process_optimizes_and_marks_the_model(tmp_path):
    from onnxruntime.quantization.quant_utils import model_has_pre_process_metadata

    from onyxrt.quantization import quant_pre_process

    source = _conv_net(tmp_path / "net.onnx")
    quant_pre_process(source, tmp_path / "pre.onnx")
    processed = onnx.load(tmp_path / "pre.onnx")
    assert model_has_pre_process_metadata(processed)
    assert {info.name for info in processed.graph.value_info} >= {"c", "s", "p"}  # shapes inferred
    feeds = _conv_samples(1)[0]
    expected = ort.InferenceSession(source).run(None, feeds)[0]
    reference, ours = _both(tmp_path / "pre.onnx", feeds)
    np.testing.assert_allclose(reference, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    quantize_static(tmp_path / "pre.onnx", tmp_path / "q.onnx", ArrayDataReader(_conv_samples()))
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        quant_pre_process(tmp_path / "missing.onnx", tmp_path / "x.onnx")
