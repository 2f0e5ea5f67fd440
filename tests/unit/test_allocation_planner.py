"""The buffer planner: in-place donation, recycling freed buffers, and the byte counts.

Directly on its parts (``plan_donations``, ``Arena``, ``unshared_owner``) and on small
execution plans built from ONNX graphs.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt as ort
from onyxrt.framework.allocation_planner import Arena, PoolPolicy, RunReport, plan_donations, unshared_owner
from onyxrt.framework.execution_plan import build_plan
from onyxrt.framework.partitioner import partition
from onyxrt.graph.model_loader import load_model
from onyxrt.providers.cpu import CPUExecutionProvider
from onyxrt.providers.kernel_registry import KernelContract

F = TensorProto.FLOAT
INPLACE = KernelContract(inplace={0: 0})
ALIAS = KernelContract(alias={0: 0})
PLAIN = KernelContract()


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, F, None) for n in inputs],
        [helper.make_tensor_value_info(n, F, None) for n in outputs],
        [numpy_helper.from_array(v, n) for n, v in initializers],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _plan(model, reuse_buffers=True):
    loaded = load_model(model.SerializeToString())
    cpu = CPUExecutionProvider()
    partition(loaded.graph, loaded.opset_imports, [cpu])
    return build_plan(loaded.graph, loaded.opset_imports, {cpu.name: cpu}, reuse_buffers=reuse_buffers)


# --------------------------------------------------------------------------- plan_donations


def test_an_inplace_input_dying_at_its_step_is_donated():
    # slot 10 (a feed) -> step 0 -> 11 -> step 1 (in place) -> 12 (output)
    steps = [((10,), (11,), ()), ((11,), (12,), (11,))]
    assert plan_donations(steps, [PLAIN, INPLACE], {10, 12}) == [(), ((11, 0),)]


def test_no_donation_of_protected_twice_read_or_still_aliased_buffers():
    # a feed (protected) read by an in-place kernel
    assert plan_donations([((10,), (11,), (10,))], [INPLACE], {10, 11}) == [()]
    # the dying input is read twice by the step (Add(x, x))
    steps = [((10,), (11,), ()), ((11, 11), (12,), (11,))]
    assert plan_donations(steps, [PLAIN, KernelContract(inplace={0: 0, 1: 0})], {10, 12}) == [(), ()]
    # 11 dies at step 2 but 12, a declared view of it, is read at step 3
    steps = [((10,), (11,), ()), ((11,), (12,), ()), ((11,), (13,), (11,)), ((12, 13), (14,), (12, 13))]
    assert plan_donations(steps, [PLAIN, ALIAS, INPLACE, PLAIN], {10, 14}) == [(), (), (), ()]
    # the buffer's view is a graph output
    steps = [((10,), (11,), ()), ((11,), (12,), ()), ((11,), (13,), (11,))]
    assert plan_donations(steps, [PLAIN, ALIAS, INPLACE], {10, 12, 13}) == [(), (), ()]


# --------------------------------------------------------------------------- unshared_owner / Arena


def test_unshared_owner_sees_every_other_reference():
    owner = np.ones(8, np.float32)
    assert unshared_owner(owner) is owner
    view = owner.reshape(2, 4)
    assert unshared_owner(owner) is None  # the view still reaches it
    assert unshared_owner(view) is None  # owner is also referenced by this test's variable
    del owner
    assert unshared_owner(view) is view.base  # only the view reaches its owner now
    weight = np.ones(4, np.float32)
    weight.flags.writeable = False
    for value in (weight, np.ones((4, 4), np.float32)[:, ::2].copy(order="F"), np.array(["a"], dtype=object), 3.0):
        assert unshared_owner(value) is None


def _learned_arena(nbytes: int, request_steps=(1, 1, 1, 1), steps_per_run: int = 10) -> Arena:
    """An arena whose plan has learned that steps ``request_steps`` ask for ``nbytes``."""
    policy = PoolPolicy(steps_per_run)
    policy.requests[nbytes] = list(request_steps)
    policy.live_peak = 1 << 30
    return Arena(policy=policy, min_bytes=0)


def test_arena_recycles_a_released_buffer_for_a_request_of_its_size():
    arena = _learned_arena(64)
    arena.begin(frozenset(), set())
    values = [np.ones((4, 4), np.float32)]
    address = values[0].ctypes.data
    arena.release(values, 0)
    assert values == [None]
    arena.step = 1
    reused = arena((2, 8), np.int32)  # same byte size, another shape and type
    assert reused.ctypes.data == address and reused.shape == (2, 8) and reused.dtype == np.int32
    assert arena.reused_bytes == 64
    assert arena((4, 4), np.float32).ctypes.data != address  # the pool is empty again


def test_arena_keeps_no_buffer_a_view_still_reads():
    arena = _learned_arena(64)
    arena.begin(frozenset(), set())
    values = [np.ones((4, 4), np.float32)]
    view = values[0][1:]
    arena.release(values, 0)
    assert arena((4, 4), np.float32).ctypes.data != view.base.ctypes.data
    owner = np.ones(16, np.float32)
    values = [owner.reshape(4, 4), owner[8:]]  # two views of one owner, released one by one
    del owner
    arena.release(values, 0)
    assert arena((4, 4), np.float32).ctypes.data != values[1].base.ctypes.data
    assert arena.reused_bytes == 0
    arena.release(values, 1)  # the last view gone: its owner is free
    assert arena((16,), np.float32) is not None and arena.reused_bytes == 64


def test_arena_holds_a_buffer_only_for_a_request_soon_to_come_within_the_live_peak():
    arena = Arena(min_bytes=0)  # nothing learned yet: a first run pools nothing
    arena.begin(frozenset(), set())
    arena.release([np.ones(16, np.float32)], 0)
    assert arena((16,), np.float32) is not None and arena.reused_bytes == 0
    arena.end()
    arena = _learned_arena(64, request_steps=(3, 30), steps_per_run=40)
    arena.begin(frozenset(), set())
    buffers = [np.ones(16, np.float32), np.ones(16, np.float32)]
    arena.step = 1
    arena.release(buffers, 0)  # kept: step 3 asks for it
    arena.release(buffers, 1)  # not kept: the next request after step 3 is 29 steps away
    arena.step = 3
    arena((16,), np.float32)
    arena.step = 30
    assert arena((16,), np.float32).base is None and arena.reused_bytes == 64
    arena.step = 39  # a buffer freed near the end serves step 3 of the next run
    arena.release([np.ones(16, np.float32)], 0)
    arena.end()
    arena.begin(frozenset(), set())
    arena.step = 3
    arena((16,), np.float32)
    assert arena.reused_bytes == 64
    tight = _learned_arena(64, request_steps=(2,))
    tight._policy.live_peak = 100
    tight.begin(frozenset(), set())
    live = np.ones(10, np.float32)
    tight.produced(live)  # 40 live bytes: 64 more would pass the live peak
    tight.release([np.ones(16, np.float32)], 0)
    tight.step = 2
    tight((16,), np.float32)
    assert tight.reused_bytes == 0


# --------------------------------------------------------------------------- plans


def _chain_model():
    """x -> MatMul -> Tanh -> MatMul -> Tanh -> MatMul -> y: each MatMul asks for a buffer the one before freed."""
    w = (np.random.default_rng(0).standard_normal((16, 16)) / 4).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("Tanh", ["a"], ["b"]),
        helper.make_node("MatMul", ["b", "w"], ["c"]),
        helper.make_node("Tanh", ["c"], ["d"]),
        helper.make_node("MatMul", ["d", "w"], ["e"]),
        helper.make_node("Tanh", ["e"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["y"]),
    ]
    return _model(nodes, ["x"], ["y"], [("w", w)]), w


def _chain_reference(x, w):
    return np.tanh(np.tanh(np.tanh(x @ w) @ w) @ w) @ w


def test_buffers_are_reused_across_steps_and_runs_and_written_in_place():
    model, w = _chain_model()
    plan = _plan(model)
    x = np.random.default_rng(1).standard_normal((4096, 16)).astype(np.float32)  # 256 KiB: TRACKED_MIN_BYTES
    reports = []
    for _ in range(3):
        report = RunReport()
        (y,) = plan.run([x], report=report)
        np.testing.assert_allclose(y, _chain_reference(x, w), rtol=1e-5, atol=1e-6)
        reports.append(report)
    assert all(r.inplace_bytes == 3 * x.nbytes for r in reports)  # every Tanh over its MatMul's output
    assert reports[0].reused_bytes == 0  # the first run learns which sizes are asked for
    assert all(r.reused_bytes >= 2 * x.nbytes for r in reports[1:])  # learned: the next runs reuse
    assert plan.peak_bytes == reports[2].peak_bytes <= 3 * x.nbytes


def test_values_below_the_tracked_size_stay_with_numpy():
    """Values under TRACKED_MIN_BYTES are neither counted, recycled nor written in place: the same chain of smaller
    values runs on numpy's allocations (their bookkeeping would cost more than malloc's heap)."""
    from onyxrt.framework.allocation_planner import TRACKED_MIN_BYTES

    model, w = _chain_model()
    plan = _plan(model)
    x = np.random.default_rng(1).standard_normal((TRACKED_MIN_BYTES // 128, 16)).astype(np.float32)  # half the size
    for _ in range(3):
        report = RunReport()
        (y,) = plan.run([x], report=report)
        np.testing.assert_allclose(y, _chain_reference(x, w), rtol=1e-5, atol=1e-6)
        assert report.peak_bytes == report.reused_bytes == report.inplace_bytes == 0


def test_planner_off_gives_the_same_results_without_reuse():
    model, w = _chain_model()
    on, off = _plan(model), _plan(model, reuse_buffers=False)
    x = np.random.default_rng(2).standard_normal((4096, 16)).astype(np.float32)
    for _ in range(2):
        report = RunReport()
        np.testing.assert_array_equal(off.run([x], report=report)[0], on.run([x])[0])
        assert report.reused_bytes == report.inplace_bytes == 0 and report.peak_bytes > 0


def test_feeds_weights_and_returned_outputs_are_never_overwritten():
    w = np.full((4,), 2.0, np.float32)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),  # x is a feed: not in place
        helper.make_node("Add", ["w", "r"], ["s"]),  # w is a weight: not in place; r is
        helper.make_node("Exp", ["s"], ["y"]),
        helper.make_node("Neg", ["x"], ["z"]),
    ]
    plan = _plan(_model(nodes, ["x"], ["y", "z"], [("w", w)]))
    x = np.array([-1.0, 0.0, 1.0, 2.0], np.float32)
    x_before = x.copy()
    first = plan.run([x])
    kept = [a.copy() for a in first]
    for _ in range(3):
        plan.run([x * 3])
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(w, np.full((4,), 2.0, np.float32))
    for got, want in zip(first, kept):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(kept[0], np.exp(np.maximum(x_before, 0) + 2), rtol=1e-6)


def test_a_buffer_a_live_view_reads_is_not_recycled():
    # a is reshaped (a view); a's last direct reader runs before Sin asks for a buffer of a's size,
    # and the view is read after Sin: recycling a into Sin's output would change y.
    shape = np.array([16], np.int64)
    back = np.array([4, 4], np.int64)
    nodes = [
        helper.make_node("Exp", ["x"], ["a"]),
        helper.make_node("Reshape", ["a", "shape"], ["v"]),
        helper.make_node("Neg", ["a"], ["n"]),
        helper.make_node("MatMul", ["x", "x"], ["m"]),
        helper.make_node("Sin", ["m"], ["s"]),
        helper.make_node("Reshape", ["v", "back"], ["vb"]),
        helper.make_node("Add", ["vb", "s"], ["t"]),
        helper.make_node("Add", ["t", "n"], ["y"]),
    ]
    plan = _plan(_model(nodes, ["x"], ["y"], [("shape", shape), ("back", back)]))
    for seed in range(4):
        x = np.random.default_rng(seed).standard_normal((4, 4)).astype(np.float32)
        (y,) = plan.run([x])
        np.testing.assert_allclose(y, np.exp(x) + np.sin(x @ x) - np.exp(x), rtol=1e-5, atol=1e-6)


def test_concurrent_runs_of_one_plan_keep_their_buffers_apart():
    model, w = _chain_model()
    plan = _plan(model)
    inputs = [np.random.default_rng(i).standard_normal((1 + i % 5, 16)).astype(np.float32) for i in range(240)]
    results: list = [None] * len(inputs)
    errors: list = []
    barrier = threading.Barrier(8)

    def worker(start: int) -> None:
        try:
            barrier.wait()
            for index in range(start, len(inputs), 8):
                results[index] = plan.run([inputs[index]])[0]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for x, y in zip(inputs, results):
        np.testing.assert_allclose(y, _chain_reference(x, w), rtol=1e-5, atol=1e-6)


def test_profiled_runs_report_memory_and_sessions_get_the_same_results():
    model, w = _chain_model()
    plan = _plan(model)
    x = np.random.default_rng(3).standard_normal((4096, 16)).astype(np.float32)
    events: list = []
    report = RunReport()
    (y,) = plan.run([x], profile=events, report=report)
    assert len(events) == 7 and report.inplace_bytes == 3 * x.nbytes
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for _ in range(3):  # (later runs may take the split thread mode, whose products round differently)
        np.testing.assert_allclose(session.run(None, {"x": x})[0], y, rtol=1e-6, atol=1e-6)


def test_an_inplace_kernel_writes_over_its_dying_input():
    nodes = [helper.make_node("Exp", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    plan = _plan(_model(nodes, ["x"], ["y"]))
    report = RunReport()
    x = np.linspace(-2, 2, 256 * 256, dtype=np.float32).reshape(256, 256)
    (y,) = plan.run([x], report=report)
    assert report.inplace_bytes == x.nbytes
    np.testing.assert_allclose(y, np.exp(x), rtol=1e-6)


@pytest.mark.parametrize("reuse", [True, False])
def test_peak_counts_live_values_once_per_memory_owner(reuse):
    shape = np.array([1 << 16], np.int64)
    nodes = [
        helper.make_node("Exp", ["x"], ["a"]),
        helper.make_node("Reshape", ["a", "shape"], ["v"]),  # a view of a: the same memory
        helper.make_node("Sin", ["x"], ["b"]),
        helper.make_node("Concat", ["v", "b"], ["y"], axis=0),
    ]
    plan = _plan(_model(nodes, ["x"], ["y"], [("shape", shape)]), reuse_buffers=reuse)
    x = np.ones(1 << 16, np.float32)  # 256 KiB: TRACKED_MIN_BYTES
    report = RunReport()
    plan.run([x], report=report)
    assert report.peak_bytes == 2 * x.nbytes + 2 * x.nbytes  # a (with v), b, then y beside them


def test_softmax_in_place_over_its_dying_input():
    nodes = [helper.make_node("Exp", ["x"], ["a"]), helper.make_node("Softmax", ["a"], ["y"], axis=-1)]
    plan = _plan(_model(nodes, ["x"], ["y"]))
    x = np.random.default_rng(5).standard_normal((256, 256)).astype(np.float32)
    report = RunReport()
    (y,) = plan.run([x], report=report)
    e = np.exp(np.exp(x) - np.exp(x).max(-1, keepdims=True))
    np.testing.assert_allclose(y, e / e.sum(-1, keepdims=True), rtol=1e-6)
    assert report.inplace_bytes == x.nbytes


# --------------------------------------------------------------------------- outputs bound by IOBinding


def _bound_run(model, feeds, output: str, buffer: np.ndarray, monkeypatch) -> list:
    """Run with ``output`` bound to ``buffer``; returns the copies the host data transfer made into bound buffers."""
    from onyxrt.framework.device import HostDataTransfer

    copies = []
    real = HostDataTransfer.copy_into
    monkeypatch.setattr(HostDataTransfer, "copy_into", lambda self, t, s: copies.append(t) or real(self, t, s))
    session = ort.InferenceSession(model.SerializeToString())
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_cpu_input(name, array)
    binding.bind_output(output, "cpu", 0, buffer.dtype, list(buffer.shape), buffer.ctypes.data)
    session.run_with_iobinding(binding)
    return copies


def test_a_bound_output_is_written_by_its_kernel_directly(monkeypatch):
    """A kernel that takes ``_alloc`` gets the caller's bound buffer (of at least ALLOC_MIN_BYTES): no copy after the run."""
    x, y = np.arange(128 * 128, dtype=np.float32).reshape(128, 128), np.ones((128, 128), np.float32)
    buffer = np.zeros((128, 128), np.float32)
    copies = _bound_run(_model([helper.make_node("Add", ["x", "y"], ["z"])], ["x", "y"], ["z"]),
                        {"x": x, "y": y}, "z", buffer, monkeypatch)
    np.testing.assert_array_equal(buffer, x + y)
    assert copies == []


def test_a_bound_buffer_overlapping_an_input_is_not_written_during_the_step(monkeypatch):
    """MatMul declares no in-place input: a bound output aliasing its input is filled after the step."""
    x = np.random.default_rng(6).standard_normal((128, 128)).astype(np.float32)
    expected = x @ x
    copies = _bound_run(_model([helper.make_node("MatMul", ["x", "x"], ["z"])], ["x"], ["z"]),
                        {"x": x}, "z", x, monkeypatch)
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-4)  # (summation order: BLAS threads or pool parts)
    assert len(copies) == 1
