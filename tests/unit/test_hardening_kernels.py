"""Issue 7 hardening of kernels: attribute-sized work, RunOptions.terminate in control flow, 0/1 flags."""

from __future__ import annotations

import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import onyxrt
from onyxrt.errors import Fail, OnyxRuntimeError
from onyxrt.providers.cpu.nn import pool

ort = pytest.importorskip("onnxruntime")

rng = np.random.default_rng(7)


def _model(nodes, inputs, outputs, opset=17, initializers=()):
    graph = h.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)]).SerializeToString()


def _session(model: bytes) -> onyxrt.InferenceSession:
    return onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"])


def _ort_run(model: bytes, feed: dict) -> list:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feed)


# --------------------------------------------------------------------------- defect 2: pool work bounded by the input


def _pool_model(op_type: str, shape, **attrs) -> bytes:
    return _model([h.make_node(op_type, ["x"], ["y"], **attrs)], [h.make_tensor_value_info("x", T.FLOAT, shape)],
                  [h.make_tensor_value_info("y", T.FLOAT, None)])


@pytest.mark.parametrize("op_type", ["MaxPool", "AveragePool", "LpPool"])
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("kernel", [[2**31, 3], [2**31 - 1, 3], [100, 5]])
def test_pool_kernel_far_larger_than_input_answers_fast_like_onnxruntime(op_type, auto_pad, kernel):
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    model = _pool_model(op_type, [1, 3, 32, 32], kernel_shape=kernel, auto_pad=auto_pad)
    start = time.perf_counter()
    (y,) = _session(model).run(None, {"x": x})
    assert time.perf_counter() - start < 2.0
    np.testing.assert_allclose(y, _ort_run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_max_pool_huge_kernel_is_the_axis_max():
    x = rng.standard_normal((1, 2, 8, 6)).astype(np.float32)
    y = pool.max_pool(x, kernel_shape=[2**31, 1], auto_pad="SAME_UPPER")[0]
    np.testing.assert_array_equal(y, np.broadcast_to(x.max(axis=2, keepdims=True), x.shape))


def test_max_pool_indices_with_huge_kernel_match_an_equivalent_small_kernel_in_onnxruntime():
    # (onnxruntime itself loops over the kernel for the Indices output: 90 s for kernel 2**31, so the
    # reference is the smallest kernel whose SAME windows also cover the whole axis: 2*9+1 taps)
    x = rng.standard_normal((1, 2, 9, 7)).astype(np.float32)

    def model(**attrs):
        node = h.make_node("MaxPool", ["x"], ["y", "ind"], **attrs)
        return _model([node], [h.make_tensor_value_info("x", T.FLOAT, x.shape)],
                      [h.make_tensor_value_info("y", T.FLOAT, None), h.make_tensor_value_info("ind", T.INT64, None)])

    for auto_pad, strides in (("SAME_UPPER", [1, 1]), ("SAME_LOWER", [2, 1])):
        start = time.perf_counter()
        got = _session(model(kernel_shape=[2**31, 3], auto_pad=auto_pad, strides=strides)).run(None, {"x": x})
        assert time.perf_counter() - start < 2.0
        want = _ort_run(model(kernel_shape=[19, 3], auto_pad=auto_pad, strides=strides), {"x": x})
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    dilated = model(kernel_shape=[3, 3], pads=[2, 1, 2, 1], dilations=[4, 1])
    for g, w in zip(_session(dilated).run(None, {"x": x}), _ort_run(dilated, {"x": x})):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool_counts_with_kernel_larger_than_input_match_onnxruntime(count_include_pad):
    x = rng.standard_normal((1, 1, 5, 6)).astype(np.float32)
    model = _pool_model("AveragePool", [1, 1, 5, 6], kernel_shape=[7, 9], pads=[3, 4, 3, 4],
                        count_include_pad=count_include_pad)
    np.testing.assert_allclose(_session(model).run(None, {"x": x})[0], _ort_run(model, {"x": x})[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attrs, message", [
    (dict(kernel_shape=[0, 3]), "positive"),
    (dict(kernel_shape=[-1, 3]), "positive"),
    (dict(kernel_shape=[3, 3], pads=[2**31, 0, 0, 0]), "smaller than kernel_shape"),
    (dict(kernel_shape=[3, 3], pads=[0, 0, 3, 0]), "smaller than kernel_shape"),
])
def test_pool_attributes_that_make_no_sense_are_typed_errors(attrs, message):
    x = np.zeros((1, 1, 8, 8), np.float32)
    with pytest.raises(OnyxRuntimeError, match=message):
        _session(_pool_model("MaxPool", [1, 1, 8, 8], **attrs)).run(None, {"x": x})


# --------------------------------------------------------------------------- defect 9: terminate inside control flow


def _endless_loop_model() -> bytes:
    body = h.make_graph(
        [h.make_node("Identity", ["cond_in"], ["cond_out"]), h.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cond_in", T.BOOL, []),
         h.make_tensor_value_info("v_in", T.FLOAT, [1])],
        [h.make_tensor_value_info("cond_out", T.BOOL, []), h.make_tensor_value_info("v_out", T.FLOAT, [1])],
        initializer=[onnx.numpy_helper.from_array(np.ones(1, np.float32), "one")],
    )
    node = h.make_node("Loop", ["M", "cond", "v0"], ["v"], body=body)
    return _model([node], [h.make_tensor_value_info("v0", T.FLOAT, [1])], [h.make_tensor_value_info("v", T.FLOAT, [1])],
                  initializers=[onnx.numpy_helper.from_array(np.array(2**62, np.int64), "M"),
                                onnx.numpy_helper.from_array(np.array(True), "cond")])


def test_terminate_set_during_a_loop_stops_it_with_onnxruntimes_error():
    sess = _session(_endless_loop_model())
    options = onyxrt.RunOptions()
    timer = threading.Timer(0.3, lambda: setattr(options, "terminate", True))
    timer.start()
    start = time.perf_counter()
    try:
        with pytest.raises(Fail, match="Exiting due to terminate flag being set to true."):
            sess.run(None, {"v0": np.zeros(1, np.float32)}, options)
    finally:
        timer.cancel()
    assert time.perf_counter() - start < 1.5


def test_terminate_of_one_run_does_not_reach_another_run():
    sess = _session(_endless_loop_model())
    stopped = onyxrt.RunOptions()
    stopped.terminate = True
    with pytest.raises(Fail):
        sess.run(None, {"v0": np.zeros(1, np.float32)}, stopped)
    # a finite loop in a run without options (or with terminate unset) runs to the end
    finite = onnx.load_from_string(_endless_loop_model())
    finite.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(np.array(5, np.int64), "M"))
    (v,) = _session(finite.SerializeToString()).run(None, {"v0": np.zeros(1, np.float32)}, onyxrt.RunOptions())
    np.testing.assert_array_equal(v, [5.0])


def test_scan_checks_terminate_each_step():
    from onyxrt.providers.cpu.controlflow.control_flow import scan
    from onyxrt.framework.run_context import run_scope

    options = onyxrt.RunOptions()
    steps = []

    class Body:
        output_names = ["s"]

        def __call__(self, state, x, outer=()):
            steps.append(1)
            options.terminate = len(steps) >= 3
            return [state + x]

    with run_scope(options), pytest.raises(Fail, match="terminate flag"):
        scan(np.zeros(1), np.ones((100, 1)), body=Body(), num_scan_inputs=1)
    assert len(steps) == 3


# --------------------------------------------------------------------------- defect 10: 0/1 attributes


def _two_input_model(node, opset=13) -> bytes:
    return _model([node], [h.make_tensor_value_info("x", T.FLOAT, [2, 3])], [h.make_tensor_value_info("y", T.FLOAT, None)],
                  opset=opset)


@pytest.mark.parametrize("node", [
    h.make_node("ReduceSum", ["x"], ["y"], keepdims=-2, name="sum"),
    h.make_node("ReduceMax", ["x"], ["y"], keepdims=2, name="sum"),
    h.make_node("Gemm", ["x", "x"], ["y"], transA=2, name="sum"),
    h.make_node("Gemm", ["x", "x"], ["y"], transB=-1, name="sum"),
    h.make_node("CumSum", ["x", "axis"], ["y"], exclusive=3, name="sum"),
])
def test_out_of_range_flag_attributes_fail_at_load_naming_node_and_attribute(node):
    from onyxrt.errors import Fail

    attribute = node.attribute[0].name
    inits = [onnx.numpy_helper.from_array(np.array(0, np.int64), "axis")] if node.op_type == "CumSum" else []
    model = _model([node], [h.make_tensor_value_info("x", T.FLOAT, [2, 3])], [h.make_tensor_value_info("y", T.FLOAT, None)],
                   opset=13, initializers=inits)
    with pytest.raises(Fail, match=rf"sum.*'{attribute}'.*must be 0 or 1"):
        _session(model)


def test_flag_attributes_with_0_and_1_still_run():
    x = rng.standard_normal((2, 3)).astype(np.float32)
    for keepdims, shape in ((0, (2,)), (1, (2, 1))):
        model = _two_input_model(h.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=keepdims))
        model = onnx.load_from_string(model)
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1], np.int64), "axes"))
        (y,) = _session(model.SerializeToString()).run(None, {"x": x})
        assert y.shape == shape


def test_flag_attributes_come_from_the_schemas():
    from onyxrt.providers.kernel_registry import schema_flag_attributes

    assert schema_flag_attributes("", "Gemm", 13) == {"transA", "transB"}
    assert {"keepdims", "noop_with_empty_axes"} <= schema_flag_attributes("", "ReduceSum", 13)
    assert "axis" not in schema_flag_attributes("", "ArgMax", 13)
    assert schema_flag_attributes("com.microsoft", "Gemm", 1) == frozenset()


def test_kernel_refusals_are_reported_in_the_kernels_words_without_a_python_type():
    # x's shape is not declared, so load-time inference cannot see the bad perm: the kernel refuses it
    # (INVALID_ARGUMENT, as onnxruntime's Transpose).
    model = _model([h.make_node("Transpose", ["x"], ["y"], perm=[0, 0], name="t")],
                   [h.make_tensor_value_info("x", T.FLOAT, None)], [h.make_tensor_value_info("y", T.FLOAT, None)])
    with pytest.raises(onyxrt.errors.InvalidArgument) as caught:
        _session(model).run(None, {"x": np.zeros((2, 3), np.float32)})
    message = str(caught.value)
    assert "Name:'t' Status Message: Transpose: perm [0, 0] is not a permutation" in message
    assert "Error" not in message.split("Status Message:")[1]  # no AxisError/ValueError leaking


def test_running_out_of_memory_is_reported_as_an_allocation_failure():
    model = _model([h.make_node("ConstantOfShape", ["s"], ["y"], name="fill")],
                   [h.make_tensor_value_info("s", T.INT64, [2])], [h.make_tensor_value_info("y", T.FLOAT, None)])
    with pytest.raises(onyxrt.errors.Fail, match="Name:'fill' Status Message: Failed to allocate memory"):
        _session(model).run(None, {"s": np.array([2**20, 2**30], np.int64)})


def test_gather_elements_indices_wider_than_data_is_a_typed_error():
    model = _model([h.make_node("GatherElements", ["d", "i"], ["y"], axis=0, name="g")],
                   [h.make_tensor_value_info("d", T.FLOAT, [2, 2]), h.make_tensor_value_info("i", T.INT64, [1, 3])],
                   [h.make_tensor_value_info("y", T.FLOAT, None)])
    with pytest.raises(onyxrt.errors.Fail, match="Name:'g' Status Message: GatherElements: indices dim 1 is 3"):
        _session(model).run(None, {"d": np.zeros((2, 2), np.float32), "i": np.zeros((1, 3), np.int64)})


def test_empty_name_in_a_variadic_input_is_refused_at_load():
    model = _model([h.make_node("Concat", ["x", ""], ["y"], axis=0)], [h.make_tensor_value_info("x", T.FLOAT, [2])],
                   [h.make_tensor_value_info("y", T.FLOAT, None)])
    with pytest.raises(onyxrt.errors.InvalidGraph, match="input 1 is required but has an empty name"):
        _session(model)


def test_contrib_kernel_without_its_required_attribute_is_refused_at_load():
    node = h.make_node("Attention", ["x", "w", "b"], ["y"], domain="com.microsoft", name="att")
    graph = h.make_graph([node], "g", [h.make_tensor_value_info(n, T.FLOAT, None) for n in "xwb"],
                         [h.make_tensor_value_info("y", T.FLOAT, None)])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
    with pytest.raises(onyxrt.errors.InvalidGraph, match="required attribute 'num_heads' of Attention is missing"):
        _session(model.SerializeToString())


@pytest.mark.parametrize(
    "node, feeds, message",
    [
        (h.make_node("Gather", ["d", "i"], ["y"], axis=0), {"d": np.zeros(2, np.float32), "i": np.array([2, 0])},
         r"indices element out of data bounds, idx=2 must be within the inclusive range \[-2,1\]"),
        (h.make_node("Split", ["d"], ["y"], num_outputs=1), {"d": np.float32(1)}, "Split: the input is a scalar"),
        (h.make_node("Attention", ["d", "i", "i"], ["y"], q_num_heads=0, kv_num_heads=1),
         {"d": np.zeros((1, 2, 4), np.float32), "i": np.zeros((1, 2, 4), np.float32)},
         "Q's num_heads attribute must be positive"),
    ],
)
def test_kernels_refuse_bad_inputs_with_a_typed_error(node, feeds, message):
    node.name = "n"
    inputs = [h.make_tensor_value_info(name, T.FLOAT if value.dtype == np.float32 else T.INT64, None)
              for name, value in feeds.items()]
    model = _model([node], inputs, [h.make_tensor_value_info("y", T.FLOAT, None)], opset=23)
    # FAIL, or INVALID_ARGUMENT where onnxruntime's kernel says so (Gather's index range)
    with pytest.raises(onyxrt.errors.OnyxRuntimeError, match=f"Name:'n' Status Message: {message}"):
        _session(model).run(None, {k: np.asarray(v) for k, v in feeds.items()})


@pytest.mark.parametrize(
    "node, attribute",
    [
        (h.make_node("Pad", ["x", "p"], ["y"], mode="mirror", name="n"), "mode"),
        (h.make_node("MaxPool", ["x"], ["y"], kernel_shape=[1], auto_pad="SAME", name="n"), "auto_pad"),
    ],
)
def test_string_attribute_outside_the_specs_values_fails_at_load(node, attribute):
    # onnxruntime's kernels refuse these when created: FAIL at load, not at the first run.
    inputs = [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 2]), h.make_tensor_value_info("p", T.INT64, [6])]
    model = _model([node], inputs[: len(node.input)], [h.make_tensor_value_info("y", T.FLOAT, None)], opset=18)
    with pytest.raises(Fail, match=rf"node 'n' .*attribute '{attribute}' of {node.op_type} is '\w+'; it must be one of"):
        _session(model)


def test_concat_of_different_ranks_is_a_typed_error():
    model = _model([h.make_node("Concat", ["a", "b"], ["y"], axis=1, name="c")],
                   [h.make_tensor_value_info("a", T.FLOAT, None), h.make_tensor_value_info("b", T.FLOAT, None)],
                   [h.make_tensor_value_info("y", T.FLOAT, None)])
    with pytest.raises(onyxrt.errors.Fail, match="Name:'c' Status Message: Concat: inputs have different ranks"):
        _session(model).run(None, {"a": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)})


@pytest.mark.parametrize(
    "node, message",
    [
        (h.make_node("MaxPool", ["x"], ["y"], kernel_shape=[1], strides=[0]), r"strides.* positive"),
        (h.make_node("LpNormalization", ["x"], ["y"], p=3), "'p' of LpNormalization must be 1 or 2"),
    ],
)
def test_int_attributes_outside_their_stated_range_fail_at_load(node, message):
    model = _model([node], [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 2])], [h.make_tensor_value_info("y", T.FLOAT, None)])
    with pytest.raises(Fail, match=message):  # onnxruntime's kernels check these when created
        _session(model)


def test_rotary_embedding_without_position_ids_needs_per_token_caches():
    node = h.make_node("RotaryEmbedding", ["x", "c", "s"], ["y"], name="rope")
    inputs = [h.make_tensor_value_info("x", T.FLOAT, None), h.make_tensor_value_info("c", T.FLOAT, None),
              h.make_tensor_value_info("s", T.FLOAT, None)]
    model = _model([node], inputs, [h.make_tensor_value_info("y", T.FLOAT, None)], opset=23)
    feeds = {"x": np.zeros((1, 2, 3, 4), np.float32), "c": np.zeros((8, 2), np.float32), "s": np.zeros((8, 2), np.float32)}
    with pytest.raises(onyxrt.errors.Fail, match="Name:'rope' Status Message: RotaryEmbedding: cos/sin caches"):
        _session(model).run(None, feeds)


@pytest.mark.parametrize("op_type", ["Celu", "Elu", "HardSigmoid", "HardSwish", "LeakyRelu", "Mish", "Selu", "Sigmoid", "Softsign"])
def test_activations_take_a_scalar_input(op_type):
    # numpy arithmetic on 0-d arrays gives scalars, which the in-place kernels could not write to.
    model = _model([h.make_node(op_type, ["x"], ["y"])], [h.make_tensor_value_info("x", T.FLOAT, [])],
                   [h.make_tensor_value_info("y", T.FLOAT, None)], opset=22)
    feed = {"x": np.array(-0.3, np.float32)}
    (got,) = _session(model).run(None, feed)
    assert got.shape == ()
    np.testing.assert_allclose(got, _ort_run(model, feed)[0], rtol=1e-5, atol=1e-6)
