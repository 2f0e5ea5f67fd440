"""The zoo models through OpenVINOExecutionProvider: the CPU provider's outputs at FP32, and decode steps compile once."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from feeds import decoder_feeds, encoder_feeds, vision_feeds

import onyxrt

pytest.importorskip("openvino")
pytestmark = [pytest.mark.heavy, pytest.mark.zoo]

OV = "OpenVINOExecutionProvider"
CPU = "CPUExecutionProvider"


@functools.lru_cache(maxsize=2)
def _sessions(path: str):
    return (
        onyxrt.InferenceSession(path, providers=[(OV, {"precision": "FP32"}), CPU]),
        onyxrt.InferenceSession(path, providers=[CPU]),
    )


def _assert_matches_cpu(session, cpu, feeds, rtol=1e-4):
    names = [o.name for o in cpu.get_outputs()]
    for name, got, want in zip(names, session.run(None, feeds), cpu.run(None, feeds)):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        scale = max(float(np.max(np.abs(want))), 1e-6)
        error = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
        assert error <= rtol * scale, f"{name}: max abs error {error:.3g} > {rtol} x {scale:.3g}"


def _regions(session):
    (provider,) = [p for p in session._providers if p.name == OV]
    return provider.regions


@pytest.mark.parametrize("name,feeds", [
    ("resnet50", lambda: vision_feeds(1)),
    ("mobilenet_v2", lambda: vision_feeds(2)),
    ("minilm_l6", lambda: encoder_feeds("minilm_l6", 2, 37)),
    ("distilbert_dynamo", lambda: {k: v for k, v in encoder_feeds("bert_base", 2, 19).items() if k != "token_type_ids"}),
])
def test_whole_model_on_openvino_matches_the_cpu_provider(zoo_model, name, feeds):
    session, cpu = _sessions(zoo_model(name))
    assert [node.meta["execution_provider"] for node in session._plan.graph] == [OV]
    _assert_matches_cpu(session, cpu, feeds())


@pytest.mark.parametrize("name", ["llama_tiny", "llama_tiny_dynamo"])
def test_decode_steps_reuse_the_compiled_model(zoo_model, name):
    """Prefill, then decode steps feeding the presents back: every past length runs on the one compile."""
    session, cpu = _sessions(zoo_model(name))
    feeds = decoder_feeds(batch=1, seq=5, past=0)
    output_names = [o.name for o in session.get_outputs()]
    for step in range(4):
        _assert_matches_cpu(session, cpu, feeds)
        outputs = dict(zip(output_names, cpu.run(None, feeds)))
        past = feeds["attention_mask"].shape[1]
        feeds = {
            "input_ids": np.argmax(outputs["logits"][:, -1:], axis=-1).astype(np.int64),
            "position_ids": np.array([[past]], np.int64),
            "attention_mask": np.ones((1, past + 1), np.int64),
            **{name.replace("present", "past_key_values"): value
               for name, value in outputs.items() if name.startswith("present")},
        }
    assert [region.compilations for region in _regions(session)] == [1] * len(_regions(session))


@pytest.mark.parametrize("name,feeds", [
    ("resnet50", lambda: vision_feeds(1)),
    ("minilm_l6", lambda: encoder_feeds("minilm_l6", 1, 128)),
])
def test_default_precision_is_within_the_documented_tolerance(zoo_model, name, feeds):
    """No precision option: bf16 on CPUs that have it (measured 4-5e-3 of the output's scale, docs/openvino.md)."""
    path = zoo_model(name)
    session = onyxrt.InferenceSession(path, providers=[OV, CPU])
    _assert_matches_cpu(session, _sessions(path)[1], feeds(), rtol=2e-2)
