"""The session-owned intra-op thread pool: sizes, current pool per run, BLAS threads."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
from onnx import TensorProto, helper

import onyxrt as ort
from onyxrt.errors import InvalidArgument
from onyxrt.framework import thread_pool
from onyxrt.framework.thread_pool import ThreadPool, current_pool, physical_core_count
from onyxrt.providers.cpu.kernel_table import op

DOMAIN = "test.onyxrt.thread_pool"
WORKER_PREFIX = "onyxrt-intra-op"
seen: list[dict] = []


def _blas_threads() -> list[int]:
    """The thread counts of the BLAS libraries the pools govern: those loaded when the first run started
    (numpy's among them; a library loaded later by another test, as torch's, is not numpy's)."""
    pytest.importorskip("threadpoolctl")
    counts = [library.num_threads for library in thread_pool._BLAS_THREADS._blas_libraries()]
    if not counts:
        pytest.skip("numpy's BLAS is not visible to threadpoolctl")
    return counts


@op("PoolProbe", versions=1, domain=DOMAIN)
def pool_probe(x):
    """Records what a kernel sees of its pool; runs two items on the pool, waiting for both when
    the pool has two threads (so they must run on two different threads)."""
    pool = current_pool()
    meeting = threading.Barrier(2, timeout=10) if pool.num_threads >= 2 else None

    def item(_):
        if meeting is not None:
            meeting.wait()
        return threading.get_ident()

    seen.append({"num_threads": pool.num_threads, "item_threads": set(pool.map(item, range(2)))})
    return x


def _probe_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("PoolProbe", ["x"], ["y"], domain=DOMAIN)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    return model.SerializeToString()


def _session(threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(_probe_model(), options)


def _worker_threads() -> int:
    return sum(t.name.startswith(WORKER_PREFIX) for t in threading.enumerate())


def test_pool_sizes():
    assert ThreadPool(3).num_threads == 3
    assert ThreadPool(0).num_threads == physical_core_count() >= 1
    for bad in (-1, 1.5, "2"):
        with pytest.raises(InvalidArgument, match="intra_op_num_threads"):
            ThreadPool(bad)


def test_one_thread_runs_inline_without_worker_threads():
    pool = ThreadPool(1)
    before = _worker_threads()
    assert pool.map(lambda _: threading.get_ident(), range(8)) == [threading.get_ident()] * 8
    calls = []
    pool.run_chunks(lambda a, b: calls.append((a, b)), rows=100, work=1 << 30)
    assert calls == [(0, 100)]
    assert _worker_threads() == before


def test_map_keeps_order_and_shares_items_out():
    pool = ThreadPool(3)
    try:
        assert pool.map(lambda i: i * i, range(50)) == [i * i for i in range(50)]
        calls = []
        pool.run_chunks(lambda a, b: calls.append((a, b)), rows=10, work=1 << 30)
        assert sorted(calls) == [(0, 3), (3, 6), (6, 10)]
        calls.clear()
        pool.run_chunks(lambda a, b: calls.append((a, b)), rows=10, work=10)  # too little work to split
        assert calls == [(0, 10)]
    finally:
        pool.shutdown()


def test_map_reraises_a_workers_error():
    pool = ThreadPool(2)

    def fail_on_three(i):
        if i == 3:
            raise ValueError("item 3")
        return i

    try:
        with pytest.raises(ValueError, match="item 3"):
            pool.map(fail_on_three, range(6))
    finally:
        pool.shutdown()


def test_current_pool_is_the_activated_one_and_serial_on_workers():
    pool = ThreadPool(2)
    assert current_pool().num_threads == 1
    try:
        with pool.activate():
            assert current_pool() is pool
            # on a worker thread the current pool is the serial one: nested loops run inline there
            inner = pool.map(lambda _: (threading.get_ident(), current_pool().num_threads), range(8))
            assert current_pool() is pool
        caller = threading.get_ident()
        assert all(size == (2 if ident == caller else 1) for ident, size in inner)
        assert current_pool().num_threads == 1
    finally:
        pool.shutdown()


def test_activate_caps_blas_threads_and_restores_them():
    original = _blas_threads()
    with ThreadPool(1).activate():
        assert _blas_threads() == [1] * len(original)
        with ThreadPool(2).activate():  # the smallest active pool wins
            assert _blas_threads() == [1] * len(original)
    assert _blas_threads() == original


def test_a_pool_without_spinning_keeps_blas_single_threaded_and_splits_gemms():
    """session.intra_op.allow_spinning = 0: BLAS's own threads, which spin after each call, stay
    unused during runs; the pool splits GEMMs itself (providers.cpu.gemm)."""
    original = _blas_threads()
    pool = ThreadPool(2, allow_spinning=False)
    assert pool.splits_gemms and not ThreadPool(2).splits_gemms and not ThreadPool(1, allow_spinning=False).splits_gemms
    with pool.activate():
        assert _blas_threads() == [1] * len(original)
    assert _blas_threads() == original


def test_splitting_gemms_view_shares_the_workers():
    """``splitting_gemms``: the same threads in the split-GEMM mode (a session with sparse kernels)."""
    pool = ThreadPool(2)
    view = pool.splitting_gemms()
    assert view.splits_gemms and not pool.splits_gemms and view.num_threads == 2
    assert view.map(lambda i: threading.current_thread().name, range(8))  # starts the workers
    assert pool._worker_threads() == view._worker_threads()
    original = _blas_threads()
    with view.activate():
        assert _blas_threads() == [1] * len(original)
    for unchanged in (ThreadPool(1), ThreadPool(2, allow_spinning=False)):
        assert unchanged.splitting_gemms() is unchanged


def test_a_split_matmul_equals_numpy_and_runs_on_the_pool_threads(monkeypatch):
    """The Python-task split (where products cannot run as native tasks: test_native_spin.py)."""
    from onyxrt.providers.cpu import gemm

    monkeypatch.setattr(gemm, "_split_natively", lambda *args: False)

    rng = np.random.default_rng(0)
    cases = [((300, 200), (200, 150)), ((1, 512), (512, 1408)), ((3, 12, 64, 32), (3, 12, 32, 64)),
             ((2, 40, 30), (2, 30, 20))]
    pool = ThreadPool(2, allow_spinning=False)
    threads = set()
    real = np.matmul

    def spy(*args, **kwargs):
        threads.add(threading.get_ident())
        return real(*args, **kwargs)

    with pool.activate():
        for a_shape, b_shape in cases:
            a = rng.standard_normal(a_shape).astype(np.float32)
            b = rng.standard_normal(b_shape).astype(np.float32)
            gemm.np.matmul = spy
            try:
                y = gemm.matmul(a, b.swapaxes(-1, -2).copy().swapaxes(-1, -2))  # b as a strided view too
            finally:
                gemm.np.matmul = real
            np.testing.assert_allclose(y, a @ b, rtol=1e-5, atol=1e-4)
    assert len(threads) == 2
    pool.shutdown()


def test_session_with_one_thread_runs_its_kernels_on_the_calling_thread():
    seen.clear()
    before = _worker_threads()
    _session(1).run(None, {"x": np.ones(1, np.float32)})
    assert seen == [{"num_threads": 1, "item_threads": {threading.get_ident()}}]
    assert _worker_threads() == before


def test_session_with_two_threads_uses_two():
    seen.clear()
    session = _session(2)
    session.run(None, {"x": np.ones(1, np.float32)})
    assert seen[0]["num_threads"] == 2
    assert len(seen[0]["item_threads"]) == 2


def test_concurrent_sessions_each_see_their_own_pool():
    seen.clear()
    sessions = {1: _session(1), 2: _session(2)}
    start = threading.Barrier(2, timeout=10)
    errors = []

    def run(threads):
        try:
            start.wait()
            for _ in range(5):
                sessions[threads].run(None, {"x": np.full(1, threads, np.float32)})
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(n,)) for n in sessions]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors
    assert sorted(s["num_threads"] for s in seen) == [1] * 5 + [2] * 5
    for s in seen:
        assert len(s["item_threads"]) == s["num_threads"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_worker_threads():
    pool = ThreadPool(2)
    pool.map(lambda i: i, range(4))  # the parent's worker thread exists now
    pid = os.fork()
    if pid == 0:  # the child: without its own worker threads this would wait forever (the alarm ends it)
        signal.alarm(10)
        os._exit(0 if pool.map(abs, [-1, -2, -3]) == [1, 2, 3] else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    pool.shutdown()


def test_a_session_without_spinning_leaves_no_thread_busy_when_idle():
    """Process CPU time over 0.3 s of idling after GEMM-heavy runs stays near zero."""
    import time

    from onnx import TensorProto, helper

    import onyxrt

    w = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256, 256])],
                              [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    options = onyxrt.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onyxrt.InferenceSession(model, options)
    x = np.ones((256, 256), np.float32)
    expected = np.einsum("ij,jk->ik", x, w)  # (no BLAS call: its threads would spin after it)
    session.run(None, {"x": x})
    # a thread OpenBLAS (re)starts (after a fork, say) spins for a while first: let it settle
    time.sleep(0.25)
    for _ in range(20):
        np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-4, atol=1e-3)
    start = time.process_time()
    time.sleep(0.3)
    assert time.process_time() - start < 0.03
