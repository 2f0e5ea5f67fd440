"""LayerNorm fusion: the reduce spellings of LayerNorm become one LayerNormalization with the same outputs."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt

_D = 8
_X = np.random.default_rng(1).standard_normal((2, 3, _D)).astype(np.float32) * 3 + 1


def _ln_model(opset: int = 13, square: str = "pow", inverse: str = "div", gamma: bool = True, beta: bool = True,
              fp16: bool = False, casts: bool = True, axes=(-1,), centered_output: bool = False,
              gamma_shape=(_D,)) -> onnx.ModelProto:
    """TorchScript's LayerNorm spelling (opset < 17), with the variations exporters and tf2onnx write."""
    data = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    nodes = []
    x = "x"
    if fp16 and casts:  # torch's symbolic casts a half input to float and the result back
        nodes.append(helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT))
        x = "x32"

    def reduce(inp, out):
        if opset >= 18:
            return helper.make_node("ReduceMean", [inp, "axes"], [out], keepdims=1)
        return helper.make_node("ReduceMean", [inp], [out], axes=list(axes), keepdims=1)

    nodes += [reduce(x, "mean"), helper.make_node("Sub", [x, "mean"], ["centered"])]
    nodes.append(helper.make_node("Pow", ["centered", "two"], ["sq"]) if square == "pow"
                 else helper.make_node("Mul", ["centered", "centered"], ["sq"]))
    nodes += [reduce("sq", "var"), helper.make_node("Add", ["var", "eps"], ["var_eps"]),
              helper.make_node("Sqrt", ["var_eps"], ["std"])]
    if inverse == "div":
        nodes.append(helper.make_node("Div", ["centered", "std"], ["normalized"]))
    else:
        nodes += [helper.make_node("Reciprocal", ["std"], ["inv"]),
                  helper.make_node("Mul", ["inv", "centered"], ["normalized"])]
    last = "normalized"
    if fp16 and casts:
        nodes.append(helper.make_node("Cast", ["normalized"], ["normalized16"], to=TensorProto.FLOAT16))
        last = "normalized16"
    if gamma:
        nodes.append(helper.make_node("Mul", [last, "gamma"], ["scaled"]))
        last = "scaled"
    if beta:
        nodes.append(helper.make_node("Add", ["beta", last], ["shifted"]))
        last = "shifted"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    rng = np.random.default_rng(0)
    param_type = np.float16 if fp16 else np.float32
    inner_type = np.float16 if fp16 and not casts else np.float32
    initializers = [
        numpy_helper.from_array(np.array(2.0, inner_type), "two"),
        numpy_helper.from_array(np.array(1e-5, inner_type), "eps"),
        numpy_helper.from_array(np.array(list(axes), np.int64), "axes"),
        numpy_helper.from_array(rng.standard_normal(gamma_shape).astype(param_type), "gamma"),
        numpy_helper.from_array(rng.standard_normal(_D).astype(param_type), "beta"),
    ]
    outputs = [helper.make_tensor_value_info("y", data, None)]
    if centered_output:
        outputs.append(helper.make_tensor_value_info("centered", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", data, ["batch", "seq", _D])],
                              outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _optimized(model: onnx.ModelProto, tmp_path, x: np.ndarray = _X, tolerance: float = 1e-5) -> collections.Counter:
    """Op histogram of the model onyxrt saved at EXTENDED; its outputs, in onyxrt and in onnxruntime, match the original's."""
    options = onyxrt.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = onyxrt.InferenceSession(model.SerializeToString(), options)
    saved = onnx.load(options.optimized_model_filepath)
    reference_options = onnxruntime.SessionOptions()
    reference_options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = onnxruntime.InferenceSession(model.SerializeToString(), reference_options).run(None, {"x": x})
    from_saved = onnxruntime.InferenceSession(saved.SerializeToString(), reference_options).run(None, {"x": x})
    for ours, theirs, expected in zip(session.run(None, {"x": x}), from_saved, want):
        assert ours.dtype == expected.dtype and ours.shape == expected.shape
        np.testing.assert_allclose(ours.astype(np.float32), expected.astype(np.float32), rtol=tolerance, atol=tolerance)
        np.testing.assert_allclose(theirs.astype(np.float32), expected.astype(np.float32), rtol=tolerance, atol=tolerance)
    return collections.Counter(node.op_type for node in saved.graph.node)


@pytest.mark.parametrize("opset", [13, 14, 17, 18])
@pytest.mark.parametrize("square, inverse", [("pow", "div"), ("mul", "div"), ("pow", "reciprocal")])
def test_layer_norm_spellings_fuse_with_the_same_outputs(opset, square, inverse, tmp_path):
    assert _optimized(_ln_model(opset, square, inverse), tmp_path) == {"LayerNormalization": 1}


@pytest.mark.parametrize("gamma, beta", [(True, False), (False, True), (False, False)])
def test_layer_norm_without_gamma_or_beta_fuses(gamma, beta, tmp_path):
    assert _optimized(_ln_model(gamma=gamma, beta=beta), tmp_path) == {"LayerNormalization": 1}


@pytest.mark.parametrize("opset", [14, 18])
def test_fp16_layer_norm_with_its_float_casts_fuses_into_one_node(opset, tmp_path):
    # computed in float32 (Float16ToFloat32): a Cast from the float16 input, one to the float16 output
    ops = _optimized(_ln_model(opset, fp16=True), tmp_path, _X.astype(np.float16), tolerance=1e-2)
    assert ops == {"LayerNormalization": 1, "Cast": 2}


def test_fp16_layer_norm_computed_in_fp16_fuses(tmp_path):
    ops = _optimized(_ln_model(fp16=True, casts=False), tmp_path, _X.astype(np.float16), tolerance=1e-2)
    assert ops == {"LayerNormalization": 1, "Cast": 2}


def test_layer_norm_over_the_last_two_axes_fuses(tmp_path):
    x = np.random.default_rng(2).standard_normal((2, 4, 3, _D)).astype(np.float32)
    model = _ln_model(axes=(-2, -1), gamma_shape=(3, _D), beta=False)
    model.graph.input[0].type.CopyFrom(helper.make_tensor_type_proto(TensorProto.FLOAT, ["batch", "seq", 3, _D]))
    assert _optimized(model, tmp_path, x) == {"LayerNormalization": 1}


def test_a_gamma_with_leading_ones_is_reshaped_to_the_normalized_dims(tmp_path):
    assert _optimized(_ln_model(gamma_shape=(1, 1, _D)), tmp_path) == {"LayerNormalization": 1}


def test_a_gamma_over_more_than_the_normalized_dims_stays_a_mul(tmp_path):
    model = _ln_model(gamma_shape=(3, _D), beta=False)
    model.graph.input[0].type.CopyFrom(helper.make_tensor_type_proto(TensorProto.FLOAT, ["batch", 3, _D]))
    assert _optimized(model, tmp_path) == {"LayerNormalization": 1, "Mul": 1}


def test_reduction_over_a_leading_axis_is_left_alone(tmp_path):
    ops = _optimized(_ln_model(axes=(1,)), tmp_path)
    assert "LayerNormalization" not in ops and ops["ReduceMean"] == 2


def test_reduction_without_keepdims_is_left_alone(tmp_path):
    model = _ln_model(gamma=False, beta=False)
    first_mean = model.graph.node[0]
    first_mean.attribute[-1].i = 0  # keepdims=0: the mean needs its dim back to broadcast
    first_mean.output[0] = "mean_flat"
    model.graph.node.insert(1, helper.make_node("Unsqueeze", ["mean_flat", "axes"], ["mean"]))
    assert "LayerNormalization" not in _optimized(model, tmp_path)


def test_a_centered_value_read_outside_the_pattern_blocks_the_fusion(tmp_path):
    assert "LayerNormalization" not in _optimized(_ln_model(centered_output=True), tmp_path)


def test_a_gamma_the_caller_can_override_stays_a_mul(tmp_path):
    model = _ln_model(beta=False)
    model.graph.input.append(helper.make_tensor_value_info("gamma", TensorProto.FLOAT, [_D]))
    assert _optimized(model, tmp_path) == {"LayerNormalization": 1, "Mul": 1}


def test_an_epsilon_that_is_no_constant_blocks_the_fusion(tmp_path):
    model = _ln_model()
    model.graph.input.append(helper.make_tensor_value_info("eps", TensorProto.FLOAT, []))
    assert "LayerNormalization" not in _optimized(model, tmp_path)



def test_constants_written_as_constant_nodes_fuse_too(tmp_path):
    """TorchScript writes the exponent and epsilon as Constant nodes."""
    model = _ln_model(13)
    for name in ("two", "eps"):
        tensor = next(t for t in model.graph.initializer if t.name == name)
        model.graph.node.insert(0, helper.make_node("Constant", [], [name], value=tensor))
        model.graph.initializer.remove(tensor)
    assert _optimized(model, tmp_path) == {"LayerNormalization": 1}
