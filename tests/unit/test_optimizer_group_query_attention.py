"""Rotary and grouped-query attention fusions: a decoder layer's attention becomes RotaryEmbedding + GroupQueryAttention.

Synthetic layers in both exporters' spellings (TorchScript: Slice halves with computed bounds,
Gather, Tile, Div scale; dynamo: Split, GatherND, Expand, Mul scale), outputs and presents
compared with onnxruntime's unoptimized run for a left-padded prefill (rows whose keys are all
masked included) and a decode step, and our saved model run in onnxruntime; then each
precondition that must block a rewrite.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt

HEADS, KV_HEADS, HEAD_SIZE, MAX_POSITIONS = 4, 2, 8, 64
HIDDEN = HEADS * HEAD_SIZE
LOWEST = np.finfo(np.float32).min


def _tables(rotary: bool = True) -> tuple[np.ndarray, np.ndarray]:
    if not rotary:  # halves that differ: not a rotary table
        rng = np.random.default_rng(7)
        return (rng.standard_normal((MAX_POSITIONS, HEAD_SIZE)).astype(np.float32),
                rng.standard_normal((MAX_POSITIONS, HEAD_SIZE)).astype(np.float32))
    inverse = 1.0 / 10000 ** (np.arange(0, HEAD_SIZE, 2) / HEAD_SIZE)
    angles = np.outer(np.arange(MAX_POSITIONS), inverse)
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class _Layer:
    """Nodes and initializers of one attention layer, spelled as ``spelling`` exports it."""

    def __init__(self, spelling: str):
        self.spelling, self.nodes, self.initializers, self.count = spelling, [], [], 0

    def const(self, array, dtype=np.int64) -> str:
        self.count += 1
        name = f"c{self.count}"
        self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attributes) -> list[str] | str:
        self.count += 1
        names = [f"{op_type.lower()}{self.count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, **attributes))
        return names if outputs > 1 else names[0]

    def heads(self, projection: str, heads: int) -> str:
        target = self.const([0, 0, heads, HEAD_SIZE] if self.spelling == "torchscript" else [0, 0, -1, HEAD_SIZE])
        return self.op("Transpose", [self.op("Reshape", [projection, target])], perm=[0, 2, 1, 3])

    def rotate(self, x: str, cos: str, sin: str) -> str:
        if self.spelling == "torchscript":
            half = self.op("Div", [self.op("Gather", [self.op("Shape", [x]), self.const([3])], axis=0), self.const([2])])
            low = self.op("Slice", [x, self.const([0]), half, self.const([3])])
            high = self.op("Slice", [x, half, self.const([np.iinfo(np.int64).max]), self.const([3])])
        else:
            low, high = self.op("Split", [x], outputs=2, axis=-1, num_outputs=2)
        rotated = self.op("Concat", [self.op("Neg", [high]), low], axis=-1)
        return self.op("Add", [self.op("Mul", [x, cos]), self.op("Mul", [rotated, sin])])

    def table_rows(self, table: str) -> str:
        if self.spelling == "torchscript":
            rows = self.op("Gather", [table, "position_ids"], axis=0)
        else:
            rows = self.op("GatherND", [table, self.op("Unsqueeze", ["position_ids", self.const([-1])])])
        return self.op("Unsqueeze", [rows, self.const([1])])

    def repeat(self, present: str, groups: int, axis: int = 2) -> str:
        unsqueezed = self.op("Unsqueeze", [present, self.const([axis])])
        counts = [1, 1, 1, 1, 1]
        counts[axis] = groups
        if self.spelling == "torchscript":
            tiled = self.op("Tile", [unsqueezed, self.const(counts)])
            shape = self.op("Shape", [tiled])
            target = self.op("Concat", [self.op("Slice", [shape, self.const([0]), self.const([1]), self.const([0])]),
                                        self.const([-1]),
                                        self.op("Slice", [shape, self.const([3]), self.const([5]), self.const([0])])], axis=0)
            return self.op("Reshape", [tiled, target])
        expanded = self.op("Expand", [unsqueezed, self.const(counts)])
        target = self.op("Concat", [self.op("Shape", [present], start=0, end=1), self.const([KV_HEADS * groups]),
                                    self.op("Shape", [present], start=2)], axis=0)
        return self.op("Reshape", [expanded, target])


def _decoder_layer(spelling: str = "torchscript", *, tables: str = "rotary", kv_heads: int = KV_HEADS,
                   bias: str = "full", softmax_axis: int = -1, repeat_axis: int = 2, read_probs: bool = False,
                   position_type: int = TensorProto.INT64, opset: int | None = None) -> onnx.ModelProto:
    layer = _Layer(spelling)
    rng = np.random.default_rng(0)
    weights = {name: rng.standard_normal((HIDDEN, width)).astype(np.float32) / 4
               for name, width in (("wq", HIDDEN), ("wk", kv_heads * HEAD_SIZE), ("wv", kv_heads * HEAD_SIZE), ("wo", HIDDEN))}
    layer.initializers += [numpy_helper.from_array(array, name) for name, array in weights.items()]
    cos, sin = _tables(tables == "rotary")
    layer.initializers += [numpy_helper.from_array(cos, "cos_table"), numpy_helper.from_array(sin, "sin_table")]
    query, key, value = (layer.heads(layer.op("MatMul", ["x", w]), heads)
                         for w, heads in (("wq", HEADS), ("wk", kv_heads), ("wv", kv_heads)))
    cos_rows, sin_rows = layer.table_rows("cos_table"), layer.table_rows("sin_table")
    query, key = layer.rotate(query, cos_rows, sin_rows), layer.rotate(key, cos_rows, sin_rows)
    layer.nodes.append(helper.make_node("Concat", ["past_key", key], ["present_key"], axis=2))
    layer.nodes.append(helper.make_node("Concat", ["past_value", value], ["present_value"], axis=2))
    groups = HEADS // kv_heads
    repeated_key = layer.repeat("present_key", groups, repeat_axis) if groups > 1 else "present_key"
    repeated_value = layer.repeat("present_value", groups, repeat_axis) if groups > 1 else "present_value"
    product = layer.op("MatMul", [query, layer.op("Transpose", [repeated_key], perm=[0, 1, 3, 2])])
    if spelling == "torchscript":
        scores = layer.op("Div", [product, layer.const(np.sqrt(HEAD_SIZE), np.float32)])
    else:
        scores = layer.op("Mul", [product, layer.const(1 / np.sqrt(HEAD_SIZE), np.float32)])
    logits = layer.op("Add", [scores, "bias"]) if bias != "none" else scores
    probs = layer.op("Softmax", [logits], axis=softmax_axis)
    context = layer.op("Transpose", [layer.op("MatMul", [probs, repeated_value])], perm=[0, 2, 1, 3])
    layer.nodes.append(helper.make_node("MatMul", [layer.op("Reshape", [context, layer.const([0, 0, HIDDEN])]), "wo"], ["y"]))
    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("x", f32, ["b", "s", HIDDEN]),
              helper.make_tensor_value_info("position_ids", position_type, ["b", "s"]),
              helper.make_tensor_value_info("past_key", f32, ["b", kv_heads, "p", HEAD_SIZE]),
              helper.make_tensor_value_info("past_value", f32, ["b", kv_heads, "p", HEAD_SIZE])]
    if bias != "none":
        inputs.append(helper.make_tensor_value_info("bias", f32, ["b", 1, "s" if bias == "full" else 1, "t"]))
    outputs = [helper.make_tensor_value_info("y", f32, ["b", "s", HIDDEN]),
               helper.make_tensor_value_info("present_key", f32, ["b", kv_heads, "t", HEAD_SIZE]),
               helper.make_tensor_value_info("present_value", f32, ["b", kv_heads, "t", HEAD_SIZE])]
    if read_probs:
        outputs.append(helper.make_tensor_value_info(probs, f32, None))
    graph = helper.make_graph(layer.nodes, "decoder_layer", inputs, outputs, layer.initializers)
    opset = opset or (17 if spelling == "torchscript" else 18)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _feeds(batch: int, seq: int, past: int, *, kv_heads: int = KV_HEADS, bias: str = "full",
           position_type=np.int64, seed: int = 0) -> dict[str, np.ndarray]:
    """Row 0 left-padded by 3: its first query rows see no key at all in a prefill."""
    rng = np.random.default_rng(seed)
    total = past + seq
    mask = np.ones((batch, total), bool)
    mask[0, :3] = False
    feeds = {"x": rng.standard_normal((batch, seq, HIDDEN)).astype(np.float32),
             "position_ids": np.clip(np.cumsum(mask, 1) - 1, 0, None)[:, past:].astype(position_type),
             "past_key": rng.standard_normal((batch, kv_heads, past, HEAD_SIZE)).astype(np.float32),
             "past_value": rng.standard_normal((batch, kv_heads, past, HEAD_SIZE)).astype(np.float32)}
    if bias == "full":
        causal = np.tril(np.ones((seq, total), bool), past)
        feeds["bias"] = np.where(causal[None] & mask[:, None], 0, LOWEST).astype(np.float32)[:, None]
    elif bias == "padding":
        feeds["bias"] = np.where(mask, 0, LOWEST).astype(np.float32)[:, None, None]
    return feeds


def _saved(model: onnx.ModelProto, tmp_path) -> onnx.ModelProto:
    """The model onyxrt saves after optimizing it at EXTENDED."""
    options = onyxrt.SessionOptions()
    options.graph_optimization_level = onyxrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "saved.onnx")
    onyxrt.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath)


def _ops(model: onnx.ModelProto, tmp_path) -> collections.Counter:
    return collections.Counter(node.op_type for node in _saved(model, tmp_path).graph.node)


def _run(model: onnx.ModelProto, tmp_path, cases=((2, 6, 0), (2, 1, 5)), **feed_options):
    """Op histogram of our saved EXTENDED model; outputs (ours, and onnxruntime's on our saved model) checked."""
    options = onyxrt.SessionOptions()
    options.graph_optimization_level = onyxrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ours = onyxrt.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    saved = onnx.load(options.optimized_model_filepath)
    assert [o.name for o in saved.graph.output] == [o.name for o in model.graph.output]
    plain = onnxruntime.SessionOptions()
    plain.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = onnxruntime.InferenceSession(model.SerializeToString(), plain, providers=["CPUExecutionProvider"])
    theirs = onnxruntime.InferenceSession(saved.SerializeToString(), plain, providers=["CPUExecutionProvider"])
    for batch, seq, past in cases:
        feeds = _feeds(batch, seq, past, **feed_options)
        want = reference.run(None, feeds)
        for got in (ours.run(None, feeds), theirs.run(None, feeds)):
            for g, w in zip(got, want):
                assert g.shape == w.shape
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    return collections.Counter(node.op_type for node in saved.graph.node)


@pytest.mark.parametrize("spelling", ["torchscript", "dynamo"])
def test_decoder_attention_becomes_rotary_and_group_query_attention(spelling, tmp_path):
    ops = _run(_decoder_layer(spelling), tmp_path)
    assert ops["GroupQueryAttention"] == 1 and ops["RotaryEmbedding"] == 2
    assert ops["Softmax"] == 0 and ops["Neg"] == 0 and ops["Transpose"] == 0
    assert ops["MatMul"] == 4  # the projections


def test_before_opset_15_the_lengths_are_read_with_gather(tmp_path):
    ops = _run(_decoder_layer(opset=14), tmp_path)
    assert ops["GroupQueryAttention"] == 1 and ops["Gather"] == 3  # B, S, past length


def test_fused_node_takes_the_bias_and_lengths_from_shapes_without_a_causal_mask(tmp_path):
    saved = _saved(_decoder_layer(), tmp_path)
    (gqa,) = [node for node in saved.graph.node if node.op_type == "GroupQueryAttention"]
    attributes = {a.name: helper.get_attribute_value(a) for a in gqa.attribute}
    assert gqa.domain == "com.microsoft" and attributes["causal"] == 0
    assert (attributes["num_heads"], attributes["kv_num_heads"]) == (HEADS, KV_HEADS)
    assert attributes["scale"] == pytest.approx(1 / np.sqrt(HEAD_SIZE))
    assert gqa.input[10] == "bias" and gqa.input[3:5] == ["past_key", "past_value"]
    assert list(gqa.output)[1:] == ["present_key", "present_value"]
    rotaries = [node for node in saved.graph.node if node.op_type == "RotaryEmbedding"]
    assert [node.input[1] for node in rotaries] == ["position_ids"] * 2
    assert {node.output[0] for node in rotaries} == set(gqa.input[:2])  # rotated on the 3-D projections


@pytest.mark.parametrize("spelling", ["torchscript", "dynamo"])
def test_tables_that_are_not_rotary_stay_elementwise_and_attention_still_fuses(spelling, tmp_path):
    ops = _run(_decoder_layer(spelling, tables="random"), tmp_path)
    assert ops["RotaryEmbedding"] == 0 and ops["Neg"] == 2
    assert ops["GroupQueryAttention"] == 1 and ops["Softmax"] == 0


def test_heads_not_repeated_fuse_with_as_many_kv_heads(tmp_path):
    ops = _run(_decoder_layer(kv_heads=HEADS), tmp_path, kv_heads=HEADS)
    assert ops["GroupQueryAttention"] == 1


def test_attention_without_a_bias_fuses_without_one(tmp_path):
    ops = _run(_decoder_layer(bias="none"), tmp_path, bias="none")
    assert ops["GroupQueryAttention"] == 1


def test_a_bias_broadcast_over_the_query_rows_is_left_alone(tmp_path):
    ops = _run(_decoder_layer(bias="padding"), tmp_path, bias="padding")
    assert ops["GroupQueryAttention"] == 0 and ops["Softmax"] == 1


def test_heads_repeated_on_another_axis_are_left_alone(tmp_path):
    ops = _ops(_decoder_layer(repeat_axis=3), tmp_path)
    assert ops["GroupQueryAttention"] == 0 and ops["Softmax"] == 1


def test_probabilities_read_elsewhere_are_left_alone(tmp_path):
    ops = _run(_decoder_layer(read_probs=True), tmp_path)
    assert ops["GroupQueryAttention"] == 0 and ops["Softmax"] == 1 and ops["RotaryEmbedding"] == 2


def test_softmax_over_another_axis_is_left_alone(tmp_path):
    ops = _ops(_decoder_layer(softmax_axis=2), tmp_path)
    assert ops["GroupQueryAttention"] == 0 and ops["Softmax"] == 1


def test_int32_positions_leave_the_rotation_elementwise(tmp_path):
    ops = _run(_decoder_layer(position_type=TensorProto.INT32), tmp_path, position_type=np.int32)
    assert ops["RotaryEmbedding"] == 0 and ops["GroupQueryAttention"] == 1


def test_position_ids_of_another_shape_are_refused_as_onnxruntime_does():
    model = _decoder_layer()
    options = onyxrt.SessionOptions()
    options.graph_optimization_level = onyxrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    session = onyxrt.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = _feeds(2, 6, 0)
    feeds["position_ids"] = feeds["position_ids"][:1]  # broadcast by the original Gather/Mul
    with pytest.raises(Exception, match="position_ids"):
        session.run(None, feeds)


def test_chunked_prefill_of_a_batch_runs_in_onyxrt_as_in_the_original(tmp_path):
    """S > 1 after a past at batch > 1: exact in onyxrt; onnxruntime's CPU kernel refuses it (documented)."""
    model = _decoder_layer()
    saved = _saved(model, tmp_path)
    assert [node.op_type for node in saved.graph.node].count("GroupQueryAttention") == 1
    feeds = _feeds(2, 3, 4)
    plain = onnxruntime.SessionOptions()
    plain.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = onnxruntime.InferenceSession(model.SerializeToString(), plain, providers=["CPUExecutionProvider"]).run(None, feeds)
    got = onyxrt.InferenceSession(saved.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spelling", ["torchscript", "dynamo"])
def test_rotary_alone_becomes_one_rotary_embedding(spelling, tmp_path):
    layer = _Layer(spelling)
    cos, sin = _tables()
    layer.initializers += [numpy_helper.from_array(cos, "cos_table"), numpy_helper.from_array(sin, "sin_table")]
    rotated = layer.rotate("x", layer.table_rows("cos_table"), layer.table_rows("sin_table"))
    layer.nodes.append(helper.make_node("Identity", [rotated], ["y"]))
    graph = helper.make_graph(layer.nodes, "rotary", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", HEADS, "s", HEAD_SIZE]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", HEADS, "s", HEAD_SIZE])], layer.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17 if spelling == "torchscript" else 18)])
    saved = _saved(model, tmp_path)
    assert [node.op_type for node in saved.graph.node] == ["RotaryEmbedding"]
    feeds = {"x": np.random.default_rng(2).standard_normal((2, HEADS, 5, HEAD_SIZE)).astype(np.float32),
             "position_ids": np.array([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8]], np.int64)}
    want = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    for session in (onyxrt.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]),
                    onnxruntime.InferenceSession(saved.SerializeToString(), providers=["CPUExecutionProvider"])):
        np.testing.assert_allclose(session.run(None, feeds)[0], want, rtol=1e-5, atol=1e-6)
