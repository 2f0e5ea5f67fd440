"""The zoo's encoders end with one attention node per layer at ORT_ENABLE_EXTENDED, outputs unchanged.

minilm_l6 (a TorchScript export of transformers 5: -inf mask, NaN guard; bert_base is the same export,
wider and deeper, so it is left out) and
distilbert_dynamo (dynamo export: finfo.min mask): the model onyxrt saves has one
com.microsoft Attention per layer and no Softmax left; ours and onnxruntime running our saved
model match onnxruntime's unoptimized run (1e-4 relative) at batch 2, sequence 16 with the
second row's last 5 positions padded, and with a row whose mask is all zero (the NaN guard's case).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from feeds import encoder_feeds

ort = pytest.importorskip("onnxruntime")
from extended_sessions import extended_sessions  # noqa: E402  (needs onnxruntime)
pytestmark = [pytest.mark.heavy, pytest.mark.zoo]

LAYERS = {"minilm_l6": 6, "distilbert_dynamo": 6}


def _feeds(inputs: list[str], fully_masked_row: bool) -> dict[str, np.ndarray]:
    feeds = encoder_feeds("bert_base", 2, 16)
    feeds["attention_mask"][:] = 1
    feeds["attention_mask"][1, -5:] = 0
    if fully_masked_row:
        feeds["attention_mask"][0] = 0
    return {name: feeds[name] for name in inputs}


@pytest.mark.parametrize("name", list(LAYERS))
def test_one_attention_node_per_layer_outputs_unchanged(zoo_model, name, tmp_path):
    ours, reference, ours_in_onnxruntime, saved_path = extended_sessions(zoo_model(name), tmp_path)
    saved = onnx.load(saved_path, load_external_data=False)
    histogram = Counter(node.op_type for node in saved.graph.node)
    assert histogram["Attention"] == LAYERS[name]
    assert histogram["Softmax"] == 0 and histogram["MultiHeadAttention"] == 0
    inputs = [i.name for i in reference.get_inputs()]
    for fully_masked_row in (False, True):
        feeds = _feeds(inputs, fully_masked_row)
        want = reference.run(None, feeds)[0]
        for got in (ours.run(None, feeds)[0], ours_in_onnxruntime.run(None, feeds)[0]):
            assert got.shape == want.shape and not np.isnan(got).any()
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(want))))
