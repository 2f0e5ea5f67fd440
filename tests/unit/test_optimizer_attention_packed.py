"""Attention fusion on packed-QKV and causal spellings → one com.microsoft Attention node per layer.

Synthetic layers with onnx.helper: timm's ViT (one qkv projection reshaped to [B, S, 3, N, H],
permuted (2, 0, 3, 1, 4) and unbound by Split/Slice + Squeeze or Gather; scale computed from the
head's shape as TorchScript spells SDPA, or a constant) and GPT-2 (one c_attn projection Split
into q, k, v; masked_fill of the causal mask as Where over Not(Trilu(ConstantOfShape)), over
Trilu(Expand(True)), a constant table or its top-left corner). Each is checked against onnxruntime with its
optimizer off, on our session and on our saved model run by onnxruntime; then the negatives,
one per precondition; then tests/data/unseen's vit and gpt2 in both exports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt as ort

HIDDEN, HEADS = 32, 4
HEAD_SIZE = HIDDEN // HEADS
SEQ = 5
LOWEST = float(np.finfo(np.float32).min)
UNSEEN = Path(__file__).resolve().parents[1] / "data" / "unseen"


class _Graph:
    def __init__(self, opset: int = 17):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(0)

    def const(self, name: str, array) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def ints(self, name: str, *values: int) -> str:
        return self.const(name, np.array(values, np.int64))

    def node(self, op: str, inputs: list[str], out: str | list[str], **attrs) -> str:
        outs = [out] if isinstance(out, str) else out
        self.nodes.append(helper.make_node(op, inputs, outs, name=outs[0], **attrs))
        return out

    def dim(self, value: str, axis: int) -> str:
        """A 1-element int64 tensor holding dim ``axis`` of ``value``, TorchScript's way (one chain per use)."""
        name = f"{value}_d{axis}_{len(self.nodes)}"
        shape = self.node("Shape", [value], f"{name}_shape")
        gathered = self.node("Gather", [shape, self.const(f"{name}_i", np.array(axis, np.int64))], f"{name}_g")
        return self.node("Unsqueeze", [gathered, self.ints(f"{name}_u", 0)], name)

    def qkv(self, x: str = "x") -> str:
        weight = self.const("Wqkv", (self.rng.standard_normal((HIDDEN, 3 * HIDDEN)) * 0.3).astype(np.float32))
        bias = self.const("bqkv", (self.rng.standard_normal(3 * HIDDEN) * 0.1).astype(np.float32))
        return self.node("Add", [self.node("MatMul", [x, weight], "qkv_mm"), bias], "qkv")

    def merged(self, context: str, x: str = "x", width: int = HIDDEN, batch_minus_one: bool = False) -> str:
        swapped = self.node("Transpose", [context], "context_t", perm=[0, 2, 1, 3])
        if batch_minus_one:
            target = self.ints("merge_target", -1, SEQ, width)
        else:
            target = self.node("Concat", [self.dim(x, 0), self.dim(x, 1), self.ints("width", width)], "merge_target", axis=0)
        return self.node("Reshape", [swapped, target], "y")

    def model(self, static_seq: bool = False) -> onnx.ModelProto:
        seq = SEQ if static_seq else "seq"
        graph = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", seq, HIDDEN])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], self.initializers)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])


def _vit(unbind: str = "split", scale: str = "computed", perm=(2, 0, 3, 1, 4), batch_minus_one: bool = False,
         scale_from: str = "q") -> onnx.ModelProto:
    """timm's attention: qkv → [B, S, 3, N, H] → permute → unbind → SDPA → [B, S, D]."""
    g = _Graph(18 if unbind == "slice" else 17)
    qkv = g.qkv()
    if batch_minus_one:
        target = g.ints("qkv_target", -1, SEQ, 3, HEADS, HEAD_SIZE)
    else:
        target = g.node("Concat", [g.dim("x", 0), g.dim("x", 1), g.ints("qkv_tail", 3, HEADS, HEAD_SIZE)], "qkv_target", axis=0)
    permuted = g.node("Transpose", [g.node("Reshape", [qkv, target], "qkv_5d")], "qkv_perm", perm=list(perm))
    if unbind == "split":
        parts = g.node("Split", [permuted, g.ints("ones", 1, 1, 1)], ["p0", "p1", "p2"], axis=0)
        q, k, v = (g.node("Squeeze", [p, g.ints(f"sq{i}", 0)], f"{n}_heads") for i, (p, n) in enumerate(zip(parts, "qkv")))
    elif unbind == "slice":
        q, k, v = (g.node("Squeeze", [g.node("Slice", [permuted, g.ints(f"s{i}", i), g.ints(f"e{i}", i + 1), g.ints(f"a{i}", 0)],
                                             f"slice{i}"), g.ints(f"sq{i}", 0)], f"{n}_heads") for i, n in enumerate("qkv"))
    else:
        q, k, v = (g.node("Gather", [permuted, g.const(f"i{i}", np.array(i, np.int64))], f"{n}_heads", axis=0)
                   for i, n in enumerate("qkv"))
    k_t = g.node("Transpose", [k], "k_t", perm=[0, 1, 3, 2])
    if scale == "computed":  # TorchScript's SDPA: sqrt(1 / sqrt(q.shape[-1])) on q and on Kᵀ
        # scale_from "seq": x's symbolic sequence length, which nothing proves
        shape = g.node("Shape", [q if scale_from == "q" else "x"], "q_shape")
        bounds = (-1, 2**63 - 1) if scale_from == "q" else (-2, -1)
        last = g.node("Slice", [shape, g.ints("last_a", bounds[0]), g.ints("last_b", bounds[1])], "q_last")
        root = g.node("Sqrt", [g.node("Cast", [last], "q_last_f", to=TensorProto.FLOAT)], "root")
        factor = g.node("Sqrt", [g.node("Div", [g.const("one", np.array([1.0], np.float32)), root], "inv_root")], "factor")
        scores = g.node("MatMul", [g.node("Mul", [q, factor], "q_scaled"), g.node("Mul", [k_t, factor], "k_scaled")], "scores")
    else:
        scores = g.node("Div", [g.node("MatMul", [q, k_t], "qk"), g.const("root", np.array(np.sqrt(HEAD_SIZE), np.float32))], "scores")
    context = g.node("MatMul", [g.node("Softmax", [scores], "probs", axis=-1), v], "context")
    g.merged(context, batch_minus_one=batch_minus_one)
    return g.model(static_seq=batch_minus_one)


def _gpt2(mask: str = "trilu_not", fill: float = LOWEST, trilu_k: int | None = None, ones_dims=("x", 1, "x", 1),
          num_outputs: bool = False, corner_start: int = 0, padding: bool = False) -> onnx.ModelProto:
    """GPT-2's attention: c_attn → Split → heads; scores masked_fill(~tril, fill); → [B, S, D]."""
    g = _Graph(18 if num_outputs else 17)
    qkv = g.qkv()
    outs = ["q_proj", "k_proj", "v_proj"]
    if num_outputs:
        g.node("Split", [qkv], outs, axis=2, num_outputs=3)
    else:
        g.node("Split", [qkv, g.ints("sizes", HIDDEN, HIDDEN, HIDDEN)], outs, axis=2)
    target = g.node("Concat", [g.dim("x", 0), g.dim("x", 1), g.ints("heads", HEADS, HEAD_SIZE)], "heads_target", axis=0)
    q, k, v = (g.node("Reshape", [p, target], f"{n}_split") for p, n in zip(outs, "qkv"))
    q, v = (g.node("Transpose", [t], f"{n}_heads", perm=[0, 2, 1, 3]) for t, n in ((q, "q"), (v, "v")))
    k_t = g.node("Transpose", [k], "k_t", perm=[0, 2, 3, 1])
    scores = g.node("Div", [g.node("MatMul", [q, k_t], "qk"), g.const("root", np.array(np.sqrt(HEAD_SIZE), np.float32))], "scores")
    square = g.node("Concat", [g.dim(ones_dims[0], ones_dims[1]), g.dim(ones_dims[2], ones_dims[3])], "square", axis=0) \
        if mask.startswith("trilu") else None
    fill_value = g.const("fill", np.array(fill, np.float32))
    if mask == "trilu_not":
        ones = g.node("ConstantOfShape", [square], "ones", value=helper.make_tensor("t", TensorProto.BOOL, [1], [True]))
        lower = g.node("Trilu", [ones, g.const("k", np.array(0 if trilu_k is None else trilu_k, np.int64))], "lower", upper=0)
        masked = g.node("Where", [g.node("Not", [lower], "future"), fill_value, scores], "masked")
    elif mask == "trilu_keep":
        ones = g.node("Expand", [g.const("true", np.array(True)), square], "ones")
        kept = g.node("Trilu", [ones] + ([g.const("k", np.array(trilu_k, np.int64))] if trilu_k is not None else []), "kept", upper=0)
        masked = g.node("Where", [kept, scores, fill_value], "masked")
    elif mask == "corner":  # GPT-2's bias[:, :, :S, :T] of a [1, 1, C, C] lower-triangular table, C > S
        table = g.const("table", np.tril(np.ones((16, 16), bool))[None, None])
        row_end = g.dim(ones_dims[0], ones_dims[1])
        if corner_start:  # rows start..S + start: as many, but not the top ones
            row_end = g.node("Add", [row_end, g.ints("shift", corner_start)], "row_end")
        ends = g.node("Concat", [row_end, g.dim(ones_dims[2], ones_dims[3])], "corner_ends", axis=0)
        corner = g.node("Slice", [table, g.ints("corner_starts", corner_start, 0), ends, g.ints("corner_axes", 2, 3)], "corner")
        masked = g.node("Where", [corner, scores, fill_value], "masked")
    else:
        table = np.triu(np.ones((SEQ, SEQ), bool), 1)[None, None]
        masked = g.node("Where", [g.const("future", table), fill_value, scores], "masked")
    if padding:  # transformers' additive padding mask [B, 1, 1, T] after the causal one
        allowed = g.node("Unsqueeze", [g.node("Cast", ["attention_mask"], "allowed", to=TensorProto.BOOL), g.ints("pad_axes", 1, 2)],
                         "allowed4")
        pad = g.node("Where", [allowed, g.const("zero", np.array(0.0, np.float32)), g.const("pad_fill", np.array(LOWEST, np.float32))],
                     "pad_bias")
        masked = g.node("Add", [masked, pad], "masked_padded")
    context = g.node("MatMul", [g.node("Softmax", [masked], "probs", axis=-1), v], "context")
    g.merged(context)
    model = g.model(static_seq=mask == "table")
    if padding:
        model.graph.input.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]))
    return model


def _feeds(batch: int = 2, seq: int = SEQ) -> dict:
    return {"x": np.random.default_rng(1).standard_normal((batch, seq, HIDDEN)).astype(np.float32)}


def _run(model: onnx.ModelProto | str, tmp_path, feeds: dict) -> onnx.ModelProto:
    """The model our EXTENDED session saves; ours and onnxruntime on the saved model match onnxruntime unoptimized."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    source = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    off = onnxruntime.SessionOptions()
    off.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = onnxruntime.InferenceSession(source, off, providers=["CPUExecutionProvider"]).run(None, feeds)
    theirs = onnxruntime.InferenceSession(str(tmp_path / "optimized.onnx"), off, providers=["CPUExecutionProvider"])
    for got in (session.run(None, feeds), theirs.run(None, feeds)):
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(w))))
    return onnx.load(str(tmp_path / "optimized.onnx"))


def _attention_nodes(saved: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in saved.graph.node if n.domain == "com.microsoft" and n.op_type in ("Attention", "MultiHeadAttention")]


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("variant", [
    {"unbind": "split"}, {"unbind": "slice"}, {"unbind": "gather"}, {"unbind": "split", "scale": "constant"},
    {"unbind": "slice", "batch_minus_one": True},
])
def test_packed_qkv_unbound_into_heads_becomes_one_attention(variant, tmp_path):
    saved = _run(_vit(**variant), tmp_path, _feeds())
    (fused,) = _attention_nodes(saved)
    assert fused.op_type == "Attention" and _attributes(fused) == {"num_heads": HEADS}
    # The packed weight is the qkv projection's own: [D, 3D] in q, k, v order.
    weight = next(i for i in saved.graph.initializer if i.name == fused.input[1])
    assert list(weight.dims) == [HIDDEN, 3 * HIDDEN]
    assert not any(n.op_type in ("Softmax", "Split", "Squeeze", "Gather", "Sqrt") for n in saved.graph.node)


@pytest.mark.parametrize("variant", [
    {"mask": "trilu_not"}, {"mask": "trilu_keep"}, {"mask": "trilu_keep", "fill": -np.inf},
    {"mask": "table"}, {"mask": "corner"}, {"mask": "trilu_not", "num_outputs": True},
])
def test_split_projection_with_causal_mask_becomes_unidirectional_attention(variant, tmp_path):
    saved = _run(_gpt2(**variant), tmp_path, _feeds())
    (fused,) = _attention_nodes(saved)
    assert fused.op_type == "Attention" and _attributes(fused) == {"num_heads": HEADS, "unidirectional": 1}
    assert len(fused.input) == 3  # no attention_bias: the mask is the attribute
    assert not any(n.op_type in ("Softmax", "Where", "Trilu") for n in saved.graph.node)


def test_causal_and_padding_masks_become_unidirectional_with_attention_bias(tmp_path):
    feeds = _feeds(batch=3)
    mask = np.ones((3, SEQ), np.int64)
    mask[1, -2:] = 0  # right padding
    mask[2, :2] = 0  # left padding: the first queries see no key at all
    saved = _run(_gpt2(padding=True), tmp_path, {**feeds, "attention_mask": mask})
    (fused,) = _attention_nodes(saved)
    assert _attributes(fused) == {"num_heads": HEADS, "unidirectional": 1} and len(fused.input) == 6


@pytest.mark.parametrize("model", [
    pytest.param(lambda: _gpt2(trilu_k=1), id="tril_k1_lets_one_future_key_through"),
    pytest.param(lambda: _gpt2(mask="trilu_keep", trilu_k=-1), id="strictly_lower_masks_the_diagonal"),
    pytest.param(lambda: _gpt2(mask="corner", corner_start=1), id="table_rows_not_from_the_top"),
    pytest.param(lambda: _gpt2(ones_dims=("x", 1, "x", 0)), id="mask_columns_not_the_keys"),
])
def test_mask_not_proven_causal_is_fed_as_attention_bias(model, tmp_path):
    saved = _run(model(), tmp_path, _feeds(batch=SEQ))  # B = S: the masks of other sizes still run
    (fused,) = _attention_nodes(saved)
    assert "unidirectional" not in _attributes(fused) and len(fused.input) == 6 and fused.input[5]


@pytest.mark.parametrize("model", [
    pytest.param(lambda: _gpt2(fill=-10000.0), id="fill_not_lowest"),
    pytest.param(lambda: _vit(perm=(2, 0, 1, 3, 4)), id="permute_keeps_sequence_before_heads"),
    pytest.param(lambda: _vit(scale_from="seq"), id="scale_from_a_size_not_proven"),
])
def test_preconditions_block_the_fusion(model, tmp_path):
    built = model()
    saved = _run(built, tmp_path, _feeds(batch=SEQ))  # B = S: the wrong masks and perms still run
    assert not _attention_nodes(saved)


@pytest.mark.parametrize("name", ["vit", "vit_dynamo", "gpt2", "gpt2_dynamo"])
def test_unseen_models_get_one_attention_per_layer(name, tmp_path):
    path = UNSEEN / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    rng = np.random.default_rng(0)
    if name.startswith("vit"):
        feeds = {"input": rng.standard_normal((2, 3, 32, 32)).astype(np.float32)}
    else:
        feeds = {"input_ids": rng.integers(0, 256, (2, 12)).astype(np.int64)}
    saved = _run(str(path), tmp_path, feeds)
    fused = _attention_nodes(saved)
    assert [n.op_type for n in fused] == ["Attention"] * 2  # two layers
    assert all(_attributes(n).get("unidirectional", 0) == name.startswith("gpt2") for n in fused)
    assert not any(n.op_type == "Softmax" for n in saved.graph.node)
