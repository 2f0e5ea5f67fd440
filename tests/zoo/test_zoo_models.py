"""The zoo's real architectures give onnxruntime's outputs (max abs error <= 1e-3 x max |reference|)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from feeds import decoder_feeds, encoder_feeds, vision_feeds

import onyxrt

ort = pytest.importorskip("onnxruntime")
pytestmark = [pytest.mark.heavy, pytest.mark.zoo]


@functools.lru_cache(maxsize=2)
def _sessions(path: str):
    return (
        onyxrt.InferenceSession(path, providers=["CPUExecutionProvider"]),
        ort.InferenceSession(path, providers=["CPUExecutionProvider"]),
    )


def assert_matches_onnxruntime(path: str, feeds: dict[str, np.ndarray]) -> None:
    ours, reference = _sessions(path)
    got = ours.run(None, feeds)
    want = reference.run(None, feeds)
    names = [o.name for o in reference.get_outputs()]
    assert [o.name for o in ours.get_outputs()] == names
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        scale = max(float(np.max(np.abs(w))), 1e-6)
        error = float(np.max(np.abs(g.astype(np.float64) - w))) if w.size else 0.0
        assert error <= 1e-3 * scale, f"{name}: max abs error {error:.3g} > 1e-3 x {scale:.3g}"


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
@pytest.mark.parametrize("batch", [1, 2])
def test_vision(zoo_model, name, batch):
    assert_matches_onnxruntime(zoo_model(name), vision_feeds(batch))


@pytest.mark.parametrize("name", ["minilm_l6", "bert_base"])
@pytest.mark.parametrize("batch,seq", [(1, 8), (2, 8), (1, 128), (2, 128), (2, 37)])
def test_encoder(zoo_model, name, batch, seq):
    assert_matches_onnxruntime(zoo_model(name), encoder_feeds(name, batch, seq))


@pytest.mark.parametrize("batch,seq,past", [(1, 8, 0), (2, 16, 0), (1, 1, 7), (2, 1, 127), (1, 4, 12)])
def test_llama_tiny(zoo_model, batch, seq, past):
    assert_matches_onnxruntime(zoo_model("llama_tiny"), decoder_feeds(batch, seq, past))


def test_llama_tiny_generation_feeds_presents_back(zoo_model):
    """Greedy decoding for a few steps: each step's presents become the next step's pasts."""
    path = zoo_model("llama_tiny")
    ours, reference = _sessions(path)
    feeds = decoder_feeds(batch=1, seq=5, past=0)
    output_names = [o.name for o in ours.get_outputs()]
    for _ in range(3):
        got = dict(zip(output_names, ours.run(None, feeds)))
        want = dict(zip(output_names, reference.run(None, feeds)))
        np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-3 * np.abs(want["logits"]).max())
        token = int(np.argmax(want["logits"][0, -1]))
        total = feeds["attention_mask"].shape[1] + 1
        feeds = {
            "input_ids": np.array([[token]], dtype=np.int64),
            "position_ids": np.array([[total - 1]], dtype=np.int64),
            "attention_mask": np.ones((1, total), dtype=np.int64),
        }
        for name in output_names[1:]:
            feeds[name.replace("present", "past_key_values")] = got[name]
