"""Sequence and optional kernels: direct calls, and small models against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import onyxrt
from onyxrt.providers.cpu.sequence.optional_ops import optional, optional_get_element, optional_has_element
from onyxrt.providers.cpu.sequence.sequence_ops import (
    concat_from_sequence,
    sequence_at,
    sequence_construct,
    sequence_empty,
    sequence_erase,
    sequence_insert,
    sequence_length,
    sequence_map,
    split_to_sequence,
)


def same(seq, expected):
    """Element-wise identity: sequence kernels reuse the tensors, never copy them."""
    return len(seq) == len(expected) and all(x is y for x, y in zip(seq, expected))


def i64(v):
    return np.array(v, dtype=np.int64)


A = np.arange(6, dtype=np.float32).reshape(2, 3)
B = A + 10
C = A + 20


# --------------------------------------------------------------------------- direct calls


def test_empty_construct_length():
    assert sequence_empty() == [] and sequence_empty(dtype=T.INT64) == []
    with pytest.raises(ValueError):
        sequence_empty(dtype=12345)
    seq = sequence_construct(A, B)
    assert len(seq) == 2 and seq[0] is A
    n = sequence_length(seq)
    assert n.dtype == np.int64 and n.shape == () and int(n) == 2
    with pytest.raises(TypeError):
        sequence_construct(A, A.astype(np.int64))


def test_at_positions():
    seq = [A, B, C]
    assert sequence_at(seq, i64(0)) is A
    assert sequence_at(seq, np.array(-1, np.int32)) is C
    for bad in (3, -4):
        with pytest.raises(IndexError):
            sequence_at(seq, i64(bad))
    with pytest.raises(TypeError):
        sequence_at(seq, np.array(0.0))


def test_insert_and_erase_do_not_mutate():
    seq = [A, B]
    assert same(sequence_insert(seq, C), [A, B, C])
    assert same(seq, [A, B])
    assert same(sequence_insert(seq, C, i64(0)), [C, A, B])
    assert same(sequence_insert(seq, C, i64(-1)), [A, C, B])
    assert same(sequence_insert(seq, C, i64(2)), [A, B, C])
    with pytest.raises(IndexError):
        sequence_insert(seq, C, i64(3))
    with pytest.raises(TypeError):
        sequence_insert(seq, A.astype(np.int32))
    assert same(sequence_insert([], A), [A])

    assert same(sequence_erase([A, B]), [A])
    assert same(sequence_erase([A, B], i64(0)), [B])
    assert same(sequence_erase([A, B], i64(-2)), [B])
    with pytest.raises(IndexError):
        sequence_erase([A, B], i64(2))
    with pytest.raises(IndexError):
        sequence_erase([], None)
    assert same(seq, [A, B])


def test_split_to_sequence_variants():
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    parts = split_to_sequence(x)
    assert len(parts) == 4 and parts[1].shape == (1, 6)
    parts = split_to_sequence(x, keepdims=0)
    assert len(parts) == 4 and parts[2].shape == (6,)
    np.testing.assert_array_equal(parts[2], x[2])
    parts = split_to_sequence(x, i64(4), axis=1)  # scalar split: 4 + 2
    assert [p.shape for p in parts] == [(4, 4), (4, 2)]
    parts = split_to_sequence(x, np.array([1, 2, 3], np.int32), axis=-1, keepdims=0)  # keepdims ignored
    assert [p.shape for p in parts] == [(4, 1), (4, 2), (4, 3)]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), x)
    with pytest.raises(ValueError):
        split_to_sequence(x, i64([1, 2]), axis=1)
    with pytest.raises(ValueError):
        split_to_sequence(x, axis=2)


def test_concat_from_sequence():
    np.testing.assert_array_equal(concat_from_sequence([A, B], axis=0), np.concatenate([A, B]))
    np.testing.assert_array_equal(concat_from_sequence([A, B], axis=-1), np.concatenate([A, B], axis=1))
    out = concat_from_sequence([A, B, C], axis=-1, new_axis=1)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out, np.stack([A, B, C], axis=-1))
    assert concat_from_sequence([A, B], axis=2, new_axis=1).shape == (2, 3, 2)
    with pytest.raises(ValueError):
        concat_from_sequence([A, B], axis=2)
    with pytest.raises(ValueError):
        concat_from_sequence([], axis=0)
    with pytest.raises(TypeError):
        concat_from_sequence([A, A.astype(np.float64)], axis=0)


class FakeBody:
    def __init__(self, fn, n_in, n_out):
        self.fn = fn
        self.input_names = [f"i{k}" for k in range(n_in)]
        self.output_names = [f"o{k}" for k in range(n_out)]

    def __call__(self, *args, outer=()):
        return list(self.fn(*args))


def test_sequence_map():
    body = FakeBody(lambda a, b, t: [a + b + t, np.array(a.shape, np.int64)], 3, 2)
    sums, shapes = sequence_map([A, B], [B, C], np.float32(1), body=body, _num_outputs=2)
    np.testing.assert_array_equal(sums[1], B + C + 1)
    assert shapes[0].tolist() == [2, 3]
    assert sequence_map([], [], body=FakeBody(lambda a, b: [a], 2, 1), _num_outputs=1) == ([],)
    with pytest.raises(ValueError):
        sequence_map([A, B], [A], body=FakeBody(lambda a, b: [a], 2, 1), _num_outputs=1)


def test_optional_ops():
    assert optional(A) is A
    seq_type = h.make_sequence_type_proto(h.make_tensor_type_proto(T.FLOAT, None))
    assert optional(None, type=seq_type) is None
    assert same(optional([A], type=seq_type), [A])
    with pytest.raises(TypeError):
        optional(A, type=seq_type)
    with pytest.raises(TypeError):
        optional(A, type=h.make_tensor_type_proto(T.INT64, None))
    with pytest.raises(ValueError):
        optional(None)
    for value, expected in ((A, True), ([], True), (None, False)):
        r = optional_has_element(value)
        assert r.dtype == np.bool_ and r.shape == () and bool(r) is expected
    assert bool(optional_has_element()) is False
    assert optional_get_element(A) is A
    with pytest.raises(ValueError):
        optional_get_element(None)


# --------------------------------------------------------------------------- models vs onnxruntime


def _compare(model: onnx.ModelProto, feeds: dict):
    ort = pytest.importorskip("onnxruntime")
    data = model.SerializeToString()
    expected = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    got = onyxrt.InferenceSession(data).run(None, feeds)

    def check(g, e):
        if isinstance(e, list):
            assert isinstance(g, list) and len(g) == len(e)
            for gg, ee in zip(g, e):
                check(gg, ee)
        else:
            assert g.dtype == e.dtype and g.shape == e.shape, (g.dtype, g.shape, e.dtype, e.shape)
            np.testing.assert_array_equal(g, e)

    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        check(g, e)


def _seq_vi(name, elem=T.FLOAT):
    return h.make_tensor_sequence_value_info(name, elem, None)


@pytest.mark.parametrize("split,attrs", [
    (None, {}), (None, {"keepdims": 0}), (None, {"axis": 1}), (3, {"axis": 1}), (2, {}),
    ([1, 4], {"axis": -1}), ([2, 1], {"keepdims": 0}),
])
def test_split_to_sequence_matches_onnxruntime(split, attrs):
    x = np.arange(15, dtype=np.float32).reshape(3, 5)
    inputs = [h.make_tensor_value_info("x", T.FLOAT, [3, 5])]
    feeds = {"x": x}
    names = ["x"]
    if split is not None:
        arr = np.array(split, np.int64)
        inputs.append(h.make_tensor_value_info("s", T.INT64, list(arr.shape)))
        feeds["s"] = arr
        names.append("s")
    node = h.make_node("SplitToSequence", names, ["seq"], **attrs)
    g = h.make_graph([node], "g", inputs, [_seq_vi("seq")])
    _compare(h.make_model(g, opset_imports=[h.make_opsetid("", 11)]), feeds)


@pytest.mark.parametrize("axis,new_axis", [(0, 0), (1, 0), (-1, 0), (0, 1), (2, 1), (-1, 1), (-3, 1)])
def test_concat_from_sequence_matches_onnxruntime(axis, new_axis):
    nodes = [h.make_node("SequenceConstruct", ["a", "b", "c"], ["seq"]),
             h.make_node("ConcatFromSequence", ["seq"], ["y"], axis=axis, new_axis=new_axis)]
    vi = [h.make_tensor_value_info(n, T.FLOAT, [2, 3]) for n in "abc"]
    g = h.make_graph(nodes, "g", vi, [h.make_tensor_value_info("y", T.FLOAT, None)])
    _compare(h.make_model(g, opset_imports=[h.make_opsetid("", 11)]), {"a": A, "b": B, "c": C})


@pytest.mark.parametrize("insert_pos,erase_pos", [(None, None), (0, -1), (-1, 0), (3, 1), (-3, -4)])
def test_insert_erase_at_match_onnxruntime(insert_pos, erase_pos):
    nodes = [h.make_node("SequenceConstruct", ["a", "b", "a"], ["s0"])]
    inputs = [h.make_tensor_value_info("a", T.FLOAT, [2, 3]), h.make_tensor_value_info("b", T.FLOAT, [2, 3])]
    feeds = {"a": A, "b": B}
    ins = ["s0", "b"]
    if insert_pos is not None:
        ins.append("ip")
        inputs.append(h.make_tensor_value_info("ip", T.INT64, []))
        feeds["ip"] = i64(insert_pos)
    nodes.append(h.make_node("SequenceInsert", ins, ["s1"]))
    ins = ["s1"]
    if erase_pos is not None:
        ins.append("ep")
        inputs.append(h.make_tensor_value_info("ep", T.INT32, []))
        feeds["ep"] = np.array(erase_pos, np.int32)
    nodes.append(h.make_node("SequenceErase", ins, ["s2"]))
    nodes.append(h.make_node("SequenceLength", ["s2"], ["n"]))
    nodes.append(h.make_node("SequenceAt", ["s2", "at"], ["y"]))
    inputs.append(h.make_tensor_value_info("at", T.INT64, []))
    feeds["at"] = i64(-1)
    g = h.make_graph(nodes, "g", inputs, [_seq_vi("s2"), h.make_tensor_value_info("n", T.INT64, []),
                                          h.make_tensor_value_info("y", T.FLOAT, None)])
    _compare(h.make_model(g, opset_imports=[h.make_opsetid("", 11)]), feeds)


def test_sequence_empty_insert_concat_matches_onnxruntime():
    nodes = [h.make_node("SequenceEmpty", [], ["s0"], dtype=T.INT32),
             h.make_node("SequenceInsert", ["s0", "x"], ["s1"]),
             h.make_node("SequenceInsert", ["s1", "x", "p"], ["s2"]),
             h.make_node("ConcatFromSequence", ["s2"], ["y"], axis=0)]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.INT32, [2]), h.make_tensor_value_info("p", T.INT64, [])],
                     [h.make_tensor_value_info("y", T.INT32, None)])
    _compare(h.make_model(g, opset_imports=[h.make_opsetid("", 11)]),
             {"x": np.array([1, 2], np.int32), "p": i64(0)})
