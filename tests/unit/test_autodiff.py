"""Gradient (ai.onnx.preview.training) through onyxrt.graph.autodiff, checked against finite differences.

Each case builds a forward graph computing ``y`` plus a Gradient node, runs it
through an InferenceSession (which expands Gradient nodes before the graph
optimizations), and compares dY/dX with central differences of sum(y) computed by
running the forward graph alone (float64 inputs).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt
from onyxrt.errors import InvalidGraph, NotImplemented as OrtNotImplemented
from onyxrt.graph.autodiff import AUTODIFF_DOMAIN, TRAINING_DOMAIN, expand_gradient_nodes
from onyxrt.graph.model_loader import model_from_proto

RNG = np.random.default_rng(1234)


# --------------------------------------------------------------------------- helpers

_ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE, np.dtype(np.int64): TensorProto.INT64}


def _vi(name, array):
    return helper.make_tensor_value_info(name, _ELEM[np.asarray(array).dtype], np.shape(array))


def _model(nodes, feeds, outputs, initializers=None, opset=17):
    graph = helper.make_graph(
        nodes,
        "g",
        [_vi(n, v) for n, v in feeds.items()],
        [helper.make_empty_tensor_value_info(o) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (initializers or {}).items()],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(TRAINING_DOMAIN, 1)],
        ir_version=8,
    )


def _session(model):
    return onyxrt.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _gradient_node(xs, y, outputs=None, inputs=None, zs=()):
    kwargs = {"xs": list(xs), "y": y}
    if zs:
        kwargs["zs"] = list(zs)
    return helper.make_node(
        "Gradient",
        list(inputs) if inputs is not None else list(xs) + list(zs),
        list(outputs) if outputs is not None else [f"d_{x}" for x in xs],
        domain=TRAINING_DOMAIN,
        name="grad",
        **kwargs,
    )


def _finite_differences(nodes, feeds, y, wrt, initializers=None, opset=17, eps=1e-6):
    """d sum(y) / d feeds[wrt] by central differences of the forward graph."""
    sess = _session(_model(nodes, feeds, [y], initializers, opset))
    base = {k: np.array(v) for k, v in feeds.items()}
    x = base[wrt]
    grad = np.zeros(x.shape, np.float64)
    for idx in np.ndindex(*x.shape):
        saved = x[idx]
        x[idx] = saved + eps
        plus = np.sum(sess.run([y], base)[0], dtype=np.float64)
        x[idx] = saved - eps
        minus = np.sum(sess.run([y], base)[0], dtype=np.float64)
        x[idx] = saved
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


def check_gradient(nodes, feeds, xs, y=None, initializers=None, opset=17, zs=(), rtol=1e-5, atol=1e-6, eps=1e-6):
    """Run Gradient(xs, y) and compare with finite differences; returns the gradients."""
    y = y or nodes[-1].output[0]
    feeds = {k: np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else np.asarray(v) for k, v in feeds.items()}
    outs = [f"d_{x}" for x in xs]
    model = _model(list(nodes) + [_gradient_node(xs, y, outs, zs=zs)], feeds, [y] + outs, initializers, opset)
    results = _session(model).run(None, feeds)
    for x, got in zip(xs, results[1:]):
        expected = _finite_differences(nodes, feeds, y, x, initializers, opset, eps)
        assert got.shape == feeds[x].shape, (x, got.shape)
        assert got.dtype == feeds[x].dtype
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=f"d{y}/d{x}")
    return results[1:]


def _r(*shape, low=-1.0, high=1.0):
    return RNG.uniform(low, high, shape)


N = helper.make_node


# --------------------------------------------------------------------------- the onnx model cases


@pytest.mark.parametrize("case", ["test_gradient_of_add", "test_gradient_of_add_and_mul"])
def test_onnx_simple_model_cases(case):
    import os

    directory = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "simple", case)
    sess = onyxrt.InferenceSession(os.path.join(directory, "model.onnx"))
    data = os.path.join(directory, "test_data_set_0")
    inputs = [numpy_helper.to_array(onnx.load_tensor(os.path.join(data, f"input_{i}.pb"))) for i in range(2)]
    expected = [numpy_helper.to_array(onnx.load_tensor(os.path.join(data, f"output_{i}.pb"))) for i in range(3)]
    got = sess.run(None, {i.name: v for i, v in zip(sess.get_inputs(), inputs)})
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=1e-6)


# --------------------------------------------------------------------------- elementwise arithmetic


def test_binary_ops_with_broadcasting():
    nodes = [
        N("Mul", ["a", "b"], ["ab"]),
        N("Sub", ["ab", "c"], ["d"]),
        N("Add", ["b", "k"], ["bk"]),
        N("Div", ["d", "bk"], ["y"]),
    ]
    feeds = {"a": _r(2, 3), "b": _r(3), "c": _r(2, 1)}
    check_gradient(nodes, feeds, ["a", "b", "c"], initializers={"k": np.array(3.0)})


def test_div_by_input_and_neg_identity():
    nodes = [N("Neg", ["a"], ["na"]), N("Identity", ["na"], ["i"]), N("Div", ["i", "b"], ["y"])]
    check_gradient(nodes, {"a": _r(3, 2), "b": _r(1, 2, low=1, high=2)}, ["a", "b"])


def test_fan_out_accumulates_and_nonscalar_y_is_summed():
    nodes = [N("Mul", ["x", "x"], ["xx"]), N("Mul", ["xx", "x"], ["x3"]), N("Add", ["x3", "x"], ["y"])]
    (g,) = check_gradient(nodes, {"x": _r(2, 3)}, ["x"])
    assert g.shape == (2, 3)


def test_sum_mean_max_min_variadic():
    nodes = [
        N("Sum", ["a", "b", "c"], ["s"]),
        N("Mean", ["a", "s"], ["m"]),
        N("Max", ["m", "b"], ["mx"]),
        N("Min", ["mx", "c", "a"], ["y"]),
    ]
    check_gradient(nodes, {"a": _r(2, 3), "b": _r(3), "c": _r(2, 3)}, ["a", "b", "c"])


def test_pow_constant_exponent_and_variable_exponent():
    nodes = [N("Pow", ["x", "p"], ["y"])]
    check_gradient(nodes, {"x": _r(2, 3, low=0.5, high=2.0)}, ["x"], initializers={"p": np.array(3.0)})
    nodes = [N("Pow", ["x", "e"], ["y"])]
    check_gradient(nodes, {"x": _r(2, 3, low=0.5, high=2.0), "e": _r(3, low=0.5, high=2.5)}, ["x", "e"])


def test_pow_integer_exponent_is_cast():
    nodes = [N("Pow", ["x", "p"], ["y"])]
    check_gradient(nodes, {"x": _r(4, low=0.5, high=2.0)}, ["x"], initializers={"p": np.array(2, np.int64)})


@pytest.mark.parametrize(
    "op_type,low,high",
    [
        ("Relu", -1, 1),
        ("Sigmoid", -2, 2),
        ("Tanh", -2, 2),
        ("Exp", -1, 1),
        ("Log", 0.5, 2),
        ("Sqrt", 0.5, 2),
        ("Reciprocal", 0.5, 2),
        ("Abs", -1, 1),
        ("Sin", -2, 2),
        ("Cos", -2, 2),
        ("Erf", -1, 1),
        ("Softplus", -2, 2),
        ("Neg", -1, 1),
    ],
)
def test_unary(op_type, low, high):
    x = _r(3, 4, low=low, high=high)
    x[np.abs(x) < 0.05] = 0.3  # keep away from kinks
    check_gradient([N(op_type, ["x"], ["y"])], {"x": x}, ["x"])


def test_leaky_relu_and_clip():
    x = _r(3, 4, low=-2, high=2)
    x[np.abs(x) < 0.05] = 0.3
    check_gradient([N("LeakyRelu", ["x"], ["y"], alpha=0.2)], {"x": x}, ["x"])
    x = np.array([[-1.7, -0.2, 0.3, 0.9], [1.6, -0.6, 0.05, 2.0]])
    lo, hi = np.array(-0.5), np.array(1.0)
    check_gradient([N("Clip", ["x", "lo", "hi"], ["y"])], {"x": x}, ["x"], initializers={"lo": lo, "hi": hi})
    check_gradient([N("Clip", ["x", "", "hi"], ["y"])], {"x": x}, ["x"], initializers={"hi": hi})
    check_gradient([N("Clip", ["x"], ["y"], min=-0.5, max=1.0)], {"x": x}, ["x"], opset=10)


def test_where():
    nodes = [N("Where", ["cond", "a", "b"], ["y"])]
    cond = np.array([[True, False, True]])
    check_gradient(nodes, {"a": _r(2, 3), "b": _r(3)}, ["a", "b"], initializers={"cond": cond})


def test_cast_float_to_double_and_back():
    feeds = {"x": _r(2, 3)}
    nodes = [
        N("Cast", ["x"], ["x32"], to=TensorProto.FLOAT),
        N("Mul", ["x32", "x32"], ["sq"]),
        N("Cast", ["sq"], ["y"], to=TensorProto.DOUBLE),
    ]
    check_gradient(nodes, feeds, ["x"], rtol=1e-3, atol=1e-4, eps=1e-2)


# --------------------------------------------------------------------------- linear algebra


@pytest.mark.parametrize(
    "shape_a,shape_b",
    [((2, 3), (3, 4)), ((2, 2, 3), (3, 4)), ((3,), (3, 4)), ((2, 3), (3,)), ((3,), (3,)), ((2, 1, 3, 4), (5, 4, 2))],
)
def test_matmul(shape_a, shape_b):
    check_gradient([N("MatMul", ["a", "b"], ["y"])], {"a": _r(*shape_a), "b": _r(*shape_b)}, ["a", "b"])


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("opset", [9, 13])
def test_gemm(trans_a, trans_b, opset):
    a = _r(3, 2) if trans_a else _r(2, 3)
    b = _r(4, 3) if trans_b else _r(3, 4)
    node = N("Gemm", ["a", "b", "c"], ["y"], alpha=0.7, beta=1.3, transA=trans_a, transB=trans_b)
    check_gradient([node], {"a": a, "b": b, "c": _r(4)}, ["a", "b", "c"], opset=opset)


def test_gemm_without_bias():
    check_gradient([N("Gemm", ["a", "b"], ["y"], transB=1)], {"a": _r(2, 3), "b": _r(4, 3)}, ["a", "b"])


# --------------------------------------------------------------------------- reductions and softmax


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_sum_mean_axes_input_and_attribute(keepdims):
    feeds = {"x": _r(2, 3, 4)}
    axes = {"axes": np.array([0, -1], np.int64)}
    check_gradient([N("ReduceSum", ["x", "axes"], ["y"], keepdims=keepdims)], feeds, ["x"], initializers=axes)
    check_gradient([N("ReduceMean", ["x", "axes"], ["y"], keepdims=keepdims)], feeds, ["x"], initializers=axes, opset=18)
    check_gradient([N("ReduceMean", ["x"], ["y"], axes=[1], keepdims=keepdims)], feeds, ["x"], opset=13)
    check_gradient([N("ReduceSumSquare", ["x"], ["y"], axes=[2], keepdims=keepdims)], feeds, ["x"], opset=13)


def test_reduce_all_and_noop():
    feeds = {"x": _r(2, 3)}
    check_gradient([N("ReduceMean", ["x"], ["m"]), N("Mul", ["m", "x"], ["y"])], feeds, ["x"])
    check_gradient([N("ReduceSum", ["x"], ["y"], noop_with_empty_axes=1)], feeds, ["x"])


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset,axis", [(13, 1), (13, -1), (11, 1), (11, 2)])
def test_softmax(op_type, opset, axis):
    nodes = [N(op_type, ["x"], ["s"], axis=axis), N("Mul", ["s", "w"], ["y"])]
    check_gradient(nodes, {"x": _r(2, 3, 4), "w": _r(2, 3, 4)}, ["x"], opset=opset)


# --------------------------------------------------------------------------- shape and indexing ops


def test_reshape_flatten_squeeze_unsqueeze_transpose_expand():
    nodes = [
        N("Reshape", ["x", "shape"], ["r"]),
        N("Transpose", ["r"], ["t"], perm=[2, 0, 1]),
        N("Flatten", ["t"], ["f"], axis=1),
        N("Unsqueeze", ["f", "ax0"], ["u"]),
        N("Squeeze", ["u", "ax0"], ["s"]),
        N("Transpose", ["s"], ["t2"]),
        N("Expand", ["b", "eshape"], ["e"]),
        N("Mul", ["t2", "e"], ["y"]),
    ]
    inits = {
        "shape": np.array([2, 3, 2], np.int64),
        "ax0": np.array([0], np.int64),
        "eshape": np.array([6, 2], np.int64),
    }
    check_gradient(nodes, {"x": _r(3, 4), "b": _r(6, 1)}, ["x", "b"], initializers=inits)


def test_concat_and_split():
    nodes = [
        N("Concat", ["a", "b", "c"], ["cat"], axis=1),
        N("Split", ["cat", "sizes"], ["s1", "s2", "s3"], axis=1),
        N("Mul", ["s1", "s3"], ["p"]),
        N("Concat", ["p", "s1"], ["y"], axis=0),
    ]
    inits = {"sizes": np.array([2, 3, 2], np.int64)}
    check_gradient(nodes, {"a": _r(2, 3), "b": _r(2, 1), "c": _r(2, 3)}, ["a", "b", "c"], initializers=inits)


def test_slice_inputs_with_negative_step_and_legacy_attributes():
    inits = {
        "starts": np.array([-1, 1], np.int64),
        "ends": np.array([-100, 100], np.int64),
        "axes": np.array([0, 1], np.int64),
        "steps": np.array([-2, 2], np.int64),
    }
    nodes = [N("Slice", ["x", "starts", "ends", "axes", "steps"], ["s"]), N("Mul", ["s", "s"], ["y"])]
    check_gradient(nodes, {"x": _r(5, 6)}, ["x"], initializers=inits)
    nodes = [N("Slice", ["x"], ["s"], starts=[1], ends=[3], axes=[1]), N("Mul", ["s", "s"], ["y"])]
    check_gradient(nodes, {"x": _r(5, 6)}, ["x"], opset=9)


def test_gather_with_repeated_and_negative_indices():
    nodes = [N("Gather", ["x", "idx"], ["g"], axis=1), N("Mul", ["g", "g"], ["y"])]
    idx = np.array([[0, 2], [-1, 0]], np.int64)
    check_gradient(nodes, {"x": _r(2, 3, 2)}, ["x"], initializers={"idx": idx})


def test_topk_values_and_integer_indices():
    nodes = [
        N("TopK", ["x", "k"], ["v", "i"], axis=1),
        N("Cast", ["i"], ["fi"], to=TensorProto.DOUBLE),
        N("Mul", ["v", "v"], ["vv"]),
        N("Add", ["vv", "fi"], ["y"]),
    ]
    check_gradient(nodes, {"x": _r(2, 5)}, ["x"], initializers={"k": np.array([3], np.int64)})


def test_gather_elements_cumsum_tile_reduce_max_min():
    idx = np.array([[0, 2, 2], [1, 0, 1]], np.int64)
    nodes = [N("GatherElements", ["x", "idx"], ["g"], axis=1), N("Mul", ["g", "g"], ["y"])]
    check_gradient(nodes, {"x": _r(2, 3)}, ["x"], initializers={"idx": idx})
    for exclusive in (0, 1):
        for reverse in (0, 1):
            nodes = [N("CumSum", ["x", "ax"], ["c"], exclusive=exclusive, reverse=reverse), N("Mul", ["c", "c"], ["y"])]
            check_gradient(nodes, {"x": _r(2, 4)}, ["x"], initializers={"ax": np.array(1, np.int64)})
    nodes = [N("Tile", ["x", "reps"], ["t"]), N("Mul", ["t", "w"], ["y"])]
    check_gradient(nodes, {"x": _r(2, 3), "w": _r(4, 3)}, ["x"], initializers={"reps": np.array([2, 1], np.int64)})
    for op_type in ("ReduceMax", "ReduceMin"):
        nodes = [N(op_type, ["x"], ["m"], axes=[1], keepdims=0), N("Mul", ["m", "m"], ["y"])]
        check_gradient(nodes, {"x": _r(3, 4)}, ["x"], opset=13)


def test_dropout_at_inference_is_identity():
    nodes = [N("Dropout", ["x"], ["d"]), N("Mul", ["d", "x"], ["y"])]
    check_gradient(nodes, {"x": _r(2, 3)}, ["x"])


@pytest.mark.parametrize("training", [True, False])
def test_dropout_training_mode_uses_the_mask(training):
    nodes = [N("Dropout", ["x", "ratio", "train"], ["d"], seed=3), N("Mul", ["d", "w"], ["y"])]
    feeds = {"x": _r(4, 5, low=0.5, high=1.0), "w": _r(4, 5)}
    inits = {"ratio": np.array(0.25), "train": np.array(training)}
    d, dx = _run_gradient(nodes, feeds, _gradient_node(["x"], "y"), ["d", "d_x"], inits)
    if training:
        kept = d != 0
        assert 0 < kept.sum() < kept.size
        np.testing.assert_allclose(dx, np.where(kept, feeds["w"] / 0.75, 0.0))
    else:
        np.testing.assert_allclose(dx, feeds["w"])


def test_function_ops_are_differentiated_through_their_bodies():
    feeds = {"x": _r(2, 3, 4), "s": _r(4), "b": _r(4)}
    nodes = [N("Mul", ["x", "x"], ["xx"]), N("LayerNormalization", ["xx", "s", "b"], ["ln"], axis=-1, epsilon=1e-3),
             N("Mul", ["ln", "ln"], ["y"])]
    check_gradient(nodes, feeds, ["x", "s", "b"], opset=17, rtol=1e-4, atol=1e-6)
    feeds = {"x": _r(3, 4, low=-2, high=2)}
    for node in (N("Elu", ["x"], ["y"], alpha=0.5), N("HardSigmoid", ["x"], ["y"]), N("Gelu", ["x"], ["y"]),
                 N("Mish", ["x"], ["y"])):
        check_gradient([node], feeds, ["x"], opset=20, rtol=1e-4)


def test_softmax_cross_entropy_loss_through_its_body():
    feeds = {"x": _r(3, 5), "w": _r(3, 5)}
    labels = {"labels": np.array([0, 4, 2], np.int64)}
    nodes = [N("Mul", ["x", "w"], ["logits"]), N("SoftmaxCrossEntropyLoss", ["logits", "labels"], ["y"], reduction="mean")]
    check_gradient(nodes, feeds, ["x", "w"], initializers=labels, opset=17, rtol=1e-4)


def test_non_differentiable_branches_are_ignored():
    # Shape(x) feeds the graph but carries no gradient.
    nodes = [
        N("Shape", ["x"], ["shp"]),
        N("Reshape", ["x", "shp"], ["r"]),
        N("ArgMax", ["x"], ["am"], axis=1),
        N("Cast", ["am"], ["amf"], to=TensorProto.DOUBLE),
        N("Add", ["r", "amf"], ["y"]),
    ]
    check_gradient(nodes, {"x": _r(2, 3)}, ["x"])


# --------------------------------------------------------------------------- Gradient node semantics


def _run_gradient(nodes, feeds, grad_node, outputs, initializers=None, opset=17):
    model = _model(list(nodes) + [grad_node], feeds, outputs, initializers, opset)
    return _session(model).run(None, feeds)


def test_zs_are_held_constant_and_not_differentiated():
    nodes = [N("Mul", ["x", "z"], ["xz"]), N("Mul", ["xz", "z"], ["y"])]
    feeds = {"x": _r(3), "z": _r(3)}
    (dx,) = _run_gradient(nodes, feeds, _gradient_node(["x"], "y", zs=["z"]), ["d_x"])
    np.testing.assert_allclose(dx, feeds["z"] ** 2)


def test_gradient_at_other_values_recomputes_forward():
    nodes = [N("Mul", ["a", "b"], ["ab"]), N("Mul", ["ab", "a"], ["y"])]
    feeds = {"a": _r(3), "b": _r(3), "a1": _r(3), "b1": _r(3)}
    grad = _gradient_node(["a", "b"], "y", inputs=["a1", "b1"])
    y, da, db = _run_gradient(nodes, feeds, grad, ["y", "d_a", "d_b"])
    np.testing.assert_allclose(y, feeds["a"] ** 2 * feeds["b"])  # the forward output itself is untouched
    np.testing.assert_allclose(da, 2 * feeds["a1"] * feeds["b1"])
    np.testing.assert_allclose(db, feeds["a1"] ** 2)
    # swapped inputs: a := b, b := a
    grad = _gradient_node(["a", "b"], "y", inputs=["b", "a"])
    da, db = _run_gradient(nodes, feeds, grad, ["d_a", "d_b"])
    np.testing.assert_allclose(da, 2 * feeds["b"] * feeds["a"])
    np.testing.assert_allclose(db, feeds["b"] ** 2)


def test_gradient_with_respect_to_an_intermediate():
    # W -> Mul -> H -> Mul(Z) -> Y ; dY/dH = Z (W's path through H is cut).
    nodes = [N("Mul", ["w", "w"], ["h"]), N("Mul", ["h", "z"], ["hz"]), N("Add", ["hz", "w"], ["y"])]
    feeds = {"w": _r(3), "z": _r(3)}
    dh, dz = _run_gradient(nodes, feeds, _gradient_node(["h", "z"], "y"), ["d_h", "d_z"])
    np.testing.assert_allclose(dh, feeds["z"])
    np.testing.assert_allclose(dz, feeds["w"] ** 2)
    # ... and at a given value of H
    feeds["h1"] = _r(3)
    (dz,) = _run_gradient(nodes, feeds, _gradient_node(["h", "z"], "y", outputs=["", "d_z"], inputs=["h1", "z"]), ["d_z"])
    np.testing.assert_allclose(dz, feeds["h1"])


def test_unreachable_x_gets_zeros_and_y_in_xs_gets_ones():
    nodes = [N("Mul", ["a", "a"], ["y"])]
    feeds = {"a": _r(2, 3), "b": _r(4)}
    da, db = _run_gradient(nodes, feeds, _gradient_node(["a", "b"], "y"), ["d_a", "d_b"])
    np.testing.assert_allclose(da, 2 * feeds["a"])
    assert db.shape == (4,) and db.dtype == np.float64 and not db.any()
    (dy,) = _run_gradient(nodes, feeds, _gradient_node(["y"], "y", inputs=["y"]), ["d_y"])
    np.testing.assert_array_equal(dy, np.ones((2, 3)))


def test_skipped_outputs_and_gradient_node_before_forward_nodes():
    nodes = [N("Mul", ["a", "b"], ["y"])]
    feeds = {"a": _r(3), "b": _r(3)}
    grad = _gradient_node(["a", "b"], "y", outputs=["", "d_b"])
    model = _model([grad] + nodes, feeds, ["d_b", "y"])  # Gradient listed first
    d_b, y = _session(model).run(None, feeds)
    np.testing.assert_allclose(d_b, feeds["a"])
    np.testing.assert_allclose(y, feeds["a"] * feeds["b"])


def test_y_not_a_graph_output_and_float32():
    nodes = [N("Mul", ["a", "a"], ["sq"]), N("ReduceSum", ["sq"], ["y"], keepdims=0)]
    feeds = {"a": _r(4).astype(np.float32)}
    (da,) = _run_gradient(nodes, feeds, _gradient_node(["a"], "y"), ["d_a"])
    assert da.dtype == np.float32
    np.testing.assert_allclose(da, 2 * feeds["a"], rtol=1e-6)


def test_second_order_gradient():
    # O = sum((X W - L)^2) ; dO/dW = 2 X^T (X W - L) ; d(sum dO/dW)/dW and d/dX checked by finite differences.
    nodes = [
        N("Gemm", ["x", "w"], ["xw"]),
        N("Sub", ["xw", "l"], ["r"]),
        N("Mul", ["r", "r"], ["sq"]),
        N("ReduceSum", ["sq"], ["o"], keepdims=0),
        _gradient_node(["x", "w"], "o", outputs=["do_dx", "do_dw"], zs=["l"]),
        N("Mul", ["do_dw", "do_dw"], ["q"]),
    ]
    feeds = {"x": _r(3, 2), "w": _r(2, 4), "l": _r(3, 4)}
    # first order against the closed form
    do_dx, do_dw = _run_gradient(nodes[:5], feeds, N("Identity", ["o"], ["o_copy"]), ["do_dx", "do_dw"])
    resid = feeds["x"] @ feeds["w"] - feeds["l"]
    np.testing.assert_allclose(do_dw, 2 * feeds["x"].T @ resid)
    np.testing.assert_allclose(do_dx, 2 * resid @ feeds["w"].T)
    # second order (q = (dO/dW)^2 summed) against finite differences of the first-order graph
    check_gradient(nodes, feeds, ["x", "w"], y="q", rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape_x,shape_w", [((3, 2), (2, 4)), ((2, 3, 2), (2, 4)), ((2,), (2, 4)), ((3, 2), (2,))])
def test_second_order_through_matmul(shape_x, shape_w):
    nodes = [
        N("MatMul", ["x", "w"], ["xw"]),
        N("Sub", ["xw", "l"], ["r"]),
        N("Mul", ["r", "r"], ["sq"]),
        N("ReduceSum", ["sq"], ["o"], keepdims=0),
        _gradient_node(["x", "w"], "o", outputs=["do_dx", "do_dw"], zs=["l"]),
        N("Mul", ["do_dx", "do_dx"], ["q0"]),
        N("ReduceSum", ["q0"], ["q1"], keepdims=0),
        N("Mul", ["q1", "do_dw"], ["q"]),
    ]
    shape_l = np.matmul(np.zeros(shape_x), np.zeros(shape_w)).shape if len(shape_x) > 1 or len(shape_w) > 1 else ()
    feeds = {"x": _r(*shape_x), "w": _r(*shape_w), "l": _r(*shape_l)}
    check_gradient(nodes, feeds, ["x", "w"], y="q", rtol=1e-4, atol=1e-5)


def test_second_order_through_reductions_and_broadcasting():
    nodes = [
        N("Mul", ["x", "b"], ["xb"]),
        N("ReduceMean", ["xb"], ["m"], axes=[1], keepdims=0),
        N("Sigmoid", ["m"], ["s"]),
        N("Reshape", ["s", "shape"], ["rs"]),
        N("Mul", ["rs", "rs"], ["o"]),
        _gradient_node(["x", "b"], "o", outputs=["gx", "gb"]),
        N("Mul", ["gx", "gb"], ["q"]),
    ]
    check_gradient(nodes, {"x": _r(2, 3), "b": _r(3)}, ["x", "b"], y="q", opset=13,
                   initializers={"shape": np.array([2, 1], np.int64)}, rtol=1e-4, atol=1e-6)


def test_gradient_inside_a_subgraph_reads_outer_values():
    then_graph = helper.make_graph(
        [N("Mul", ["a", "a"], ["sq"]), N("Mul", ["sq", "w"], ["t"]), _gradient_node(["a"], "t", outputs=["g"])],
        "then",
        [],
        [helper.make_tensor_value_info("g", TensorProto.DOUBLE, None)],
    )
    else_graph = helper.make_graph(
        [N("Identity", ["a"], ["e"])], "else", [], [helper.make_tensor_value_info("e", TensorProto.DOUBLE, None)]
    )
    nodes = [N("If", ["cond"], ["out"], then_branch=then_graph, else_branch=else_graph)]
    feeds = {"a": _r(3), "w": _r(3), "cond": np.array(True)}
    graph = helper.make_graph(
        nodes,
        "g",
        [_vi("a", feeds["a"]), _vi("w", feeds["w"]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.DOUBLE, None)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(TRAINING_DOMAIN, 1)], ir_version=8
    )
    (out,) = _session(model).run(None, feeds)
    np.testing.assert_allclose(out, 2 * feeds["a"] * feeds["w"])


def test_gradient_inside_a_subgraph_differentiates_outer_nodes():
    # y = a * w is computed outside; the Gradient in the Loop body reads it and adds its own use of a.
    body = helper.make_graph(
        [
            N("Mul", ["y", "a"], ["ya"]),
            _gradient_node(["a"], "ya", outputs=["g"]),
            N("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("g", TensorProto.DOUBLE, None),
        ],
    )
    nodes = [N("Mul", ["a", "w"], ["y"]), N("Loop", ["trips", ""], ["gs"], body=body)]
    feeds = {"a": _r(3), "w": _r(3)}
    graph = helper.make_graph(
        nodes,
        "g",
        [_vi("a", feeds["a"]), _vi("w", feeds["w"])],
        [helper.make_tensor_value_info("gs", TensorProto.DOUBLE, None)],
        [numpy_helper.from_array(np.array(2, np.int64), "trips")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(TRAINING_DOMAIN, 1)], ir_version=8
    )
    (gs,) = _session(model).run(None, feeds)
    np.testing.assert_allclose(gs, np.stack([2 * feeds["a"] * feeds["w"]] * 2))


# --------------------------------------------------------------------------- errors


def test_op_without_rule_on_the_path_is_not_implemented():
    nodes = [N("Conv", ["x", "w"], ["c"]), N("Mul", ["c", "c"], ["y"])]
    feeds = {"x": _r(1, 1, 4, 4)}
    model = _model(nodes + [_gradient_node(["x"], "y")], feeds, ["d_x"], {"w": _r(1, 1, 2, 2)})
    with pytest.raises(OrtNotImplemented, match="Conv"):
        _session(model)


def test_op_without_rule_off_the_path_is_fine():
    nodes = [
        N("Conv", ["x", "w"], ["c"]),
        N("Shape", ["c"], ["shp"]),
        N("Cast", ["shp"], ["fs"], to=TensorProto.DOUBLE),
        N("ReduceSum", ["fs"], ["s"], keepdims=0),
        N("Mul", ["x", "x"], ["xx"]),
        N("Add", ["xx", "s"], ["y"]),
    ]
    feeds = {"x": _r(1, 1, 4, 4)}
    model = _model(nodes + [_gradient_node(["x"], "y")], feeds, ["d_x"], {"w": _r(1, 1, 2, 2)})
    (dx,) = _session(model).run(None, feeds)
    np.testing.assert_allclose(dx, 2 * feeds["x"])


def test_malformed_gradient_nodes_are_invalid_graphs():
    feeds = {"a": _r(3)}
    nodes = [N("Mul", ["a", "a"], ["y"])]
    bad = helper.make_node("Gradient", ["a", "a"], ["d_a"], domain=TRAINING_DOMAIN, xs=["a"], y="y")
    with pytest.raises(InvalidGraph, match="one input per name"):
        _session(_model(nodes + [bad], feeds, ["d_a"]))
    bad = helper.make_node("Gradient", ["a"], ["d_a"], domain=TRAINING_DOMAIN, xs=["a"], y="nowhere")
    with pytest.raises(InvalidGraph, match="nowhere"):
        _session(_model(nodes + [bad], feeds, ["d_a"]))


def test_gradient_of_its_own_output_is_a_cycle():
    feeds = {"a": _r(3)}
    nodes = [N("Mul", ["a", "a"], ["y"]), N("Add", ["y", "d_a"], ["z"]),
             helper.make_node("Gradient", ["a"], ["d_a"], domain=TRAINING_DOMAIN, xs=["a"], y="z")]
    with pytest.raises(InvalidGraph, match="cycle"):
        _session(_model(nodes, feeds, ["d_a"]))


# --------------------------------------------------------------------------- the IR pass itself


def test_expansion_leaves_no_gradient_nodes_and_is_idempotent():
    nodes = [N("Mul", ["a", "b"], ["y"]), _gradient_node(["a", "b"], "y")]
    model = model_from_proto(_model(nodes, {"a": _r(3), "b": _r(3)}, ["d_a", "d_b"]))
    assert expand_gradient_nodes(model.graph, model.opset_imports)
    ops = [(n.domain, n.op_type) for n in model.graph]
    assert (TRAINING_DOMAIN, "Gradient") not in ops
    assert all(d in ("", AUTODIFF_DOMAIN) for d, _ in ops)
    assert [v.name for v in model.graph.outputs] == ["d_a", "d_b"]
    assert all(v.producer() is not None and v.producer().graph is model.graph for v in model.graph.outputs)
    assert model.graph.outputs[0].dtype == onnx.TensorProto.DOUBLE  # typed: d_a is like a
    names = [v.name for n in model.graph for v in n.outputs]
    assert len(names) == len(set(names))
    assert not expand_gradient_nodes(model.graph, model.opset_imports)


def test_fresh_names_are_unique_across_scopes():
    # Two Gradient nodes named "grad", one in the main graph and one in a Loop body, expand to distinct names.
    body = helper.make_graph(
        [N("Mul", ["y", "a"], ["ya"]), _gradient_node(["a"], "ya", outputs=["g"]), N("Identity", ["c_in"], ["c_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("c_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []), helper.make_tensor_value_info("g", TensorProto.DOUBLE, None)],
    )
    nodes = [N("Mul", ["a", "a"], ["y"]), _gradient_node(["a"], "y"), N("Loop", ["trips", ""], ["gs"], body=body)]
    feeds = {"a": _r(3)}
    proto = _model(nodes, feeds, ["d_a", "gs"], {"trips": np.array(1, np.int64)})
    model = model_from_proto(proto)
    assert expand_gradient_nodes(model.graph, model.opset_imports)
    loop = next(n for n in model.graph if n.op_type == "Loop")
    scopes = [model.graph, loop.attributes["body"].as_graph()]
    names = [v.name for g in scopes for n in g for v in n.outputs] + [n.name for g in scopes for n in g if n.name]
    assert len(names) == len(set(names))
    d_a, gs = _session(proto).run(None, feeds)
    np.testing.assert_allclose(d_a, 2 * feeds["a"])
    np.testing.assert_allclose(gs, [3 * feeds["a"] ** 2])
