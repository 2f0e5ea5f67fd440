"""A squeeze-and-excitation gate's Mul and the pointwise convolution after it run as one ai.onyxrt ChannelScaledConv
(optimizer/channel_scale_conv_fusion.py, providers/cpu/nn/channel_scaled_conv.py), never in a saved model."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onyxrt as ort
from onyxrt.framework.thread_pool import ThreadPool
from onyxrt.providers.cpu.nn.channel_scaled_conv import channel_scaled_conv
from onyxrt.providers.cpu.nn.conv_core import pack_conv_weights

onnxruntime = pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(3)


def _se_model(batch: int, residual: bool, second_reader: bool = False, strides=(1, 1)) -> onnx.ModelProto:
    """x -> GlobalAveragePool -> Conv 1x1 + Relu -> Conv 1x1 + Sigmoid = gate; x * gate -> Conv 1x1 (+ x') (-> Relu)."""
    c, m = 12, 8
    weights = {"wr": RNG.standard_normal((4, c, 1, 1)), "br": RNG.standard_normal(4),
               "we": RNG.standard_normal((c, 4, 1, 1)), "be": RNG.standard_normal(c),
               "wp": RNG.standard_normal((m, c, 1, 1)), "bp": RNG.standard_normal(m)}
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
        helper.make_node("Conv", ["pooled", "wr", "br"], ["r"]),
        helper.make_node("Relu", ["r"], ["rr"]),
        helper.make_node("Conv", ["rr", "we", "be"], ["e"]),
        helper.make_node("Sigmoid", ["e"], ["gate"]),
        helper.make_node("Mul", ["x", "gate"], ["scaled"]),
        helper.make_node("Conv", ["scaled", "wp", "bp"], ["p"], strides=list(strides)),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", c, 10, 10])]
    out = "p"
    if residual:
        inputs.append(helper.make_tensor_value_info("skip", TensorProto.FLOAT, ["batch", m, 10, 10]))
        nodes += [helper.make_node("Add", ["p", "skip"], ["sum"]), helper.make_node("Relu", ["sum"], ["y"])]
        out = "y"
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)]
    if second_reader:
        outputs.append(helper.make_tensor_value_info("scaled", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "se", inputs, outputs,
                              [helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.astype(np.float32).ravel())
                               for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(batch: int, residual: bool) -> dict:
    feeds = {"x": RNG.standard_normal((batch, 12, 10, 10)).astype(np.float32)}
    if residual:
        feeds["skip"] = RNG.standard_normal((batch, 8, 10, 10)).astype(np.float32)
    return feeds


def _ops(session) -> list[str]:
    return [n.op_type for n in session._plan.nodes]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("residual", [False, True])
def test_gate_and_pointwise_convolution_run_as_one_node(batch, residual):
    model = _se_model(batch, residual).SerializeToString()
    session = ort.InferenceSession(model)
    assert "ChannelScaledConv" in _ops(session) and "Mul" not in _ops(session)
    feeds = _feeds(batch, residual)
    expected = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    for _ in range(2):  # the route is made, then reused
        np.testing.assert_allclose(session.run(None, feeds)[0], expected, rtol=1e-5, atol=1e-5)
    unfused = ort.InferenceSession(model, disabled_optimizers=["ChannelScaleConvFusion"])
    assert "ChannelScaledConv" not in _ops(unfused) and "Mul" in _ops(unfused)


def test_no_fusion_for_a_product_read_twice_a_strided_convolution_or_below_extended():
    shared = ort.InferenceSession(_se_model(2, False, second_reader=True).SerializeToString())
    assert "ChannelScaledConv" not in _ops(shared)
    strided = ort.InferenceSession(_se_model(2, False, strides=(2, 2)).SerializeToString())
    assert "ChannelScaledConv" not in _ops(strided)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    basic = ort.InferenceSession(_se_model(2, False).SerializeToString(), options)
    assert "ChannelScaledConv" not in _ops(basic)


def test_saved_optimized_model_keeps_the_mul(tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(_se_model(2, True).SerializeToString(), options)
    assert "ChannelScaledConv" in _ops(session)
    saved = onnx.load(options.optimized_model_filepath)
    assert any(n.op_type == "Mul" for n in saved.graph.node)
    assert not any(n.op_type == "ChannelScaledConv" for n in saved.graph.node)


@pytest.mark.parametrize("gate_batch", [1, 4])
@pytest.mark.parametrize("split", [False, True])
def test_kernel_equals_mul_then_convolution(gate_batch, split):
    """On BLAS's threads (numpy's batched products) and over a pool that splits products (onyxrt's GEMM where the CPU
    runs it: each image by its own scaled filter, the epilogue in the registers)."""
    x = RNG.standard_normal((4, 6, 5, 7)).astype(np.float32)
    s = RNG.standard_normal((gate_batch, 6, 1, 1)).astype(np.float32)
    w = RNG.standard_normal((5, 6, 1, 1)).astype(np.float32)
    b = RNG.standard_normal(5).astype(np.float32)
    z = RNG.standard_normal((4, 5, 5, 7)).astype(np.float32)
    packed = pack_conv_weights(w, b, {})
    pool = ThreadPool(2)
    with (pool.splitting_gemms() if split else pool).activate():
        y = channel_scaled_conv(x, s, w, b, z, activation="Clip", activation_params=[0.0, 1.5], _packed=packed)
    pool.shutdown()
    expected = np.clip(np.einsum("mc,nchw->nmhw", w[:, :, 0, 0], x * s) + b[None, :, None, None] + z, 0, 1.5)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    # a gate that is not one value per image and channel: the Mul's broadcast, then the convolution
    wide = RNG.standard_normal((4, 6, 5, 7)).astype(np.float32)
    y = channel_scaled_conv(x, wide, w, b, _packed=packed)
    np.testing.assert_allclose(y, np.einsum("mc,nchw->nmhw", w[:, :, 0, 0], x * wide) + b[None, :, None, None],
                               rtol=1e-5, atol=1e-5)
