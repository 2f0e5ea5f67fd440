"""Zoo models optimized by onnxruntime itself run in onyxrt and give onnxruntime's outputs.

The optimized models are produced here, once per test session, in a temporary folder:

* onnxruntime's graph optimizer (``SessionOptions.optimized_model_filepath``) at
  ORT_ENABLE_EXTENDED -- com.microsoft FusedConv, FusedMatMul, BiasGelu, QuickGelu,
  standard-domain SimplifiedLayerNormalization... -- and at ORT_ENABLE_ALL, which
  also converts convolutions to the blocked com.microsoft.nchwc layout (ReorderInput /
  ReorderOutput / nchwc Conv, MaxPool, GlobalAveragePool; the block size is this CPU's);
* onnxruntime's transformers optimizer (``onnxruntime.transformers.optimizer``) on the
  BERT encoder minilm_l6: SkipLayerNormalization, BiasGelu, ...;
* an encoder layer written with the ops the transformers optimizer emits for classic
  BERT exports (EmbedLayerNormalization, Attention with a mask index,
  SkipLayerNormalization, FastGelu), with bert_base's layer sizes, since the zoo's exports
  use a pattern that optimizer does not fuse into Attention.

bert_base is the same transformers BertModel export as minilm_l6 (twice as wide, twice as
deep, random weights), so it is left out here: it took two minutes of CI and covered no op
or pattern minilm_l6 does not.

Each optimized model is run by onyxrt and compared with onnxruntime running the same
file: max abs error <= 1e-3 x max |reference|. Encoders run at batch 1, sequence 32.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
from feeds import decoder_feeds, encoder_feeds, vision_feeds

import onyxrt

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytestmark = [pytest.mark.heavy, pytest.mark.zoo]

SEQ = 32
FUSED_VOCAB = 1024  # the embedding table's rows: bert_base's 30522 only made the file 90 MB larger
ENCODERS = {"minilm_l6": (12, 384)}
LEVELS = {"extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def _feeds(name: str) -> dict[str, np.ndarray]:
    if name in ENCODERS:
        return encoder_feeds(name, 1, SEQ)
    if name == "llama_tiny":
        return decoder_feeds(1, 4, 3)
    return vision_feeds(1)


def _op_counts(path) -> collections.Counter:
    model = onnx.load(str(path), load_external_data=False)
    return collections.Counter((n.domain, n.op_type) for n in model.graph.node)


def assert_matches_onnxruntime(path, feeds) -> None:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ours = onyxrt.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in reference.get_outputs()]
    assert [o.name for o in ours.get_outputs()] == names
    want = reference.run(None, feeds)
    got = ours.run(None, feeds)
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        scale = max(float(np.max(np.abs(w))), 1e-6)
        error = float(np.max(np.abs(g.astype(np.float64) - w))) if w.size else 0.0
        assert error <= 1e-3 * scale, f"{name}: max abs error {error:.3g} > 1e-3 x {scale:.3g}"


# --------------------------------------------------------------------------- graph optimizer

# contrib ops each optimized model must contain, so the comparison covers them
_EXPECTED = {
    ("resnet50", "extended"): {("com.microsoft", "FusedConv")},
    ("resnet50", "all"): {("com.microsoft.nchwc", "Conv"), ("com.microsoft.nchwc", "MaxPool"), ("com.microsoft.nchwc", "ReorderOutput")},
    ("mobilenet_v2", "extended"): {("com.microsoft", "FusedConv")},
    ("mobilenet_v2", "all"): {("com.microsoft.nchwc", "Conv"), ("com.microsoft.nchwc", "GlobalAveragePool")},
    ("minilm_l6", "extended"): {("com.microsoft", "FusedMatMul"), ("com.microsoft", "BiasGelu")},
    ("minilm_l6", "all"): {("com.microsoft", "FusedMatMul"), ("com.microsoft", "BiasGelu")},
    ("llama_tiny", "extended"): {("", "SimplifiedLayerNormalization"), ("com.microsoft", "QuickGelu")},
}


@pytest.mark.parametrize("level", list(LEVELS))
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "minilm_l6", "llama_tiny"])
def test_graph_optimizer_output(zoo_model, tmp_path, name, level):
    out = tmp_path / f"{name}.{level}.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    so.optimized_model_filepath = str(out)
    so.log_severity_level = 3  # the ENABLE_ALL "hardware specific model" warning
    ort.InferenceSession(str(zoo_model(name)), so, providers=["CPUExecutionProvider"])
    counts = _op_counts(out)
    missing = _EXPECTED.get((name, level), set()) - set(counts)
    assert not missing, f"onnxruntime no longer writes {missing}: {dict(counts)}"
    assert_matches_onnxruntime(out, _feeds(name))


# --------------------------------------------------------------------------- transformers optimizer


@pytest.mark.parametrize("opt_level", [0, 99])
@pytest.mark.parametrize("name", list(ENCODERS))
def test_transformers_optimizer_output(zoo_model, tmp_path, name, opt_level):
    """opt_level 0: the optimizer's Python fusions alone; 99: after onnxruntime's own graph passes (needs torch)."""
    optimizer = pytest.importorskip("onnxruntime.transformers.optimizer")
    if opt_level:
        pytest.importorskip("torch", reason="onnxruntime's optimize_model imports torch for opt_level > 0")
    heads, hidden = ENCODERS[name]
    model = optimizer.optimize_model(
        str(zoo_model(name)), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=opt_level
    )
    out = tmp_path / f"{name}.transformers.onnx"
    model.save_model_to_file(str(out))
    counts = _op_counts(out)
    assert counts[("com.microsoft", "SkipLayerNormalization")] > 0, dict(counts)
    assert_matches_onnxruntime(out, _feeds(name))


# --------------------------------------------------------------------------- fused BERT encoder


def _fused_encoder(tmp_path, batch_mask_kind: str):
    """A 2-layer BERT encoder as the transformers optimizer writes it (bert_base's layer sizes, a small vocabulary)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    hidden, heads, inner, vocab, layers = 768, 12, 3072, FUSED_VOCAB, 2

    def w(name, *shape, std=0.02):
        return numpy_helper.from_array((rng.standard_normal(shape) * std).astype(np.float32), name)

    inits = [w("word", vocab, hidden), w("pos", 512, hidden), w("seg", 2, hidden)]
    inits += [numpy_helper.from_array(np.ones(hidden, np.float32), "ln_g"), w("ln_b", hidden)]
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
        helper.make_node("Cast", ["token_type_ids"], ["seg32"], to=TensorProto.INT32),
        helper.make_node("Cast", ["attention_mask"], ["mask32"], to=TensorProto.INT32),
        helper.make_node(
            "EmbedLayerNormalization",
            ["ids32", "seg32", "word", "pos", "seg", "ln_g", "ln_b", "mask32"],
            ["emb", "mask_index"],
            domain="com.microsoft",
            epsilon=1e-12,
        ),
    ]
    mask_input = "mask_index" if batch_mask_kind == "index" else "mask32"
    x = "emb"
    for i in range(layers):
        p = f"l{i}_"
        inits += [w(p + "qkv_w", hidden, 3 * hidden), w(p + "qkv_b", 3 * hidden), w(p + "out_w", hidden, hidden)]
        inits += [w(p + "out_b", hidden), numpy_helper.from_array(np.ones(hidden, np.float32), p + "ln1_g"), w(p + "ln1_b", hidden)]
        inits += [w(p + "fc1_w", hidden, inner), w(p + "fc1_b", inner), w(p + "fc2_w", inner, hidden), w(p + "fc2_b", hidden)]
        inits += [numpy_helper.from_array(np.ones(hidden, np.float32), p + "ln2_g"), w(p + "ln2_b", hidden)]
        nodes += [
            helper.make_node(
                "Attention", [x, p + "qkv_w", p + "qkv_b", mask_input], [p + "att"], domain="com.microsoft", num_heads=heads
            ),
            helper.make_node("MatMul", [p + "att", p + "out_w"], [p + "proj"]),
            helper.make_node(
                "SkipLayerNormalization",
                [p + "proj", x, p + "ln1_g", p + "ln1_b", p + "out_b"],
                [p + "h1"],
                domain="com.microsoft",
                epsilon=1e-12,
            ),
            helper.make_node("MatMul", [p + "h1", p + "fc1_w"], [p + "fc1"]),
            helper.make_node("FastGelu", [p + "fc1", p + "fc1_b"], [p + "gelu"], domain="com.microsoft"),
            helper.make_node("MatMul", [p + "gelu", p + "fc2_w"], [p + "fc2"]),
            helper.make_node(
                "SkipLayerNormalization",
                [p + "fc2", p + "h1", p + "ln2_g", p + "ln2_b", p + "fc2_b"],
                [p + "out"],
                domain="com.microsoft",
                epsilon=1e-12,
            ),
        ]
        x = p + "out"
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    graph = helper.make_graph(
        nodes, "fused_bert", inputs, [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden])], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    path = tmp_path / f"fused_bert_{batch_mask_kind}.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("mask_kind", ["index", "raw"])
def test_fused_bert_encoder(tmp_path, mask_kind):
    path = _fused_encoder(tmp_path, mask_kind)
    feeds = encoder_feeds("bert_base", 2, SEQ)  # the second row is right padded
    feeds["input_ids"] %= FUSED_VOCAB
    assert_matches_onnxruntime(path, feeds)


# --------------------------------------------------------------------------- NCHWc coverage


def _nchwc_vision_graph(mode: str, ctm: str):
    """Convolutions around the ops the NCHWc transformer also converts or fuses: Sigmoid /
    HardSigmoid activations, a channel Concat, AveragePool, Resize (-> nchwc Upsample),
    BatchNormalization (folded), a depthwise Conv with a Sum, GlobalMaxPool."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    inits = [w("w1", 32, 3, 3, 3), w("b1", 32), w("w2", 32, 32, 3, 3), w("b2", 32), w("w3", 24, 64, 1, 1), w("b3", 24)]
    inits += [w("w4", 48, 24, 3, 3), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    inits += [w("bn_s", 48), w("bn_b", 48), w("bn_m", 48), w("wd", 48, 1, 3, 3)]
    inits += [numpy_helper.from_array(np.abs(rng.standard_normal(48)).astype(np.float32) + 0.5, "bn_v")]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["s1"]),
        helper.make_node("Conv", ["s1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["c2", "s1"], ["cat"], axis=1),
        helper.make_node("AveragePool", ["cat"], ["ap"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Conv", ["ap", "w3", "b3"], ["c3"]),
        helper.make_node("Resize", ["c3", "", "scales"], ["rs"], mode=mode, coordinate_transformation_mode=ctm, nearest_mode="floor"),
        helper.make_node("Conv", ["rs", "w4"], ["c4"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c4", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"]),
        helper.make_node("HardSigmoid", ["bn"], ["hs"]),
        helper.make_node("Conv", ["hs", "wd"], ["dw"], group=48, pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["dw", "hs"], ["sum"]),
        helper.make_node("GlobalMaxPool", ["sum"], ["gm"]),
        helper.make_node("Flatten", ["gm"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "nchwc_cover", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 20, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("mode,ctm", [("nearest", "asymmetric"), ("linear", "asymmetric"), ("linear", "half_pixel"), ("linear", "align_corners")])
def test_nchwc_layout_ops(tmp_path, mode, ctm):
    src, out = tmp_path / "vision.onnx", tmp_path / "vision.all.onnx"
    onnx.save(_nchwc_vision_graph(mode, ctm), str(src))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(out)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    counts = _op_counts(out)
    wanted = {("com.microsoft.nchwc", op) for op in ("Conv", "AveragePool", "Upsample", "GlobalMaxPool", "ReorderOutput")}
    assert not wanted - set(counts), dict(counts)
    assert_matches_onnxruntime(out, {"x": np.random.default_rng(0).standard_normal((2, 3, 20, 20)).astype(np.float32)})
