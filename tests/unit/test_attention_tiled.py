"""The tiled (online-softmax) attention path equals the untiled one in every mode.

Each case runs an attention op twice: with the tiling threshold at 0 and tiny blocks (so
several query and key blocks, partial last blocks and skipped blocks occur) and with the
threshold out of reach (the untiled path).
"""

from __future__ import annotations

import numpy as np
import pytest

from onyxrt.providers.cpu.contrib import attention as contrib
from onyxrt.providers.cpu.nn import attention as standard
from onyxrt.providers.cpu.nn import attention_tiled

RNG = np.random.default_rng(7)


def _rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def _both(monkeypatch, run, block_bytes=2048):
    """run() untiled, then tiled with blocks of about ``block_bytes``; returns both results."""
    monkeypatch.setattr(attention_tiled, "TILED_THRESHOLD_BYTES", 1 << 62)
    untiled = run()
    monkeypatch.setattr(attention_tiled, "TILED_THRESHOLD_BYTES", 0)
    monkeypatch.setattr(attention_tiled, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(attention_tiled, "MIN_BLOCK_KEYS", 16)
    calls = []
    original = attention_tiled.attend_tiled

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(attention_tiled, "attend_tiled", counting)
    tiled = run()
    assert calls, "the tiled path was not taken"
    return untiled, tiled


def _assert_close(untiled, tiled):
    assert len(untiled) == len(tiled)
    for a, b in zip(untiled, tiled):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_use_tiled_threshold():
    assert not attention_tiled.use_tiled(1, 12, 128, 128, 4)
    assert attention_tiled.use_tiled(1, 12, 4096, 4096, 4)
    assert attention_tiled.use_tiled(1, 1, 2, 2, 4, threshold=15)


# --------------------------------------------------------------------------- com.microsoft MultiHeadAttention


@pytest.mark.parametrize("unidirectional", [0, 1])
@pytest.mark.parametrize("seq,kv", [(37, 37), (5, 53), (1, 70)])
def test_mha_plain_and_causal(monkeypatch, unidirectional, seq, kv):
    N, H = 3, 8
    q, k, v = _rand(2, seq, N * H), _rand(2, kv, N * H), _rand(2, kv, N * H)
    _assert_close(*_both(monkeypatch, lambda: contrib.multi_head_attention(
        q, k, v, num_heads=N, unidirectional=unidirectional)))


@pytest.mark.parametrize("mask_kind", ["lengths", "start_end", "2d", "3d"])
def test_mha_key_padding_mask(monkeypatch, mask_kind):
    B, S, N, H = 2, 29, 2, 8
    q, k, v = _rand(B, S, N * H), _rand(B, S, N * H), _rand(B, S, N * H)
    if mask_kind == "lengths":
        mask = np.array([17, 29], np.int32)
    elif mask_kind == "start_end":
        mask = np.array([20, 29, 3, 0], np.int32)
    elif mask_kind == "2d":
        mask = (RNG.random((B, S)) > 0.3).astype(np.int32)
    else:
        mask = (RNG.random((B, S, S)) > 0.3).astype(np.int32)
    _assert_close(*_both(monkeypatch, lambda: contrib.multi_head_attention(
        q, k, v, None, mask, num_heads=N, unidirectional=1)))


@pytest.mark.parametrize("bias_shape", [(2, 3, 21, 33), (1, 3, 21, 33), (2, 1, 21, 33), (1, 1, 21, 33)])
def test_mha_attention_bias_broadcast(monkeypatch, bias_shape):
    B, S, T, N, H = 2, 21, 33, 3, 8
    q, k, v = _rand(B, S, N * H), _rand(B, T, N * H), _rand(B, T, N * H)
    ab = _rand(*bias_shape)
    _assert_close(*_both(monkeypatch, lambda: contrib.multi_head_attention(
        q, k, v, None, None, ab, num_heads=N)))


def test_mha_past_kv_decode(monkeypatch):
    B, N, H, P = 2, 4, 8, 45
    q, k, v = _rand(B, 1, N * H), _rand(B, 1, N * H), _rand(B, 1, N * H)
    pk, pv = _rand(B, N, P, H), _rand(B, N, P, H)
    _assert_close(*_both(monkeypatch, lambda: contrib.multi_head_attention(
        q, k, v, None, None, None, pk, pv, num_heads=N, unidirectional=1, _num_outputs=3)))


def test_mha_float64(monkeypatch):
    q, k, v = (_rand(1, 19, 16, dtype=np.float64) for _ in range(3))
    _assert_close(*_both(monkeypatch, lambda: contrib.multi_head_attention(q, k, v, num_heads=2, unidirectional=1)))


def test_contrib_attention_with_past_and_mask(monkeypatch):
    B, S, P, N, H = 2, 7, 24, 2, 8
    x = _rand(B, S, N * H)
    w, bias = _rand(N * H, 3 * N * H), _rand(3 * N * H)
    past = _rand(2, B, N, P, H)
    mask = (RNG.random((B, P + S)) > 0.2).astype(np.int32)
    _assert_close(*_both(monkeypatch, lambda: contrib.attention(
        x, w, bias, mask, past, num_heads=N, unidirectional=1, _num_outputs=2)))


# --------------------------------------------------------------------------- com.microsoft GroupQueryAttention


def _gqa(S, total, past_len, seqlens, *, N=4, Nkv=2, H=8, **attrs):
    B = len(seqlens)
    q, k, v = _rand(B, S, N * H), _rand(B, S, Nkv * H), _rand(B, S, Nkv * H)
    pk = _rand(B, Nkv, past_len, H) if past_len else None
    pv = _rand(B, Nkv, past_len, H) if past_len else None
    seqlens_k = np.array(seqlens, np.int32)
    total_len = np.array([total], np.int32)
    extra = {}
    if "attention_bias" in attrs:
        extra["attention_bias"] = attrs.pop("attention_bias")
    if "head_sink" in attrs:
        extra["head_sink"] = attrs.pop("head_sink")
    return lambda: contrib.group_query_attention(
        q, k, v, pk, pv, seqlens_k, total_len, num_heads=N, kv_num_heads=Nkv, _num_outputs=3, **extra, **attrs)


def test_gqa_prompt_with_right_padding(monkeypatch):
    _assert_close(*_both(monkeypatch, _gqa(40, 40, 0, [39, 25])))


def test_gqa_decode_with_past(monkeypatch):
    _assert_close(*_both(monkeypatch, _gqa(1, 61, 64, [60, 47])))


def test_gqa_chunked_prefill_q_ne_kv(monkeypatch):
    _assert_close(*_both(monkeypatch, _gqa(9, 50, 41, [49, 49])))


@pytest.mark.parametrize("window", [1, 6, 17])
def test_gqa_sliding_window(monkeypatch, window):
    _assert_close(*_both(monkeypatch, _gqa(33, 33, 0, [32, 20], local_window_size=window)))


def test_gqa_softcap(monkeypatch):
    _assert_close(*_both(monkeypatch, _gqa(30, 30, 0, [29, 29], softcap=2.5)))


def test_gqa_non_causal_lengths(monkeypatch):
    _assert_close(*_both(monkeypatch, _gqa(26, 26, 0, [25, 12], causal=0)))


def test_gqa_attention_bias_and_head_sink(monkeypatch):
    ab = _rand(2, 4, 28, 28)
    sink = _rand(4)
    _assert_close(*_both(monkeypatch, _gqa(28, 28, 0, [27, 27], attention_bias=ab, head_sink=sink)))


def test_gqa_smooth_softmax(monkeypatch):
    _assert_close(*_both(monkeypatch, _gqa(1, 40, 40, [39, 30], smooth_softmax=1)))


def test_gqa_multi_query(monkeypatch):
    _assert_close(*_both(monkeypatch, _gqa(23, 23, 0, [22], N=6, Nkv=1)))


def test_gqa_padding_rows_with_window_see_nothing(monkeypatch):
    """Right-padding rows whose window excludes every key: the untiled path gives them a
    uniform softmax over all keys; so does the tiled one."""
    _assert_close(*_both(monkeypatch, _gqa(40, 40, 0, [39, 5], local_window_size=3)))


def test_gqa_qk_output_stays_untiled(monkeypatch):
    monkeypatch.setattr(attention_tiled, "TILED_THRESHOLD_BYTES", 0)

    def refuse(*args, **kwargs):
        raise AssertionError("the tiled path cannot give the scores")

    monkeypatch.setattr(attention_tiled, "attend_tiled", refuse)
    B, S, N, Nkv, H = 1, 6, 2, 1, 8
    outs = contrib.group_query_attention(
        _rand(B, S, N * H), _rand(B, S, Nkv * H), _rand(B, S, Nkv * H), None, None,
        np.array([S - 1], np.int32), np.array([S], np.int32),
        num_heads=N, kv_num_heads=Nkv, qk_output=1, _num_outputs=4)
    assert outs[3].shape == (B, N, S, S)


# --------------------------------------------------------------------------- standard Attention (opset 23/24)


@pytest.mark.parametrize("is_causal", [0, 1])
@pytest.mark.parametrize("seq,kv", [(31, 31), (4, 45), (1, 66)])
def test_standard_attention_gqa_4d(monkeypatch, is_causal, seq, kv):
    q, k, v = _rand(2, 6, seq, 8), _rand(2, 2, kv, 8), _rand(2, 2, kv, 8)
    _assert_close(*_both(monkeypatch, lambda: standard.attention(q, k, v, is_causal=is_causal)))


@pytest.mark.parametrize("mask_shape", [(27, 35), (2, 1, 27, 35), (1, 3, 27, 35), (27, 20)])
@pytest.mark.parametrize("boolean", [False, True])
def test_standard_attention_masks(monkeypatch, mask_shape, boolean):
    q, k, v = _rand(2, 27, 24), _rand(2, 35, 24), _rand(2, 35, 24)
    mask = RNG.random(mask_shape) > 0.3 if boolean else _rand(*mask_shape)
    _assert_close(*_both(monkeypatch, lambda: standard.attention(q, k, v, mask, q_num_heads=3, kv_num_heads=3)))


def test_standard_attention_fully_masked_rows_are_zero(monkeypatch):
    q, k, v = _rand(1, 2, 20, 8), _rand(1, 2, 20, 8), _rand(1, 2, 20, 8)
    mask = np.ones((20, 20), bool)
    mask[3] = False
    untiled, tiled = _both(monkeypatch, lambda: standard.attention(q, k, v, mask))
    _assert_close(untiled, tiled)
    assert not tiled[0][0, :, 3].any()


def test_standard_attention_past_kv_softcap_window(monkeypatch):
    q, k, v = _rand(1, 4, 5, 8), _rand(1, 2, 5, 8), _rand(1, 2, 5, 8)
    pk, pv = _rand(1, 2, 40, 8), _rand(1, 2, 40, 8)
    _assert_close(*_both(monkeypatch, lambda: standard.attention(
        q, k, v, None, pk, pv, is_causal=1, softcap=3.0, left_window_size=11, scale=0.3)))


def test_standard_attention_right_window_and_nonpad(monkeypatch):
    q, k, v = _rand(2, 2, 30, 8), _rand(2, 2, 30, 8), _rand(2, 2, 30, 8)
    lengths = np.array([30, 17], np.int64)
    _assert_close(*_both(monkeypatch, lambda: standard.attention(
        q, k, v, None, None, None, lengths, left_window_size=4, right_window_size=2)))


def test_standard_attention_qk_output_stays_untiled(monkeypatch):
    monkeypatch.setattr(attention_tiled, "TILED_THRESHOLD_BYTES", 0)
    monkeypatch.setattr(attention_tiled, "attend_tiled", lambda *a, **k: pytest.fail("tiled path taken"))
    q, k, v = _rand(1, 2, 9, 8), _rand(1, 2, 9, 8), _rand(1, 2, 9, 8)
    outs = standard.attention(q, k, v, is_causal=1, qk_matmul_output_mode=3, _num_outputs=4)
    assert outs[3].shape == (1, 2, 9, 9)


def test_standard_attention_float16_stays_untiled(monkeypatch):
    monkeypatch.setattr(attention_tiled, "TILED_THRESHOLD_BYTES", 0)
    monkeypatch.setattr(attention_tiled, "attend_tiled", lambda *a, **k: pytest.fail("tiled path taken"))
    q = _rand(1, 2, 9, 8, dtype=np.float16)
    out = standard.attention(q, q, q, is_causal=1)[0]
    assert out.dtype == np.float16


# --------------------------------------------------------------------------- the kernel itself


def test_kernel_skips_causal_future_blocks(monkeypatch):
    """A causal prompt never multiplies a query block with keys wholly in its future."""
    monkeypatch.setattr(attention_tiled, "MIN_BLOCK_KEYS", 8)
    shapes = []
    real = attention_tiled.pool_matmul

    def recording(a, b, out=None):
        shapes.append((a.shape, b.shape))
        return real(a, b, out=out)

    monkeypatch.setattr(attention_tiled, "pool_matmul", recording)
    q = k = v = _rand(1, 1, 64, 8)
    attention_tiled.attend_tiled(q, k, v, visible=lambda s0, s1, t0, t1: np.arange(t0, t1)[None, :] <= np.arange(s0, s1)[:, None],
                                 block_bytes=8 * 8 * 4)
    # 8 query blocks x 8 key blocks; only the 36 on or below the diagonal run (2 matmuls each)
    assert len(shapes) == 2 * 36


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # lowest + lowest, in both paths
def test_mha_causal_with_lowest_float_bias(monkeypatch):
    """GPT-2 exports write left padding as a finfo.min bias: the first rows then see no key
    through the bias and spread their weight over the causal-hidden keys as well."""
    B, S, N, H = 2, 24, 2, 8
    q, k, v = _rand(B, S, N * H), _rand(B, S, N * H), _rand(B, S, N * H)
    ab = np.zeros((B, 1, 1, S), np.float32)
    ab[1, ..., :5] = np.finfo(np.float32).min
    _assert_close(*_both(monkeypatch, lambda: contrib.multi_head_attention(
        q, k, v, None, None, ab, num_heads=N, unidirectional=1)))


def test_gqa_lowest_float_bias(monkeypatch):
    ab = np.zeros((2, 1, 30, 30), np.float32)
    ab[0, ..., :12] = np.finfo(np.float32).min
    _assert_close(*_both(monkeypatch, _gqa(30, 30, 0, [29, 29], attention_bias=ab, local_window_size=8)))


def test_standard_attention_lowest_float_mask(monkeypatch):
    q, k, v = _rand(1, 2, 26, 8), _rand(1, 2, 26, 8), _rand(1, 2, 26, 8)
    mask = np.zeros((26, 26), np.float32)
    mask[:, :9] = np.finfo(np.float32).min
    _assert_close(*_both(monkeypatch, lambda: standard.attention(q, k, v, mask, is_causal=1)))


def test_long_sequence_peak_memory_is_far_below_one_score_matrix():
    """At the default threshold a 2048-long causal prompt (4 heads) is tiled: every array the
    call allocates (numpy reports them to tracemalloc) peaks below one head's 2048 x 2048
    float32 score matrix (16 MiB); the untiled path would need four of them."""
    import tracemalloc

    q, k, v = (_rand(1, 4, 2048, 16) for _ in range(3))
    assert attention_tiled.use_tiled(1, 4, 2048, 2048, 4)
    tracemalloc.start()
    try:
        out = standard.attention(q, k, v, is_causal=1)[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (1, 4, 2048, 16)
    assert peak < 2048 * 2048 * 4, f"peak {peak / 2**20:.1f} MiB"
    # the rows agree with a plain causal softmax on a few rows
    for row in (0, 1000, 2047):
        scores = np.einsum("nh,nkh->nk", q[0, :, row], k[0, :, : row + 1]) / np.float32(4.0)  # scale 1/sqrt(16)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        np.testing.assert_allclose(out[0, :, row], np.einsum("nk,nkh->nh", weights, v[0, :, : row + 1]), rtol=1e-4, atol=1e-5)
