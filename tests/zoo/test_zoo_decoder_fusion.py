"""llama_tiny at ORT_ENABLE_EXTENDED: one GroupQueryAttention per layer, rotary fused, outputs and presents unchanged.

Both exports (TorchScript and dynamo). Checked: node counts per layer and against onnxruntime's
EXTENDED, logits and presents against onnxruntime unoptimized for a prefill with a left-padded
row and a decode step (ours, and onnxruntime running our saved model), and a generation loop
that feeds the presents back. The zoo draws llama_tiny_dynamo's cos/sin caches at random like
its weights (they are initializers there, constants in the TorchScript export), so they are no
rotary tables and stay elementwise; the same model with the real caches put back fuses them.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

ort = pytest.importorskip("onnxruntime")
from extended_sessions import extended_sessions  # noqa: E402  (needs onnxruntime)
pytestmark = [pytest.mark.heavy, pytest.mark.zoo]

LAYERS, KV_HEADS, HEAD_SIZE, VOCAB = 4, 2, 64, 32000


def _rotary_caches(max_positions: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    inverse = 1.0 / 10000 ** (np.arange(0, HEAD_SIZE, 2, dtype=np.float32) / HEAD_SIZE)
    angles = np.outer(np.arange(max_positions, dtype=np.float32), inverse)
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


def _with_real_rotary_caches(model: onnx.ModelProto) -> onnx.ModelProto:
    """The dynamo export with the rotary caches the exporter wrote (cos and sin of positions × inverse frequencies)."""
    cos, sin = _rotary_caches()
    sin_tables = set()
    producers = {output: node for node in model.graph.node for output in node.output}
    for node in model.graph.node:  # Mul(Concat(-x2, x1), Unsqueeze(GatherND(sin_table, ...)))
        if node.op_type == "Mul" and any(producers.get(i) is not None and producers[i].op_type == "Concat" for i in node.input):
            for value in node.input:
                unsqueeze = producers.get(value)
                if unsqueeze is not None and unsqueeze.op_type == "Unsqueeze":
                    sin_tables.add(producers[unsqueeze.input[0]].input[0])
    gathered = {node.input[0] for node in model.graph.node if node.op_type == "GatherND"}
    assert len(sin_tables) == 1 and len(gathered) == 2
    for tensor in model.graph.initializer:
        if tensor.name in gathered:
            tensor.CopyFrom(numpy_helper.from_array(sin if tensor.name in sin_tables else cos, tensor.name))
    return model


def _feeds(batch: int, seq: int, past: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Row 0 left-padded by 3 tokens (mask 0, HF-style positions), pasts random."""
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, past + seq), np.int64)
    mask[0, :3] = 0
    feeds = {"input_ids": rng.integers(0, VOCAB, (batch, seq), dtype=np.int64),
             "position_ids": np.clip(np.cumsum(mask, 1) - 1, 0, None)[:, past:], "attention_mask": mask}
    for layer in range(LAYERS):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{layer}.{kind}"] = rng.standard_normal((batch, KV_HEADS, past, HEAD_SIZE), dtype=np.float32)
    return feeds


def _close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(w))))


@pytest.mark.parametrize("name, caches", [("llama_tiny", "exported"), ("llama_tiny_dynamo", "zoo"), ("llama_tiny_dynamo", "real")])
def test_one_group_query_attention_per_layer_with_outputs_and_presents_unchanged(zoo_model, name, caches, tmp_path):
    model = onnx.load(zoo_model(name))
    if caches == "real":
        model = _with_real_rotary_caches(model)
    data = model.SerializeToString()
    ours, reference, theirs, saved_path = extended_sessions(data, tmp_path)
    ops = [node.op_type for node in onnx.load(saved_path).graph.node]
    assert ops.count("GroupQueryAttention") == LAYERS
    assert ops.count("Softmax") == 0 and ops.count("Tile") + ops.count("Expand") <= 3  # no repeated K/V left
    assert ops.count("RotaryEmbedding") == (0 if caches == "zoo" else 2 * LAYERS)
    assert ops.count("SkipSimplifiedLayerNormalization") == 2 * LAYERS

    extended = ort.SessionOptions()
    extended.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    extended.optimized_model_filepath = str(tmp_path / "onnxruntime.onnx")
    ort.InferenceSession(data, extended, providers=["CPUExecutionProvider"])
    assert len(ops) <= len(onnx.load(str(tmp_path / "onnxruntime.onnx")).graph.node)

    for batch, seq, past in ((2, 16, 0), (2, 1, 15)):
        feeds = _feeds(batch, seq, past)
        want = reference.run(None, feeds)
        _close(ours.run(None, feeds), want)
        _close(theirs.run(None, feeds), want)


def test_generation_with_presents_fed_back_matches_onnxruntime(zoo_model, tmp_path):
    ours, reference, theirs, _ = extended_sessions(zoo_model("llama_tiny"), tmp_path)
    feeds = _feeds(2, 8, 0)
    names = [o.name for o in reference.get_outputs()]
    state = {session: dict(feeds) for session in (ours, reference, theirs)}
    for step in range(4):
        results = {session: session.run(None, state[session]) for session in state}
        for session in (ours, theirs):
            _close(results[session], results[reference])
        token = results[reference][0][:, -1].argmax(-1)[:, None]  # every loop continues with the same tokens
        for session, outputs in results.items():
            previous = state[session]
            mask = np.concatenate([previous["attention_mask"], np.ones((2, 1), np.int64)], axis=1)
            state[session] = {"input_ids": token, "attention_mask": mask,
                              "position_ids": previous["position_ids"][:, -1:] + 1}
            for output_name, value in zip(names[1:], outputs[1:]):
                state[session][output_name.replace("present", "past_key_values")] = value
        assert state[reference]["attention_mask"].shape[1] == 8 + step + 1
