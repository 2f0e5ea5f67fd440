"""A decoding step's lean paths, pinned against the general ones and onnxruntime: GroupQueryAttention's
compiled one-token step (contrib/gqa_decode.py), its few-query-rows kernel (visible keys as ranges, grouped
heads as one row matrix) and the session's output-sharing check (outputs owning their memory compared
only with fed views)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onyxrt
from onyxrt.providers.cpu.contrib import attention

ORT_OPTIONS = ort.SessionOptions()
ORT_OPTIONS.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def _gqa_inputs(rng, batch, rows, heads, kv_heads, head, past_lengths, buffer, rotary_half=0):
    """A decoding step: ``rows`` new rows per batch entry after ``past_lengths[b]`` cached ones (in a
    ``buffer``-row past); rows past a sequence's valid length are garbage, as right padding leaves them."""
    past_lengths = np.asarray(past_lengths)
    feeds = {
        "query": rng.standard_normal((batch, rows, heads * head), dtype=np.float32),
        "key": rng.standard_normal((batch, rows, kv_heads * head), dtype=np.float32),
        "value": rng.standard_normal((batch, rows, kv_heads * head), dtype=np.float32),
        "past_key": rng.standard_normal((batch, kv_heads, buffer, head), dtype=np.float32),
        "past_value": rng.standard_normal((batch, kv_heads, buffer, head), dtype=np.float32),
        "seqlens_k": (past_lengths + rows - 1).astype(np.int32),
        "total_sequence_length": np.array(int(past_lengths.max()) + rows, np.int32),
    }
    if rotary_half:
        angles = np.arange(buffer + rows)[:, None] / (10000.0 ** (np.arange(rotary_half)[None, :] / rotary_half))
        feeds["cos_cache"] = np.cos(angles).astype(np.float32)
        feeds["sin_cache"] = np.sin(angles).astype(np.float32)
    return feeds


def _gqa_call(feeds, **attributes):
    names = ("query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length",
             "cos_cache", "sin_cache", "position_ids", "attention_bias", "head_sink")
    args = [feeds.get(name) for name in names]
    return attention.group_query_attention(*args, _num_outputs=3, **attributes)


def _general_path(monkeypatch):
    """Route every GroupQueryAttention call through the general ``_attend`` (boolean masks)."""
    monkeypatch.setattr(attention, "_FEW_QUERY_ROWS", -1)


CASES = [
    # batch, rows, heads, kv heads, head, past lengths, attributes
    (1, 1, 8, 2, 64, [127], {}),
    (3, 1, 6, 2, 16, [5, 0, 11], {}),
    (2, 2, 4, 4, 8, [9, 3], {}),
    (2, 3, 4, 1, 8, [7, 12], {"local_window_size": 4}),
    (2, 1, 4, 2, 8, [30, 2], {"local_window_size": 8}),
    (2, 1, 4, 2, 16, [6, 10], {"softcap": 5.0}),
    (2, 1, 8, 2, 16, [6, 10], {"do_rotary": 1, "rotary_interleaved": 0}),
    (2, 2, 8, 4, 16, [6, 10], {"do_rotary": 1, "rotary_interleaved": 1}),
    (2, 1, 4, 2, 8, [4, 13], {"smooth_softmax": 1}),
    (1, 1, 4, 2, 8, [17], {"causal": 0}),
    (3, 1, 4, 2, 8, [17, 3, 9], {"causal": 0}),
]


@pytest.mark.parametrize("batch,rows,heads,kv_heads,head,past_lengths,attributes", CASES)
def test_few_rows_path_equals_general_path(monkeypatch, batch, rows, heads, kv_heads, head, past_lengths, attributes):
    rng = np.random.default_rng(batch * 100 + rows * 10 + heads)
    buffer = max(past_lengths) + 4
    feeds = _gqa_inputs(rng, batch, rows, heads, kv_heads, head, past_lengths, buffer,
                        rotary_half=head // 2 if attributes.get("do_rotary") else 0)
    attributes = {"num_heads": heads, "kv_num_heads": kv_heads, **attributes}
    monkeypatch.setattr(attention, "_decode_step", lambda *args: None)  # (pinned below)
    calls = []
    lean_kernel = attention._attend_few_rows
    monkeypatch.setattr(attention, "_attend_few_rows", lambda *args: calls.append(1) or lean_kernel(*args))
    lean = _gqa_call({k: v.copy() for k, v in feeds.items()}, **attributes)
    assert calls, "the few-rows path did not run"
    _general_path(monkeypatch)
    general = _gqa_call({k: v.copy() for k, v in feeds.items()}, **attributes)
    for mine, reference in zip(lean, general):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6)


# what the compiled step leaves to the other paths
_NOT_COMPILED = ("local_window_size", "softcap", "smooth_softmax")


@pytest.mark.parametrize("batch,rows,heads,kv_heads,head,past_lengths,attributes",
                         [case for case in CASES if case[1] == 1])
@pytest.mark.parametrize("packed", [False, True])
def test_compiled_decode_step_equals_general_path(monkeypatch, batch, rows, heads, kv_heads, head, past_lengths,
                                                  attributes, packed):
    rng = np.random.default_rng(batch * 100 + heads + 7)
    buffer = max(past_lengths) + 4
    feeds = _gqa_inputs(rng, batch, rows, heads, kv_heads, head, past_lengths, buffer,
                        rotary_half=head // 2 if attributes.get("do_rotary") else 0)
    if packed:  # one (B, 1, (N + 2 Nkv) H) projection
        feeds["query"] = np.concatenate([feeds["query"], feeds.pop("key"), feeds.pop("value")], axis=-1)
    attributes = {"num_heads": heads, "kv_num_heads": kv_heads, **attributes}
    results = []
    step = attention._decode_step
    monkeypatch.setattr(attention, "_decode_step", lambda *args: results.append(step(*args)) or results[-1])
    compiled = _gqa_call({k: v.copy() for k, v in feeds.items()}, **attributes)
    if any(name in attributes for name in _NOT_COMPILED):
        assert not results
    else:
        assert len(results) == 1 and results[0] is not None, "the compiled step did not run"
    monkeypatch.setattr(attention, "_decode_step", lambda *args: None)
    _general_path(monkeypatch)
    general = _gqa_call({k: v.copy() for k, v in feeds.items()}, **attributes)
    for mine, reference in zip(compiled, general):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6)


def test_compiled_decode_step_rotates_at_each_rows_position_id_and_adds_the_bias(monkeypatch):
    rng = np.random.default_rng(11)
    feeds = _gqa_inputs(rng, 2, 1, 8, 2, 16, [9, 4], 12, rotary_half=8)
    feeds["position_ids"] = np.array([[9], [30]], np.int64)  # (a left-padded row's own position)
    feeds["cos_cache"], feeds["sin_cache"] = (np.tile(c, (4, 1)) for c in (feeds["cos_cache"], feeds["sin_cache"]))
    total = int(feeds["total_sequence_length"])
    feeds["attention_bias"] = rng.standard_normal((2, 8, 1, total), dtype=np.float32)
    attributes = {"num_heads": 8, "kv_num_heads": 2, "do_rotary": 1, "rotary_position_ids_per_row": 1, "causal": 0}
    results = []
    step = attention._decode_step
    monkeypatch.setattr(attention, "_decode_step", lambda *args: results.append(step(*args)) or results[-1])
    compiled = _gqa_call(dict(feeds), **attributes)
    assert results and results[0] is not None
    monkeypatch.setattr(attention, "_decode_step", lambda *args: None)
    general = _gqa_call(dict(feeds), **attributes)
    for mine, reference in zip(compiled, general):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6)


def test_few_rows_path_with_attention_bias_and_head_sink_equals_general_path(monkeypatch):
    rng = np.random.default_rng(3)
    feeds = _gqa_inputs(rng, 2, 1, 8, 2, 16, [20, 7], 24)
    total = int(feeds["total_sequence_length"])
    feeds["attention_bias"] = rng.standard_normal((2, 1, 1, total), dtype=np.float32)
    feeds["attention_bias"][1, :, :, 8:] = np.finfo(np.float32).min  # padding written as the lowest float
    feeds["head_sink"] = rng.standard_normal(8, dtype=np.float32)
    lean = _gqa_call(dict(feeds), num_heads=8, kv_num_heads=2, causal=0)
    _general_path(monkeypatch)
    general = _gqa_call(dict(feeds), num_heads=8, kv_num_heads=2, causal=0)
    for mine, reference in zip(lean, general):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6)


def test_few_rows_path_with_query_seqlens_equals_general_path(monkeypatch):
    """Rows past a batch entry's query length (padding of a packed step) follow the same rule on both paths."""
    rng = np.random.default_rng(5)
    feeds = _gqa_inputs(rng, 2, 3, 4, 2, 8, [6, 9], 12)
    feeds["seqlens_k"] = np.array([7, 11], np.int32)  # 2 and 3 new rows after 6 and 9 cached ones
    feeds["total_sequence_length"] = np.array(12, np.int32)
    query_seqlens = np.array([2, 3], np.int32)
    for attributes in ({}, {"local_window_size": 3}):
        lean = _gqa_call(dict(feeds), num_heads=4, kv_num_heads=2, **attributes)
        with monkeypatch.context() as patch:
            _general_path(patch)
            general = _gqa_call(dict(feeds), num_heads=4, kv_num_heads=2, **attributes)
        for mine, reference in zip(lean, general):
            np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6)
        lean = attention.group_query_attention(*[feeds.get(n) for n in ("query", "key", "value", "past_key", "past_value",
                                                                         "seqlens_k", "total_sequence_length")],
                                               query_seqlens=query_seqlens, num_heads=4, kv_num_heads=2,
                                               _num_outputs=3, **attributes)
        with monkeypatch.context() as patch:
            _general_path(patch)
            general = attention.group_query_attention(
                *[feeds.get(n) for n in ("query", "key", "value", "past_key", "past_value", "seqlens_k",
                                         "total_sequence_length")],
                query_seqlens=query_seqlens, num_heads=4, kv_num_heads=2, _num_outputs=3, **attributes)
        for mine, reference in zip(lean, general):
            np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6)


def test_visible_ranges_equal_the_general_mask():
    """Every row's visible keys are the contiguous range the general boolean rule allows."""
    rng = np.random.default_rng(4)
    for _ in range(200):
        batch, rows = int(rng.integers(1, 4)), int(rng.integers(1, 5))
        T_b = [int(t) for t in rng.integers(0, 12, batch)]
        P_b = [int(p) for p in rng.integers(0, 10, batch)]
        causal, window = bool(rng.integers(0, 2)), int(rng.choice([-1, 0, 1, 3, 6]))
        if not causal:
            window = -1
        T = max(max(p + rows for p in P_b), max(T_b))
        j = np.arange(T)[None, None, :]
        limit = np.array(T_b)[:, None, None]
        pos = (np.array(P_b)[:, None] + np.arange(rows)[None, :])[:, :, None]
        if causal:
            shown = (j <= pos) & (j < np.maximum(limit, 1))
            shown |= (j < limit) & (pos >= limit)
            if window > 0:
                shown &= j > pos - window
        else:
            shown = np.broadcast_to(j < limit, (batch, rows, T))
        ranges = attention._visible_ranges(P_b, T_b, rows, T, causal, window)
        expected = np.zeros((batch, rows, T), bool)
        if ranges is None:
            expected[:] = True
        else:
            for b, row_ranges in enumerate(ranges):
                for s, (lo, hi) in enumerate(row_ranges):
                    expected[b, s, lo:hi] = True
        np.testing.assert_array_equal(shown, expected)


def _gqa_model(heads, kv_heads, head, rotary, **attributes):
    inputs = ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length"]
    if rotary:
        inputs += ["cos_cache", "sin_cache"]
    node = helper.make_node("GroupQueryAttention", inputs, ["out", "present_key", "present_value"],
                            domain="com.microsoft", num_heads=heads, kv_num_heads=kv_heads, **attributes)
    value_infos = [
        helper.make_tensor_value_info("query", TensorProto.FLOAT, ["B", "S", heads * head]),
        helper.make_tensor_value_info("key", TensorProto.FLOAT, ["B", "S", kv_heads * head]),
        helper.make_tensor_value_info("value", TensorProto.FLOAT, ["B", "S", kv_heads * head]),
        helper.make_tensor_value_info("past_key", TensorProto.FLOAT, ["B", kv_heads, "P", head]),
        helper.make_tensor_value_info("past_value", TensorProto.FLOAT, ["B", kv_heads, "P", head]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["B"]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
    ]
    if rotary:
        value_infos += [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["M", head // 2])
                        for name in ("cos_cache", "sin_cache")]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", "S", heads * head]),
               helper.make_tensor_value_info("present_key", TensorProto.FLOAT, ["B", kv_heads, "T", head]),
               helper.make_tensor_value_info("present_value", TensorProto.FLOAT, ["B", kv_heads, "T", head])]
    graph = helper.make_graph([node], "gqa", value_infos, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    return model.SerializeToString()


ORT_CASES = [
    (1, 8, 2, 64, [127], {}),
    (3, 6, 2, 16, [5, 1, 11], {}),  # batch entries with different past lengths
    (2, 4, 1, 16, [30, 9], {"local_window_size": 8}),
    (2, 4, 2, 16, [6, 10], {"softcap": 4.0}),
    (2, 8, 2, 16, [6, 14], {"do_rotary": 1, "rotary_interleaved": 0}),
    (2, 8, 4, 16, [6, 14], {"do_rotary": 1, "rotary_interleaved": 1}),
    (2, 4, 2, 8, [4, 13], {"smooth_softmax": 1}),
]


@pytest.mark.parametrize("batch,heads,kv_heads,head,past_lengths,attributes", ORT_CASES)
def test_decode_step_equals_onnxruntime(batch, heads, kv_heads, head, past_lengths, attributes):
    rotary = bool(attributes.get("do_rotary"))
    model = _gqa_model(heads, kv_heads, head, rotary, **attributes)
    rng = np.random.default_rng(len(past_lengths) * 7 + heads)
    feeds = _gqa_inputs(rng, batch, 1, heads, kv_heads, head, past_lengths, max(past_lengths) + 1,
                        rotary_half=head // 2 if rotary else 0)
    mine = onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)
    theirs = ort.InferenceSession(model, ORT_OPTIONS, providers=["CPUExecutionProvider"]).run(None, feeds)
    # presents: rows past a sequence's length are unspecified (onnxruntime leaves them as it found them)
    valid = np.asarray(past_lengths) + 1
    np.testing.assert_allclose(mine[0], theirs[0], rtol=1e-4, atol=1e-5)
    for got, want in zip(mine[1:], theirs[1:]):
        assert got.shape == want.shape
        for b, length in enumerate(valid):
            np.testing.assert_allclose(got[b, :, :length], want[b, :, :length], rtol=1e-5, atol=1e-6)


def _identity_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["same"]), helper.make_node("Neg", ["x"], ["negated"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("same", TensorProto.FLOAT, [None]),
         helper.make_tensor_value_info("negated", TensorProto.FLOAT, [None])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("make_feed", [lambda: np.arange(6, dtype=np.float32),
                                       lambda: np.arange(12, dtype=np.float32)[::2],
                                       lambda: np.arange(12, dtype=np.float32).reshape(2, 6)[1]],
                         ids=["owning", "strided-view", "row-view"])
def test_outputs_never_alias_the_feeds(make_feed):
    session = onyxrt.InferenceSession(_identity_model(), providers=["CPUExecutionProvider"])
    x = make_feed()
    same, negated = session.run(None, {"x": x})
    for output in (same, negated):
        assert not np.may_share_memory(output, x)
        assert output.flags.writeable
    np.testing.assert_array_equal(same, x)
    np.testing.assert_array_equal(negated, -x)
    same[:] = -100  # the caller's array is untouched
    assert (x >= 0).all()
