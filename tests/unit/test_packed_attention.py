"""com.microsoft PackedAttention / PackedMultiHeadAttention and onyxrt.packing.

onnxruntime's CPU build has no kernel for the packed ops (they are CUDA-only there), so each
packed run is pinned against onnxruntime's padded com.microsoft Attention / MultiHeadAttention
on the same batch with a key padding mask: the packed output, unpacked, must equal the padded
output on the real tokens. The padding rows of the padded batch hold random values, so any
leak of padding into the packed computation would show.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onyxrt
from onyxrt.packing import PackedBatch, pack_padded_batch, unpack

ort = pytest.importorskip("onnxruntime")

MS = "com.microsoft"
HEADS = 2
ATOL = 1e-5

# (lengths, padded sequence length): single token, full length, mixes with padding
LENGTH_MIXES = [
    ((1,), 1),
    ((6, 6), 6),
    ((1, 7, 3, 7), 7),
    ((5, 1, 8, 2, 6), 9),
    ((3, 0, 4), 4),
]


def _model(op_type: str, inputs: dict[str, np.ndarray | None], order: list[str], **attrs) -> bytes:
    """A one-node model; ``order`` gives the node's inputs (missing ones as '')."""
    names = [name if inputs.get(name) is not None else "" for name in order]
    while names and names[-1] == "":
        names.pop()
    graph_inputs = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(inputs[name].dtype), inputs[name].shape)
        for name in names
        if name
    ]
    node = helper.make_node(op_type, names, ["output"], domain=MS, name=f"{op_type}_node", **attrs)
    output_type = graph_inputs[0].type.tensor_type.elem_type
    graph = helper.make_graph([node], "g", graph_inputs, [helper.make_tensor_value_info("output", output_type, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    return model.SerializeToString()


def _feeds(inputs: dict[str, np.ndarray | None]) -> dict[str, np.ndarray]:
    return {name: value for name, value in inputs.items() if value is not None}


def _run_onyxrt(model: bytes, inputs) -> np.ndarray:
    return onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, _feeds(inputs))[0]


def _run_onnxruntime(model: bytes, inputs) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]).run(None, _feeds(inputs))[0]


def _padded_batch(rng, lengths, seq: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(batch, seq, width) random values -- padding rows too -- and the right-padded mask."""
    values = rng.standard_normal((len(lengths), seq, width)).astype(np.float32)
    mask = (np.arange(seq)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    return values, mask


def _attention_bias(rng, kind: str | None, batch: int, seq: int) -> np.ndarray | None:
    shapes = {"batch": (batch, HEADS, seq, seq), "shared": (1, HEADS, seq, seq), "all_heads": (1, 1, seq, seq)}
    return None if kind is None else rng.standard_normal(shapes[kind]).astype(np.float32)


def _assert_equal_on_real_tokens(packed_out: np.ndarray, padded_out: np.ndarray, batch: PackedBatch) -> None:
    valid = np.arange(batch.sequence_length)[None, :] < batch.lengths[:, None]
    got = batch.unpack(packed_out)
    assert got.shape == padded_out.shape
    np.testing.assert_allclose(got[valid], padded_out[valid], rtol=0, atol=ATOL)
    assert not got[~valid].any()


# --------------------------------------------------------------------------- PackedAttention

_ATTENTION_ORDER = ["input", "weights", "bias", "token_offset", "cumulative_sequence_length", "attention_bias"]


@pytest.mark.parametrize("lengths,seq", LENGTH_MIXES)
@pytest.mark.parametrize("bias_kind", [None, "batch", "shared", "all_heads"])
@pytest.mark.parametrize("qkv_hidden_sizes", [None, (8, 8, 12)])
def test_packed_attention_equals_padded_attention(lengths, seq, bias_kind, qkv_hidden_sizes):
    rng = np.random.default_rng(len(lengths) * 100 + seq)
    input_hidden = 10
    q_hidden, k_hidden, v_hidden = qkv_hidden_sizes or (8, 8, 8)
    padded, mask = _padded_batch(rng, lengths, seq, input_hidden)
    weights = (rng.standard_normal((input_hidden, q_hidden + k_hidden + v_hidden)) * 0.5).astype(np.float32)
    bias = rng.standard_normal(q_hidden + k_hidden + v_hidden).astype(np.float32)
    attention_bias = _attention_bias(rng, bias_kind, len(lengths), seq)
    attrs = {"num_heads": HEADS}
    if qkv_hidden_sizes:
        attrs["qkv_hidden_sizes"] = list(qkv_hidden_sizes)

    batch = pack_padded_batch(padded, mask)
    packed_inputs = {
        "input": batch.packed,
        "weights": weights,
        "bias": bias,
        "token_offset": batch.token_offset,
        "cumulative_sequence_length": batch.cumulative_sequence_length,
        "attention_bias": attention_bias,
    }
    packed_out = _run_onyxrt(_model("PackedAttention", packed_inputs, _ATTENTION_ORDER, **attrs), packed_inputs)
    assert packed_out.shape == (sum(lengths), v_hidden) and packed_out.dtype == np.float32

    padded_inputs = {"x": padded, "w": weights, "b": bias, "mask": np.asarray(lengths, np.int32), "ab": attention_bias}
    padded_model = _model("Attention", padded_inputs, ["x", "w", "b", "mask", "", "ab"], **attrs)
    _assert_equal_on_real_tokens(packed_out, _run_onnxruntime(padded_model, padded_inputs), batch)


def test_packed_attention_equals_onyxrt_padded_attention():
    rng = np.random.default_rng(7)
    lengths, seq, hidden = (4, 16, 1, 9), 16, 32
    padded, mask = _padded_batch(rng, lengths, seq, hidden)
    weights = (rng.standard_normal((hidden, 3 * hidden)) * 0.2).astype(np.float32)
    bias = rng.standard_normal(3 * hidden).astype(np.float32)
    batch = pack_padded_batch(padded, mask)
    packed_inputs = {
        "input": batch.packed,
        "weights": weights,
        "bias": bias,
        "token_offset": batch.token_offset,
        "cumulative_sequence_length": batch.cumulative_sequence_length,
    }
    packed_out = _run_onyxrt(_model("PackedAttention", packed_inputs, _ATTENTION_ORDER, num_heads=4), packed_inputs)
    padded_inputs = {"x": padded, "w": weights, "b": bias, "mask": mask}
    padded_out = _run_onyxrt(_model("Attention", padded_inputs, ["x", "w", "b", "mask"], num_heads=4), padded_inputs)
    _assert_equal_on_real_tokens(packed_out, padded_out, batch)


def test_packed_attention_does_no_work_on_padding():
    # a padded length of 200,000: the padded run would need 2 x 200,000^2 scores per head; the
    # packed run only touches the 5 real tokens (token_offset's padding entries are not read)
    rng = np.random.default_rng(9)
    seq, hidden = 200_000, 8
    real = rng.standard_normal((5, hidden)).astype(np.float32)
    token_offset = np.zeros((2, seq), np.int32)
    token_offset[0, :5] = [0, 1, 2, seq, seq + 1]
    inputs = {
        "input": real,
        "weights": rng.standard_normal((hidden, 3 * hidden)).astype(np.float32),
        "bias": rng.standard_normal(3 * hidden).astype(np.float32),
        "token_offset": token_offset,
        "cumulative_sequence_length": np.array([0, 3, 5], np.int32),
    }
    packed_out = _run_onyxrt(_model("PackedAttention", inputs, _ATTENTION_ORDER, num_heads=HEADS), inputs)
    padded_inputs = {"x": np.zeros((2, 3, hidden), np.float32), "w": inputs["weights"], "b": inputs["bias"],
                     "mask": np.array([3, 2], np.int32)}
    padded_inputs["x"][0] = real[:3]
    padded_inputs["x"][1, :2] = real[3:]
    padded_out = _run_onnxruntime(_model("Attention", padded_inputs, ["x", "w", "b", "mask"], num_heads=HEADS), padded_inputs)
    np.testing.assert_allclose(packed_out, np.concatenate([padded_out[0], padded_out[1, :2]]), rtol=0, atol=ATOL)


def test_packed_attention_scale_attribute():
    rng = np.random.default_rng(3)
    lengths, seq, hidden = (3, 5), 5, 8
    padded, mask = _padded_batch(rng, lengths, seq, hidden)
    weights = rng.standard_normal((hidden, 3 * hidden)).astype(np.float32)
    bias = np.zeros(3 * hidden, np.float32)
    batch = pack_padded_batch(padded, mask)
    packed_inputs = {
        "input": batch.packed,
        "weights": weights,
        "bias": bias,
        "token_offset": batch.token_offset,
        "cumulative_sequence_length": batch.cumulative_sequence_length,
    }
    packed_out = _run_onyxrt(_model("PackedAttention", packed_inputs, _ATTENTION_ORDER, num_heads=HEADS, scale=0.05), packed_inputs)
    padded_inputs = {"x": padded, "w": weights, "b": bias, "mask": np.asarray(lengths, np.int32)}
    padded_model = _model("Attention", padded_inputs, ["x", "w", "b", "mask"], num_heads=HEADS, scale=0.05)
    _assert_equal_on_real_tokens(packed_out, _run_onnxruntime(padded_model, padded_inputs), batch)


def test_packed_attention_float16_is_computed_in_float32():
    rng = np.random.default_rng(5)
    lengths, seq, hidden = (2, 6, 4), 6, 8
    padded, mask = _padded_batch(rng, lengths, seq, hidden)
    weights = (rng.standard_normal((hidden, 3 * hidden)) * 0.3).astype(np.float32)
    bias = rng.standard_normal(3 * hidden).astype(np.float32)
    batch = pack_padded_batch(padded, mask)

    def inputs(dtype):
        return {
            "input": batch.packed.astype(dtype),
            "weights": weights.astype(dtype),
            "bias": bias.astype(dtype),
            "token_offset": batch.token_offset,
            "cumulative_sequence_length": batch.cumulative_sequence_length,
        }

    half = _run_onyxrt(_model("PackedAttention", inputs(np.float16), _ATTENTION_ORDER, num_heads=HEADS), inputs(np.float16))
    assert half.dtype == np.float16
    # the float32 run on the float16-rounded inputs, to the float16 output's rounding
    reference = _run_onyxrt(
        _model("PackedAttention", inputs(np.float32), _ATTENTION_ORDER, num_heads=HEADS),
        {k: (v.astype(np.float16).astype(np.float32) if v.dtype == np.float32 else v) for k, v in inputs(np.float32).items()},
    )
    np.testing.assert_allclose(half.astype(np.float32), reference, rtol=2e-3, atol=2e-3)


# --------------------------------------------------------------------------- PackedMultiHeadAttention

_MHA_ORDER = ["query", "key", "value", "bias", "token_offset", "cumulative_sequence_length", "attention_bias"]


@pytest.mark.parametrize("lengths,seq", LENGTH_MIXES)
@pytest.mark.parametrize("layout", ["separate", "packed_qkv"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("bias_kind", [None, "batch", "shared"])
def test_packed_multi_head_attention_equals_padded_multi_head_attention(lengths, seq, layout, with_bias, bias_kind):
    rng = np.random.default_rng(len(lengths) * 10 + seq)
    head = 4
    hidden = HEADS * head
    v_hidden = hidden if layout == "packed_qkv" else HEADS * 6
    q, mask = _padded_batch(rng, lengths, seq, hidden)
    k, _ = _padded_batch(rng, lengths, seq, hidden)
    v, _ = _padded_batch(rng, lengths, seq, v_hidden)
    bias = rng.standard_normal(2 * hidden + v_hidden).astype(np.float32) if with_bias else None
    attention_bias = _attention_bias(rng, bias_kind, len(lengths), seq)

    batch = pack_padded_batch(np.concatenate([q, k, v], axis=2), mask)
    packed_q, packed_k, packed_v = np.split(batch.packed, [hidden, 2 * hidden], axis=1)
    packing = {"token_offset": batch.token_offset, "cumulative_sequence_length": batch.cumulative_sequence_length}
    if layout == "packed_qkv":
        # (token_count, num_heads, 3, head_size)
        qkv = np.stack([x.reshape(-1, HEADS, head) for x in (packed_q, packed_k, packed_v)], axis=2)
        packed_inputs = {"query": np.ascontiguousarray(qkv), "bias": bias, **packing, "attention_bias": attention_bias}
    else:
        packed_inputs = {"query": packed_q, "key": packed_k, "value": packed_v, "bias": bias, **packing,
                         "attention_bias": attention_bias}
    packed_model = _model("PackedMultiHeadAttention", packed_inputs, _MHA_ORDER, num_heads=HEADS)
    packed_out = _run_onyxrt(packed_model, packed_inputs)
    assert packed_out.shape == (sum(lengths), v_hidden)

    # onnxruntime's CPU MultiHeadAttention on separate padded Q/K/V with a (batch, sequence) key padding mask
    padded_inputs = {"q": q, "k": k, "v": v, "b": bias, "mask": mask, "ab": attention_bias}
    padded_model = _model("MultiHeadAttention", padded_inputs, ["q", "k", "v", "b", "mask", "ab"], num_heads=HEADS)
    _assert_equal_on_real_tokens(packed_out, _run_onnxruntime(padded_model, padded_inputs), batch)


# --------------------------------------------------------------------------- refusals


def _packed_attention_inputs(lengths=(2, 3), seq=4, hidden=8):
    rng = np.random.default_rng(11)
    padded, mask = _padded_batch(rng, lengths, seq, hidden)
    batch = pack_padded_batch(padded, mask)
    return {
        "input": batch.packed,
        "weights": rng.standard_normal((hidden, 3 * hidden)).astype(np.float32),
        "bias": rng.standard_normal(3 * hidden).astype(np.float32),
        "token_offset": batch.token_offset.copy(),
        "cumulative_sequence_length": batch.cumulative_sequence_length.copy(),
    }


def _with(inputs, **changes):
    return {**inputs, **changes}


_BASE = _packed_attention_inputs()
_REFUSALS = {
    "cumulative_not_from_zero": (
        _with(_BASE, cumulative_sequence_length=np.array([1, 3, 5], np.int32)),
        "'cumulative_sequence_length' must start at 0",
    ),
    "cumulative_wrong_size": (
        _with(_BASE, cumulative_sequence_length=np.array([0, 5], np.int32)),
        "'cumulative_sequence_length' must have shape",
    ),
    "cumulative_not_token_count": (
        _with(_BASE, cumulative_sequence_length=np.array([0, 2, 4], np.int32)),
        "'cumulative_sequence_length' ends at 4",
    ),
    "length_over_sequence": (
        _with(_BASE, cumulative_sequence_length=np.array([0, 5, 5], np.int32)),
        "'cumulative_sequence_length' gives sequence 0 the length 5",
    ),
    "decreasing_cumulative": (
        _with(_BASE, cumulative_sequence_length=np.array([0, 6, 5], np.int32), token_offset=np.zeros((2, 6), np.int32)),
        "gives sequence 1 the length -1",
    ),
    "offsets_disagree": (
        _with(_BASE, token_offset=np.array([[0, 1, 4, 6], [5, 2, 3, 7]], np.int32)),
        "'token_offset' does not match 'cumulative_sequence_length': packed token 3 .sequence 1, position 1. has offset 6, expected 5",
    ),
    "offsets_rank_1": (_with(_BASE, token_offset=np.arange(8, dtype=np.int32)), "'token_offset' must have 2 dimensions"),
    "attention_bias_shape": (
        _with(_BASE, attention_bias=np.zeros((1, HEADS, 3, 3), np.float32)),
        "'attention_bias' must have shape",
    ),
    "weights_rows": (_with(_BASE, weights=np.zeros((7, 24), np.float32)), "'weights' of shape"),
    "bias_size": (_with(_BASE, bias=np.zeros(12, np.float32)), "'bias' of shape"),
}


@pytest.mark.parametrize("case", sorted(_REFUSALS))
def test_packed_attention_refuses_inconsistent_inputs_naming_the_input(case):
    inputs, message = _REFUSALS[case]
    model = _model("PackedAttention", inputs, _ATTENTION_ORDER, num_heads=HEADS)
    session = onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"])
    with pytest.raises(onyxrt.InvalidArgument, match=message) as raised:
        session.run(None, _feeds(inputs))
    assert "PackedAttention_node" in str(raised.value)


def test_packed_attention_refuses_float_offsets_as_a_type_error():
    inputs = _with(_BASE, token_offset=_BASE["token_offset"].astype(np.float32))
    model = _model("PackedAttention", inputs, _ATTENTION_ORDER, num_heads=HEADS)
    with pytest.raises(onyxrt.Fail, match="'token_offset' has element type float32"):
        onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, _feeds(inputs))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"key": None}, "'key' and 'value' are required"),
        ({"key": np.zeros((5, 6), np.float32)}, "'key' of shape"),
        ({"value": np.zeros((4, 8), np.float32)}, "'value' of shape"),
        ({"bias": np.zeros(5, np.float32)}, "'bias' of shape"),
        ({"cumulative_sequence_length": np.array([0, 2, 6], np.int32)}, "'cumulative_sequence_length' ends at 6"),
    ],
)
def test_packed_multi_head_attention_refuses_inconsistent_inputs_naming_the_input(change, message):
    base = _packed_attention_inputs()
    inputs = {
        "query": base["input"],
        "key": base["input"],
        "value": base["input"],
        "token_offset": base["token_offset"],
        "cumulative_sequence_length": base["cumulative_sequence_length"],
        **change,
    }
    model = _model("PackedMultiHeadAttention", inputs, _MHA_ORDER, num_heads=HEADS)
    with pytest.raises(onyxrt.InvalidArgument, match=message):
        onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, _feeds(inputs))


def test_packed_multi_head_attention_refuses_key_with_packed_qkv():
    qkv = np.zeros((5, HEADS, 3, 4), np.float32)
    base = _packed_attention_inputs()
    inputs = {"query": qkv, "key": np.zeros((5, 8), np.float32), "token_offset": base["token_offset"],
              "cumulative_sequence_length": base["cumulative_sequence_length"]}
    model = _model("PackedMultiHeadAttention", inputs, _MHA_ORDER, num_heads=HEADS)
    with pytest.raises(onyxrt.InvalidArgument, match="'key' and 'value' must be absent"):
        onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, _feeds(inputs))


# --------------------------------------------------------------------------- onyxrt.packing


def test_pack_padded_batch_layout_matches_onnxruntime_documentation():
    # onnxruntime's example: lengths 1, 2, 4 padded to 4
    mask = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], np.int64)
    ids = np.arange(12, dtype=np.int64).reshape(3, 4)
    batch = pack_padded_batch(ids, mask)
    assert batch.packed.tolist() == [0, 4, 5, 8, 9, 10, 11]
    assert batch.token_offset.dtype == np.int32 and batch.cumulative_sequence_length.dtype == np.int32
    assert batch.token_offset.reshape(-1).tolist() == [0, 4, 5, 8, 9, 10, 11, 1, 2, 3, 6, 7]
    assert batch.cumulative_sequence_length.tolist() == [0, 1, 3, 7]
    assert (batch.batch_size, batch.sequence_length, batch.token_count) == (3, 4, 7)
    assert batch.lengths.tolist() == [1, 2, 4]


def test_unpack_round_trips_hidden_states_with_padding_value():
    rng = np.random.default_rng(2)
    hidden = rng.standard_normal((3, 5, 4)).astype(np.float32)
    mask = np.array([[True] * 5, [True, True, False, False, False], [False] * 5])
    batch = pack_padded_batch(hidden, mask)
    assert batch.packed.shape == (7, 4)
    restored = unpack(batch.packed, batch.token_offset, batch.cumulative_sequence_length, padding_value=-1.0)
    np.testing.assert_array_equal(restored[mask], hidden[mask])
    assert (restored[~mask] == -1.0).all()
    np.testing.assert_array_equal(batch.unpack(batch.packed)[~mask], 0)


def test_pack_padded_batch_refuses_left_padding():
    mask = np.array([[1, 1, 1], [0, 1, 1]])
    with pytest.raises(ValueError, match="attention_mask row 1 is not right-padded"):
        pack_padded_batch(np.zeros((2, 3)), mask)


@pytest.mark.parametrize(
    "padded,mask,error,message",
    [
        (np.zeros((2, 4)), np.ones((2, 3)), ValueError, "does not start with the mask's shape"),
        (np.zeros((2, 4)), np.ones(4), ValueError, "attention_mask must be .batch, sequence."),
        (np.zeros((2, 4)), np.array([["a"] * 4] * 2), TypeError, "attention_mask has element type"),
    ],
)
def test_pack_padded_batch_refuses_bad_arguments(padded, mask, error, message):
    with pytest.raises(error, match=message):
        pack_padded_batch(padded, mask)


def test_unpack_refuses_token_count_mismatch():
    batch = pack_padded_batch(np.zeros((2, 3, 2)), np.array([[1, 1, 0], [1, 0, 0]]))
    with pytest.raises(ValueError, match="do not hold the 3 tokens"):
        unpack(np.zeros((4, 2)), batch.token_offset, batch.cumulative_sequence_length)
