"""Attention head by head as one native task: on onyxrt's GEMM tiles (contrib/attention_tiles_task.py,
on one thread too) or on cblas_sgemm per head (contrib/attention_heads_task.py, shared out over a pool that splits
products; on one thread the batched path runs there). Both equal _attend's batched numpy path for the masks,
layouts and head groupings the com.microsoft attention ops hand them."""

from __future__ import annotations

import numpy as np
import pytest

from onyxrt.framework.thread_pool import ThreadPool
from onyxrt.providers.cpu import gemm
from onyxrt.providers.cpu.contrib import attention as att
from onyxrt.providers.cpu.jit import optional_module


@pytest.fixture
def task(monkeypatch):
    """The cblas task (the tiles turned off)."""
    module = optional_module("onyxrt.providers.cpu.contrib.attention_heads_task")
    if module is None or module.SGEMM is None:
        pytest.skip("the attention task does not compile here")
    monkeypatch.setattr(att, "own_sgemm_usable", lambda: False)
    return module


@pytest.fixture(params=["blas", "tiles"])
def route(request, monkeypatch):
    """Each task in turn: "blas" (the tiles turned off) or "tiles" (where the CPU runs them)."""
    if request.param == "tiles":
        if not gemm.own_sgemm_usable() or optional_module(
                "onyxrt.providers.cpu.contrib.attention_tiles_task") is None:
            pytest.skip("onyxrt's GEMM does not run here")
        return "tiles"
    request.getfixturevalue("task")
    return "blas"


def _counting(monkeypatch):
    """Counts the task's runs (calls of _attend_heads that returned a result)."""
    runs = []
    real = att._attend_heads

    def counted(*args):
        out = real(*args)
        runs.append(out is not None)
        return out

    monkeypatch.setattr(att, "_attend_heads", counted)
    return runs


def _reference(monkeypatch, fn):
    with monkeypatch.context() as patch:
        patch.setattr(att, "_attend_heads", lambda *args: None)
        return fn()


def _heads(x, n):
    return att._heads(x, n)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("case", ["padding_mask", "packed_qkv_causal_past", "grouped_heads", "value_size",
                                  "bias_and_mask"])
def test_task_equals_the_batched_path(monkeypatch, route, split, case):
    rng = np.random.default_rng(7)
    B, N, S, H = 2, 4, 9, 16
    kwargs = {}
    if case == "padding_mask":
        x = rng.standard_normal((3, B, S, N * H)).astype(np.float32)
        q, k, v = (_heads(x[i], N) for i in range(3))
        lengths = np.array([S, 5])
        kwargs["add_mask"] = np.where(np.arange(S)[None] < lengths[:, None], 0.0, -10000.0).astype(np.float32)[
            :, None, None, :]
    elif case == "packed_qkv_causal_past":
        P = 3  # keys: 3 past rows, then the S new ones; q, k, v strided views of one packed projection
        qkv = rng.standard_normal((B, P + S, 3, N, H)).astype(np.float32).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0][:, :, P:], qkv[1], qkv[2]
        kwargs["causal_past"] = P
    elif case == "grouped_heads":
        q = _heads(rng.standard_normal((B, S, N * H)).astype(np.float32), N)
        k = _heads(rng.standard_normal((B, S + 4, 2 * H)).astype(np.float32), 2)
        v = _heads(rng.standard_normal((B, S + 4, 2 * H)).astype(np.float32), 2)
        kwargs["causal_past"] = 4
    elif case == "value_size":
        q = rng.standard_normal((B, N, S, H)).astype(np.float32)
        k = rng.standard_normal((B, N, S + 2, H)).astype(np.float32)
        v = rng.standard_normal((B, N, S + 2, 24)).astype(np.float32)
    else:
        q, k, v = (rng.standard_normal((B, N, S, H)).astype(np.float32) for _ in range(3))
        kwargs["add_mask"] = rng.standard_normal((1, 1, S, S)).astype(np.float32)
        kwargs["attention_bias"] = rng.standard_normal((B, N, S, S)).astype(np.float32)
    runs = _counting(monkeypatch)
    monkeypatch.setattr(att, "MIN_PARALLEL_MACS", 0)  # (these heads are small: the split is for larger work)
    pool = ThreadPool(2)
    if split:
        if not pool.runs_native_tasks:
            pytest.skip("numba cannot compile the native hand-offs here")
        pool = pool.splitting_gemms()
    with pool.activate():
        got, _ = att._attend(q, k, v, 0.25, **kwargs)
    pool.shutdown()
    # the tiles run on one thread too, for value sizes a multiple of their vectors' lanes; BLAS's calls only split
    tiles_fit = route == "tiles" and optional_module("onyxrt.providers.cpu.contrib.attention_tiles_task").fits(
        v.shape[-1])
    assert runs == [split or tiles_fit]
    want, _ = _reference(monkeypatch, lambda: att._attend(q, k, v, 0.25, **kwargs))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the heads come back as a view of a (B, S, N, Hv) array: merging them copies nothing
    assert att._merge_heads(got).base is not None


def test_the_task_splits_over_the_pool_in_the_split_mode(monkeypatch, route):
    pool = ThreadPool(2)
    if not pool.runs_native_tasks:
        pytest.skip("numba cannot compile the native hand-offs here")
    split = pool.splitting_gemms()
    calls = []
    real = split.run_native
    split.run_native = lambda *args: (calls.append(args), real(*args))
    rng = np.random.default_rng(8)
    q, k, v = (rng.standard_normal((1, 6, 64, 32)).astype(np.float32) for _ in range(3))
    with split.activate():
        att._attend(q, k, v, 0.2)
    module = optional_module(f"onyxrt.providers.cpu.contrib.attention_{'tiles' if route == 'tiles' else 'heads'}_task")
    part = module.attention_tiles_part if route == "tiles" else module.attention_heads_part
    assert [(c[0], c[2]) for c in calls] == [(part.address, 2)]
    pool.shutdown()


@pytest.mark.parametrize("case", ["float64", "decode_rows", "causal_with_bias", "softcap"])
def test_other_cases_keep_the_batched_path(monkeypatch, route, case):
    rng = np.random.default_rng(9)
    dtype = np.float64 if case == "float64" else np.float32
    S = 1 if case == "decode_rows" else 8
    q = rng.standard_normal((1, 2, S, 8)).astype(dtype)
    k, v = (rng.standard_normal((1, 2, 8, 8)).astype(dtype) for _ in range(2))
    kwargs = {}
    if case == "causal_with_bias":  # (the bias is added after the causal fill there)
        kwargs = {"causal_past": 0, "attention_bias": rng.standard_normal((1, 2, S, 8)).astype(dtype)}
    if case == "softcap":
        kwargs = {"softcap": 5.0}
    runs = _counting(monkeypatch)
    got, _ = att._attend(q, k, v, 0.3, **kwargs)
    assert not any(runs)
    assert got.dtype == dtype and np.isfinite(got).all()


def test_group_query_attention_prefill_uses_the_causal_rule(monkeypatch, route):
    """A first prompt (no padding, no window) takes the task through the causal rule instead of a boolean
    mask; the result equals the masked batched path."""
    rng = np.random.default_rng(10)
    B, S, N, Nkv, H = 2, 12, 4, 2, 16
    q = rng.standard_normal((B, S, N * H)).astype(np.float32)
    k = rng.standard_normal((B, S, Nkv * H)).astype(np.float32)
    v = rng.standard_normal((B, S, Nkv * H)).astype(np.float32)
    seqlens, total = np.full(B, S - 1, np.int32), np.array(S, np.int32)

    def gqa():
        return att.group_query_attention(q, k, v, None, None, seqlens, total, num_heads=N, kv_num_heads=Nkv,
                                         _num_outputs=3)

    runs = _counting(monkeypatch)
    monkeypatch.setattr(att, "MIN_PARALLEL_MACS", 0)  # (small heads: the task is for larger work)
    pool = ThreadPool(2)
    if not pool.runs_native_tasks:
        pytest.skip("numba cannot compile the native hand-offs here")
    pool = pool.splitting_gemms()  # (the task runs over a pool that splits products)
    with pool.activate():
        got = gqa()
    pool.shutdown()
    assert runs == [True]
    with monkeypatch.context() as patch:
        patch.setattr(att, "_attend_heads", lambda *args: None)
        want = gqa()
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows, keys, head_size, value_size", [(40, 45, 64, 48), (7, 70, 16, 32), (33, 5, 8, 64)])
def test_tiles_cover_many_panels_and_row_tiles(monkeypatch, rows, keys, head_size, value_size):
    """Scores wider than a panel (32 keys), more rows than a tile (12), values one to three vectors wide, on one
    thread: equal to the batched path."""
    if not gemm.own_sgemm_usable() or optional_module("onyxrt.providers.cpu.contrib.attention_tiles_task") is None:
        pytest.skip("onyxrt's GEMM does not run here")
    rng = np.random.default_rng(11)
    q = rng.standard_normal((2, 3, rows, head_size)).astype(np.float32)
    k = rng.standard_normal((2, 3, keys, head_size)).astype(np.float32)
    v = rng.standard_normal((2, 3, keys, value_size)).astype(np.float32)
    mask = rng.standard_normal((2, 1, rows, keys)).astype(np.float32)
    runs = _counting(monkeypatch)
    got, _ = att._attend(q, k, v, 0.125, add_mask=mask)
    assert runs == [True]
    want, _ = _reference(monkeypatch, lambda: att._attend(q, k, v, 0.125, add_mask=mask))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
