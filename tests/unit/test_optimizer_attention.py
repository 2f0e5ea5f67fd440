"""Attention fusion: encoder self-attention as the exporters spell it → one com.microsoft Attention node.

Synthetic layers in three spellings: transformers 5 through the TorchScript exporter (runtime
Reshape targets from Shape/Gather/Unsqueeze/Concat, K transposed by perm (0, 2, 3, 1), a
boolean mask turned into 0/-inf, the IsNaN guard after the Softmax), the dynamo exporter
(Shape start/end and Slice targets, K transposed through a 3-D Reshape/Transpose/Reshape,
finfo.min mask) and older transformers ((1 - mask) · -10000 of shape [B, 1, 1, T], K heads
transposed by perm (0, 1, 3, 2), a Div by sqrt(H)). Each is checked against onnxruntime with
its optimizer off, on our session and on our saved model run by onnxruntime.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt as ort

HIDDEN, HEADS = 32, 4
HEAD_SIZE = HIDDEN // HEADS
FLOAT_MIN = float(np.finfo(np.float32).min)


class _Layer:
    """Builds one self-attention layer node by node; ``spelling`` picks the exporter's idioms."""

    def __init__(self, spelling: str, *, cross: bool = False, scale: float | None = None, dtype=np.float32,
                 swap_batch_and_sequence: bool = False, softmax_axis: int = -1, probs_output: bool = False,
                 bias_rank: int = 4, opset: int | None = None, masked: bool = True, fused_trans_b: bool = False,
                 quantized_output: bool = False):
        self.spelling, self.cross, self.dtype = spelling, cross, dtype
        self.scale = scale if scale is not None else 1.0 / np.sqrt(HEAD_SIZE)
        self.swap, self.softmax_axis, self.probs_output = swap_batch_and_sequence, softmax_axis, probs_output
        self.bias_rank, self.masked, self.fused_trans_b = bias_rank, masked, fused_trans_b
        self.quantized_output = quantized_output
        self.opset = opset or (18 if spelling == "dynamo" else 17)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(0)
        self.elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))

    def const(self, name: str, array) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], out: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def dim(self, value: str, axis: int) -> str:
        """A 1-element int64 tensor holding dimension ``axis`` of ``value``, the exporter's way."""
        if any(out == f"{value}_d{axis}" or out == f"{value}_dim{axis}" for n in self.nodes for out in n.output):
            return f"{value}_d{axis}" if self.spelling == "dynamo" else f"{value}_dim{axis}"
        if self.spelling == "dynamo":
            return self.node("Shape", [value], f"{value}_d{axis}", start=axis, end=axis + 1)
        shape = self.node("Shape", [value], f"{value}_shape{axis}")
        index = self.const(f"{value}_i{axis}", np.array(axis, np.int64))
        gathered = self.node("Gather", [shape, index], f"{value}_g{axis}", axis=0)
        return self.node("Unsqueeze", [gathered, self.const(f"{value}_u{axis}", np.array([0], np.int64))], f"{value}_dim{axis}")

    def project(self, source: str, name: str) -> str:
        weight = self.const(f"W{name}", (self.rng.standard_normal((HIDDEN, HIDDEN)) * 0.3).astype(self.dtype))
        bias = self.const(f"b{name}", (self.rng.standard_normal(HIDDEN) * 0.1).astype(self.dtype))
        product = self.node("MatMul", [source, weight], f"{name}_mm")
        return self.node("Add", [bias, product] if name == "q" else [product, bias], f"{name}_proj")

    def heads(self, projection: str, name: str, perm=(0, 2, 1, 3)) -> str:
        first, second = (1, 0) if self.swap else (0, 1)
        if self.spelling == "legacy":
            shape = self.node("Shape", [projection], f"{name}_pshape")
            leading = self.node("Slice", [shape, self.const(f"{name}_s0", np.array([0], np.int64)),
                                          self.const(f"{name}_s1", np.array([-1], np.int64))], f"{name}_lead")
            parts = [leading, self.const(f"{name}_nh", np.array([HEADS, HEAD_SIZE], np.int64))]
        else:
            parts = [self.dim(projection, first), self.dim(projection, second),
                     self.const(f"{name}_m1", np.array([-1], np.int64)),
                     self.const(f"{name}_h", np.array([HEAD_SIZE], np.int64))]
        target = self.node("Concat", parts, f"{name}_target", axis=0)
        allowzero = {"allowzero": 1} if self.spelling == "dynamo" else {}
        split = self.node("Reshape", [projection, target], f"{name}_split", **allowzero)
        return self.node("Transpose", [split], f"{name}_heads", perm=list(perm))

    def key_transposed(self, projection: str) -> str:
        if self.spelling == "torchscript":
            return self.heads(projection, "k", perm=(0, 2, 3, 1))
        heads = self.heads(projection, "k")
        if self.spelling == "legacy":
            return self.node("Transpose", [heads], "k_t", perm=[0, 1, 3, 2])
        shape = self.node("Shape", [heads], "k_shape", start=0)

        def sliced(name, start, end):
            return self.node("Slice", [shape, self.const(f"{name}_a", np.array([start], np.int64)),
                                       self.const(f"{name}_b", np.array([end], np.int64))], name)

        last, before, leading = sliced("k_last", -1, 2**63 - 1), sliced("k_before", -2, -1), sliced("k_lead", -(2**63), -2)
        flat_target = self.node("Concat", [self.const("k_m1", np.array([-1], np.int64)), before, last], "k_flat_t", axis=0)
        flat = self.node("Reshape", [heads, flat_target], "k_flat")
        swapped = self.node("Transpose", [flat], "k_swapped", perm=[0, 2, 1])
        return self.node("Reshape", [swapped, self.node("Concat", [leading, last, before], "k_unflat_t", axis=0)], "k_t")

    def bias(self, x: str) -> str:
        if self.spelling == "legacy":
            mask = self.node("Unsqueeze", ["attention_mask", self.const("mask_axes", np.array([1, 2], np.int64))], "mask4")
            as_float = self.node("Cast", [mask], "mask_float", to=self.elem)
            inverted = self.node("Sub", [self.const("one", np.array(1.0, self.dtype)), as_float], "mask_inverted")
            return self.node("Mul", [inverted, self.const("filter", np.array(-10000.0, self.dtype))], "mask_bias")
        if self.bias_rank == 2:
            return self.const("bias2d", (self.rng.standard_normal((4, 4))).astype(self.dtype))
        allowed = self.node("Cast", ["attention_mask"], "mask_bool", to=TensorProto.BOOL)
        mask = self.node("Unsqueeze", [allowed, self.const("mask_axes", np.array([1, 2], np.int64))], "mask4")
        target = self.node("Concat", [self.dim(x, 0), self.const("one_dim", np.array([1], np.int64)), self.dim(x, 1),
                                      self.dim("attention_mask", 1)], "mask_target", axis=0)
        expanded = self.node("Expand", [mask, target], "mask_expanded")
        low = -np.inf if self.spelling == "torchscript" else FLOAT_MIN
        return self.node("Where", [expanded, self.const("zero", np.array(0.0, self.dtype)),
                                   self.const("low", np.array(low, self.dtype))], "mask_bias")

    def build(self) -> onnx.ModelProto:
        x = "x"
        memory = "memory" if self.cross else x
        q, k, v = self.project(x, "q"), self.project(memory, "k"), self.project(memory, "v")
        q_heads = self.heads(q, "q")
        k_t = self.heads(k, "k") if self.fused_trans_b else self.key_transposed(k)
        v_heads = self.heads(v, "v")
        if self.fused_trans_b:  # onnxruntime's MatMulTransposeFusion folds Kᵀ into FusedMatMul
            scores = self.node("FusedMatMul", [q_heads, k_t], "scores", domain="com.microsoft", transB=1,
                               alpha=float(self.scale))
        elif self.spelling == "legacy":
            product = self.node("MatMul", [q_heads, k_t], "qk")
            scores = self.node("Div", [product, self.const("divisor", np.array(1.0 / self.scale, self.dtype))], "scores")
        else:
            root = np.array(np.sqrt(self.scale), self.dtype)
            scores = self.node("MatMul", [self.node("Mul", [q_heads, self.const("q_scale", root)], "q_scaled"),
                                          self.node("Mul", [k_t, self.const("k_scale", root)], "k_scaled")], "scores")
        biased = self.node("Add", [scores, self.bias(x)], "biased") if self.masked else scores
        probs = self.node("Softmax", [biased], "probs", axis=self.softmax_axis)
        if self.spelling == "torchscript":
            is_nan = self.node("IsNaN", [probs], "probs_nan")
            probs = self.node("Where", [is_nan, self.const("guard_zero", np.array(0.0, self.dtype)), probs], "probs_guarded")
        context = self.node("MatMul", [probs, v_heads], "context")
        if self.spelling == "torchscript":
            same = self.node("Concat", [self.dim(context, 0), self.const("c_m1", np.array([-1], np.int64)),
                                        self.dim(q_heads, 2), self.dim(v_heads, 3)], "context_target", axis=0)
            context = self.node("Reshape", [context, same], "context_view")
        merged = self.node("Transpose", [context], "context_t", perm=[0, 2, 1, 3])
        if self.spelling == "legacy":
            shape = self.node("Shape", [merged], "merged_shape")
            leading = self.node("Slice", [shape, self.const("m_s0", np.array([0], np.int64)),
                                          self.const("m_s1", np.array([-2], np.int64))], "merged_lead")
            target = self.node("Concat", [leading, self.const("m_hidden", np.array([HIDDEN], np.int64))], "merged_target", axis=0)
        else:
            target = self.node("Concat", [self.dim(x, 0), self.dim(x, 1), self.const("m_m1", np.array([-1], np.int64))],
                               "merged_target", axis=0)
        attended = self.node("Reshape", [merged, target], "attended")
        if self.quantized_output:  # onnxruntime's dynamic quantization of the output projection
            self.nodes.append(helper.make_node("DynamicQuantizeLinear", [attended], ["a_q", "a_scale", "a_zero"]))
            attended = self.node("DequantizeLinear", ["a_q", "a_scale", "a_zero"], "a_dequantized")
        self.project(attended, "o")
        outputs = [helper.make_tensor_value_info("o_proj", self.elem, None)]
        if self.probs_output:
            outputs.append(helper.make_tensor_value_info("probs", self.elem, None))
        inputs = [helper.make_tensor_value_info("x", self.elem, ["batch", "seq", HIDDEN]),
                  helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])]
        if self.cross:
            inputs.append(helper.make_tensor_value_info("memory", self.elem, ["batch", "seq", HIDDEN]))
        graph = helper.make_graph(self.nodes, "attention", inputs, outputs, self.initializers)
        opsets = [helper.make_opsetid("", self.opset), helper.make_opsetid("com.microsoft", 1)]
        return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def _feeds(model: onnx.ModelProto, batch: int = 2, seq: int = 6, fully_masked_row: bool = False) -> dict:
    rng = np.random.default_rng(1)
    dtype = np.float64 if model.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE else np.float32
    mask = np.ones((batch, seq), np.int64)
    mask[-1, -2:] = 0
    if fully_masked_row:
        mask[0] = 0
    feeds = {"x": rng.standard_normal((batch, seq, HIDDEN)).astype(dtype), "attention_mask": mask}
    if len(model.graph.input) == 3:
        feeds["memory"] = rng.standard_normal((batch, seq, HIDDEN)).astype(dtype)
    return feeds


def _optimized(model: onnx.ModelProto, tmp_path, feeds_list, disabled=()):
    """(the saved model at EXTENDED); outputs of ours and of onnxruntime on the saved model match onnxruntime unoptimized."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    data = model.SerializeToString()
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled))
    saved = onnx.load(str(tmp_path / "optimized.onnx"))
    assert [o.name for o in saved.graph.output] == [o.name for o in model.graph.output]
    off = onnxruntime.SessionOptions()
    off.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = onnxruntime.InferenceSession(data, off, providers=["CPUExecutionProvider"])
    theirs = onnxruntime.InferenceSession(str(tmp_path / "optimized.onnx"), off, providers=["CPUExecutionProvider"])
    for feeds in feeds_list:
        want = reference.run(None, feeds)
        for got in (session.run(None, feeds), theirs.run(None, feeds)):
            for g, w in zip(got, want):
                assert g.shape == w.shape and not np.isnan(g).any()
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(w))))
    return saved


def _fused_nodes(saved: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in saved.graph.node if n.domain == "com.microsoft" and n.op_type in ("Attention", "MultiHeadAttention")]


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("spelling", ["torchscript", "dynamo", "legacy"])
def test_each_spelling_becomes_one_packed_attention(spelling, tmp_path):
    model = _Layer(spelling).build()
    saved = _optimized(model, tmp_path, [_feeds(model), _feeds(model, batch=1, seq=3)])
    fused = _fused_nodes(saved)
    assert [n.op_type for n in fused] == ["Attention"]
    assert _attributes(fused[0]) == {"num_heads": HEADS}
    histogram = Counter(n.op_type for n in saved.graph.node)
    assert histogram["Softmax"] == 0 and histogram["Transpose"] == 0
    assert histogram["MatMul"] == 1  # the output projection; q, k and v are packed
    # the guard survives only where the pattern had one
    assert histogram["IsNaN"] == (1 if spelling == "torchscript" else 0)


def test_row_broadcast_mask_is_expanded_once_before_opset_15(tmp_path):
    # [B, 1, 1, T] → [B, 1, T, T] for onnxruntime; Shape has no start/end before opset 15
    model = _Layer("legacy", opset=13).build()
    saved = _optimized(model, tmp_path, [_feeds(model)])
    histogram = Counter(n.op_type for n in saved.graph.node)
    assert histogram["Attention"] == 1 and histogram["Expand"] == 1 and histogram["Gather"] == 1


@pytest.mark.parametrize("variant", [{"masked": False}, {"fused_trans_b": True}], ids=lambda v: next(iter(v)))
def test_without_mask_and_with_transposed_b(variant, tmp_path):
    model = _Layer("dynamo", **variant).build()
    saved = _optimized(model, tmp_path, [_feeds(model)])
    (fused,) = _fused_nodes(saved)
    assert fused.op_type == "Attention" and len(fused.input) == (3 if "masked" in variant else 6)


def test_mul_scales_without_matmul_scale_fusion(tmp_path):
    model = _Layer("torchscript").build()
    saved = _optimized(model, tmp_path, [_feeds(model)], disabled=["MatMulScaleFusion"])
    assert len(_fused_nodes(saved)) == 1


@pytest.mark.parametrize("spelling", ["torchscript", "dynamo", "legacy"])
def test_fully_masked_rows_keep_their_values(spelling, tmp_path):
    # transformers 5's guard turns the NaN softmax of a fully masked row into zeros; the fused
    # node's NaN row goes through the same guard. The finfo.min and -10000 masks average instead.
    model = _Layer(spelling).build()
    saved = _optimized(model, tmp_path, [_feeds(model, fully_masked_row=True)])
    assert len(_fused_nodes(saved)) == 1


def test_scale_other_than_inverse_sqrt_head_size_is_an_attribute(tmp_path):
    model = _Layer("dynamo", scale=0.3).build()
    saved = _optimized(model, tmp_path, [_feeds(model)])
    (fused,) = _fused_nodes(saved)
    assert _attributes(fused)["scale"] == pytest.approx(0.3, rel=1e-6)


def test_cross_attention_becomes_multi_head_attention(tmp_path):
    model = _Layer("torchscript", cross=True).build()
    saved = _optimized(model, tmp_path, [_feeds(model)])
    (fused,) = _fused_nodes(saved)
    assert fused.op_type == "MultiHeadAttention" and _attributes(fused) == {"num_heads": HEADS}
    assert Counter(n.op_type for n in saved.graph.node)["MatMul"] == 4  # projections stay


@pytest.mark.parametrize(
    "variant",
    [
        {"swap_batch_and_sequence": True},  # Reshape to [S, B, N, H]: not a head split
        {"softmax_axis": 2},
        {"probs_output": True},  # attention weights read outside the pattern
        {"bias_rank": 2},  # onnxruntime takes 4-D attention_bias only
        {"dtype": np.float64},
    ],
    ids=lambda v: next(iter(v)),
)
def test_preconditions_block_the_fusion(variant, tmp_path):
    model = _Layer("dynamo" if "bias_rank" in variant else "torchscript", **variant).build()
    saved = _optimized(model, tmp_path, [_feeds(model, batch=4, seq=4)])  # B = S: a swapped Reshape still runs
    assert not _fused_nodes(saved)


def test_attention_read_by_a_dynamic_quantizer_fuses_within_a_quantization_step(tmp_path):
    """A dynamically quantized output projection reads the fused result: the kernel's float rounding may move
    the odd attended value across a rounding boundary, by one step of its quantization (scale: range / 255)."""
    model = _Layer("torchscript", quantized_output=True).build()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert _fused_nodes(onnx.load(options.optimized_model_filepath))
    off = onnxruntime.SessionOptions()
    off.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = onnxruntime.InferenceSession(model.SerializeToString(), off, providers=["CPUExecutionProvider"])
    for feeds in (_feeds(model), _feeds(model, batch=4, seq=4)):
        (got,), (want,) = session.run(None, feeds), reference.run(None, feeds)
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-2 * scale)
        assert np.abs(got - want).mean() <= 2e-3 * scale


def test_shape_entries_follow_exported_shape_arithmetic():
    from onyxrt.graph.model_loader import load_model
    from onyxrt.optimizer.shape_values import Dim, same_dim, shape_entries

    layer = _Layer("torchscript")
    x = "x"
    target = layer.node("Concat", [layer.dim(x, 0), layer.const("minus_one", np.array([-1], np.int64)), layer.dim(x, 1)],
                        "target", axis=0)
    is_free = layer.node("Equal", [target, layer.const("free", np.array([-1, -1, -1], np.int64))], "is_free")
    filled = layer.node("Where", [is_free, layer.const("ones", np.array([1, 1, 1], np.int64)), target], "filled")
    shape = layer.node("Shape", [x], "x_shape")
    tail = layer.node("Slice", [shape, layer.const("from", np.array([-2], np.int64)),
                                layer.const("to", np.array([2**63 - 1], np.int64))], "tail")
    graph = helper.make_graph(layer.nodes, "g", [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
                              [helper.make_tensor_value_info(v, TensorProto.INT64, None) for v in (filled, tail)],
                              layer.initializers)
    model = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    values = {v.name: v for v in model.graph.outputs}
    x_value = model.graph.inputs[0]
    assert shape_entries(values["filled"]) == [Dim(x_value, 0), 1, Dim(x_value, 1)]
    assert shape_entries(values["tail"]) == [Dim(x_value, 1), HIDDEN]  # static dims read as ints
    assert same_dim(Dim(x_value, 2), x_value, 2) and same_dim(HIDDEN, x_value, 2) and not same_dim(1, x_value, 0)


@pytest.mark.parametrize("bias_shape", [(1, 1, 5, 5), (2, 1, 5, 5), (1, HEADS, 5, 5), (2, HEADS, 5, 5)])
@pytest.mark.parametrize("op_type", ["Attention", "MultiHeadAttention"])
def test_kernels_broadcast_attention_bias_and_take_scale_as_onnxruntime(op_type, bias_shape):
    # what the fusion emits, run by onyxrt's kernels and onnxruntime's on the same inputs
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, HIDDEN)).astype(np.float32)
    bias = rng.standard_normal(bias_shape).astype(np.float32)
    bias[..., -1] = -np.inf  # a masked key
    weight = (rng.standard_normal((HIDDEN, 3 * HIDDEN)) * 0.3).astype(np.float32)
    initializers = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(np.zeros(3 * HIDDEN, np.float32), "b")]
    if op_type == "Attention":
        node = helper.make_node(op_type, ["x", "W", "b", "", "", "bias"], ["y"], domain="com.microsoft",
                                num_heads=HEADS, scale=0.3)
    else:
        node = helper.make_node(op_type, ["x", "x", "x", "", "", "bias"], ["y"], domain="com.microsoft",
                                num_heads=HEADS, scale=0.3)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape)),
                                            helper.make_tensor_value_info("bias", TensorProto.FLOAT, list(bias_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=8).SerializeToString()
    feeds = {"x": x, "bias": bias}
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    want = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
