"""Native tasks on the intra-op pool (framework.native_spin): hand-offs to spinning workers, their
sleep and wake-up, and the kernels that run as native tasks (split sgemm, depthwise and pointwise convolutions)."""

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


@numba.cfunc(types.void(types.int64, types.int64, types.int64), nopython=True)
def _order_parts(args, part, parts):
    """Test task: order[part] = how many parts ran before it, plus one (args: order's address; its slot ``parts``
    counts the calls)."""
    order = int64_array(int64_array(args, 1)[0], parts + 1)
    order[parts] += 1
    order[part] = order[parts]


def _ordering(parts: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.zeros(parts + 1, np.int64)
    return order, np.array([order.ctypes.data], np.int64)


def test_a_worker_that_never_comes_leaves_its_parts_to_the_caller():
    """A worker posted to but not running (its vCPU descheduled, or waking) holds nothing up: the caller claims every
    part, and the worker, when it comes, finds the task's ticket gone and runs none of it."""
    records = native_spin.new_records(1)
    order, header = _ordering(4)
    native_spin.fork(records, _order_parts.address, header.ctypes.data, 1, 4, 0)
    native_spin.join(records, _order_parts.address, header.ctypes.data, 4, native_spin.YIELD_ADDRESS)
    assert order.tolist() == [1, 2, 3, 4, 4]  # the caller's parts from the first up
    record = records[0]
    assert native_spin.spin(record, records[1], native_spin.YIELD_ADDRESS) == native_spin.IDLE
    assert order.tolist() == [1, 2, 3, 4, 4]
    assert record[native_spin.DONE] == record[native_spin.SEQ]


def test_a_worker_claims_from_the_last_part_down_and_the_caller_takes_what_is_left():
    records = native_spin.new_records(1)
    order, header = _ordering(3)
    native_spin.fork(records, _order_parts.address, header.ctypes.data, 1, 3, 0)
    native_spin.fork(records, _order_parts.address, header.ctypes.data, 1, 3, 0)  # re-posted before the worker came
    native_spin.spin(records[0], records[1], native_spin.YIELD_ADDRESS)  # takes the newest post, every part
    assert order.tolist() == [3, 2, 1, 3]
    native_spin.join(records, _order_parts.address, header.ctypes.data, 3, native_spin.YIELD_ADDRESS)
    assert order.tolist() == [3, 2, 1, 3]  # none left: the caller returns at once


def test_fork_join_joins_at_once_unless_a_worker_sleeps():
    """One compiled call posts and joins where the workers spin; where one sleeps it returns before joining (the
    caller wakes it first, then joins), its arguments given as the int64 array or its address alike."""
    records = native_spin.new_records(1)
    order, header = _ordering(2)
    records[0, native_spin.SLEEPING] = 0
    assert native_spin.fork_join(records, _order_parts.address, header, 1, 2, 0, native_spin.YIELD_ADDRESS) == 0
    assert order.tolist() == [1, 2, 2]  # the worker never came: the caller ran both parts
    records = native_spin.new_records(1)  # (its worker asleep)
    order, header = _ordering(2)
    assert native_spin.fork_join(records, _order_parts.address, header.ctypes.data, 1, 2, 0,
                                 native_spin.YIELD_ADDRESS) == 1
    assert order.tolist() == [0, 0, 0] and records[0, native_spin.WAKE] == 1
    native_spin.join(records, _order_parts.address, header.ctypes.data, 2, native_spin.YIELD_ADDRESS)
    assert order.tolist() == [1, 2, 2]
    native_spin.run_parts(_order_parts.address, header, 2)
    assert order.tolist() == [3, 4, 4]


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
    _run_counting(pool, 2)  # (the workers started)
    records = pool._hand_off[0][2]
    assert native_spin.hold(records)  # another loop holds the workers
    try:
        assert not native_spin.hold(records)
        posted = records[0, native_spin.SEQ]
        assert _run_counting(pool, 3)[:3].tolist() == [1, 1, 1]
        assert pool.map(lambda v: v + 1, range(3)) == [1, 2, 3]
        assert records[0, native_spin.SEQ] == posted  # nothing was posted to the worker
    finally:
        native_spin.let_go(records)
    assert records[-1, native_spin.HELD] == 0 and _run_counting(pool, 2)[:2].tolist() == [1, 1]
    assert records[-1, native_spin.HELD] == 0  # let go after the loop


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




# --------------------------------------------------------------------------- pointwise convolution


@pytest.mark.parametrize("shape,channels,activation,params,bias,residual", [
    ((1, 16, 40, 40), 24, "Clip", [0.0, 6.0], True, False),  # column blocks (1600 pixels)
    ((3, 8, 9, 7), 12, "QuickGelu", [1.702], False, False),  # blocks of rows, a batch
    ((2, 16, 32, 33), 8, None, None, True, True),  # FusedConv's residual
    ((1, 24, 64, 40), 96, "Sigmoid", None, True, True),  # several column blocks, the last one short
    ((2, 5, 6, 6), 7, "HardSwish", None, True, False),  # below the split: one part on the calling thread
    ((1, 12, 30, 50), 20, "LeakyRelu", [0.1], False, True),
])
def test_pointwise_convolutions_run_as_one_task_with_their_epilogue(pool, shape, channels, activation, params, bias,
                                                                    residual, monkeypatch):
    """In the split-GEMM mode a 1x1 convolution's blocks each get their product and epilogue in one native
    task (``pointwise_conv_task``), equal to the product followed by the epilogue pass. (Large images on CPUs
    running onyxrt's own GEMM take it instead, ``test_sgemm_tiles``: kept off here.)"""
    from onyxrt.providers.cpu.contrib.fused import mlas_activation_fn
    from onyxrt.providers.cpu.jit import optional_module
    from onyxrt.providers.cpu.nn import conv_core

    monkeypatch.setattr(conv_core, "OWN_GEMM_MIN_PIXELS", 1 << 40)

    task = optional_module("onyxrt.providers.cpu.nn.pointwise_conv_task")
    if task is None or task.SGEMM is None:
        pytest.skip("the pointwise task does not compile here")
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((channels, shape[1], 1, 1)).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32) if bias else None
    z = rng.standard_normal((shape[0], channels) + shape[2:]).astype(np.float32) if residual else None
    act = mlas_activation_fn(activation, params) if activation else None
    packed = conv_core.pack_conv_weights(w, b, {})

    def conv():
        return conv_core.float_conv(x, w, b, 1, [1, 1], [1, 1], [0, 0, 0, 0], "NOTSET", None, packed, act, z)

    serial = conv()
    calls = []
    real = pool.run_native
    pool.run_native = lambda *args: (calls.append(args), real(*args))
    with pool.activate():
        split = conv()
    assert [args[0] for args in calls] == [task.pointwise_part.address]
    expected_parts = 1 if x.size * channels < conv_core._POINTWISE_PARALLEL_MACS else pool.num_threads
    assert calls[0][2] == expected_parts
    np.testing.assert_allclose(split, serial, rtol=1e-5, atol=1e-5)
    reference = np.einsum("mc,nchw->nmhw", w[:, :, 0, 0].astype(np.float64), x.astype(np.float64))
    reference += 0 if b is None else b.reshape(1, -1, 1, 1)
    reference += 0 if z is None else z
    if act is not None:
        reference = reference.astype(np.float32)
        act(reference)
    np.testing.assert_allclose(split, reference, rtol=1e-4, atol=1e-4)


def test_pointwise_residuals_the_task_cannot_read_take_the_unfused_path(pool):
    """A residual that broadcasts (or of another dtype) is added by the epilogue pass instead."""
    from onyxrt.providers.cpu.nn import conv_core

    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 8, 40, 40)).astype(np.float32)
    w = rng.standard_normal((16, 8, 1, 1)).astype(np.float32)
    z = rng.standard_normal((1, 16, 1, 40)).astype(np.float32)
    packed = conv_core.pack_conv_weights(w, None, {})
    with pool.activate():
        y = conv_core.float_conv(x, w, None, 1, [1, 1], [1, 1], [0, 0, 0, 0], "NOTSET", None, packed, None, z)
    np.testing.assert_allclose(y, np.einsum("mc,nchw->nmhw", w[:, :, 0, 0], x) + z, rtol=1e-4, atol=1e-4)


def test_small_gemvs_stay_on_the_calling_thread_and_large_ones_split(pool):
    """One-row products split over the pool from their thresholds on, below on the calling thread: by a matrix whose
    columns lie contiguous (a transposed weight) as ``math/gemv_rows``' task from GEMV_ROWS_SPLIT_MIN_ELEMENTS, by a
    row-major one deeper than wide (the axpy task takes wider ones) as cblas parts from GEMV_SPLIT_MIN_ELEMENTS."""
    gemm = _native_sgemm_or_skip()
    rng = np.random.default_rng(3)
    calls = []
    real = pool.run_native
    pool.run_native = lambda *args: (calls.append(args), real(*args))
    transposed = gemm.GEMV_ROWS_SPLIT_MIN_ELEMENTS // 256
    cases = [(256, transposed - 4, True, False), (256, transposed, True, True),
             (1024, 200, False, False), (1024, gemm.GEMV_SPLIT_MIN_ELEMENTS // 1024, False, True)]
    with pool.splitting_gemms().activate():
        for k, n, columns_contiguous, split in cases:
            a = rng.standard_normal((1, k)).astype(np.float32)
            b = rng.standard_normal((n, k)).astype(np.float32).T if columns_contiguous else (
                rng.standard_normal((k, n)).astype(np.float32))
            calls.clear()
            np.testing.assert_allclose(gemm.matmul(a, b), a @ b, rtol=1e-5, atol=1e-4)
            assert bool(calls) == split, (k, n, columns_contiguous)
