"""onyxrt.quantization's float16/bfloat16 conversion and automatic mixed precision.

convert_float_to_float16 is checked against onnxruntime's own tool
(onnxruntime.transformers.float16) on the same small models: the same nodes (as a multiset:
Casts are placed in dependency order here, appended at the end there), initializers and io
types; the converted models run in onyxrt and onnxruntime with the same outputs.
"""

from __future__ import annotations

import copy
from collections import Counter

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onyxrt import InferenceSession
from onyxrt.quantization import (
    DEFAULT_OP_BLOCK_LIST,
    auto_convert_mixed_precision,
    convert_float_to_bfloat16,
    convert_float_to_float16,
)
from onyxrt.quantization.convert_cli import relative_error
from onyxrt.quantization.float16 import convert_np_to_float16, convert_with_report
from onyxrt.quantization.mixed_precision import MixedPrecisionResult

ort = pytest.importorskip("onnxruntime")
ort_float16 = pytest.importorskip("onnxruntime.transformers.float16")

F, F16, BF16 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16
RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    onnx.checker.check_model(model)
    return model


def _tensor(name, values, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _value(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _mlp(block=None):
    """x -> MatMul(W) -> Add(B) -> Sigmoid -> Mul(S) -> y; W also read by a second MatMul."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "B"], ["a"], name="add"),
        helper.make_node("Sigmoid", ["a"], ["s"], name="sig"),
        helper.make_node("Mul", ["s", "S"], ["y"], name="mul"),
        helper.make_node("MatMul", ["x", "W"], ["z"], name="mm2"),
    ]
    rng = np.random.default_rng(7)  # the same weights on every call
    inits = [_tensor("W", rng.standard_normal((4, 4))), _tensor("B", rng.standard_normal(4)),
             _tensor("S", rng.standard_normal(4))]
    return _model(nodes, [_value("x", F, [2, 4])], [_value("y", F, [2, 4]), _value("z", F, [2, 4])], inits)


def _signature(model: onnx.ModelProto) -> Counter:
    """Every node (everywhere) as (op, inputs, outputs, attributes): what both tools must agree on."""
    def attr(a):
        if a.type == onnx.AttributeProto.GRAPH:
            return a.name, tuple(sorted(_signature_of_graph(a.g).items()))
        if a.type == onnx.AttributeProto.TENSOR:
            return a.name, a.t.data_type, numpy_helper.to_array(a.t).tobytes()
        return a.name, str(helper.get_attribute_value(a))

    def _signature_of_graph(graph):
        return Counter((n.op_type, n.name, tuple(n.input), tuple(n.output), tuple(sorted(attr(a) for a in n.attribute)))
                       for n in graph.node)
    return _signature_of_graph(model.graph)


def _initializers(model):
    return {t.name: (t.data_type, numpy_helper.to_array(t).tobytes()) for t in model.graph.initializer}


def _io_types(model):
    return [(v.name, v.type.tensor_type.elem_type) for v in (*model.graph.input, *model.graph.output)]


def _assert_same_as_onnxruntime_tool(model, **options):
    ours = convert_float_to_float16(model, **options)
    theirs = ort_float16.convert_float_to_float16(copy.deepcopy(model), **options)
    assert _signature(ours) == _signature(theirs)
    assert _initializers(ours) == _initializers(theirs)
    assert _io_types(ours) == _io_types(theirs)
    onnx.checker.check_model(ours)
    return ours, theirs


def _run(model, feeds, runtime="onyxrt"):
    """Outputs from onyxrt, onyxrt computing float16 nodes in float16 ("strict": not moved to float32, as the
    session does by default), or onnxruntime."""
    if runtime in ("onyxrt", "strict"):
        disabled = ["Float16ToFloat32"] if runtime == "strict" else []
        return InferenceSession(model.SerializeToString(), disabled_optimizers=disabled).run(None, feeds)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _is_topologically_sorted(graph: onnx.GraphProto, outer=()) -> bool:
    known = set(outer) | {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH and not _is_topologically_sorted(attribute.g, known):
                return False
        if any(name not in known for name in node.input):
            return False
        known.update(node.output)
    return True


# ---------------------------------------------------------------------------- structure vs onnxruntime


def test_plain_conversion_same_as_onnxruntime_tool_and_runs_alike():
    model = _mlp()
    ours, theirs = _assert_same_as_onnxruntime_tool(model)
    assert _io_types(ours) == [("x", F16), ("y", F16), ("z", F16)]
    x = RNG.standard_normal((2, 4)).astype(np.float16)
    for a, b in zip(_run(ours, {"x": x}), _run(theirs, {"x": x}, "onnxruntime")):
        assert a.dtype == np.float16
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=2e-3, atol=2e-3)


def test_keep_io_types_casts_after_inputs_and_before_outputs():
    ours, _ = _assert_same_as_onnxruntime_tool(_mlp(), keep_io_types=True)
    assert _io_types(ours) == [("x", F), ("y", F), ("z", F)]
    casts = {n.name: (list(n.input), list(n.output), n.attribute[0].i) for n in ours.graph.node if n.op_type == "Cast"}
    assert casts == {"graph_input_cast0": (["x"], ["graph_input_cast_0"], F16),
                     "graph_output_cast0": (["graph_output_cast_0"], ["y"], F),
                     "graph_output_cast1": (["graph_output_cast_1"], ["z"], F)}
    assert ours.graph.node[0].name == "graph_input_cast0" and _is_topologically_sorted(ours.graph)
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    expected = _run(_mlp(), {"x": x})
    for a, b in zip(_run(ours, {"x": x}), expected):
        assert a.dtype == np.float32
        assert relative_error(a, b) < 5e-3


def test_keep_io_types_as_a_list_of_names():
    ours, _ = _assert_same_as_onnxruntime_tool(_mlp(), keep_io_types=["x", "z"])
    assert _io_types(ours) == [("x", F), ("y", F16), ("z", F)]


def test_blocked_op_stays_float32_between_casts_as_onnxruntime_tool():
    ours, theirs = _assert_same_as_onnxruntime_tool(_mlp(), op_block_list=["Sigmoid"])
    sigmoid = next(n for n in ours.graph.node if n.op_type == "Sigmoid")
    assert list(sigmoid.input) == ["a_cast_to_fp32"] and list(sigmoid.output) == ["s_cast_to_fp16"]
    assert _is_topologically_sorted(ours.graph)
    assert not _is_topologically_sorted(theirs.graph)  # onnxruntime's tool appends its Casts at the end
    x = RNG.standard_normal((2, 4)).astype(np.float16)
    for a, b in zip(_run(ours, {"x": x}), _run(theirs, {"x": x}, "onnxruntime")):
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=2e-3, atol=2e-3)


def test_node_block_list_keeps_named_node_and_its_own_initializer_float32():
    ours, _ = _assert_same_as_onnxruntime_tool(_mlp(), node_block_list=["mul"])
    inits = {t.name: t.data_type for t in ours.graph.initializer}
    assert inits == {"W": F16, "B": F16, "S": F}  # S is read by the float32 node only


def test_initializer_shared_by_float32_and_float16_nodes_is_converted_and_cast_back():
    ours, _ = _assert_same_as_onnxruntime_tool(_mlp(), node_block_list=["mm2"])
    assert {t.name: t.data_type for t in ours.graph.initializer}["W"] == F16
    mm2 = next(n for n in ours.graph.node if n.name == "mm2")
    assert list(mm2.input) == ["x_cast_to_fp32", "W_cast_to_fp32"]


def test_force_fp16_initializers_converts_initializers_of_float32_nodes():
    ours, _ = _assert_same_as_onnxruntime_tool(_mlp(), node_block_list=["mul"], force_fp16_initializers=True)
    assert {t.name: t.data_type for t in ours.graph.initializer}["S"] == F16
    mul = next(n for n in ours.graph.node if n.name == "mul")
    assert list(mul.input) == ["s_cast_to_fp32", "S_cast_to_fp32"]


def test_default_op_block_list_is_onnxruntimes():
    assert set(DEFAULT_OP_BLOCK_LIST) == set(ort_float16.DEFAULT_OP_BLOCK_LIST)
    nodes = [helper.make_node("Max", ["x", "y"], ["m"], name="max"), helper.make_node("Relu", ["m"], ["r"], name="relu")]
    model = _model(nodes, [_value("x", F, [3]), _value("y", F, [3])], [_value("r", F, [3])])
    ours, _ = _assert_same_as_onnxruntime_tool(model)
    assert next(n for n in ours.graph.node if n.op_type == "Max").input[0] == "x_cast_to_fp32"


def test_cast_dtype_and_constant_of_shape_attributes_name_float16():
    nodes = [
        helper.make_node("Cast", ["i"], ["c"], to=F, name="cast"),
        helper.make_node("ConstantOfShape", ["shape"], ["zeros"], name="cos"),
        helper.make_node("RandomNormal", [], ["noise"], shape=[3], seed=1.0, name="rn"),
        helper.make_node("Mul", ["noise", "zeros"], ["nz"], name="nz_mul"),
        helper.make_node("Add", ["c", "nz"], ["y"], name="add"),
        helper.make_node("Constant", [], ["k"], value=_tensor("kv", [1.5, 2.5, 3.5]), name="const"),
        helper.make_node("Mul", ["y", "k"], ["out"], name="mul"),
    ]
    model = _model(nodes, [_value("i", TensorProto.INT64, [3])], [_value("out", F, [3])],
                   [_tensor("shape", [3], np.int64)])
    ours, _ = _assert_same_as_onnxruntime_tool(model)
    attrs = {n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute} for n in ours.graph.node}
    assert attrs["cast"]["to"] == F16 and attrs["rn"]["dtype"] == F16
    assert attrs["cos"]["value"].data_type == F16 and attrs["const"]["value"].data_type == F16
    out = _run(ours, {"i": np.array([1, 2, 3], np.int64)})[0]
    assert out.dtype == np.float16 and out.tolist() == [1.5, 5.0, 10.5]


def test_resize_scales_stay_float32():
    nodes = [helper.make_node("Mul", ["x", "two"], ["d"], name="mul"),
             helper.make_node("Resize", ["d", "", "scales"], ["y"], mode="nearest", name="resize")]
    model = _model(nodes, [_value("x", F, [1, 1, 2, 2])], [_value("y", F, [1, 1, 4, 4])],
                   [_tensor("two", 2.0), _tensor("scales", [1, 1, 2, 2])], opset=13)
    ours, theirs = _assert_same_as_onnxruntime_tool(model)
    assert {t.name: t.data_type for t in ours.graph.initializer} == {"two": F16, "scales": F}
    x = np.arange(4, dtype=np.float16).reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(_run(ours, {"x": x})[0], _run(theirs, {"x": x}, "onnxruntime")[0])


# ---------------------------------------------------------------------------- values


def test_initializer_values_clamped_as_onnxruntime_clamps_them():
    values = np.array([1e-9, -1e-9, 1e6, -1e6, 0.0, -0.0, np.inf, -np.inf, np.nan, 1.5, 65504.0, 3e-8], np.float32)
    expected = ort_float16.convert_np_to_float16(values)
    np.testing.assert_array_equal(convert_np_to_float16(values), expected)
    assert convert_np_to_float16(values)[:4].tolist() == [np.float16(5.96e-08), -np.float16(5.96e-08), 65504.0, -65504.0]
    model = _model([helper.make_node("Add", ["x", "c"], ["y"], name="add")], [_value("x", F, [12])],
                   [_value("y", F, [12])], [_tensor("c", values)])
    for options in ({}, {"min_positive_val": 1e-4, "max_finite_val": 1e4}):
        ours, theirs = _assert_same_as_onnxruntime_tool(model, **options)
    clamped = numpy_helper.to_array(ours.graph.initializer[0])
    assert clamped[:4].tolist() == [np.float16(1e-4), -np.float16(1e-4), 1e4, -1e4]


def test_bounds_outside_the_type_raise():
    with pytest.raises(ValueError, match="min_positive_val"):
        convert_float_to_float16(_mlp(), min_positive_val=1e-9)
    with pytest.raises(ValueError, match="max_finite_val"):
        convert_float_to_float16(_mlp(), max_finite_val=1e5)
    with pytest.raises(ValueError, match="bfloat16"):
        convert_float_to_bfloat16(_mlp(), max_finite_val=1e39)


def test_caller_model_unchanged_and_path_accepted(tmp_path):
    model = _mlp()
    before = model.SerializeToString()
    convert_float_to_float16(model, disable_shape_infer=True)
    assert model.SerializeToString() == before
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert _signature(convert_float_to_float16(str(path))) == _signature(convert_float_to_float16(model))
    with pytest.raises(FileNotFoundError, match="nothere.onnx"):
        convert_float_to_float16(str(tmp_path / "nothere.onnx"))


# ---------------------------------------------------------------------------- subgraphs


def _if_model(block_inner=False):
    then_graph = helper.make_graph([helper.make_node("Mul", ["x", "W"], ["t"], name="then_mul"),
                                    helper.make_node("Sigmoid", ["t"], ["t_out"], name="then_sig")],
                                   "then", [], [_value("t_out", F, [3])])
    else_graph = helper.make_graph([helper.make_node("Constant", [], ["e_k"], value=_tensor("ek", [3.0, 2.0, 1.0]), name="else_k"),
                                    helper.make_node("Sub", ["x", "e_k"], ["e_out"], name="else_sub")],
                                   "else", [], [_value("e_out", F, [3])])
    nodes = [helper.make_node("If", ["cond"], ["r"], then_branch=then_graph, else_branch=else_graph, name="if"),
             helper.make_node("Add", ["r", "x"], ["y"], name="add")]
    return _model(nodes, [_value("cond", TensorProto.BOOL, []), _value("x", F, [3])], [_value("y", F, [3])],
                  [_tensor("W", [0.5, 1.0, 2.0])])


@pytest.mark.parametrize("cond", [True, False])
def test_if_branches_converted_same_as_onnxruntime_tool(cond):
    model = _if_model()
    ours, theirs = _assert_same_as_onnxruntime_tool(model, keep_io_types=True)
    feeds = {"cond": np.array(cond), "x": np.array([1.0, -2.0, 3.0], np.float32)}
    expected = _run(model, feeds)[0]
    for actual in (_run(ours, feeds)[0], _run(theirs, feeds, "onnxruntime")[0]):
        assert relative_error(actual, expected) < 2e-3


def test_blocked_node_inside_a_branch_gets_its_casts_inside_the_branch():
    # onnxruntime's tool puts these Casts in the main graph, where the branch's values do not exist.
    model = _if_model()
    ours = convert_float_to_float16(model, keep_io_types=True, node_block_list=["then_sig"])
    onnx.checker.check_model(ours, full_check=True)
    then_graph = ours.graph.node[1].attribute[0].g if ours.graph.node[1].attribute[0].name == "then_branch" \
        else ours.graph.node[1].attribute[1].g
    assert [n.op_type for n in then_graph.node] == ["Mul", "Cast", "Sigmoid", "Cast"]
    assert _is_topologically_sorted(ours.graph)
    feeds = {"cond": np.array(True), "x": np.array([1.0, -2.0, 3.0], np.float32)}
    expected = _run(model, feeds)[0]
    for runtime in ("onyxrt", "onnxruntime"):
        assert relative_error(_run(ours, feeds, runtime)[0], expected) < 2e-3


def test_blocked_if_reading_float16_outer_values_gets_casts_for_them():
    model = _if_model()
    ours = convert_float_to_float16(model, node_block_list=["if"])
    onnx.checker.check_model(ours, full_check=True)
    feeds = {"cond": np.array(True), "x": np.array([1.0, -2.0, 3.0], np.float16)}
    expected = _run(model, {"cond": feeds["cond"], "x": feeds["x"].astype(np.float32)})[0]
    for runtime in ("onyxrt", "onnxruntime"):
        out = _run(ours, feeds, runtime)[0]
        assert out.dtype == np.float16 and relative_error(out, expected) < 2e-3


def test_loop_body_converted_and_runs_like_float32():
    body = helper.make_graph(
        [helper.make_node("Mul", ["acc_in", "factor"], ["acc_out"], name="body_mul"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond")],
        "body", [_value("i", TensorProto.INT64, []), _value("cond_in", TensorProto.BOOL, []), _value("acc_in", F, [2])],
        [_value("cond_out", TensorProto.BOOL, []), _value("acc_out", F, [2])])
    nodes = [helper.make_node("Loop", ["n", "", "x"], ["y"], body=body, name="loop")]
    model = _model(nodes, [_value("n", TensorProto.INT64, []), _value("x", F, [2])], [_value("y", F, [2])],
                   [_tensor("factor", [1.5, 0.5])])
    ours, theirs = _assert_same_as_onnxruntime_tool(model, keep_io_types=True)
    loop_body = ours.graph.node[1].attribute[0].g
    assert [v.type.tensor_type.elem_type for v in loop_body.input] == [TensorProto.INT64, TensorProto.BOOL, F16]
    feeds = {"n": np.array(4, np.int64), "x": np.array([1.0, 2.0], np.float32)}
    expected = _run(model, feeds)[0]
    np.testing.assert_allclose(expected, [1.5**4, 2 * 0.5**4], rtol=1e-6)
    for actual in (_run(ours, feeds)[0], _run(theirs, feeds, "onnxruntime")[0]):
        assert relative_error(actual, expected) < 2e-3


# ---------------------------------------------------------------------------- float32 between blocked nodes


def test_keep_float32_between_blocked_nodes_drops_the_float16_round_trip():
    model = _mlp()
    plain = convert_with_report(model, keep_io_types=True, node_block_list=["add", "sig", "mul"])
    kept = convert_with_report(model, keep_io_types=True, node_block_list=["add", "sig", "mul"],
                               keep_float32_between_blocked=True)
    assert sorted(plain.kept_nodes) == sorted(kept.kept_nodes) == ["add", "mul", "sig"]
    casts = [n for n in kept.model.graph.node if n.op_type == "Cast"]
    # input cast, h -> float32 for Add, B's initializer stays float32 (read by float32 nodes only), z's output cast
    assert len(casts) == 3 < sum(n.op_type == "Cast" for n in plain.model.graph.node)
    mul = next(n for n in kept.model.graph.node if n.name == "mul")
    assert list(mul.output) == ["y"]  # the float32 node writes the kept float32 output itself
    onnx.checker.check_model(kept.model, full_check=True)
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    expected = _run(model, {"x": x})
    actual = _run(kept.model, {"x": x})
    assert relative_error(actual[0], expected[0]) < relative_error(_run(plain.model, {"x": x})[0], expected[0]) + 1e-7


# ---------------------------------------------------------------------------- bfloat16


def test_bfloat16_conversion_types_values_and_run():
    model = _mlp()
    ours = convert_float_to_bfloat16(model, keep_io_types=True)
    assert _io_types(ours) == [("x", F), ("y", F), ("z", F)]
    assert {t.data_type for t in ours.graph.initializer} == {BF16}
    w = next(t for t in ours.graph.initializer if t.name == "W")
    original = numpy_helper.to_array(model.graph.initializer[0])
    stored = np.frombuffer(w.raw_data, dtype=ml_dtypes.bfloat16).reshape(4, 4)
    np.testing.assert_array_equal(stored, original.astype(ml_dtypes.bfloat16))
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    for a, b in zip(_run(ours, {"x": x}), _run(model, {"x": x})):
        assert a.dtype == np.float32 and relative_error(a, b) < 2e-2


def test_bfloat16_keeps_ops_without_bfloat16_schema_float32():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["y"], name="relu")]
    inputs, outputs = [_value("x", F, [1, 1, 4, 4])], [_value("y", F, [1, 1, 3, 3])]
    weights = [_tensor("w", RNG.standard_normal((1, 1, 2, 2)))]
    old = convert_with_report(_model(nodes, inputs, outputs, weights, opset=17), "bf16", keep_io_types=True)
    new = convert_with_report(_model(nodes, inputs, outputs, weights, opset=22), "bf16", keep_io_types=True)
    assert old.kept_nodes == ["conv"] and old.converted_nodes == ["relu"]  # Conv-11 has no bfloat16
    assert new.kept_nodes == [] and new.converted_nodes == ["conv", "relu"]  # Conv-22 has
    x = RNG.standard_normal((1, 1, 4, 4)).astype(np.float32)
    expected = _run(_model(nodes, inputs, outputs, weights), {"x": x})[0]
    for report in (old, new):
        onnx.checker.check_model(report.model, full_check=True)
        assert relative_error(_run(report.model, {"x": x})[0], expected) < 2e-2


# ---------------------------------------------------------------------------- automatic mixed precision


def _sensitive_model():
    """x in [0.1, 1): relu, *2, +1000, -1000, tanh. x + 1000 in float16 keeps 0.5 steps: add and sub must stay float32."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Mul", ["r", "two"], ["m"], name="double"),
             helper.make_node("Add", ["m", "big"], ["a"], name="add_big"),
             helper.make_node("Sub", ["a", "big"], ["s"], name="sub_big"),
             helper.make_node("Tanh", ["s"], ["y"], name="tanh")]
    return _model(nodes, [_value("x", F, [64])], [_value("y", F, [64])], [_tensor("two", 2.0), _tensor("big", 1000.0)])


def test_auto_mixed_precision_keeps_only_the_sensitive_nodes_float32():
    model = _sensitive_model()
    feeds = {"x": np.random.default_rng(1).uniform(0.1, 1.0, 64).astype(np.float32)}
    result = auto_convert_mixed_precision(model, feeds, rtol=1e-2, atol=1e-3, return_details=True)
    assert isinstance(result, MixedPrecisionResult)
    assert sorted(result.kept_float32) == ["add_big", "sub_big"]
    assert result.candidates == 5
    expected = _run(model, feeds)[0]
    for runtime in ("onyxrt", "onnxruntime"):
        np.testing.assert_allclose(_run(result.model, feeds, runtime)[0], expected, rtol=1e-2, atol=1e-3)
    # fully float16 is far off where float16 is computed: the search had something to find
    assert relative_error(_run(convert_float_to_float16(model, keep_io_types=True), feeds, "strict")[0], expected) > 0.05
    converted = {n.name for n in result.model.graph.node if n.name in ("relu", "double", "tanh")}
    assert converted == {"relu", "double", "tanh"}
    assert {t.name: t.data_type for t in result.model.graph.initializer} == {"two": F16, "big": F}


def test_auto_mixed_precision_validate_fn_and_errors():
    model = _sensitive_model()
    feeds = {"x": np.random.default_rng(2).uniform(0.1, 1.0, 64).astype(np.float32)}
    calls = []

    def close_enough(fp32, low):
        calls.append(1)
        return relative_error(low[0], fp32[0]) < 1e-2

    converted = auto_convert_mixed_precision(model, feeds, validate_fn=close_enough)
    assert isinstance(converted, onnx.ModelProto) and calls
    with pytest.raises(ValueError, match="validate_fn or rtol"):
        auto_convert_mixed_precision(model, feeds)
    with pytest.raises(ValueError, match="original float32 model"):
        auto_convert_mixed_precision(model, feeds, validate_fn=lambda a, b: False)


def test_auto_mixed_precision_without_keep_io_types_feeds_float16():
    model = _sensitive_model()
    feeds = {"x": np.random.default_rng(3).uniform(0.1, 1.0, 64).astype(np.float32)}
    converted = auto_convert_mixed_precision(model, feeds, rtol=1e-2, atol=1e-3, keep_io_types=False)
    assert _io_types(converted) == [("x", F16), ("y", F16)]
    out = _run(converted, {"x": feeds["x"].astype(np.float16)})[0]
    np.testing.assert_allclose(out.astype(np.float32), _run(model, feeds)[0], rtol=1e-2, atol=1e-3)


# ---------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("to", ["fp16", "bf16", "mixed"])
def test_cli_convert_writes_the_model_and_prints_the_summary(tmp_path, capsys, to):
    from onyxrt.cli import main

    source, target = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(_sensitive_model(), source)
    extra = ["--keep-io-types"] if to != "mixed" else ["--rtol", "1e-2", "--atol", "1e-3"]
    assert main(["convert", str(source), str(target), "--to", to, *extra]) == 0
    printed = capsys.readouterr().out
    converted = onnx.load(target)
    assert _io_types(converted) == [("x", F), ("y", F)]
    assert "size:" in printed and "max rel" in printed
    if to == "mixed":
        assert "3 converted, 2 kept float32" in printed and "add_big, sub_big" in printed
    else:
        assert "5 converted, 0 kept float32, 2 Cast nodes added" in printed


def test_cli_convert_op_block_list_keeps_those_ops_float32(tmp_path, capsys):
    from onyxrt.cli import main

    source, target = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(_sensitive_model(), source)
    assert main(["convert", str(source), str(target), "--to", "fp16", "--op-block-list", "Tanh", "Sub"]) == 0
    printed = capsys.readouterr().out
    assert "3 converted, 2 kept float32" in printed and "kept float32: sub_big, tanh" in printed
    converted = onnx.load(target)
    assert _io_types(converted) == [("x", F16), ("y", F16)]
    # a and big (shared with the float16 Add) into Sub, Sub's result through float16 into Tanh, Tanh's out:
    # onnxruntime's tool's round trip between two float32 nodes
    assert [n.op_type for n in converted.graph.node].count("Cast") == 5


def test_cli_convert_reports_a_mixed_search_that_cannot_pass(tmp_path, capsys):
    from onyxrt.cli import main

    source = tmp_path / "m.onnx"
    onnx.save(_sensitive_model(), source)
    assert main(["convert", str(source), str(tmp_path / "o.onnx"), "--to", "mixed", "--rtol", "0", "--atol", "0"]) == 1
    assert "onyxrt: error: --to mixed: validation failed" in capsys.readouterr().err


# ---------------------------------------------------------------------------- float16 kernels


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
def test_float16_arithmetic_computed_in_float32_is_bit_identical_to_numpy_float16(op_type):
    rng = np.random.default_rng(5)
    with np.errstate(over="ignore"):  # some become inf, on purpose
        a = (rng.standard_normal((8, 512)) * rng.choice([1e-7, 1e-3, 1.0, 300.0, 6e4], (8, 512))).astype(np.float16)
    b = (rng.standard_normal(512) * 50).astype(np.float16)
    b[:4] = [0, -0.0, np.inf, 1e-7]
    model = _model([helper.make_node(op_type, ["a", "b"], ["y"])], [_value("a", F16, [8, 512]), _value("b", F16, [512])],
                   [_value("y", F16, [8, 512])])
    ufunc = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op_type]
    with np.errstate(all="ignore"):
        expected = ufunc(a, b)
    actual = _run(model, {"a": a, "b": b})[0]
    assert actual.dtype == np.float16
    np.testing.assert_array_equal(actual, expected)


def test_float16_matmul_is_the_float32_product_rounded_to_float16():
    rng = np.random.default_rng(6)
    a = rng.standard_normal((2, 16, 64)).astype(np.float16)
    w = rng.standard_normal((64, 32)).astype(np.float16)
    model = _model([helper.make_node("MatMul", ["a", "w"], ["y"])], [_value("a", F16, [2, 16, 64])],
                   [_value("y", F16, [2, 16, 32])], [numpy_helper.from_array(w, "w")])
    actual = _run(model, {"a": a})[0]
    expected = (a.astype(np.float32) @ w.astype(np.float32)).astype(np.float16)
    assert actual.dtype == np.float16
    # float32 products summed in another order may round to the neighbouring float16
    np.testing.assert_allclose(actual.astype(np.float32), expected.astype(np.float32), rtol=2**-10, atol=2**-14)


def test_path_with_external_data_is_converted(tmp_path):
    model = _mlp()
    folder = tmp_path / "models"
    folder.mkdir()
    onnx.save(copy.deepcopy(model), folder / "m.onnx", save_as_external_data=True, location="m.weights", size_threshold=0)
    converted = convert_float_to_float16(str(folder / "m.onnx"), keep_io_types=True)
    assert _initializers(converted) == _initializers(convert_float_to_float16(model, keep_io_types=True))
    assert sorted(p.name for p in folder.iterdir()) == ["m.onnx", "m.weights"]  # no temporary file left behind
