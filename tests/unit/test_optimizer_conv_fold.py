"""BatchNormalization, Mul and Add folded into a Conv's weights: graphs before/after, numerics against onnxruntime."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer_checks import op_histogram, optimized_ir
import onyxrt

ort = pytest.importorskip("onnxruntime")

CHANNELS_IN, CHANNELS_OUT = 4, 6
X_SHAPE = (2, CHANNELS_IN, 5, 5)
RNG = np.random.default_rng(0)


def _value(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, initializers, inputs=None, outputs=("z",), opset=17, elem=TensorProto.FLOAT) -> onnx.ModelProto:
    inputs = inputs if inputs is not None else [helper.make_tensor_value_info("x", elem, list(X_SHAPE))]
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info(name, elem, None) for name in outputs], initializers
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _conv_weights(dtype=np.float32, bias=True, group=1, spatial=2):
    """Initializers W (and B) of a Conv from CHANNELS_IN to CHANNELS_OUT channels."""
    shape = (CHANNELS_OUT, CHANNELS_IN // group) + (3,) * spatial
    initializers = [_init("W", RNG.standard_normal(shape).astype(dtype))]
    if bias:
        initializers.append(_init("B", RNG.standard_normal(CHANNELS_OUT).astype(dtype)))
    return initializers


def _conv(bias=True, group=1, output="y"):
    return helper.make_node("Conv", ["x", "W", "B"] if bias else ["x", "W"], [output], pads=[1] * 4, group=group)


def _bn_initializers(dtype=np.float32, channels=CHANNELS_OUT):
    return [
        _init("gamma", RNG.uniform(0.5, 2.0, channels).astype(dtype)),
        _init("beta", RNG.standard_normal(channels).astype(dtype)),
        _init("mean", RNG.standard_normal(channels).astype(dtype)),
        _init("var", RNG.uniform(0.1, 3.0, channels).astype(dtype)),
    ]


def _bn(source="y", output="z", **attributes):
    return helper.make_node(
        "BatchNormalization", [source, "gamma", "beta", "mean", "var"], [output], epsilon=1e-3, **attributes
    )


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    feeds = {}
    for value in model.graph.input:
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = RNG.standard_normal(shape).astype(dtype)
    return feeds


def assert_matches_onnxruntime(model: onnx.ModelProto, applied: str | None, reference=ort) -> None:
    """onyxrt at the default level (``applied`` among its optimizations) gives ``reference``'s unoptimized outputs.

    ``reference``: onnxruntime, or onyxrt itself where onnxruntime has no kernel (float64 Conv).
    """
    feeds = _feeds(model)
    options = reference.SessionOptions()
    options.graph_optimization_level = reference.GraphOptimizationLevel.ORT_DISABLE_ALL
    model_bytes = model.SerializeToString()
    want = reference.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"]).run(None, feeds)
    session = onyxrt.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    if applied is not None:
        assert applied in session.applied_optimizations
    got = session.run(None, feeds)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(w))))


# ---------------------------------------------------------------- Conv + BatchNormalization


@pytest.mark.parametrize("dtype, elem", [(np.float32, TensorProto.FLOAT), (np.float64, TensorProto.DOUBLE)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("group", [1, 2])
def test_batch_norm_folds_into_conv(dtype, elem, bias, group):
    model = _model([_conv(bias, group), _bn()], _conv_weights(dtype, bias, group) + _bn_initializers(dtype), elem=elem)
    optimized, report = optimized_ir(model)
    assert op_histogram(optimized.graph) == {"Conv": 1}
    assert report.counts["conv_bn_fusion"] == 1
    (conv,) = optimized.graph
    assert conv.outputs[0].name == "z" and optimized.graph.outputs[0] is conv.outputs[0]
    assert conv.inputs[1].const_value.dtype == ir.DataType.from_numpy(np.dtype(dtype))
    assert sorted(optimized.graph.initializers) == sorted(v.name for v in conv.inputs[1:])  # old ones dropped
    assert_matches_onnxruntime(model, "conv_bn_fusion", reference=ort if dtype == np.float32 else onyxrt)


@pytest.mark.parametrize("opset", [7, 9, 14, 15])
def test_batch_norm_folds_at_every_inference_opset(opset):
    attributes = {"spatial": 1} if opset < 9 else {}
    model = _model([_conv(), _bn(**attributes)], _conv_weights() + _bn_initializers(), opset=opset)
    assert op_histogram(optimized_ir(model)[0].graph) == {"Conv": 1}
    assert_matches_onnxruntime(model, "conv_bn_fusion")


def test_one_dimensional_conv_folds():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, CHANNELS_IN, 7])
    conv = helper.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1])
    model = _model([conv, _bn()], _conv_weights(spatial=1) + _bn_initializers(), inputs=[x])
    assert op_histogram(optimized_ir(model)[0].graph) == {"Conv": 1}
    assert_matches_onnxruntime(model, "conv_bn_fusion")


def test_shared_weight_keeps_its_values_for_the_other_conv():
    nodes = [_conv(), _bn(), helper.make_node("Conv", ["x", "W", "B"], ["other"], pads=[1] * 4)]
    model = _model(nodes, _conv_weights() + _bn_initializers(), outputs=("z", "other"))
    optimized, _ = optimized_ir(model)
    fused, other = optimized.graph
    assert [v.name for v in other.inputs[1:]] == ["W", "B"]
    assert fused.inputs[1].name != "W" and fused.inputs[2].name != "B"
    assert_matches_onnxruntime(model, "conv_bn_fusion")


def test_fusion_inside_a_subgraph():
    then_graph = helper.make_graph(
        [_conv(), _bn(output="t")], "then", [], [_value("t", None)]
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"])], "else", [], [_value("e", None)]
    )
    nodes = [helper.make_node("If", ["c"], ["z"], then_branch=then_graph, else_branch=else_graph)]
    inputs = [_value("x", list(X_SHAPE)), _value("c", [], TensorProto.BOOL)]
    model = _model(nodes, _conv_weights() + _bn_initializers(), inputs=inputs)
    optimized, report = optimized_ir(model)
    assert report.counts["conv_bn_fusion"] == 1
    (if_node,) = optimized.graph
    assert op_histogram(if_node.attributes["then_branch"].as_graph()) == {"Conv": 1}
    feeds = {"x": RNG.standard_normal(X_SHAPE).astype(np.float32), "c": np.array(True)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = onyxrt.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- Conv + Mul, Conv + Add


@pytest.mark.parametrize(
    "constant_shape", [(), (1,), (CHANNELS_OUT, 1, 1), (1, CHANNELS_OUT, 1, 1), (1, 1, 1)], ids=str
)
@pytest.mark.parametrize("op", ["Mul", "Add"])
@pytest.mark.parametrize("conv_first", [True, False])
def test_per_channel_mul_and_add_fold_into_conv(constant_shape, op, conv_first):
    constant = _init("s", RNG.uniform(0.5, 2.0, constant_shape).astype(np.float32))
    follower = helper.make_node(op, ["y", "s"] if conv_first else ["s", "y"], ["z"])
    model = _model([_conv(), follower], _conv_weights() + [constant])
    optimized, report = optimized_ir(model)
    assert op_histogram(optimized.graph) == {"Conv": 1}
    assert report.counts[f"conv_{op.lower()}_fusion"] == 1
    assert_matches_onnxruntime(model, f"conv_{op.lower()}_fusion")


def test_add_gives_a_conv_without_bias_one():
    shift = _init("s", RNG.standard_normal((CHANNELS_OUT, 1, 1)).astype(np.float32))
    model = _model([_conv(bias=False), helper.make_node("Add", ["y", "s"], ["z"])], _conv_weights(bias=False) + [shift])
    optimized, _ = optimized_ir(model)
    (conv,) = optimized.graph
    assert len(conv.inputs) == 3 and conv.inputs[2].const_value is not None
    assert_matches_onnxruntime(model, "conv_add_fusion")


def test_mul_keeps_a_conv_without_bias_without_one():
    model = _model([_conv(bias=False), helper.make_node("Mul", ["y", "s"], ["z"])],
                   _conv_weights(bias=False) + [_init("s", np.float32(3.0))])
    optimized, _ = optimized_ir(model)
    (conv,) = optimized.graph
    assert len(conv.inputs) == 2
    assert_matches_onnxruntime(model, "conv_mul_fusion")


def test_batch_norm_mul_add_chain_folds_into_one_conv():
    nodes = [_conv(), _bn(output="n"), helper.make_node("Mul", ["n", "s"], ["m"]),
             helper.make_node("Add", ["m", "a"], ["z"])]
    constants = [_init("s", RNG.uniform(0.5, 2, (CHANNELS_OUT, 1, 1)).astype(np.float32)), _init("a", np.float32(0.5))]
    model = _model(nodes, _conv_weights() + _bn_initializers() + constants)
    optimized, report = optimized_ir(model)
    assert op_histogram(optimized.graph) == {"Conv": 1}
    assert optimized.graph.outputs[0].name == "z"
    assert_matches_onnxruntime(model, "conv_bn_fusion")


# ---------------------------------------------------------------- preconditions that block the fusion


def _unfused(model: onnx.ModelProto, run_reference: bool = True) -> None:
    optimized, report = optimized_ir(model)
    assert not {"conv_bn_fusion", "conv_mul_fusion", "conv_add_fusion"} & set(report.counts)
    assert op_histogram(optimized.graph) == Counter(node.op_type for node in model.graph.node)
    if run_reference:
        assert_matches_onnxruntime(model, None)


def test_conv_output_read_twice_blocks():
    nodes = [_conv(), _bn(), helper.make_node("Relu", ["y"], ["r"])]
    _unfused(_model(nodes, _conv_weights() + _bn_initializers(), outputs=("z", "r")))


def test_conv_output_that_is_a_graph_output_blocks():
    _unfused(_model([_conv(), _bn()], _conv_weights() + _bn_initializers(), outputs=("z", "y")))


def test_conv_output_read_by_a_subgraph_blocks():
    then_graph = helper.make_graph(
        [helper.make_node("Neg", ["y"], ["t"])], "then", [], [_value("t", None)]
    )
    nodes = [_conv(), _bn(), helper.make_node("If", ["c"], ["r"], then_branch=then_graph, else_branch=then_graph)]
    inputs = [_value("x", list(X_SHAPE)), _value("c", [], TensorProto.BOOL)]
    model = _model(nodes, _conv_weights() + _bn_initializers(), inputs=inputs, outputs=("z", "r"))
    _unfused(model, run_reference=False)


@pytest.mark.parametrize("overridable", ["W", "B", "mean"])
def test_values_a_caller_may_feed_block(overridable):
    model = _model([_conv(), _bn()], _conv_weights() + _bn_initializers())
    initializer = next(i for i in model.graph.initializer if i.name == overridable)
    model.graph.input.append(helper.make_tensor_value_info(overridable, TensorProto.FLOAT, list(initializer.dims)))
    _unfused(model)


def test_weight_computed_at_run_time_blocks():
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(X_SHAPE)),
              helper.make_tensor_value_info("W", TensorProto.FLOAT, [CHANNELS_OUT, CHANNELS_IN, 3, 3])]
    _unfused(_model([_conv(bias=False), _bn()], _bn_initializers(), inputs=inputs))


def test_float16_conv_is_left_alone():
    model = _model([_conv(), _bn()], _conv_weights(np.float16) + _bn_initializers(np.float16), elem=TensorProto.FLOAT16)
    _unfused(model, run_reference=False)


def test_training_mode_batch_norm_blocks():
    outputs = ["z", "running_mean", "running_var"]
    bn = helper.make_node("BatchNormalization", ["y", "gamma", "beta", "mean", "var"], outputs, training_mode=1)
    _unfused(_model([_conv(), bn], _conv_weights() + _bn_initializers()), run_reference=False)


def test_batch_norm_of_opset_6_blocks():
    model = _model([_conv(), _bn(is_test=1)], _conv_weights() + _bn_initializers(), opset=6)
    _unfused(model, run_reference=False)


@pytest.mark.parametrize(
    "constant_shape",
    [(CHANNELS_OUT,), (1, 1, 1, 5), (2, CHANNELS_OUT, 1, 1), (1, 1, CHANNELS_OUT, 1, 1), (CHANNELS_OUT, 5, 5)],
    ids=str,
)
@pytest.mark.parametrize("op", ["Mul", "Add"])
def test_constants_not_per_channel_block(constant_shape, op):
    constant = _init("s", RNG.uniform(0.5, 2.0, constant_shape).astype(np.float32))
    model = _model([_conv(), helper.make_node(op, ["y", "s"], ["z"])], _conv_weights() + [constant])
    _unfused(model, run_reference=constant_shape != (CHANNELS_OUT,))  # [6] against width 5 does not broadcast


def test_conv_output_on_both_sides_blocks():
    _unfused(_model([_conv(), helper.make_node("Mul", ["y", "y"], ["z"])], _conv_weights()))


def test_mul_by_a_run_time_value_blocks():
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(X_SHAPE)),
              helper.make_tensor_value_info("s", TensorProto.FLOAT, [CHANNELS_OUT, 1, 1])]
    _unfused(_model([_conv(), helper.make_node("Mul", ["y", "s"], ["z"])], _conv_weights(), inputs=inputs))


def test_disabled_by_onnxruntime_name():
    model = _model([_conv(), _bn()], _conv_weights() + _bn_initializers())
    session = onyxrt.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"], disabled_optimizers=["ConvBNFusion"]
    )
    assert "conv_bn_fusion" not in session.applied_optimizations
