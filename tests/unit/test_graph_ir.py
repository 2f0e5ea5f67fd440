"""The graph layer: loading into onnx_ir, lossless saving, topological order, sparse and map types."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt as ort
from onyxrt.errors import Fail, InvalidGraph
from onyxrt.graph.model_loader import load_model
from onyxrt.graph.model_saver import model_to_proto, save_model
from onyxrt.graph.tensors import from_array, to_array


def _model(nodes, inputs, outputs, initializers=(), opset=17, **kwargs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kwargs)


def _vi(name, elem=TensorProto.FLOAT, shape=(2,)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def test_nodes_out_of_dependency_order_run_at_every_level():
    """Regression: a file listing a consumer before its producer ran only with optimization off."""
    model = _model(
        [helper.make_node("Relu", ["t"], ["y"]), helper.make_node("Neg", ["x"], ["t"])],
        [_vi("x")], [_vi("y")],
    )
    x = np.array([1.0, -2.0], np.float32)
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        (y,) = ort.InferenceSession(model.SerializeToString(), options).run(None, {"x": x})
        np.testing.assert_array_equal(y, [0.0, 2.0])


def test_loaded_graph_is_topologically_sorted():
    model = load_model(_model(
        [helper.make_node("Relu", ["t"], ["y"]), helper.make_node("Neg", ["x"], ["t"])], [_vi("x")], [_vi("y")]
    ))
    assert [n.op_type for n in model.graph] == ["Neg", "Relu"]


def test_cycle_fails_at_load_as_in_onnxruntime():
    model = _model(
        [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])], [_vi("x")], [_vi("a")]
    )
    with pytest.raises(Fail, match="is not acyclic"):
        ort.InferenceSession(model.SerializeToString())


def test_values_know_producer_uses_and_types():
    model = load_model(_model(
        [helper.make_node("Neg", ["x"], ["t"]), helper.make_node("Relu", ["t"], ["y"]), helper.make_node("Abs", ["t"], ["z"])],
        [_vi("x")], [_vi("y"), _vi("z")],
    ))
    neg, relu, abs_ = list(model.graph)
    t = neg.outputs[0]
    assert t.producer() is neg
    assert {use.node for use in t.uses()} == {relu, abs_}
    assert t.dtype == ir.DataType.FLOAT and t.shape == ir.Shape([2])  # from shape inference at load


def test_round_trip_keeps_functions_metadata_and_value_types(tmp_path):
    function = helper.make_function(
        "custom", "Double", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
        [helper.make_opsetid("", 17)],
    )
    proto = _model(
        [helper.make_node("Double", ["x"], ["t"], domain="custom"), helper.make_node("Relu", ["t"], ["y"])],
        [_vi("x")], [_vi("y")], functions=[function],
    )
    proto.opset_import.append(helper.make_opsetid("custom", 1))
    helper.set_model_props(proto, {"author": "onyxrt", "task": "test"})
    proto.graph.value_info.append(_vi("t"))
    model = ir.serde.deserialize_model(proto)
    saved = tmp_path / "m.onnx"
    save_model(model, saved)
    back = onnx.load(str(saved))
    assert [f.name for f in back.functions] == ["Double"]
    assert {p.key: p.value for p in back.metadata_props} == {"author": "onyxrt", "task": "test"}
    assert [vi.name for vi in back.graph.value_info] == ["t"]
    assert back.graph.input[0].type == proto.graph.input[0].type


def test_sparse_initializers_are_dense_in_memory_and_sparse_when_saved(tmp_path):
    values = numpy_helper.from_array(np.array([5.0, 7.0], np.float32), "w")
    indices = numpy_helper.from_array(np.array([1, 3], np.int64), "w_indices")
    proto = _model([helper.make_node("Add", ["x", "w"], ["y"])], [_vi("x", shape=(4,))], [_vi("y", shape=(4,))])
    proto.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))
    model = load_model(proto)
    np.testing.assert_array_equal(to_array(model.graph.initializers["w"].const_value), [0, 5, 0, 7])
    back = model_to_proto(model)
    assert [s.values.name for s in back.graph.sparse_initializer] == ["w"]
    assert not back.graph.initializer
    out = tmp_path / "opt.onnx"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(out)
    session = ort.InferenceSession(proto.SerializeToString(), options)
    (y,) = session.run(None, {"x": np.ones(4, np.float32)})
    np.testing.assert_array_equal(y, [1, 6, 1, 8])
    assert len(onnx.load(str(out)).graph.sparse_initializer) == 1


def test_map_typed_outputs_keep_their_type():
    """onnx_ir has no map type: ZipMap-style outputs keep their ONNX type for metadata and saving."""
    map_type = helper.make_sequence_type_proto(helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
    proto = _model(
        [helper.make_node("ZipMap", ["x"], ["m"], domain="ai.onnx.ml", classlabels_int64s=[0, 1])],
        [_vi("x", shape=(1, 2))], [helper.make_value_info("m", map_type)],
    )
    proto.opset_import.append(helper.make_opsetid("ai.onnx.ml", 1))
    session = ort.InferenceSession(proto.SerializeToString())
    assert session.get_outputs()[0].type == "seq(map(int64,tensor(float)))"
    (m,) = session.run(None, {"x": np.array([[0.25, 0.75]], np.float32)})
    assert m == [{0: 0.25, 1: 0.75}]
    assert model_to_proto(load_model(proto)).graph.output[0].type == map_type


def test_string_tensors_round_trip():
    array = np.array([["a", "bé"], ["", "z"]], dtype=object)
    back = to_array(from_array(array, "s"))
    assert back.dtype == object and back.tolist() == array.tolist()


def test_subgraph_output_that_is_an_outer_value():
    """An If branch with no nodes whose output is the outer input itself."""
    then_branch = helper.make_graph([], "then", [], [_vi("x")])
    else_branch = helper.make_graph([helper.make_node("Neg", ["x"], ["n"])], "else", [], [_vi("n")])
    model = _model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        [_vi("c", TensorProto.BOOL, ()), _vi("x")], [_vi("y")],
    )
    session = ort.InferenceSession(model.SerializeToString())
    x = np.array([1.0, -2.0], np.float32)
    np.testing.assert_array_equal(session.run(None, {"c": np.array(True), "x": x})[0], x)
    np.testing.assert_array_equal(session.run(None, {"c": np.array(False), "x": x})[0], -x)
