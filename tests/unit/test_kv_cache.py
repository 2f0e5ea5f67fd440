"""KV-cache management: in-place appends to cache buffers with spare room (Concat, GroupQueryAttention),
the fallback to a real concatenation for anything else, onnxruntime's shared past/present buffers for
GroupQueryAttention through IOBinding, and the Generator's use of both -- against onnxruntime."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt
from onyxrt.framework import kv_cache
from onyxrt.framework.kv_cache import CacheBuffer
from onyxrt.genai import Generator
from onyxrt.providers.cpu.contrib import attention

ort = pytest.importorskip("onnxruntime")

HEADS, KV_HEADS, HEAD = 4, 2, 16  # onnxruntime's rotary needs a head size that is a multiple of 16
VOCAB, HIDDEN = 40, 16


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def _concat_model(with_reader: bool = True) -> bytes:
    """present = Concat(past, new, axis=2); with a reader, doubled = present * 2 too."""
    cache = ["batch", KV_HEADS, "past", HEAD]
    nodes = [helper.make_node("Concat", ["past", "new"], ["present"], axis=2)]
    outputs = [helper.make_tensor_value_info("present", TensorProto.FLOAT, ["batch", KV_HEADS, "total", HEAD])]
    if with_reader:
        nodes.append(helper.make_node("Mul", ["present", "two"], ["doubled"]))
        outputs.append(helper.make_tensor_value_info("doubled", TensorProto.FLOAT, ["batch", KV_HEADS, "total", HEAD]))
    graph = helper.make_graph(
        nodes, "concat_cache",
        [helper.make_tensor_value_info("past", TensorProto.FLOAT, cache),
         helper.make_tensor_value_info("new", TensorProto.FLOAT, ["batch", KV_HEADS, "seq", HEAD])],
        outputs, [numpy_helper.from_array(np.array(2, np.float32), "two")] if with_reader else [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.fixture(scope="module")
def concat_session():
    return onyxrt.InferenceSession(_concat_model(), providers=["CPUExecutionProvider"])


def _rows(rng: np.random.Generator, batch: int, rows: int) -> np.ndarray:
    return rng.standard_normal((batch, KV_HEADS, rows, HEAD)).astype(np.float32)


# --------------------------------------------------------------------------- CacheBuffer


def test_append_writes_the_new_rows_after_the_valid_view_in_place():
    rng = np.random.default_rng(0)
    buffer = CacheBuffer((2, KV_HEADS, 0, HEAD), np.float32, 8)
    start = _address(buffer.array)
    first, second = _rows(rng, 2, 3), _rows(rng, 2, 1)
    present = kv_cache.append_in_place(buffer.view(), first, 2)
    present = kv_cache.append_in_place(present, second, 2)
    assert present.shape == (2, KV_HEADS, 4, HEAD) and buffer.length == 4 and buffer.holds(present)
    assert _address(present) == _address(buffer.array) == start
    np.testing.assert_array_equal(present, np.concatenate([first, second], axis=2))
    assert not buffer.array[:, :, 4:].any()  # rows past the valid ones untouched


def test_a_stale_or_shifted_view_a_full_buffer_or_another_dtype_is_not_appended_to():
    rng = np.random.default_rng(1)
    buffer = CacheBuffer((1, KV_HEADS, 0, HEAD), np.float32, 4)
    old = buffer.view()
    present = kv_cache.append_in_place(old, _rows(rng, 1, 2), 2)
    kept = present.copy()
    assert kv_cache.append_in_place(old, _rows(rng, 1, 1), 2) is None  # rows 0..2 are claimed already
    assert kv_cache.append_in_place(buffer.array[:, :, 1:2], _rows(rng, 1, 1), 2) is None  # not the valid view
    assert kv_cache.append_in_place(present, _rows(rng, 1, 3), 2) is None  # no room for 3 more
    assert kv_cache.append_in_place(present, _rows(rng, 1, 1).astype(np.float64), 2) is None
    assert kv_cache.append_in_place(present, _rows(rng, 1, 1), 1) is None  # not the sequence axis
    assert kv_cache.append_in_place(np.zeros((1, KV_HEADS, 2, HEAD), np.float32), _rows(rng, 1, 1), 2) is None
    np.testing.assert_array_equal(present, kept)
    assert buffer.length == 2


def test_reserve_doubles_keeps_the_valid_rows_and_leaves_old_views_intact():
    rng = np.random.default_rng(2)
    buffer = CacheBuffer((1, KV_HEADS, 0, HEAD), np.float32, 2)
    present = kv_cache.append_in_place(buffer.view(), _rows(rng, 1, 2), 2)
    kept = present.copy()
    buffer.reserve(3)
    assert buffer.capacity == 4 and buffer.length == 2
    np.testing.assert_array_equal(buffer.view(), kept)
    assert kv_cache.append_in_place(present, _rows(rng, 1, 1), 2) is None  # the old array is no cache any more
    np.testing.assert_array_equal(present, kept)
    buffer.reserve(5, limit=6)  # doubling would give 8: the limit caps it
    assert buffer.capacity == 6
    buffer.reserve(100, limit=50)  # a limit below what is needed does not apply
    assert buffer.capacity == 100
    buffer.truncate(1)
    assert buffer.view().shape[2] == 1
    with pytest.raises(ValueError, match="truncate"):
        buffer.truncate(5)


def test_a_dropped_buffer_unregisters_its_memory():
    buffer = CacheBuffer((1, KV_HEADS, 0, HEAD), np.float32, 4)
    view = buffer.view()
    assert kv_cache.owner_of(view) is buffer
    del buffer
    assert kv_cache.owner_of(view) is None
    assert kv_cache.append_in_place(view, np.zeros((1, KV_HEADS, 1, HEAD), np.float32), 2) is None


# --------------------------------------------------------------------------- Concat in a session


def test_concat_of_a_cache_view_appends_in_place_and_readers_see_the_whole_present(concat_session):
    rng = np.random.default_rng(3)
    buffer = CacheBuffer((1, KV_HEADS, 0, HEAD), np.float32, 16)
    start = _address(buffer.array)
    plain_past = np.zeros((1, KV_HEADS, 0, HEAD), np.float32)
    past = buffer.view()
    for rows in (5, 1, 1, 1):
        new = _rows(rng, 1, rows)
        present, doubled = concat_session.run(None, {"past": past, "new": new})
        plain_present, plain_doubled = concat_session.run(None, {"past": plain_past, "new": new})
        assert buffer.holds(present) and _address(present) == start  # the buffer itself, not a copy
        np.testing.assert_array_equal(present, plain_present)
        np.testing.assert_array_equal(doubled, plain_doubled)
        past, plain_past = present, plain_present
    assert buffer.length == 8


def test_concat_of_an_ordinary_array_is_a_fresh_concatenation_and_spare_room_of_it_is_never_written(concat_session):
    rng = np.random.default_rng(4)
    own = np.full((1, KV_HEADS, 10, HEAD), 7.0, np.float32)  # the caller's array with room after row 4
    past, new = own[:, :, :4], _rows(rng, 1, 1)
    present, _ = concat_session.run(None, {"past": past, "new": new})
    np.testing.assert_array_equal(present, np.concatenate([past, new], axis=2))
    assert not np.shares_memory(present, own)
    assert (own == 7.0).all()


def test_a_rerun_with_the_same_cache_view_falls_back_and_keeps_the_first_present(concat_session):
    rng = np.random.default_rng(5)
    buffer = CacheBuffer((1, KV_HEADS, 0, HEAD), np.float32, 8)
    past, _ = concat_session.run(None, {"past": buffer.view(), "new": _rows(rng, 1, 3)})
    first_new, second_new = _rows(rng, 1, 1), _rows(rng, 1, 1)
    first, _ = concat_session.run(None, {"past": past, "new": first_new})
    kept = first.copy()
    second, _ = concat_session.run(None, {"past": past, "new": second_new})
    assert buffer.holds(first) and not np.shares_memory(second, buffer.array)
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_array_equal(second, np.concatenate([past, second_new], axis=2))


def test_a_decode_step_copies_no_cache():
    """With 4095 cached rows (512 KiB here), appending one row allocates far less than the cache."""
    session = onyxrt.InferenceSession(_concat_model(with_reader=False), providers=["CPUExecutionProvider"])
    buffer = CacheBuffer((1, KV_HEADS, 0, HEAD), np.float32, 4096)
    buffer.load(np.ones((1, KV_HEADS, 4095, HEAD), np.float32))
    new = np.zeros((1, KV_HEADS, 1, HEAD), np.float32)
    session.run(None, {"past": buffer.view(), "new": new})  # warm
    buffer.truncate(4095)
    tracemalloc.start()
    present, = session.run(None, {"past": buffer.view(), "new": new})
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert buffer.holds(present) and present.shape[2] == 4096
    assert peak < buffer.array.nbytes // 20, peak


# --------------------------------------------------------------------------- GroupQueryAttention


def _gqa_model(max_dim: str = "past", present_dim: str = "total") -> bytes:
    node = helper.make_node("GroupQueryAttention", ["q", "k", "v", "past_key", "past_value", "seqlens_k", "total"],
                            ["out", "present_key", "present_value"], domain="com.microsoft",
                            num_heads=HEADS, kv_num_heads=KV_HEADS)
    graph = helper.make_graph(
        [node], "gqa",
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["B", "S", HEADS * HEAD]),
         helper.make_tensor_value_info("k", TensorProto.FLOAT, ["B", "S", KV_HEADS * HEAD]),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, ["B", "S", KV_HEADS * HEAD]),
         helper.make_tensor_value_info("past_key", TensorProto.FLOAT, ["B", KV_HEADS, max_dim, HEAD]),
         helper.make_tensor_value_info("past_value", TensorProto.FLOAT, ["B", KV_HEADS, max_dim, HEAD]),
         helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["B"]),
         helper.make_tensor_value_info("total", TensorProto.INT32, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", "S", HEADS * HEAD]),
         helper.make_tensor_value_info("present_key", TensorProto.FLOAT, ["B", KV_HEADS, present_dim, HEAD]),
         helper.make_tensor_value_info("present_value", TensorProto.FLOAT, ["B", KV_HEADS, present_dim, HEAD])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    return model.SerializeToString()


def _gqa_step(rng: np.random.Generator, batch: int, rows: int, past_length: int) -> dict[str, np.ndarray]:
    return {"q": rng.standard_normal((batch, rows, HEADS * HEAD)).astype(np.float32),
            "k": rng.standard_normal((batch, rows, KV_HEADS * HEAD)).astype(np.float32),
            "v": rng.standard_normal((batch, rows, KV_HEADS * HEAD)).astype(np.float32),
            "seqlens_k": np.full(batch, past_length + rows - 1, np.int32),
            "total": np.array(past_length + rows, np.int32)}


def test_group_query_attention_appends_to_cache_views_and_equals_onnxruntime():
    model = _gqa_model()
    mine = onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"])
    theirs = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(6)
    keys, values = (CacheBuffer((2, KV_HEADS, 0, HEAD), np.float32, 32) for _ in range(2))
    past = {"past_key": keys.view(), "past_value": values.view()}
    plain = {name: np.zeros((2, KV_HEADS, 0, HEAD), np.float32) for name in past}
    length = 0
    for rows in (20, 1, 1, 1):  # decode steps over more keys than query rows: scores as keys @ queries^T
        step = _gqa_step(rng, 2, rows, length)
        out, present_key, present_value = mine.run(None, {**step, **past})
        want = theirs.run(None, {**step, **plain})
        assert keys.holds(present_key) and values.holds(present_value)
        np.testing.assert_allclose(out, want[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(present_key, want[1])
        np.testing.assert_array_equal(present_value, want[2])
        past = {"past_key": present_key, "past_value": present_value}
        plain = {"past_key": want[1], "past_value": want[2]}
        length += rows


def _shared_buffer_run(module, model: bytes, steps: list[dict[str, np.ndarray]], max_length: int):
    """onnxruntime-genai's way: the past buffers bound as inputs and, the same OrtValues, as the presents."""
    session = module.InferenceSession(model, providers=["CPUExecutionProvider"])
    batch = steps[0]["q"].shape[0]
    buffers = [np.full((batch, KV_HEADS, max_length, HEAD), 7.0, np.float32) for _ in range(2)]
    values = [module.OrtValue.ortvalue_from_numpy(buffer) for buffer in buffers]
    outputs, changed = [], []
    for step in steps:
        binding = session.io_binding()
        for name, value in step.items():
            binding.bind_cpu_input(name, value)
        for (past, present), value in zip((("past_key", "present_key"), ("past_value", "present_value")), values):
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)
        binding.bind_output("out")
        before = buffers[0].copy()
        session.run_with_iobinding(binding)
        outputs.append(binding.copy_outputs_to_cpu()[0])
        changed.append(np.flatnonzero((buffers[0] != before).any(axis=(0, 1, 3))).tolist())
    return outputs, buffers, changed


def test_group_query_attention_shared_buffer_writes_only_the_new_rows_like_onnxruntime(monkeypatch):
    model = _gqa_model("max_sequence_length", "max_sequence_length")
    rng = np.random.default_rng(7)
    steps, length = [], 0
    for rows in (5, 1, 1):
        steps.append(_gqa_step(rng, 2, rows, length))
        length += rows
    want, want_buffers, want_changed = _shared_buffer_run(ort, model, steps, 16)

    def no_whole_cache(*args):
        raise AssertionError("the presents were rebuilt, not written in place")

    monkeypatch.setattr(attention, "_grown_cache", no_whole_cache)
    got, got_buffers, got_changed = _shared_buffer_run(onyxrt, model, steps, 16)
    assert got_changed == want_changed == [[0, 1, 2, 3, 4], [5], [6]]
    for mine, theirs in zip(got_buffers, want_buffers):
        np.testing.assert_array_equal(mine, theirs)
        assert (mine[:, :, 7:] == 7.0).all()
    for mine, theirs in zip(got, want):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-5)


def test_shared_buffer_outputs_bound_to_the_inputs_are_not_copied_back():
    """run_with_iobinding returns the bound buffer itself (a large cache would otherwise be copied per step)."""
    model = _gqa_model("max_sequence_length", "max_sequence_length")
    session = onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"])
    buffers = [np.zeros((1, KV_HEADS, 4096, HEAD), np.float32) for _ in range(2)]
    binding = session.io_binding()
    for name, value in _gqa_step(np.random.default_rng(8), 1, 1, 100).items():
        binding.bind_cpu_input(name, value)
    for (past, present), buffer in zip((("past_key", "present_key"), ("past_value", "present_value")), buffers):
        binding.bind_input(past, "cpu", 0, np.float32, buffer.shape, buffer.ctypes.data)
        binding.bind_output(present, "cpu", 0, np.float32, buffer.shape, buffer.ctypes.data)
    binding.bind_output("out")
    session.run_with_iobinding(binding)  # warm
    tracemalloc.start()
    session.run_with_iobinding(binding)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < buffers[0].nbytes // 4, peak
    outputs = binding.get_outputs()
    assert _address(outputs[0].numpy()) == _address(buffers[0])


# --------------------------------------------------------------------------- the Generator


def _gqa_decoder(shared: bool) -> onnx.ModelProto:
    """A one-layer decoder with onnxruntime-genai's GroupQueryAttention wiring: seqlens_k and
    total_sequence_length from attention_mask, rotary inside the op, past and present
    ``max_sequence_length`` long when ``shared``."""
    rng = np.random.default_rng(9)
    weights = {"embedding": (VOCAB, HIDDEN), "wq": (HIDDEN, HEADS * HEAD), "wk": (HIDDEN, KV_HEADS * HEAD),
               "wv": (HIDDEN, KV_HEADS * HEAD), "wo": (HEADS * HEAD, VOCAB)}
    initializers = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
                    for name, shape in weights.items()]
    angles = np.arange(64)[:, None] / 10000 ** (np.arange(HEAD // 2)[None, :] / (HEAD // 2))
    initializers += [numpy_helper.from_array(np.cos(angles).astype(np.float32), "cos"),
                     numpy_helper.from_array(np.sin(angles).astype(np.float32), "sin"),
                     numpy_helper.from_array(np.array([1], np.int64), "axis1"),
                     numpy_helper.from_array(np.array(1, np.int64), "one")]
    nodes = [helper.make_node("Gather", ["embedding", "input_ids"], ["x"])]
    nodes += [helper.make_node("MatMul", ["x", f"w{name}"], [name]) for name in ("q", "k", "v")]
    nodes += [helper.make_node("ReduceSum", ["attention_mask", "axis1"], ["lengths"], keepdims=0),
              helper.make_node("Sub", ["lengths", "one"], ["last"]),
              helper.make_node("Cast", ["last"], ["seqlens_k"], to=TensorProto.INT32),
              helper.make_node("Shape", ["attention_mask"], ["width"], start=1, end=2),
              helper.make_node("Squeeze", ["width"], ["width0"]),
              helper.make_node("Cast", ["width0"], ["total"], to=TensorProto.INT32),
              helper.make_node("GroupQueryAttention",
                               ["q", "k", "v", "past_key_values.0.key", "past_key_values.0.value", "seqlens_k",
                                "total", "cos", "sin"],
                               ["attended", "present.0.key", "present.0.value"], domain="com.microsoft",
                               num_heads=HEADS, kv_num_heads=KV_HEADS, do_rotary=1),
              helper.make_node("MatMul", ["attended", "wo"], ["logits"])]
    past_dim, present_dim = ("max_sequence_length",) * 2 if shared else ("past_sequence_length", "total_sequence_length")
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence_length"])]
    inputs += [helper.make_tensor_value_info(f"past_key_values.0.{kind}", TensorProto.FLOAT,
                                             ["batch", KV_HEADS, past_dim, HEAD]) for kind in ("key", "value")]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", VOCAB])]
    outputs += [helper.make_tensor_value_info(f"present.0.{kind}", TensorProto.FLOAT,
                                              ["batch", KV_HEADS, present_dim, HEAD]) for kind in ("key", "value")]
    graph = helper.make_graph(nodes, "gqa_decoder", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    return model


@pytest.fixture(scope="module")
def gqa_decoder_paths(tmp_path_factory) -> dict[bool, str]:
    folder = tmp_path_factory.mktemp("kv_cache")
    paths = {}
    for shared in (True, False):
        paths[shared] = str(folder / f"gqa_decoder_{'shared' if shared else 'concat'}.onnx")
        onnx.save(_gqa_decoder(shared), paths[shared])
    return paths


def _onnxruntime_shared_loop(path: str, prompt: np.ndarray, new_tokens: int, max_length: int) -> np.ndarray:
    """Greedy decoding as onnxruntime-genai runs a shared-buffer model: one IOBinding, pasts bound as presents."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    batch = prompt.shape[0]
    buffers = [np.zeros((batch, KV_HEADS, max_length, HEAD), np.float32) for _ in range(2)]
    values = [ort.OrtValue.ortvalue_from_numpy(buffer) for buffer in buffers]
    binding = session.io_binding()
    binding.bind_output("logits")  # first: outputs come back in binding order
    for kind, value in zip(("key", "value"), values):
        binding.bind_ortvalue_input(f"past_key_values.0.{kind}", value)
        binding.bind_ortvalue_output(f"present.0.{kind}", value)
    tokens, feed = prompt, prompt
    for _ in range(new_tokens):
        binding.bind_output("logits")  # a fresh one: onnxruntime keeps the last run's, of the last run's shape
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(feed))
        binding.bind_cpu_input("attention_mask", np.ones_like(tokens))
        session.run_with_iobinding(binding)
        logits = binding.copy_outputs_to_cpu()[0]
        feed = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
        tokens = np.concatenate([tokens, feed], axis=1)
    return tokens


PROMPT = np.array([[3, 17, 5, 29, 11], [8, 1, 30, 22, 4]], np.int64)


def test_generator_shares_past_and_present_buffers_when_the_shapes_say_so(gqa_decoder_paths):
    path = gqa_decoder_paths[True]
    want = _onnxruntime_shared_loop(path, PROMPT, 12, 5 + 12)
    generator = Generator(path)
    assert generator.past_present_share_buffer
    np.testing.assert_array_equal(generator.generate(PROMPT, max_new_tokens=12), want)
    assert generator.last_stats.cache == "shared"
    # onnxruntime's session driven the same way, and a fixed max_length larger than needed
    through_onnxruntime = Generator(ort.InferenceSession(path, providers=["CPUExecutionProvider"]), max_length=40)
    np.testing.assert_array_equal(through_onnxruntime.generate(PROMPT, max_new_tokens=12), want)
    assert through_onnxruntime.last_stats.cache == "shared"


def test_generator_on_a_group_query_attention_model_without_shared_buffers_appends_in_place(gqa_decoder_paths):
    want = _onnxruntime_shared_loop(gqa_decoder_paths[True], PROMPT, 12, 17)
    generator = Generator(gqa_decoder_paths[False])
    assert not generator.past_present_share_buffer
    np.testing.assert_array_equal(generator.generate(PROMPT, max_new_tokens=12), want)
    assert generator.last_stats.cache == "buffers" and generator.last_stats.cache_reloads == 0
    explicit = Generator(gqa_decoder_paths[False], past_present_share_buffer=True)
    np.testing.assert_array_equal(explicit.generate(PROMPT, max_new_tokens=12), want)
    assert explicit.last_stats.cache == "shared"


def test_shared_buffers_refuse_padding_and_a_too_small_max_length(gqa_decoder_paths):
    generator = Generator(gqa_decoder_paths[True], max_length=10)
    with pytest.raises(ValueError, match="max_length 10"):
        generator.generate(PROMPT, max_new_tokens=6)
    with pytest.raises(ValueError, match="padded rows"):
        generator.generate(PROMPT, max_new_tokens=2, attention_mask=np.array([[0, 1, 1, 1, 1], [1] * 5]))
    with pytest.raises(TypeError, match="past_present_share_buffer"):
        Generator(gqa_decoder_paths[True], past_present_share_buffer="yes")


def _concat_decoder(three_inputs: bool = False) -> bytes:
    """One attention head over Concat(past, new) keys/values, masked by attention_mask (no positions: any length);
    ``three_inputs``: Concat(past, new, no rows), which no kernel appends in place."""
    rng = np.random.default_rng(10)
    initializers = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
                    for name, shape in {"embedding": (VOCAB, HIDDEN), "wq": (HIDDEN, HIDDEN), "wk": (HIDDEN, HIDDEN),
                                        "wv": (HIDDEN, HIDDEN), "wo": (HIDDEN, VOCAB)}.items()]
    initializers += [numpy_helper.from_array(np.array([1], np.int64), "axis1"),
                     numpy_helper.from_array(np.array([1, 2], np.int64), "axes12"),
                     numpy_helper.from_array(np.array(1, np.float32), "one"),
                     numpy_helper.from_array(np.array(-1e9, np.float32), "minus_big"),
                     numpy_helper.from_array(np.array([0], np.int64), "zero"),
                     numpy_helper.from_array(np.array([2], np.int64), "axis2")]
    nodes = [helper.make_node("Gather", ["embedding", "input_ids"], ["x"])]
    for name in ("q", "k", "v"):
        nodes += [helper.make_node("MatMul", ["x", f"w{name}"], [f"{name}3"]),
                  helper.make_node("Unsqueeze", [f"{name}3", "axis1"], [f"{name}4"])]
    extra = []
    if three_inputs:
        nodes.append(helper.make_node("Slice", ["k4", "zero", "zero", "axis2"], ["no_rows"]))
        extra = ["no_rows"]
    nodes += [helper.make_node("Concat", ["past_key_values.0.key", "k4", *extra], ["present.0.key"], axis=2),
              helper.make_node("Concat", ["past_key_values.0.value", "v4", *extra], ["present.0.value"], axis=2),
              helper.make_node("Transpose", ["present.0.key"], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["q4", "kt"], ["scores"]),
              helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
              helper.make_node("Sub", ["one", "mask_f"], ["masked"]),
              helper.make_node("Mul", ["masked", "minus_big"], ["bias2"]),
              helper.make_node("Unsqueeze", ["bias2", "axes12"], ["bias"]),
              helper.make_node("Add", ["scores", "bias"], ["biased"]),
              helper.make_node("Softmax", ["biased"], ["weights"], axis=-1),
              helper.make_node("MatMul", ["weights", "present.0.value"], ["attended4"]),
              helper.make_node("Squeeze", ["attended4", "axis1"], ["attended"]),
              helper.make_node("MatMul", ["attended", "wo"], ["logits"])]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"])]
    inputs += [helper.make_tensor_value_info(f"past_key_values.0.{kind}", TensorProto.FLOAT, ["batch", 1, "past", HIDDEN])
               for kind in ("key", "value")]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", VOCAB])]
    outputs += [helper.make_tensor_value_info(f"present.0.{kind}", TensorProto.FLOAT, ["batch", 1, "total", HIDDEN])
                for kind in ("key", "value")]
    graph = helper.make_graph(nodes, "concat_decoder", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("level", ["ORT_ENABLE_ALL", "ORT_DISABLE_ALL"])
def test_generator_on_a_concat_decoder_keeps_its_cache_in_growing_buffers(level):
    """The Concat export: generation equals onnxruntime's plain loop (presents fed back as pasts), with no
    present recopied, across buffer growth (first room: prompt + 64 rows), left padding included."""
    model = _concat_decoder()
    options = onyxrt.SessionOptions()
    options.graph_optimization_level = getattr(onyxrt.GraphOptimizationLevel, level)
    generator = Generator(model, sess_options=options)
    ids = np.array([[0, 0, 9, 16, 2, 3], [1, 4, 9, 16, 2, 3]], np.int64)
    mask = (np.arange(6)[None, :] >= np.array([[2], [0]])).astype(np.int64)
    got = generator.generate(ids, max_new_tokens=150, attention_mask=mask)
    assert generator.last_stats.cache == "buffers" and generator.last_stats.cache_reloads == 0
    plain = Generator(ort.InferenceSession(model, providers=["CPUExecutionProvider"]))
    np.testing.assert_array_equal(plain.generate(ids, max_new_tokens=150, attention_mask=mask), got)
    assert plain.last_stats.cache == "plain"


def test_generator_copies_presents_a_kernel_concatenated_into_its_buffers():
    """A Concat no kernel appends in place (three inputs): the presents are fresh arrays, loaded into the
    buffers (counted as reloads), and the tokens stay those of onnxruntime's plain loop."""
    model = _concat_decoder(three_inputs=True)
    generator = Generator(model)
    ids = np.array([[5, 7, 1, 30]], np.int64)
    got = generator.generate(ids, max_new_tokens=10)
    assert generator.last_stats.cache == "buffers" and generator.last_stats.cache_reloads == 2 * 10
    plain = Generator(ort.InferenceSession(model, providers=["CPUExecutionProvider"]))
    np.testing.assert_array_equal(plain.generate(ids, max_new_tokens=10), got)


def test_contiguous_cache_views_are_never_recycled_by_the_session():
    """Batch 1 with one key/value head: the valid view of a buffer is C-contiguous, as the session's own
    buffers are; the buffer planner must still never reuse or overwrite it (the tokens would change)."""
    model = _concat_decoder()
    ids = np.array([[11, 3, 27, 8, 19]], np.int64)
    generator = Generator(model)
    got = generator.generate(ids, max_new_tokens=40)
    assert generator.last_stats.cache == "buffers" and generator.last_stats.cache_reloads == 0
    plain = Generator(ort.InferenceSession(model, providers=["CPUExecutionProvider"]))
    np.testing.assert_array_equal(plain.generate(ids, max_new_tokens=40), got)


@pytest.mark.parametrize("share", [True, False])
def test_genai_config_beside_the_model_says_whether_buffers_are_shared(tmp_path, share):
    """onnxruntime-genai's genai_config.json (search.past_present_share_buffer) decides for a model whose
    declared shapes do not (past_sequence_length vs total_sequence_length, as its builder writes them)."""
    path = tmp_path / "model.onnx"
    onnx.save(_gqa_decoder(False), path)
    (tmp_path / "genai_config.json").write_text(
        f'{{"search": {{"past_present_share_buffer": {str(share).lower()}, "max_length": 64}}}}')
    generator = Generator(str(path))
    assert generator.past_present_share_buffer is share
    want = _onnxruntime_shared_loop(str(path), PROMPT, 8, 5 + 8)
    np.testing.assert_array_equal(generator.generate(PROMPT, max_new_tokens=8), want)
    assert generator.last_stats.cache == ("shared" if share else "buffers")
    (tmp_path / "genai_config.json").write_text('{"search": {"past_present_share_buffer": "yes"}}')
    with pytest.raises(ValueError, match="past_present_share_buffer must be true or false"):
        Generator(str(path))
