"""A session's thread mode per input signature (framework/thread_mode.py): learned from a signature's first run,
split where its products are large multi-row ones the pool's own GEMM runs; otherwise timed in both modes over the
next runs, the split mode kept where it is the faster."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt
from onyxrt.framework import thread_mode
from onyxrt.framework.thread_mode import ThreadModes, note_blas_product, note_pool_product
from onyxrt.providers.cpu.gemm import own_sgemm_fits, own_sgemm_usable
from onyxrt.providers.cpu.jit import optional_module

RNG = np.random.default_rng(5)
GEMV_TASK = "onyxrt.providers.cpu.math.gemv_rows"


class _Pool:
    def __init__(self, name):
        self.name = name


def test_modes_are_learned_per_signature():
    modes = ThreadModes(_Pool("blas"), _Pool("split"), trial_runs=0)  # (no trial: the rule alone)
    used = []

    def run(noting):
        def body(pool):
            used.append(pool.name)
            if noting:
                note_pool_product()
            return pool.name
        return body

    assert modes.run((1, 128), run(True)) == "blas"  # the first learning run keeps the default
    assert modes.split_for((1, 128)) is True
    assert modes.run((1, 128), run(False)) == "split"
    assert modes.run((1, 1), run(False)) == "split"  # a new signature learns in the last learned one's mode
    assert modes.split_for((1, 1)) is False
    assert modes.run((1, 1), run(True)) == "blas"  # learned once: later notes change nothing
    assert modes.run((2, 1), run(False)) == "blas"
    assert used == ["blas", "split", "split", "blas", "blas"]


def test_a_generation_loops_new_signatures_keep_the_learned_mode():
    """Decode steps whose pasts grow (a new signature each) run in the mode the steps before them learned; a
    split-mode failure in such a learning run is redone on BLAS's threads."""
    modes = ThreadModes(_Pool("blas"), _Pool("split"), trial_runs=0)
    used = []

    def step(pool):
        used.append(pool.name)
        note_pool_product()  # (a decode step's GEMVs)
        return pool.name

    for past in range(4):
        modes.run((1, past), step)
    assert used == ["blas", "split", "split", "split"]

    def failing_split(pool):
        used.append(pool.name)
        if pool.name == "split":
            raise RuntimeError("a split-mode kernel failed")
        return pool.name

    assert modes.run((1, 9), failing_split) == "blas" and used[-2:] == ["split", "blas"]
    assert modes.split_for((1, 9)) is False


@pytest.mark.parametrize("split_faster", [True, False])
def test_a_signature_the_rule_keeps_on_blas_is_timed_in_both_modes(monkeypatch, split_faster):
    clock = [0.0]
    monkeypatch.setattr(thread_mode.time, "perf_counter", lambda: clock[0])
    modes = ThreadModes(_Pool("blas"), _Pool("split"), trial_runs=2 * thread_mode.TRIAL_BLOCK)
    used = []

    def body(pool):
        used.append(pool.name)
        clock[0] += 1.0 if (pool.name == "split") == split_faster else 2.0  # the faster mode's runs take 1 s
        return pool.name

    modes.run("signature", body)  # the learning run: no product noted
    while modes.split_for("signature") is None:
        modes.run("signature", body)
    delay, block = thread_mode.TRIAL_DELAY, thread_mode.TRIAL_BLOCK  # the learning run, the delay's, then blocks
    assert used == ["blas"] * (1 + delay) + (["split"] * block + ["blas"] * block) * 2  # of each mode, alternating
    assert modes.split_for("signature") is split_faster
    assert modes.run("signature", body) == ("split" if split_faster else "blas")


def test_a_block_times_its_runs_only_once_the_other_modes_threads_have_stopped(monkeypatch):
    """Short runs: every run of a block's first TRIAL_SETTLE_SECONDS goes untimed (the other mode's threads still
    spin then), so the runs right after a switch, slowed by them, do not decide."""
    clock = [0.0]
    monkeypatch.setattr(thread_mode.time, "perf_counter", lambda: clock[0])
    modes = ThreadModes(_Pool("blas"), _Pool("split"), trial_runs=2 * thread_mode.TRIAL_BLOCK)
    used, since_switch = [], [0]

    def body(pool):
        if used and used[-1] != pool.name:
            since_switch[0] = 0
        since_switch[0] += 1
        used.append(pool.name)
        # 1 ms runs, the split mode's 0.8 ms, but 5 ms while the other mode's threads spin (its first runs)
        slowed = since_switch[0] <= 2
        clock[0] += 0.005 if slowed and pool.name == "split" else 0.0008 if pool.name == "split" else 0.001
        return pool.name

    modes.run("signature", body)
    while modes.split_for("signature") is None:
        modes.run("signature", body)
    assert modes.split_for("signature") is True
    first_block = used[1 + thread_mode.TRIAL_DELAY:].index("blas")  # the split block's runs
    assert first_block > thread_mode.TRIAL_BLOCK  # untimed runs until the settling time had passed


def test_short_runs_fill_each_block_with_its_timed_seconds_and_default_blocks_settle_sooner(monkeypatch):
    """0.1 ms runs: a block times TRIAL_BLOCK_SECONDS of runs, not TRIAL_BLOCK runs; a split block waits out
    TRIAL_SETTLE_SECONDS (BLAS's threads spinning), a default block only TRIAL_SETTLE_AFTER_SPLIT_SECONDS."""
    clock = [0.0]
    monkeypatch.setattr(thread_mode.time, "perf_counter", lambda: clock[0])
    modes = ThreadModes(_Pool("blas"), _Pool("split"))
    used = []

    def body(pool):
        used.append(pool.name)
        clock[0] += 0.00009 if pool.name == "split" else 0.0001
        return pool.name

    modes.run("signature", body)
    while modes.split_for("signature") is None:
        modes.run("signature", body)
    assert modes.split_for("signature") is True
    blocks, runs = [], used[1 + thread_mode.TRIAL_DELAY:]
    for name in runs:
        if blocks and blocks[-1][0] == name:
            blocks[-1][1] += 1
        else:
            blocks.append([name, 1])
    split_runs = (thread_mode.TRIAL_SETTLE_SECONDS + thread_mode.TRIAL_BLOCK_SECONDS) / 0.00009
    default_runs = (thread_mode.TRIAL_SETTLE_AFTER_SPLIT_SECONDS + thread_mode.TRIAL_BLOCK_SECONDS) / 0.0001
    for name, count in blocks:
        expected = split_runs if name == "split" else default_runs
        assert abs(count - expected) <= 2, (name, count, expected)
    # each mode's TRIAL_SECONDS of timed runs in 4 ms blocks: a few pairs, not TRIAL_MAX_PAIRS
    pairs = len(blocks) // 2
    assert pairs == round(thread_mode.TRIAL_SECONDS / thread_mode.TRIAL_BLOCK_SECONDS) < thread_mode.TRIAL_MAX_PAIRS


def test_a_product_for_blas_keeps_blas_threads_without_a_trial():
    modes = ThreadModes(_Pool("blas"), _Pool("split"))

    def gemv(pool):
        note_blas_product()
        return pool.name

    def both(pool):
        note_blas_product()
        note_pool_product()
        return pool.name

    modes.run("decode", gemv)
    assert modes.split_for("decode") is False and modes.run("decode", gemv) == "blas"
    modes.run("mixed", both)  # a product for the split mode wins
    assert modes.split_for("mixed") is True


def test_a_trial_run_failing_in_the_split_mode_is_redone_on_blas_threads():
    modes = ThreadModes(_Pool("blas"), _Pool("split"), trial_runs=4)
    used = []

    def body(pool):
        used.append(pool.name)
        if pool.name == "split":
            raise RuntimeError("a split-mode kernel failed")
        return pool.name

    results = [modes.run("signature", body) for _ in range(1 + thread_mode.TRIAL_DELAY + 1)]
    assert results[-1] == "blas" and used[-2:] == ["split", "blas"]
    assert modes.split_for("signature") is False
    with pytest.raises(ValueError):  # a failure in the default mode is the run's own
        modes.run("other", lambda pool: (_ for _ in ()).throw(ValueError("bad input")))


def test_a_drifting_machine_does_not_decide_the_trial(monkeypatch):
    """Runs slowing down over the trial (a VM's phase) weigh on both modes alike: the blocks alternate."""
    clock = [0.0]
    monkeypatch.setattr(thread_mode.time, "perf_counter", lambda: clock[0])
    modes = ThreadModes(_Pool("blas"), _Pool("split"), trial_runs=3 * thread_mode.TRIAL_BLOCK)
    runs = [0]

    def body(pool):
        runs[0] += 1
        clock[0] += (0.85 if pool.name == "split" else 1.0) * (1 + 0.05 * runs[0])  # 15 % faster split, drifting
        return pool.name

    while modes.split_for("signature") is None:
        modes.run("signature", body)
    assert modes.split_for("signature") is True


def test_the_split_mode_must_win_by_the_margin(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(thread_mode.time, "perf_counter", lambda: clock[0])
    modes = ThreadModes(_Pool("blas"), _Pool("split"), trial_runs=4)

    def body(pool):
        clock[0] += 0.98 if pool.name == "split" else 1.0  # 2 % faster split: within the run-to-run noise
        return pool.name

    for _ in range(1 + thread_mode.TRIAL_DELAY + 8):  # the learning run, the delay, four runs in each mode (two timed)
        modes.run("signature", body)
    assert modes.split_for("signature") is False


def test_notes_outside_a_learning_run_are_ignored():
    note_pool_product()  # no learner: nothing to record, nothing raised
    assert thread_mode._RECORD.get() is None


def test_the_record_is_reset_when_a_run_fails():
    modes = ThreadModes(_Pool("blas"), _Pool("split"))

    def failing(pool):
        note_pool_product()
        raise ValueError("kernel failed")

    with pytest.raises(ValueError):
        modes.run("signature", failing)
    assert thread_mode._RECORD.get() is None and modes.split_for("signature") is None


def _matmul_model(depth: int, cols: int) -> tuple[bytes, np.ndarray]:
    w = RNG.standard_normal((depth, cols)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", depth])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), w


def _session(model, **config):
    options = onyxrt.SessionOptions()
    options.intra_op_num_threads = 2
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    return onyxrt.InferenceSession(model, options)


def test_large_products_and_gemvs_learn_their_modes():
    model, w = _matmul_model(512, 1024)
    session = _session(model)
    large = RNG.standard_normal((128, 512)).astype(np.float32)
    single = RNG.standard_normal((1, 512)).astype(np.float32)
    want = large.astype(np.float64) @ w
    for _ in range(2):  # the learning run, then one in the learned mode
        np.testing.assert_allclose(session.run(None, {"x": large})[0], want, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(session.run(None, {"x": single})[0], single.astype(np.float64) @ w, rtol=1e-4,
                               atol=1e-3)
    # split where onyxrt's GEMM takes it; else (an AVX2 CPU leaves a 2 MB B to BLAS) not split, or on trial
    learned = session._thread_modes.split_for(((128, 512),))
    assert learned is True if own_sgemm_usable() and own_sgemm_fits(512, 1024) else learned in (None, False)
    # a GEMV: the pool's GEMV task where it compiles, else BLAS's threads; no trial either way
    assert session._thread_modes.split_for(((1, 512),)) is (optional_module(GEMV_TASK) is not None)


def test_small_products_keep_blas_threads():
    session = _session(_matmul_model(64, 256)[0])  # 256 rows: 4M multiply-adds
    session.run(None, {"x": RNG.standard_normal((256, 64)).astype(np.float32)})
    assert session._thread_modes.split_for(((256, 64),)) is not True  # not by the rule (then timed in both modes)


@pytest.mark.parametrize("config", [{"session.intra_op.allow_spinning": "1"}, {"session.intra_op.allow_spinning": "0"}])
def test_an_explicit_spinning_choice_is_kept(config):
    session = _session(_matmul_model(512, 1024)[0], **config)
    assert session._thread_modes is None


def test_one_thread_has_one_mode():
    options = onyxrt.SessionOptions()
    options.intra_op_num_threads = 1
    session = onyxrt.InferenceSession(_matmul_model(512, 1024)[0], options)
    assert session._thread_modes is None


@pytest.mark.parametrize("size,split", [(112, True), (16, False)])
def test_large_depthwise_convolutions_split(size, split):
    """A 32-channel 3x3 depthwise convolution: 3.6M output elements x taps at 112x112 (its planes then run on every
    core), 74K at 16x16."""
    pytest.importorskip("numba")
    _assert_conv_mode(RNG.standard_normal((32, 1, 3, 3)).astype(np.float32), 32, size, split, group=32)


@pytest.mark.parametrize("size,split", [(56, True), (8, False)])
def test_large_winograd_convolutions_split(size, split):
    """A 64-channel 3x3 convolution by Winograd: 53M multiply-adds at 56x56 (its transforms then run on every core);
    at 8x8 (16 tiles) the column-matrix route, which keeps BLAS's threads."""
    pytest.importorskip("numba")
    _assert_conv_mode((RNG.standard_normal((64, 64, 3, 3)) / 24).astype(np.float32), 64, size, split)


def _assert_conv_mode(w, channels: int, size: int, split: bool, **attributes):
    """A one-Conv model (3x3, pads 1) learns ``split`` for a (1, channels, size, size) input by the rule (False: not
    split by it, then timed in both modes); its runs agree."""
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], **attributes)], "conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    session = _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    x = RNG.standard_normal((1, channels, size, size)).astype(np.float32)
    first = session.run(None, {"x": x})[0]
    np.testing.assert_allclose(session.run(None, {"x": x})[0], first, rtol=1e-5, atol=1e-5)
    assert (session._thread_modes.split_for(((1, channels, size, size),)) is True) is split


def test_a_trials_decision_is_tried_again_later_and_less_often_each_time(monkeypatch):
    """A trial run while the split mode was slow (a VM's core slowed for a spell) keeps BLAS's threads; the signature
    is tried again RECHECK_TRIALS times the trial's length later, the split mode then kept, and the trial after that
    comes twice as long after, at most RECHECK_MAX_SECONDS apart."""
    clock = [0.0]
    monkeypatch.setattr(thread_mode.time, "perf_counter", lambda: clock[0])
    modes = ThreadModes(_Pool("blas"), _Pool("split"))
    spell_ends = [None]

    def body(pool):
        slow_spell = spell_ends[0] is None or clock[0] < spell_ends[0]
        clock[0] += 0.002 if pool.name == "split" and slow_spell else 0.0012 if pool.name == "split" else 0.0015
        return pool.name

    modes.run("signature", body)
    trial_start = clock[0]  # (the trial begins after the signature's first run)
    while modes.split_for("signature") is None:
        modes.run("signature", body)
    assert modes.split_for("signature") is False
    first_length = clock[0] - trial_start
    spell_ends[0] = clock[0]
    decided_at = clock[0]
    while modes.learned_pool("signature") is not None:  # BLAS's threads until the trial is due again
        body(modes.pool)
    assert clock[0] - decided_at == pytest.approx(thread_mode.RECHECK_TRIALS * first_length, abs=0.002)
    assert modes.split_for("signature") is None  # on trial: no delay runs this time, the split block first
    assert modes.run("signature", body) == "split"
    while modes.split_for("signature") is None:
        modes.run("signature", body)
    assert modes.split_for("signature") is True
    decided_at = clock[0]
    while modes.learned_pool("signature") is not None:
        body(modes.split_pool)
    assert clock[0] - decided_at == pytest.approx(2 * thread_mode.RECHECK_TRIALS * first_length, abs=0.002)
    interval = 2 * thread_mode.RECHECK_TRIALS * first_length
    for _ in range(12):  # each time twice as long after, up to the most
        while modes.split_for("signature") is None:
            modes.run("signature", body)
        decided_at = clock[0]
        while modes.learned_pool("signature") is not None:
            body(modes.split_pool)
        interval = min(2 * interval, thread_mode.RECHECK_MAX_SECONDS)
        assert clock[0] - decided_at == pytest.approx(interval, abs=0.002)
    assert interval == thread_mode.RECHECK_MAX_SECONDS
