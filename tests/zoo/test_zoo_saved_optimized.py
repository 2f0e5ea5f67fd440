"""onyxrt's EXTENDED-optimized zoo models: outputs unchanged (≤ 1e-4 relative), and the saved
optimized model (``optimized_model_filepath``) loads and runs in onnxruntime with the same outputs.

The fused nodes use onnxruntime's com.microsoft contrib-op definitions, so onnxruntime with its own
optimizer off runs exactly the graph we wrote.
"""

from __future__ import annotations

import numpy as np
import pytest
from feeds import decoder_feeds, encoder_feeds, vision_feeds

ort = pytest.importorskip("onnxruntime")
from extended_sessions import extended_sessions  # noqa: E402  (needs onnxruntime)
pytestmark = [pytest.mark.heavy, pytest.mark.zoo]

# bert_base is left out: the same BertModel export as minilm_l6, wider and deeper (18 s of CI for nothing more)
MODELS = ("resnet50", "mobilenet_v2", "minilm_l6", "llama_tiny", "distilbert_dynamo", "llama_tiny_dynamo")


def _feeds(name: str) -> list[dict[str, np.ndarray]]:
    if name in ("resnet50", "mobilenet_v2"):
        return [vision_feeds(1)]
    if name.startswith("llama"):
        # prefill and decode, batch 2 with a left-padded row. onnxruntime's CPU GroupQueryAttention
        # refuses several new tokens after a past at batch > 1 (onyxrt runs that: test_zoo_decoder_fusion).
        prefill, decode = decoder_feeds(2, 16, 0), decoder_feeds(2, 1, 15)
        for feeds in (prefill, decode):
            feeds["attention_mask"][1, :3] = 0
        return [prefill, decode]
    return [encoder_feeds("bert_base", 2, 16)]  # the second row padded


def _assert_close(got: list[np.ndarray], want: list[np.ndarray], names: list[str], who: str) -> None:
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, f"{who}: {name}"
        scale = max(float(np.max(np.abs(w))), 1e-6)
        error = float(np.max(np.abs(g.astype(np.float64) - w))) if w.size else 0.0
        assert error <= 1e-4 * scale, f"{who}: {name}: max abs error {error:.3g} > 1e-4 x {scale:.3g}"


@pytest.mark.parametrize("name", MODELS)
def test_extended_model_saved_by_onyxrt_runs_in_onnxruntime(zoo_model, tmp_path, name):
    ours, reference, saved, _ = extended_sessions(zoo_model(name), tmp_path)

    names = [o.name for o in reference.get_outputs()]
    assert [o.name for o in saved.get_outputs()] == names
    inputs = {i.name for i in reference.get_inputs()}
    for all_feeds in _feeds(name):
        feeds = {key: value for key, value in all_feeds.items() if key in inputs}
        want = reference.run(None, feeds)
        _assert_close(ours.run(None, feeds), want, names, "onyxrt at EXTENDED")
        _assert_close(saved.run(None, feeds), want, names, "onnxruntime on onyxrt's saved model")
