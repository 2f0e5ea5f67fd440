"""Native tasks on the intra-op pool (framework.native_spin): hand-offs to spinning workers, their
sleep and wake-up, and the kernels that run as native tasks (split sgemm, depthwise convolution)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from onyxrt.framework import thread_pool
from onyxrt.framework.thread_pool import ThreadPool

numba = pytest.importorskip("numba")
native_spin = pytest.importorskip("onyxrt.framework.native_spin")
from numba.core import types  # noqa: E402

from onyxrt.providers.cpu.native_tasks import int64_array  # noqa: E402


@numba.cfunc(types.void(types.int64, types.int64, types.int64), nopython=True)
def _count_parts(args, part, parts):
    """Test task: counts[part] += 1 and counts[parts + part] = parts (args: counts' address, its length)."""
    header = int64_array(args, 2)
    counts = int64_array(header[0], header[1])
    counts[part] += 1
    counts[parts + part] = parts


def _run_counting(pool: ThreadPool, parts: int) -> np.ndarray:
    counts = np.zeros(2 * parts, np.int64)
    header = np.array([counts.ctypes.data, counts.size], np.int64)
    pool.run_native(_count_parts.address, header.ctypes.data, parts)
    return counts


@pytest.fixture
def pool():
    """Two threads in the split-GEMM mode, with spinning (as a session whose plan holds pool kernels)."""
    if not ThreadPool(2).runs_native_tasks:
        pytest.skip("numba cannot compile the native hand-offs here")
    pool = ThreadPool(2).splitting_gemms()
    yield pool
    pool.shutdown()


@pytest.mark.parametrize("parts", [1, 2, 3, 5])
def test_every_part_runs_once(pool, parts):
    for _ in range(50):  # back to back: the worker is still spinning
        counts = _run_counting(pool, parts)
        assert counts[:parts].tolist() == [1] * parts
        assert counts[parts:].tolist() == [parts] * parts


def test_a_worker_blocks_after_its_spin_and_wakes_for_the_next_task(pool):
    _run_counting(pool, 2)
    record = pool._workers[0]._record
    deadline = time.monotonic() + 5
    while record[native_spin.SLEEPING] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert record[native_spin.SLEEPING] == 1
    start = time.process_time()
    time.sleep(0.2)
    assert time.process_time() - start < 0.02  # asleep: no CPU
    assert _run_counting(pool, 2)[:2].tolist() == [1, 1]
    assert pool.map(lambda v: v * 2, range(4)) == [0, 2, 4, 6]  # Python tasks on the same worker


def test_a_pool_leaving_products_to_blas_does_not_spin():
    """Beside BLAS's own spinning threads the workers block as soon as they are idle."""
    pool = ThreadPool(2)
    if not pool.runs_native_tasks:
        pytest.skip("numba cannot compile the native hand-offs here")
    assert not pool.splits_gemms
    assert _run_counting(pool, 2)[:2].tolist() == [1, 1]
    time.sleep(0.01)
    assert pool._workers[0]._record[native_spin.SLEEPING] == 1
    pool.shutdown()


def test_a_pool_without_spinning_blocks_at_once():
    pool = ThreadPool(2, allow_spinning=False)
    if not pool.runs_native_tasks:
        pytest.skip("numba cannot compile the native hand-offs here")
    for _ in range(20):
        assert _run_counting(pool, 2)[:2].tolist() == [1, 1]
    time.sleep(0.01)
    assert pool._workers[0]._record[native_spin.SLEEPING] == 1
    pool.shutdown()


def test_a_busy_pool_runs_the_parts_on_the_caller(pool):
    pool._busy.acquire()  # another loop holds the workers
    try:
        assert _run_counting(pool, 3)[:3].tolist() == [1, 1, 1]
    finally:
        pool._busy.release()


def test_python_and_native_tasks_interleave(pool):
    for i in range(30):
        assert pool.map(lambda v: v + i, range(2)) == [i, i + 1]
        assert _run_counting(pool, 2)[:2].tolist() == [1, 1]


def test_without_numba_the_workers_block_on_locks(monkeypatch):
    monkeypatch.setattr(thread_pool, "_NATIVE_SPIN", None)
    pool = ThreadPool(2)
    assert not pool.runs_native_tasks
    assert pool.map(lambda v: -v, range(3)) == [0, -1, -2]
    with pytest.raises(RuntimeError, match="numba"):
        pool.run_native(0, 0, 2)
    pool.shutdown()


# --------------------------------------------------------------------------- split float32 products


def _native_sgemm_or_skip():
    from onyxrt.providers.cpu import gemm

    if gemm._native_sgemm() is None:
        pytest.skip("numpy's BLAS exports no cblas_sgemm here")
    return gemm


@pytest.mark.parametrize("a_shape,b_shape,transpose_b", [
    ((300, 200), (200, 150), False),  # rows
    ((300, 200), (200, 150), True),
    ((3, 512), (512, 4200), False),  # few rows: columns
    ((4, 1024), (1024, 2100), True),
    ((3, 12, 64, 32), (3, 12, 32, 64), False),  # batch
    ((12, 64, 32), (12, 32, 64), True),
])
def test_native_split_products_equal_numpy(pool, a_shape, b_shape, transpose_b):
    gemm = _native_sgemm_or_skip()
    rng = np.random.default_rng(0)
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    if transpose_b:
        b = b.swapaxes(-1, -2).copy().swapaxes(-1, -2)  # B as a transposed view
    calls = []
    real = pool.run_native
    pool.run_native = lambda *args: (calls.append(args), real(*args))
    split = pool.splitting_gemms()
    with split.activate():
        y = gemm.matmul(a, b)
    np.testing.assert_allclose(y, a @ b, rtol=1e-5, atol=1e-4)
    assert calls, "the product did not run as a native task"


def test_layouts_cblas_cannot_take_split_as_python_tasks(pool):
    gemm = _native_sgemm_or_skip()
    rng = np.random.default_rng(1)
    a = rng.standard_normal((400, 300)).astype(np.float32)[:, ::2]  # rows not contiguous
    b = rng.standard_normal((150, 200)).astype(np.float32)
    with pool.splitting_gemms().activate():
        y = gemm.matmul(a, b)
    np.testing.assert_allclose(y, a @ b, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- depthwise convolution


@pytest.mark.parametrize("shape,stride,activation", [((1, 48, 30, 30), 1, None), ((2, 64, 41, 39), 2, "Relu")])
def test_depthwise_planes_split_natively_equal_the_serial_kernel(pool, monkeypatch, shape, stride, activation):
    """The planar kernel's planes as a native task (the vector blocks, which would take these layers, are
    shared out as Python tasks: test_depthwise_conv.py)."""
    from onyxrt.providers.cpu.nn import depthwise_conv

    from onyxrt.providers.cpu.jit import optional_module

    monkeypatch.setattr(depthwise_conv, "_vector_blocks", lambda *args: None)
    if optional_module("onyxrt.providers.cpu.nn.depthwise_conv_task") is None:
        pytest.skip("the depthwise task does not compile here")
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((shape[1], 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    out_sp = [(shape[2] + 2 - 3) // stride + 1, (shape[3] + 2 - 3) // stride + 1]
    from onyxrt.providers.cpu.contrib.fused import mlas_activation_fn

    act_arg = mlas_activation_fn(activation, None) if activation else None

    def conv():
        return depthwise_conv.depthwise_conv(x, w, b, [stride, stride], [1, 1], [1, 1, 1, 1], out_sp, act_arg)

    serial = conv()
    calls = []
    real = pool.run_native
    pool.run_native = lambda *args: (calls.append(args), real(*args))
    with pool.splitting_gemms().activate():
        split = conv()
    assert calls
    np.testing.assert_array_equal(split, serial)
    if activation:
        assert (serial >= 0).all() and (serial == 0).any()



def test_small_gemvs_stay_on_the_calling_thread_and_large_ones_split(pool):
    gemm = _native_sgemm_or_skip()
    rng = np.random.default_rng(3)
    calls = []
    real = pool.run_native
    pool.run_native = lambda *args: (calls.append(args), real(*args))
    with pool.splitting_gemms().activate():
        for n, split in ((1000, False), (gemm.GEMV_SPLIT_MIN_ELEMENTS // 256, True)):
            a = rng.standard_normal((1, 256)).astype(np.float32)
            b = rng.standard_normal((256, n)).astype(np.float32)
            calls.clear()
            np.testing.assert_allclose(gemm.matmul(a, b), a @ b, rtol=1e-5, atol=1e-4)
            assert bool(calls) == split
