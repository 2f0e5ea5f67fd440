"""onyxrt.genai's Generator on llama_tiny: 64 greedy tokens equal, token for token, a plain onnxruntime loop
that feeds the presents back as pasts (batch 1; batch 2 left-padded to different prompt lengths; the dynamo
export; the model with its attention fused into GroupQueryAttention)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onyxrt
from onyxrt.genai import Generator

ort = pytest.importorskip("onnxruntime")
pytestmark = [pytest.mark.heavy, pytest.mark.zoo]

NEW_TOKENS = 64
PAD = 0


def _onnxruntime_loop(session, input_ids: np.ndarray, mask: np.ndarray, new_tokens: int) -> np.ndarray:
    """Greedy decoding written out: prefill, then one token per step with the presents as the next pasts."""
    inputs = {arg.name: arg for arg in session.get_inputs()}
    past_names = [name for name in inputs if name.startswith("past_key_values.")]
    batch = input_ids.shape[0]
    heads, head_size = inputs[past_names[0]].shape[1], inputs[past_names[0]].shape[3]
    feeds = {"input_ids": input_ids, "attention_mask": mask,
             "position_ids": np.clip(np.cumsum(mask, axis=1) - 1, 0, None)}
    feeds.update({name: np.zeros((batch, heads, 0, head_size), np.float32) for name in past_names})
    output_names = ["logits"] + [name.replace("past_key_values", "present") for name in past_names]
    tokens = input_ids
    for _ in range(new_tokens):
        logits, *presents = session.run(output_names, feeds)
        token = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
        tokens = np.concatenate([tokens, token], axis=1)
        mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
        feeds = {"input_ids": token, "attention_mask": mask, "position_ids": mask.sum(axis=1, keepdims=True) - 1}
        feeds.update(zip(past_names, presents))
    return tokens


def _prompts(lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of random token ids of the given lengths, left-padded with PAD to the longest; and their mask."""
    rng = np.random.default_rng(seed)
    width = max(lengths)
    ids = np.full((len(lengths), width), PAD, np.int64)
    mask = np.zeros((len(lengths), width), np.int64)
    for row, length in enumerate(lengths):
        ids[row, width - length:] = rng.integers(1, 32000, length)
        mask[row, width - length:] = 1
    return ids, mask


def _reference_session(path: str):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", ["llama_tiny", "llama_tiny_dynamo"])
def test_greedy_64_tokens_batch_1_equal_onnxruntime_loop(zoo_model, name):
    path = zoo_model(name)
    ids, mask = _prompts([7])
    want = _onnxruntime_loop(_reference_session(path), ids, mask, NEW_TOKENS)
    generator = Generator(path)
    got = generator.generate(ids, max_new_tokens=NEW_TOKENS)
    assert got.dtype == np.int64 and got.shape == (1, 7 + NEW_TOKENS)
    np.testing.assert_array_equal(got, want)
    streamed = np.stack(list(generator.stream(ids, max_new_tokens=NEW_TOKENS)), axis=1)
    np.testing.assert_array_equal(streamed, want[:, 7:])
    stats = generator.last_stats
    assert stats.new_tokens == NEW_TOKENS and stats.prefill_tokens_per_second > 0 and stats.decode_tokens_per_second > 0


@pytest.mark.parametrize("padding_from", ["attention_mask", "pad_token_id"])
def test_greedy_64_tokens_batch_2_left_padded_equal_onnxruntime_loop(zoo_model, padding_from):
    path = zoo_model("llama_tiny")
    ids, mask = _prompts([5, 11], seed=1)
    want = _onnxruntime_loop(_reference_session(path), ids, mask, NEW_TOKENS)
    generator = Generator(path)
    if padding_from == "attention_mask":
        got = generator.generate(ids, max_new_tokens=NEW_TOKENS, attention_mask=mask)
    else:
        got = generator.generate(ids, max_new_tokens=NEW_TOKENS, pad_token_id=PAD)
    np.testing.assert_array_equal(got, want)
    # each row continues as it does alone, unpadded: left padding changes nothing
    alone = generator.generate(ids[:1, 6:], max_new_tokens=NEW_TOKENS)
    np.testing.assert_array_equal(got[:1, 6:], alone)


def test_fused_group_query_attention_model_generates_the_same_tokens(zoo_model, tmp_path):
    """llama_tiny saved at EXTENDED (GroupQueryAttention per layer), run by onyxrt and by onnxruntime through Generator."""
    path = zoo_model("llama_tiny")
    saved = str(tmp_path / "llama_tiny_gqa.onnx")
    options = onyxrt.SessionOptions()
    options.graph_optimization_level = onyxrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = saved
    onyxrt.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    assert [node.op_type for node in onnx.load(saved).graph.node].count("GroupQueryAttention") == 4
    ids, mask = _prompts([4, 9], seed=2)
    want = _onnxruntime_loop(_reference_session(path), ids, mask, 16)
    np.testing.assert_array_equal(Generator(saved).generate(ids, max_new_tokens=16, attention_mask=mask), want)
    np.testing.assert_array_equal(Generator(_reference_session(saved)).generate(ids, max_new_tokens=16, attention_mask=mask), want)


def test_sampling_is_reproducible_with_a_seed_and_stops_at_eos(zoo_model):
    generator = Generator(zoo_model("llama_tiny"))
    ids, _ = _prompts([6], seed=3)
    options = dict(max_new_tokens=12, do_sample=True, temperature=0.8, top_k=50, top_p=0.9, repetition_penalty=1.2)
    first = generator.generate(ids, seed=7, **options)
    np.testing.assert_array_equal(generator.generate(ids, seed=7, **options), first)
    eos = int(first[0, 6 + 3])  # the fourth new token: stop there
    stopped = generator.generate(ids, seed=7, eos_token_id=eos, **options)
    np.testing.assert_array_equal(stopped, first[:, :6 + 4])


def test_cli_generate_on_llama_tiny_prints_the_loop_tokens(zoo_model, capsys):
    from onyxrt.cli import main

    path = zoo_model("llama_tiny")
    ids, mask = _prompts([6], seed=4)
    want = _onnxruntime_loop(_reference_session(path), ids, mask, 8)[0, 6:]
    argv = ["generate", path, "--input-ids", ",".join(map(str, ids[0])), "--max-new-tokens", "8", "--stream"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"new tokens: {' '.join(map(str, want))}\n" in out
    assert "prefill: 6 tokens in" in out and "decode: 7 tokens in" in out


@pytest.mark.parametrize("level", ["ORT_ENABLE_ALL", "ORT_DISABLE_ALL"])
@pytest.mark.parametrize("name", ["llama_tiny", "llama_tiny_dynamo"])
def test_greedy_64_tokens_through_in_place_cache_buffers_equal_onnxruntime_loop(zoo_model, name, level):
    """The Generator's cache path on the Concat exports: every present appended in place to its buffer (by
    GroupQueryAttention fused from the Concat, or by the Concat itself unoptimized), never recopied; the
    tokens, batch 2 left-padded, are the onnxruntime loop's."""
    path = zoo_model(name)
    ids, mask = _prompts([6, 10], seed=5)
    want = _onnxruntime_loop(_reference_session(path), ids, mask, NEW_TOKENS)
    options = onyxrt.SessionOptions()
    options.graph_optimization_level = getattr(onyxrt.GraphOptimizationLevel, level)
    generator = Generator(path, sess_options=options)
    got = generator.generate(ids, max_new_tokens=NEW_TOKENS, attention_mask=mask)
    stats = generator.last_stats
    assert stats.cache == "buffers" and stats.cache_reloads == 0
    np.testing.assert_array_equal(got, want)
