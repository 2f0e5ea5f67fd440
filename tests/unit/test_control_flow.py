"""If / Loop / Scan kernels: direct calls with fake subgraphs, and whole models against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import onyxrt
from onyxrt.providers.cpu.controlflow.control_flow import if_, loop, scan, scan8


class FakeBody:
    """Stands in for a compiled Subgraph: a Python function of the formal inputs."""

    def __init__(self, fn, inputs, outputs):
        self.fn = fn
        self.input_names = list(inputs)
        self.output_names = list(outputs)
        self.calls = 0
        self.outer_seen = []

    def __call__(self, *args, outer=()):
        self.calls += 1
        self.outer_seen.append(tuple(outer))
        return list(self.fn(*args))


# --------------------------------------------------------------------------- direct kernel calls


def test_if_picks_branch_and_passes_outer():
    then_b = FakeBody(lambda: [np.array([1.0], np.float32), np.array(2)], [], ["a", "b"])
    else_b = FakeBody(lambda: [np.array([3.0], np.float32), np.array(4)], [], ["a", "b"])
    out = if_(np.array(True), then_branch=then_b, else_branch=else_b, _outer=("x",), _num_outputs=2)
    assert isinstance(out, tuple) and out[0][0] == 1.0 and int(out[1]) == 2
    assert then_b.outer_seen == [("x",)] and else_b.calls == 0
    out = if_(np.array([False]), then_branch=then_b, else_branch=else_b, _num_outputs=2)
    assert out[0][0] == 3.0 and then_b.calls == 1


def test_if_rejects_bad_condition_and_output_count():
    b = FakeBody(lambda: [np.zeros(1)], [], ["a"])
    with pytest.raises(ValueError):
        if_(np.array([True, False]), then_branch=b, else_branch=b)
    with pytest.raises(ValueError):
        if_(np.array(True), then_branch=b, else_branch=b, _num_outputs=2)


def test_loop_trip_count_carried_and_scan():
    def body(i, cond, acc):
        assert i.dtype == np.int64 and i.shape == () and cond.dtype == np.bool_
        new = acc + i.astype(np.float32)
        return [cond, new, new * 2]

    b = FakeBody(body, ["i", "c", "acc"], ["c", "acc", "s"])
    acc, scanned = loop(np.array(4, np.int64), None, np.zeros(2, np.float32), body=b, _num_outputs=2)
    np.testing.assert_array_equal(acc, [6, 6])
    assert scanned.shape == (4, 2) and scanned.dtype == np.float32
    np.testing.assert_array_equal(scanned[:, 0], [0, 2, 6, 12])


def test_loop_while_condition_and_sequence_carried():
    def body(i, cond, seq):
        return [np.array(int(i) < 2), seq + [np.array([int(i)], np.int64)]]

    b = FakeBody(body, ["i", "c", "seq"], ["c", "seq"])
    (seq,) = loop(None, np.array(True), [], body=b, _num_outputs=1)
    assert [int(x[0]) for x in seq] == [0, 1, 2]
    # The initial condition false: no iteration at all.
    (seq,) = loop(None, np.array(False), [], body=b, _num_outputs=1)
    assert seq == [] and b.calls == 3


def test_loop_optional_carried_none_passes_through():
    b = FakeBody(lambda i, c, v: [c, v], ["i", "c", "v"], ["c", "v"])
    (v,) = loop(np.array(3, np.int64), None, None, body=b, _num_outputs=1)
    assert v is None and b.calls == 3


def test_loop_zero_iterations_without_type_info():
    b = FakeBody(lambda i, c, x: [c, x, x], ["i", "c", "x"], ["c", "x", "s"])
    x = np.ones((2, 3), np.float32)
    out_x, scanned = loop(np.array(0, np.int64), None, x, body=b, _num_outputs=2)
    assert out_x is x and scanned.shape == (0,) and b.calls == 0


def test_scan9_directions_and_axes():
    # state: running sum of rows; output: each row times 10.
    b = FakeBody(lambda s, x: [s + x, x * 10], ["s", "x"], ["s", "y"])
    xs = np.arange(6, dtype=np.float32).reshape(3, 2)
    state, ys = scan(np.zeros(2, np.float32), xs, body=b, num_scan_inputs=1)
    np.testing.assert_array_equal(state, xs.sum(0))
    np.testing.assert_array_equal(ys, xs * 10)
    # scan along axis 1 (columns), reversed input, output stacked on the last axis, reversed.
    b2 = FakeBody(lambda s, x: [s + x, x + 0], ["s", "x"], ["s", "y"])
    state, ys = scan(
        np.zeros(3, np.float32), xs, body=b2, num_scan_inputs=1,
        scan_input_axes=[1], scan_input_directions=[1], scan_output_axes=[-1], scan_output_directions=[1],
    )
    np.testing.assert_array_equal(state, xs.sum(1))
    # input reversed then output reversed again: the original column order comes back.
    np.testing.assert_array_equal(ys, xs)


def test_scan8_batches_and_sequence_lens():
    b = FakeBody(lambda s, x: [s + x, s + x], ["s", "x"], ["s", "y"])
    xs = np.arange(12, dtype=np.float32).reshape(2, 3, 2) + 1
    state, ys = scan8(np.array([3, 1], np.int64), np.zeros((2, 2), np.float32), xs,
                      body=b, num_scan_inputs=1, directions=[1])
    np.testing.assert_array_equal(state, [[9, 12], [7, 8]])
    np.testing.assert_array_equal(ys, [[[5, 6], [8, 10], [9, 12]], [[7, 8], [0, 0], [0, 0]]])


# --------------------------------------------------------------------------- whole models vs onnxruntime


def _compare(model: onnx.ModelProto, feeds: dict):
    ort = pytest.importorskip("onnxruntime")
    data = model.SerializeToString()
    expected = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    got = onyxrt.InferenceSession(data).run(None, feeds)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape, (g.dtype, g.shape, e.dtype, e.shape)
        np.testing.assert_allclose(g, e, rtol=1e-6)
    return got


def _vi(name, elem, shape):
    return h.make_tensor_value_info(name, elem, shape)


def _loop_model(scan_shape, opset=16):
    body = h.make_graph(
        [h.make_node("Identity", ["x_in"], ["x_out"]), h.make_node("Identity", ["cin"], ["cout"]),
         h.make_node("Identity", ["x_in"], ["s"])],
        "body",
        [_vi("i", T.INT64, []), _vi("cin", T.BOOL, []), _vi("x_in", T.FLOAT, None)],
        [_vi("cout", T.BOOL, []), _vi("x_out", T.FLOAT, None), _vi("s", T.FLOAT, scan_shape)],
    )
    g = h.make_graph([h.make_node("Loop", ["M", "", "x"], ["xf", "scan"], body=body)], "g",
                     [_vi("M", T.INT64, []), _vi("x", T.FLOAT, [2, 3])],
                     [_vi("xf", T.FLOAT, None), _vi("scan", T.FLOAT, None)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


@pytest.mark.parametrize("scan_shape", [[2, 3], None, ["a", 3]])
@pytest.mark.parametrize("trips", [0, 3])
def test_loop_scan_output_shapes_match_onnxruntime(scan_shape, trips):
    _compare(_loop_model(scan_shape), {"M": np.array(trips, np.int64), "x": np.ones((2, 3), np.float32)})


def test_loop_stops_on_false_cond_output_without_cond_input():
    body = h.make_graph(
        [h.make_node("Not", ["cin"], ["cout"]), h.make_node("Identity", ["cin"], ["s"])], "body",
        [_vi("i", T.INT64, []), _vi("cin", T.BOOL, [])], [_vi("cout", T.BOOL, []), _vi("s", T.BOOL, [])])
    g = h.make_graph([h.make_node("Loop", ["M", ""], ["scan"], body=body)], "g",
                     [_vi("M", T.INT64, [])], [_vi("scan", T.BOOL, None)])
    _compare(h.make_model(g, opset_imports=[h.make_opsetid("", 16)]), {"M": np.array(4, np.int64)})


def test_loop_reads_outer_scope_and_nested_if():
    # acc += (i even ? w : -w), w captured from the outer graph.
    then_g = h.make_graph([h.make_node("Add", ["acc_in", "w"], ["r1"])], "then", [], [_vi("r1", T.FLOAT, [2])])
    else_g = h.make_graph([h.make_node("Sub", ["acc_in", "w"], ["r2"])], "else", [], [_vi("r2", T.FLOAT, [2])])
    two = h.make_tensor("two", T.INT64, [], [2])
    zero = h.make_tensor("zero", T.INT64, [], [0])
    body = h.make_graph(
        [h.make_node("Mod", ["i", "two"], ["m"]), h.make_node("Equal", ["m", "zero"], ["even"]),
         h.make_node("If", ["even"], ["acc_out"], then_branch=then_g, else_branch=else_g),
         h.make_node("Identity", ["cin"], ["cout"])],
        "body", [_vi("i", T.INT64, []), _vi("cin", T.BOOL, []), _vi("acc_in", T.FLOAT, [2])],
        [_vi("cout", T.BOOL, []), _vi("acc_out", T.FLOAT, [2])], initializer=[two, zero])
    g = h.make_graph([h.make_node("Loop", ["M", "c", "acc0"], ["acc"], body=body)], "g",
                     [_vi("M", T.INT64, []), _vi("c", T.BOOL, []), _vi("acc0", T.FLOAT, [2]), _vi("w", T.FLOAT, [2])],
                     [_vi("acc", T.FLOAT, [2])])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    feeds = {"M": np.array(5, np.int64), "c": np.array(True), "acc0": np.zeros(2, np.float32),
             "w": np.array([1.0, 2.0], np.float32)}
    (acc,) = _compare(model, feeds)
    np.testing.assert_array_equal(acc, [1.0, 2.0])


def _scan9_model(in_axis, in_dir, out_axis, out_dir, elem_shape):
    body = h.make_graph(
        [h.make_node("Add", ["s_in", "x"], ["s_out"]), h.make_node("Mul", ["s_out", "x"], ["y"])], "body",
        [_vi("s_in", T.FLOAT, elem_shape), _vi("x", T.FLOAT, elem_shape)],
        [_vi("s_out", T.FLOAT, elem_shape), _vi("y", T.FLOAT, elem_shape)])
    node = h.make_node("Scan", ["s0", "xs"], ["sf", "ys"], body=body, num_scan_inputs=1,
                       scan_input_axes=[in_axis], scan_input_directions=[in_dir],
                       scan_output_axes=[out_axis], scan_output_directions=[out_dir])
    g = h.make_graph([node], "g", [_vi("s0", T.FLOAT, None), _vi("xs", T.FLOAT, None)],
                     [_vi("sf", T.FLOAT, None), _vi("ys", T.FLOAT, None)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 16)])


@pytest.mark.parametrize("in_axis,in_dir,out_axis,out_dir", [
    (0, 0, 0, 0), (1, 1, 1, 0), (-1, 0, -1, 1), (2, 1, 0, 1), (1, 0, 2, 0),
])
def test_scan9_matches_onnxruntime(in_axis, in_dir, out_axis, out_dir):
    xs = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    shape = list(xs.shape)
    del shape[in_axis]
    _compare(_scan9_model(in_axis, in_dir, out_axis, out_dir, shape), {"s0": np.zeros(shape, np.float32), "xs": xs})


@pytest.mark.parametrize("direction", [0, 1])
@pytest.mark.parametrize("with_lens", [False, True])
def test_scan8_matches_onnxruntime(direction, with_lens):
    body = h.make_graph(
        [h.make_node("Add", ["s_in", "x"], ["s_out"]), h.make_node("Mul", ["s_out", "x"], ["y"])], "body",
        [_vi("s_in", T.FLOAT, [2]), _vi("x", T.FLOAT, [2])], [_vi("s_out", T.FLOAT, [2]), _vi("y", T.FLOAT, [2])])
    node = h.make_node("Scan", ["lens" if with_lens else "", "s0", "xs"], ["sf", "ys"], body=body,
                       num_scan_inputs=1, directions=[direction])
    inputs = [_vi("s0", T.FLOAT, [3, 2]), _vi("xs", T.FLOAT, [3, 4, 2])]
    if with_lens:
        inputs.insert(0, _vi("lens", T.INT64, [3]))
    g = h.make_graph([node], "g", inputs, [_vi("sf", T.FLOAT, None), _vi("ys", T.FLOAT, None)])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 8)])
    model.ir_version = 7
    feeds = {"s0": np.ones((3, 2), np.float32),
             "xs": np.random.default_rng(1).standard_normal((3, 4, 2)).astype(np.float32)}
    if with_lens:
        feeds["lens"] = np.array([4, 1, 2], np.int64)
    _compare(model, feeds)
