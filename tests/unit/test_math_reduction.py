"""Unit tests for onyxrt.providers.cpu.math.reduction."""

import ml_dtypes
import numpy as np
import onnx.defs
import pytest

import onyxrt.providers.cpu.kernel_modules  # noqa: F401  (registers every kernel)
from onyxrt.providers.cpu.math import reduction as rd
from onyxrt.providers.cpu.kernel_table import CPU_KERNELS

OPS = """ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
ReduceSumSquare ArgMax ArgMin CumSum CumProd TopK""".split()


@pytest.mark.parametrize("op_type", OPS)
def test_every_schema_version_registered(op_type):
    schemas = onnx.defs.get_all_schemas_with_history()
    versions = {s.since_version for s in schemas if s.name == op_type and s.domain == ""}
    for version in versions:
        kernel = CPU_KERNELS.lookup("", op_type, version)
        assert kernel is not None and kernel.since_version == version, (op_type, version)


def test_axes_attribute_vs_input_versions():
    assert CPU_KERNELS.lookup("", "ReduceSum", 11).fn is rd.reduce_sum_attr
    assert CPU_KERNELS.lookup("", "ReduceSum", 13).fn is rd.reduce_sum
    assert CPU_KERNELS.lookup("", "ReduceMean", 13).fn is rd.reduce_mean_attr
    assert CPU_KERNELS.lookup("", "ReduceMean", 18).fn is rd.reduce_mean


REFS = {
    "sum": (rd.reduce_sum_attr, rd.reduce_sum, np.sum),
    "mean": (rd.reduce_mean_attr, rd.reduce_mean, np.mean),
    "max": (rd.reduce_max_attr, rd.reduce_max, np.max),
    "min": (rd.reduce_min_attr, rd.reduce_min, np.min),
    "prod": (rd.reduce_prod_attr, rd.reduce_prod, np.prod),
    "l1": (rd.reduce_l1_attr, rd.reduce_l1, lambda x, **kw: np.sum(np.abs(x), **kw)),
    "l2": (rd.reduce_l2_attr, rd.reduce_l2, lambda x, **kw: np.sqrt(np.sum(x * x, **kw))),
    "logsum": (rd.reduce_log_sum_attr, rd.reduce_log_sum, lambda x, **kw: np.log(np.sum(x, **kw))),
    "logsumexp": (rd.reduce_log_sum_exp_attr, rd.reduce_log_sum_exp, lambda x, **kw: np.log(np.sum(np.exp(x), **kw))),
    "sumsquare": (rd.reduce_sum_square_attr, rd.reduce_sum_square, lambda x, **kw: np.sum(x * x, **kw)),
}


@pytest.mark.parametrize("name", sorted(REFS))
@pytest.mark.parametrize("axes", [None, [1], [0, 2], [-1, 0]])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_float(name, axes, keepdims):
    attr_fn, input_fn, ref = REFS[name]
    x = np.random.default_rng(0).uniform(0.5, 2.0, (2, 3, 4)).astype(np.float32)
    x.flags.writeable = False
    np_axis = None if axes is None else tuple(a % 3 for a in axes)
    expected = ref(x.astype(np.float64), axis=np_axis, keepdims=bool(keepdims))
    for out in (
        attr_fn(x, axes=axes, keepdims=keepdims),
        input_fn(x, None if axes is None else np.array(axes, np.int64), keepdims=keepdims),
    ):
        assert type(out) is np.ndarray and out.dtype == np.float32 and out.shape == np.shape(expected)
        np.testing.assert_allclose(out, expected, rtol=1e-5)


@pytest.mark.parametrize("axes", [[2, 3], [-1], [1, 2, 3]])
@pytest.mark.parametrize("split", [False, True])
def test_means_over_trailing_axes_are_row_means(axes, split):
    """ReduceMean over an NCHW image's trailing axes (a global average pool) runs as the pool's row means, on one
    thread or as a native task over a pool that splits products, keepdims or not."""
    from onyxrt.framework.thread_pool import ThreadPool

    x = np.random.default_rng(1).standard_normal((8, 48, 12, 12)).astype(np.float32)
    pool = ThreadPool(2).splitting_gemms() if split else ThreadPool(1)
    with pool.activate():
        for keepdims in (0, 1):
            out = rd.reduce_mean_attr(x, axes=axes, keepdims=keepdims)
            expected = x.astype(np.float64).mean(axis=tuple(a % 4 for a in axes), keepdims=bool(keepdims))
            assert out.dtype == np.float32 and out.shape == expected.shape
            np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    pool.shutdown()


def test_noop_with_empty_axes():
    x = np.array([[1.0, 4.0], [9.0, 16.0]], np.float32)
    empty = np.array([], np.int64)
    np.testing.assert_array_equal(rd.reduce_sum(x, empty, noop_with_empty_axes=1), x)
    np.testing.assert_array_equal(rd.reduce_sum(x, None, noop_with_empty_axes=1), x)
    np.testing.assert_array_equal(rd.reduce_sum(x, empty), [[30.0]])
    np.testing.assert_array_equal(rd.reduce_sum(x, empty, keepdims=0), np.array(30.0))
    # composite reductions still apply their element-wise part
    np.testing.assert_allclose(rd.reduce_log_sum(x, empty, noop_with_empty_axes=1), np.log(x))
    np.testing.assert_array_equal(rd.reduce_sum_square(x, None, noop_with_empty_axes=1), x * x)
    np.testing.assert_array_equal(rd.reduce_l2(x, None, noop_with_empty_axes=1), x)
    np.testing.assert_allclose(rd.reduce_log_sum_exp(x, None, noop_with_empty_axes=1), x, rtol=1e-6)


def test_integer_reductions_keep_type():
    x = np.array([[1, 2, 3], [-4, 5, -7]], np.int32)
    fns = (rd.reduce_sum, rd.reduce_prod, rd.reduce_max, rd.reduce_min, rd.reduce_l1, rd.reduce_sum_square)
    for fn in fns + (rd.reduce_mean,):
        out = fn(x, np.array([1], np.int64))
        assert out.dtype == np.int32, fn.__name__
    assert rd.reduce_sum(x, np.array([1])).ravel().tolist() == [6, -6]
    assert rd.reduce_mean(x, np.array([1])).ravel().tolist() == [2, -2]  # truncated
    assert rd.reduce_l2(np.array([[3, 4]], np.int64), np.array([1])).ravel().tolist() == [5]
    u = np.array([4000000000, 100], np.uint32)
    assert rd.reduce_max(u, None, keepdims=0) == 4000000000 and rd.reduce_max(u, None).dtype == np.uint32
    assert rd.reduce_sum(np.array([100, 100], np.uint8), None, keepdims=0) == 200


def test_low_precision_accumulates_in_float32():
    x = np.concatenate([[2048.0], np.ones(8)]).astype(np.float16)
    out = rd.reduce_sum(x, None, keepdims=0)
    assert out.dtype == np.float16 and out == 2056.0
    b = rd.reduce_mean(np.array([1.0, 2.0], ml_dtypes.bfloat16), None)
    assert b.dtype == ml_dtypes.bfloat16 and float(b[0]) == 1.5


def test_empty_set_reductions():
    e = np.zeros((0, 3), np.float32)
    axis0 = np.array([0], np.int64)
    assert rd.reduce_sum(e, axis0).tolist() == [[0, 0, 0]]
    assert rd.reduce_prod(e, axis0).tolist() == [[1, 1, 1]]
    assert rd.reduce_max(e, axis0).tolist() == [[-np.inf] * 3]
    assert rd.reduce_min(e, axis0).tolist() == [[np.inf] * 3]
    assert rd.reduce_log_sum(e, axis0).tolist() == [[-np.inf] * 3]
    assert rd.reduce_log_sum_exp(e, axis0).tolist() == [[-np.inf] * 3]
    assert rd.reduce_l2(e, axis0).tolist() == [[0, 0, 0]]
    assert rd.reduce_mean(e, axis0).tolist() == [[0, 0, 0]]
    ei = np.zeros((0,), np.int32)
    assert rd.reduce_max(ei, None, keepdims=0) == np.iinfo(np.int32).min
    assert rd.reduce_min(ei, None, keepdims=0) == np.iinfo(np.int32).max
    assert rd.reduce_sum(np.zeros((2, 0), np.float32), np.array([1]), keepdims=0).tolist() == [0, 0]


def test_reduce_bool_max_min():
    b = np.array([[True, False], [False, False]])
    assert rd.reduce_max(b, np.array([1])).ravel().tolist() == [True, False]
    assert rd.reduce_min(b, np.array([1])).ravel().tolist() == [False, False]


def test_log_sum_exp_is_stable():
    x = np.array([[1000.0, 1000.0], [-np.inf, -np.inf]], np.float32)
    out = rd.reduce_log_sum_exp(x, np.array([1]), keepdims=0)
    np.testing.assert_allclose(out[0], 1000.0 + np.log(2.0), rtol=1e-6)
    assert out[1] == -np.inf


def test_rank_zero_input():
    s = np.array(5.0, np.float32)
    assert rd.reduce_sum(s, None).shape == () and rd.reduce_sum(s, None) == 5.0
    assert rd.reduce_max_attr(s, keepdims=0) == 5.0


# --------------------------------------------------------------------------- ArgMax / ArgMin


def test_arg_max_min():
    x = np.array([[2.0, 5.0, 5.0], [7.0, 1.0, 7.0]], np.float32)
    out = rd.arg_max(x, axis=1)
    assert out.dtype == np.int64 and out.tolist() == [[1], [0]]
    assert rd.arg_max(x, axis=1, select_last_index=1, keepdims=0).tolist() == [2, 2]
    assert rd.arg_min(x, axis=0, keepdims=0).tolist() == [0, 1, 0]
    assert rd.arg_min(np.array([3, 1, 1], np.int8), axis=-1, select_last_index=1).tolist() == [2]
    assert rd.arg_max(np.array([1.0, 3.0], np.float16)).tolist() == [1]
    with pytest.raises(ValueError):
        rd.arg_max(np.zeros((0, 2), np.float32), axis=0)


# --------------------------------------------------------------------------- CumSum / CumProd


@pytest.mark.parametrize(
    "exclusive, reverse, expected", [(0, 0, [1, 3, 6]), (1, 0, [0, 1, 3]), (0, 1, [6, 5, 3]), (1, 1, [5, 3, 0])]
)
def test_cum_sum_spec_examples(exclusive, reverse, expected):
    x = np.array([1.0, 2.0, 3.0], np.float32)
    out = rd.cum_sum(x, np.array(0, np.int32), exclusive=exclusive, reverse=reverse)
    assert out.dtype == np.float32 and out.tolist() == expected and out.flags.c_contiguous


@pytest.mark.parametrize(
    "exclusive, reverse, expected", [(0, 0, [1, 2, 6]), (1, 0, [1, 1, 2]), (0, 1, [6, 6, 3]), (1, 1, [6, 3, 1])]
)
def test_cum_prod_spec_examples(exclusive, reverse, expected):
    x = np.array([1, 2, 3], np.int64)
    out = rd.cum_prod(x, np.array([0], np.int64), exclusive=exclusive, reverse=reverse)
    assert out.dtype == np.int64 and out.tolist() == expected


def test_cum_sum_axes_and_types():
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    out = rd.cum_sum(x, np.array(1, np.int64))
    assert out.dtype == np.int32 and out.tolist() == [[0, 1, 3], [3, 7, 12]]
    assert rd.cum_sum(x, np.array(-2), exclusive=1).tolist() == [[0, 0, 0], [0, 1, 2]]
    assert rd.cum_sum(x, np.array(0), reverse=1).tolist() == [[3, 5, 7], [3, 4, 5]]
    h = rd.cum_sum(np.array([1.0, 2.0], np.float16), np.array(0))
    assert h.dtype == np.float16 and h.tolist() == [1.0, 3.0]
    assert rd.cum_sum(np.zeros((0, 2), np.float32), np.array(0), exclusive=1).shape == (0, 2)


# --------------------------------------------------------------------------- TopK


def test_top_k_ties_lower_index_first():
    x = np.array([[3.0, 1.0, 3.0, 2.0, 3.0]], np.float32)
    values, indices = rd.top_k(x, np.array([3], np.int64))
    assert values.tolist() == [[3, 3, 3]] and indices.tolist() == [[0, 2, 4]]
    values, indices = rd.top_k(x, np.array([2], np.int64), largest=0)
    assert values.tolist() == [[1, 2]] and indices.tolist() == [[1, 3]]
    values, indices = rd.top_k(-x, np.array([4], np.int64), largest=0)
    assert indices.tolist() == [[0, 2, 4, 3]]


@pytest.mark.parametrize(
    "dtype", [np.float32, np.float16, np.float64, np.int8, np.int32, np.int64, np.uint8, np.uint32, np.uint64]
)
@pytest.mark.parametrize("largest", [0, 1])
@pytest.mark.parametrize("n, k", [(7, 3), (200, 5), (9, 9), (5, 0)])
def test_top_k_matches_stable_sort(dtype, largest, n, k):
    rng = np.random.default_rng(n)
    x = rng.integers(-3 if np.dtype(dtype).kind != "u" else 0, 4, (2, n, 3)).astype(dtype)  # many ties
    values, indices = rd.top_k(x, np.array([k], np.int64), axis=1, largest=largest)
    key = -x.astype(np.float64) if largest else x.astype(np.float64)
    expected = np.argsort(key, axis=1, kind="stable")[:, :k, :]
    assert indices.dtype == np.int64 and values.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_array_equal(values, np.take_along_axis(x, expected, axis=1))


def test_top_k_float_extremes():
    x = np.array([0.0, -0.0, np.inf, -np.inf, 1e-40, -1e-40, 3.0], np.float32)
    values, indices = rd.top_k(x, np.array([7], np.int64))
    assert indices.tolist() == [2, 6, 4, 0, 1, 5, 3]  # +0 and -0 tie: index order
    values, indices = rd.top_k(x, np.array([2], np.int64), largest=0)
    assert indices.tolist() == [3, 5]


def test_top_k_versions():
    x = np.array([[1.0, 4.0, 2.0]], np.float32)
    assert rd.top_k_1(x, k=2)[1].tolist() == [[1, 2]]
    assert rd.top_k_10(x, np.array([1], np.int64))[0].tolist() == [[4.0]]
    values, indices = rd.top_k(x, np.array([1]), axis=0)
    assert values.tolist() == x.tolist() and indices.tolist() == [[0, 0, 0]]
    with pytest.raises(ValueError):
        rd.top_k(x, np.array([4], np.int64))


def _reduce_session(opset, attrs, axes=None, computed_axes=False):
    """A one-node ReduceMean session: axes as an attribute (``attrs``), an initializer (``axes``) or a graph input."""
    from onnx import TensorProto, helper, numpy_helper

    import onyxrt

    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)]
    initializers = []
    names = ["x"]
    if computed_axes:
        inputs.append(helper.make_tensor_value_info("axes", TensorProto.INT64, [None]))
        names.append("axes")
    elif axes is not None:
        initializers.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
        names.append("axes")
    graph = helper.make_graph([helper.make_node("ReduceMean", names, ["y"], **attrs)], "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onyxrt.InferenceSession(model.SerializeToString())


@pytest.mark.parametrize("opset, attrs, axes", [
    (13, dict(axes=[-1, 1]), None), (13, dict(axes=[2, 3], keepdims=0), None), (13, {}, None),
    (18, {}, [-1, 1]), (18, dict(keepdims=0), [2, 3]), (18, {}, None), (18, dict(noop_with_empty_axes=1), None)])
def test_reduce_axes_resolved_once_per_input_rank(opset, attrs, axes):
    """Constant axes (an attribute or an initializer) resolved per input shape by the node's fast path: numpy's
    results for inputs whose shapes change between runs; an axis outside a run's rank the kernel's error."""
    from onyxrt.errors import OnyxRuntimeError

    session = _reduce_session(opset, attrs, axes)
    assert session._plan._steps[0][0].__qualname__.endswith(("<locals>.reduce", "<locals>.constant_parameters"))
    given = attrs.get("axes", axes)
    for shape in [(2, 3, 4, 5), (3, 2, 6, 4), (2, 3, 4, 5), (1, 5, 2, 2, 3)]:
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        if given is None:
            axis = () if attrs.get("noop_with_empty_axes") else None
        else:
            axis = tuple(sorted({a % len(shape) for a in given}))
        expected = x if axis == () else np.mean(x, axis=axis, keepdims=bool(attrs.get("keepdims", 1)))
        np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-6, atol=1e-7)
    if given is not None:
        with pytest.raises(OnyxRuntimeError, match="axis"):
            session.run(None, {"x": np.ones((4, 4), np.float32) if max(given) >= 2 else np.ones(4, np.float32)})


def test_reduce_with_computed_axes_runs_the_kernel():
    session = _reduce_session(18, {}, computed_axes=True)
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    for axes in ([1], [0, 2], [-1]):
        np.testing.assert_allclose(session.run(None, {"x": x, "axes": np.array(axes, np.int64)})[0],
                                   np.mean(x, axis=tuple(axes), keepdims=True), rtol=1e-6)
