"""onyxrt.genai on a tiny synthetic decoder (one attention layer with past/present, built here with onnx.helper):
generation against a numpy recomputation without any cache, left padding, eos/pad, streaming, argument checks,
the sampling processors, the tokenizer path and ``onyxrt generate``."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onyxrt.cli import main
from onyxrt.genai import Generator, apply_repetition_penalty, apply_temperature, top_k_filter, top_p_filter
from onyxrt.genai import sampling

VOCAB, HIDDEN, MAX_POSITIONS = 24, 8, 64
WEIGHTS = {name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
           for seed, (name, shape) in enumerate({"embedding": (VOCAB, HIDDEN), "positions": (MAX_POSITIONS, HIDDEN),
                                                 "wq": (HIDDEN, HIDDEN), "wk": (HIDDEN, HIDDEN), "wv": (HIDDEN, HIDDEN),
                                                 "wo": (HIDDEN, VOCAB)}.items())}


def _decoder(with_position_ids: bool = True) -> onnx.ModelProto:
    """x = E[ids] (+ P[positions]); one head attending over past+new keys, masked by attention_mask; logits = attn @ Wo."""
    nodes = [helper.make_node("Gather", ["embedding", "input_ids"], ["tokens"])]
    if with_position_ids:
        nodes += [helper.make_node("Gather", ["positions", "position_ids"], ["placed"]),
                  helper.make_node("Add", ["tokens", "placed"], ["x"])]
    else:
        nodes += [helper.make_node("Identity", ["tokens"], ["x"])]
    for name in ("q", "k", "v"):
        nodes += [helper.make_node("MatMul", ["x", f"w{name}"], [f"{name}3"]),
                  helper.make_node("Unsqueeze", [f"{name}3", "axis1"], [f"{name}4"])]
    nodes += [
        helper.make_node("Concat", ["past_key_values.0.key", "k4"], ["present.0.key"], axis=2),
        helper.make_node("Concat", ["past_key_values.0.value", "v4"], ["present.0.value"], axis=2),
        helper.make_node("Transpose", ["present.0.key"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q4", "kt"], ["scores"]),                       # [b,1,s,t]
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "mask_f"], ["masked"]),
        helper.make_node("Mul", ["masked", "minus_big"], ["bias2"]),
        helper.make_node("Unsqueeze", ["bias2", "axes12"], ["bias"]),               # [b,1,1,t]
        helper.make_node("Add", ["scores", "bias"], ["biased"]),
        helper.make_node("Softmax", ["biased"], ["weights"], axis=-1),
        helper.make_node("MatMul", ["weights", "present.0.value"], ["attended4"]),
        helper.make_node("Squeeze", ["attended4", "axis1"], ["attended"]),
        helper.make_node("MatMul", ["attended", "wo"], ["logits"]),
    ]
    cache = ["batch", 1, "past", HIDDEN]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])]
    if with_position_ids:
        inputs.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]))
    inputs += [helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
               helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, cache),
               helper.make_tensor_value_info("past_key_values.0.value", TensorProto.FLOAT, cache)]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", VOCAB]),
               helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, ["batch", 1, "total", HIDDEN]),
               helper.make_tensor_value_info("present.0.value", TensorProto.FLOAT, ["batch", 1, "total", HIDDEN])]
    initializers = [numpy_helper.from_array(value, name) for name, value in WEIGHTS.items()
                    if with_position_ids or name != "positions"]
    initializers += [numpy_helper.from_array(np.array([1], np.int64), "axis1"),
                     numpy_helper.from_array(np.array([1, 2], np.int64), "axes12"),
                     numpy_helper.from_array(np.array(1, np.float32), "one"),
                     numpy_helper.from_array(np.array(-1e9, np.float32), "minus_big")]
    graph = helper.make_graph(nodes, "tiny_decoder", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _numpy_next_logits(tokens: np.ndarray, mask: np.ndarray, with_position_ids: bool) -> np.ndarray:
    """The last position's logits recomputed from every token so far (no cache), in float64."""
    w = {name: value.astype(np.float64) for name, value in WEIGHTS.items()}
    x = w["embedding"][tokens]
    if with_position_ids:
        x = x + w["positions"][np.clip(np.cumsum(mask, axis=1) - 1, 0, None)]
    q, k, v = x[:, -1] @ w["wq"], x @ w["wk"], x @ w["wv"]
    scores = np.einsum("bh,bth->bt", q, k) + (1 - mask) * -1e9
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("bt,bth->bh", weights, v) @ w["wo"]


def _numpy_greedy(ids: np.ndarray, mask: np.ndarray, new_tokens: int, with_position_ids: bool = True) -> np.ndarray:
    for _ in range(new_tokens):
        token = _numpy_next_logits(ids, mask, with_position_ids).argmax(-1)[:, None]
        ids = np.concatenate([ids, token], axis=1)
        mask = np.concatenate([mask, np.ones_like(token)], axis=1)
    return ids


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("genai") / "tiny_decoder.onnx"
    onnx.save(_decoder(), path)
    return str(path)


@pytest.fixture(scope="module")
def generator(model_path) -> Generator:
    return Generator(model_path)


PROMPTS = np.array([[0, 0, 3, 7, 11], [5, 9, 2, 14, 20]], np.int64)
PROMPT_MASK = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], np.int64)


def test_cache_layout_is_read_from_the_session(generator):
    layout = generator.layout
    assert layout.past_names == ("past_key_values.0.key", "past_key_values.0.value")
    assert layout.present_names == ("present.0.key", "present.0.value")
    assert (layout.kv_heads, layout.head_size, layout.dtype, layout.layers) == (1, HIDDEN, np.float32, 1)
    assert layout.has_position_ids and layout.has_attention_mask and generator.vocab_size == VOCAB


def test_greedy_batch_of_left_padded_rows_equals_numpy_recomputation(generator):
    got = generator.generate(PROMPTS, max_new_tokens=12, attention_mask=PROMPT_MASK)
    assert got.dtype == np.int64 and got.shape == (2, 5 + 12)
    np.testing.assert_array_equal(got, _numpy_greedy(PROMPTS, PROMPT_MASK, 12))
    # pad_token_id marks the same padding; the padded row continues as it does alone
    np.testing.assert_array_equal(generator.generate(PROMPTS, max_new_tokens=12, pad_token_id=0), got)
    np.testing.assert_array_equal(generator.generate(PROMPTS[:1, 2:], max_new_tokens=12), got[:1, 2:])


def test_model_without_position_ids(tmp_path):
    path = tmp_path / "no_positions.onnx"
    onnx.save(_decoder(with_position_ids=False), path)
    generator = Generator(str(path))
    assert not generator.layout.has_position_ids
    got = generator.generate(PROMPTS, max_new_tokens=8, attention_mask=PROMPT_MASK)
    np.testing.assert_array_equal(got, _numpy_greedy(PROMPTS, PROMPT_MASK, 8, with_position_ids=False))


def test_an_onnxruntime_session_can_drive_the_generator(model_path, generator):
    ort = pytest.importorskip("onnxruntime")
    theirs = Generator(ort.InferenceSession(model_path, providers=["CPUExecutionProvider"]))
    np.testing.assert_array_equal(theirs.generate(PROMPTS, max_new_tokens=10, attention_mask=PROMPT_MASK),
                                  generator.generate(PROMPTS, max_new_tokens=10, attention_mask=PROMPT_MASK))


def test_stream_yields_the_generated_tokens_step_by_step(generator):
    steps = list(generator.stream(PROMPTS, max_new_tokens=6, attention_mask=PROMPT_MASK))
    assert len(steps) == 6 and all(step.shape == (2,) and step.dtype == np.int64 for step in steps)
    np.testing.assert_array_equal(np.stack(steps, axis=1),
                                  generator.generate(PROMPTS, max_new_tokens=6, attention_mask=PROMPT_MASK)[:, 5:])
    stats = generator.last_stats
    assert stats.new_tokens == 6 and len(stats.step_seconds) == 6 and stats.prefill_tokens_per_second > 0


def test_finished_rows_are_padded_and_generation_stops_when_all_finished(generator):
    free = generator.generate(PROMPTS, max_new_tokens=10, attention_mask=PROMPT_MASK)[:, 5:]
    eos = int(free[0, 1])  # row 0's second new token
    row1_hits = np.flatnonzero(free[1] == eos)
    got = generator.generate(PROMPTS, max_new_tokens=10, attention_mask=PROMPT_MASK, eos_token_id=[eos], pad_token_id=23)
    new = got[:, 5:]
    first_eos_row0 = int(np.flatnonzero(free[0] == eos)[0])
    assert new[0, first_eos_row0] == eos and (new[0, first_eos_row0 + 1:] == 23).all()
    stop = max(first_eos_row0, int(row1_hits[0]) if row1_hits.size else 9) + 1
    assert new.shape[1] == stop
    np.testing.assert_array_equal(new[1], free[1, :stop])
    # without a pad token, finished rows are filled with the (first) eos id
    filled = generator.generate(PROMPTS, max_new_tokens=10, attention_mask=PROMPT_MASK, eos_token_id=eos)[:, 5:]
    assert (filled[0, first_eos_row0:] == eos).all()


def test_zero_new_tokens_returns_the_prompt(generator):
    np.testing.assert_array_equal(generator.generate(PROMPTS, max_new_tokens=0), PROMPTS)


def test_seeded_sampling_is_reproducible_and_differs_by_seed(generator):
    options = dict(max_new_tokens=16, do_sample=True, temperature=1.5, attention_mask=PROMPT_MASK)
    first = generator.generate(PROMPTS, seed=1, **options)
    np.testing.assert_array_equal(generator.generate(PROMPTS, seed=1, **options), first)
    assert any(not np.array_equal(generator.generate(PROMPTS, seed=seed, **options), first) for seed in (2, 3, 4))
    # top_k=1 samples what greedy picks
    np.testing.assert_array_equal(generator.generate(PROMPTS, max_new_tokens=8, do_sample=True, top_k=1, seed=5),
                                  generator.generate(PROMPTS, max_new_tokens=8))


@pytest.mark.parametrize("arguments, error, words", [
    (dict(input_ids=[1, 2]), ValueError, "input_ids must be 2-D"),
    (dict(input_ids=[[]]), ValueError, "input_ids must hold at least one token per row"),
    (dict(input_ids=[[1.5, 2.0]]), TypeError, "input_ids must be an integer array"),
    (dict(input_ids=[[1, VOCAB]]), ValueError, "input_ids must be token ids"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens must be at least 0"),
    (dict(max_new_tokens=2.0), TypeError, "max_new_tokens must be an int"),
    (dict(temperature=0), ValueError, "temperature must be > 0"),
    (dict(temperature="hot"), TypeError, "temperature must be a number"),
    (dict(top_k=-2), ValueError, "top_k must be at least 0"),
    (dict(top_p=0.0), ValueError, "top_p must be in (0, 1]"),
    (dict(top_p=1.5), ValueError, "top_p must be in (0, 1]"),
    (dict(repetition_penalty=0), ValueError, "repetition_penalty must be > 0"),
    (dict(eos_token_id="2"), TypeError, "eos_token_id must be an int"),
    (dict(eos_token_id=[-1]), ValueError, "eos_token_id must be at least 0"),
    (dict(pad_token_id=1.0), TypeError, "pad_token_id must be an int"),
    (dict(seed=-3), ValueError, "seed must be at least 0"),
    (dict(do_sample="yes"), TypeError, "do_sample must be a bool"),
    (dict(attention_mask=[[1, 1]]), ValueError, "attention_mask has shape"),
    (dict(attention_mask=[[1, 1, 0]]), ValueError, "left padding"),
    (dict(attention_mask=[[0, 0, 0]]), ValueError, "masks every token"),
    (dict(attention_mask=[[0, 2, 1]]), ValueError, "only 0 and 1"),
])
def test_bad_arguments_raise_typed_errors_naming_them(generator, arguments, error, words):
    arguments = {"input_ids": [[1, 2, 3]], **arguments}
    with pytest.raises(error) as raised:
        generator.stream(**arguments)  # checked at the call, before any token
    assert words in str(raised.value)


def test_models_that_are_no_kv_cache_decoder_are_refused(tmp_path):
    model = _decoder()
    model.graph.output.remove(model.graph.output[2])  # no present.0.value
    with pytest.raises(ValueError, match="'past_key_values.0.value' has no output 'present.0.value'"):
        Generator(model.SerializeToString())
    plain = helper.make_model(helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["logits"], to=TensorProto.FLOAT)], "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s"])]), opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ValueError, match="no past_key_values"):
        Generator(plain.SerializeToString())
    symbolic_heads = _decoder()
    symbolic_heads.graph.input[4].type.tensor_type.shape.dim[1].dim_param = "heads"
    with pytest.raises(ValueError, match="'past_key_values.0.value' must be .batch, kv_heads, past, head_size. with fixed"):
        Generator(symbolic_heads.SerializeToString())
    with pytest.raises(TypeError, match="model must be a path, bytes or an InferenceSession"):
        Generator(42)


# --- the sampling processors ------------------------------------------------------------------


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = np.array([[2.0, -2.0, 1.0, -1.0]], np.float32)
    seen = np.array([[0, 1, 0, 3]])
    np.testing.assert_allclose(apply_repetition_penalty(logits, seen, 2.0), [[1.0, -4.0, 1.0, -2.0]])
    # padding does not count as seen
    np.testing.assert_allclose(apply_repetition_penalty(logits, seen, 2.0, mask=np.array([[1, 0, 1, 0]])),
                               [[1.0, -2.0, 1.0, -1.0]])
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_temperature_scales_logits():
    np.testing.assert_allclose(apply_temperature(np.array([[1.0, -3.0]]), 0.5), [[2.0, -6.0]])


def test_top_k_keeps_the_k_largest_and_their_ties():
    logits = np.array([[0.1, 3.0, 2.0, 2.0, -1.0], [5.0, 4.0, 3.0, 2.0, 1.0]], np.float32)
    got = top_k_filter(logits, 2)
    assert np.isfinite(got).sum(axis=1).tolist() == [3, 2]
    np.testing.assert_array_equal(np.isfinite(got[1]), [True, True, False, False, False])
    assert top_k_filter(logits, 0) is logits and top_k_filter(logits, 5) is logits


@pytest.mark.parametrize("top_p, kept", [(0.4, 1), (0.75, 2), (0.8, 2), (0.81, 3), (0.99, 4), (1.0, 4)])
def test_top_p_keeps_the_smallest_set_reaching_the_mass(top_p, kept):
    probabilities = np.array([0.15, 0.5, 0.05, 0.3])
    logits = np.log(probabilities)[None].astype(np.float32)
    got = top_p_filter(logits, top_p)
    assert np.isfinite(got).sum() == kept
    assert np.isfinite(got[0, 1])  # the most probable is always kept
    order = np.argsort(-probabilities)
    assert np.isfinite(got[0, order[:kept]]).all()


def test_sample_draws_by_probability_and_never_a_filtered_token():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.7, 0.2, 0.1, 1e-9]]))
    logits[0, 3] = -np.inf
    draws = np.array([sampling.sample(logits, rng)[0] for _ in range(4000)])
    assert 3 not in draws
    np.testing.assert_allclose(np.bincount(draws, minlength=4)[:3] / 4000, [0.7, 0.2, 0.1], atol=0.03)


# --- the tokenizer ----------------------------------------------------------------------------


WORDS = [f"w{index}" for index in range(VOCAB - 1)] + ["[UNK]"]


def _tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    tokenizer = tokenizers.Tokenizer(WordLevel({word: index for index, word in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    return tokenizer


def test_generate_text_with_a_tokenizer_object_or_file(model_path, tmp_path):
    tokenizer = _tokenizer()
    prompt = "w3 w7 w11"
    expected_ids = Generator(model_path).generate(np.array([[3, 7, 11]]), max_new_tokens=5)[0, 3:]
    text = Generator(model_path, tokenizer=tokenizer).generate_text(prompt, max_new_tokens=5)
    assert text == " ".join(WORDS[token] for token in expected_ids)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    assert Generator(model_path, tokenizer=str(tmp_path / "tokenizer.json")).generate_text(prompt, max_new_tokens=5) == text


def test_generate_text_needs_a_tokenizer_and_tokenizers_is_an_extra(model_path, monkeypatch):
    with pytest.raises(ValueError, match="generate_text needs a tokenizer"):
        Generator(model_path).generate_text("w1")
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install onyxrt\[genai\]"):
        Generator(model_path, tokenizer="tokenizer.json")


# --- onyxrt generate --------------------------------------------------------------------------


def test_cli_generate_prints_tokens_and_speeds(model_path, generator, capsys):
    assert main(["generate", model_path, "--input-ids", "3,7,11", "--max-new-tokens", "6", "--stream"]) == 0
    out = capsys.readouterr().out
    expected = generator.generate(np.array([[3, 7, 11]]), max_new_tokens=6)[0, 3:]
    assert f"new tokens: {' '.join(map(str, expected))}\n" in out
    assert "prefill: 3 tokens in" in out and "decode: 5 tokens in" in out and "tokens/s" in out


def _exit_code(argv: list[str]) -> int:
    """main's return value, or the code argparse exits with."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code)


@pytest.mark.parametrize("arguments, words", [
    (["--input-ids", "1,x"], "--input-ids: '1,x' must be comma-separated integers"),
    (["--input-ids", "1,-2"], "token ids cannot be negative"),
    (["--input-ids", f"1,{VOCAB}"], "--input-ids must be token ids in [0, 24)"),
    (["--input-ids", "1", "--top-p", "2"], "--top-p must be in (0, 1]"),
    (["--input-ids", "1", "--max-new-tokens", "-1"], "must be at least 0"),
])
def test_cli_generate_bad_arguments_are_one_error_line_with_exit_code_2(model_path, arguments, words, capsys):
    code = _exit_code(["generate", model_path, *arguments])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("onyxrt: error:") and err.count("\n") == 1 and words in err
