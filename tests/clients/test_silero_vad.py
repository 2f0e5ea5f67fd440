"""silero-vad (voice activity detection: an LSTM decoder inside If branches) runs unchanged on onyxrt."""

import pytest
from drop_in import run_snippet

pytest.importorskip("silero_vad")
pytest.importorskip("torch")

SNIPPET = """
import json
import numpy as np
import torch
from silero_vad import load_silero_vad
model = load_silero_vad(onnx=True)
rng = np.random.default_rng(0)
t = np.arange(16000 * 2) / 16000
wav = (0.3 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 3 * t) * (t > 0.8)
       + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
probs = [float(model(torch.from_numpy(wav[i:i + 512]), 16000)) for i in range(0, wav.size - 512, 512)]
print(json.dumps(probs))
"""


def test_silero_vad_speech_probabilities_match_onnxruntime():
    ours = run_snippet(SNIPPET, use_onyxrt=True)
    reference = run_snippet(SNIPPET, use_onyxrt=False)
    assert ours == pytest.approx(reference, abs=1e-4)
