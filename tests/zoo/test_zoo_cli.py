"""``onyxrt run MODEL`` with no other flag on every zoo model, and its inputs checked against onnxruntime."""

from __future__ import annotations

import pytest

from onyxrt.cli import main

pytestmark = [pytest.mark.heavy, pytest.mark.zoo]

ZOO_MODELS = ("resnet50", "mobilenet_v2", "bert_base", "minilm_l6", "distilbert_dynamo", "llama_tiny", "llama_tiny_dynamo")


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_run_with_no_flags(zoo_model, name, capsys):
    assert main(["run", zoo_model(name)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "output " in out and "latency: p50" in out


@pytest.mark.parametrize("name", ["minilm_l6", "llama_tiny", "llama_tiny_dynamo"])
def test_made_up_inputs_give_onnxruntime_results(zoo_model, name, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["run", zoo_model(name), "--compare", "onnxruntime", "--warmup", "0"]) == 0, capsys.readouterr().out
    assert "FAIL" not in capsys.readouterr().out


def test_decoder_with_a_past(zoo_model, capsys):
    assert main(["run", zoo_model("llama_tiny"), "--past", "5", "--seq", "2", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "input  attention_mask: shape=[1, 7]" in out and "input  position_ids: shape=[1, 2] dtype=int64 min=5 max=6" in out
    assert "output present.0.key: shape=[1, 2, 7, 64]" in out
