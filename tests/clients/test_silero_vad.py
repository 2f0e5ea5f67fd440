"""silero-vad (voice activity detection) runs unchanged on onyxrt: its streaming models (an LSTM
decoder inside If branches at opset 16; the opset 15 export), the batched sequence model, and the
speech-timestamp detection built on them.

The audio is synthetic and seeded: an amplitude-modulated tone with bursts and noise.
"""

import pytest
from drop_in import run_snippet

pytest.importorskip("silero_vad")
pytest.importorskip("torch")

AUDIO = """
import json
import numpy as np
rng = np.random.default_rng(0)
t = np.arange(16000 * 4) / 16000
voiced = ((t > 0.8) & (t < 1.9)) | ((t > 2.6) & (t < 3.5))
wav = (0.3 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 3 * t) * voiced
       + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
"""

STREAMING_SNIPPET = AUDIO + """
import torch
from silero_vad import get_speech_timestamps, load_silero_vad
model = load_silero_vad(onnx=True, opset_version={opset})
probs = [float(model(torch.from_numpy(wav[i:i + 512]), 16000)) for i in range(0, 16000 * 2 - 512, 512)]
model.reset_states()
stamps = get_speech_timestamps(torch.from_numpy(wav), model, sampling_rate=16000)
print(json.dumps({{"probs": probs, "stamps": [[s["start"], s["end"]] for s in stamps]}}))
"""

SEQUENCE_SNIPPET = AUDIO + """
from silero_vad import get_speech_timestamps_sequence, load_silero_vad
model = load_silero_vad(sequence=True, max_frames=48)
probs = model.audio_forward(wav).tolist()
stamps = get_speech_timestamps_sequence(wav, model, sampling_rate=16000)
print(json.dumps({"probs": probs, "stamps": [[s["start"], s["end"]] for s in stamps]}))
"""


def assert_vad_matches(ours, reference):
    assert ours["probs"] == pytest.approx(reference["probs"], abs=1e-4)
    # timestamps are sample indices decided by thresholds on those probabilities: identical
    assert ours["stamps"] == reference["stamps"]


@pytest.mark.parametrize("opset", [16, 15])
def test_silero_vad_streaming_model_matches_onnxruntime(opset):
    snippet = STREAMING_SNIPPET.format(opset=opset)
    ours = run_snippet(snippet, use_onyxrt=True)
    reference = run_snippet(snippet, use_onyxrt=False)
    assert reference["stamps"], "the synthetic audio should contain speech-like segments"
    assert_vad_matches(ours, reference)


def test_silero_vad_sequence_model_matches_onnxruntime():
    ours = run_snippet(SEQUENCE_SNIPPET, use_onyxrt=True)
    reference = run_snippet(SEQUENCE_SNIPPET, use_onyxrt=False)
    assert reference["stamps"], "the synthetic audio should contain speech-like segments"
    assert_vad_matches(ours, reference)
