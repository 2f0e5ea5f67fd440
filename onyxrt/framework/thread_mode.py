"""Which of its pool's two modes a session runs an input signature in: products left to BLAS's threads (the
default), or split over the pool itself (``ThreadPool.splitting_gemms``).

The pool's own split runs large multi-row products on onyxrt's own GEMM where the CPU has it, faster than BLAS's
threads, and a decode step's one-row products (GEMVs) as its own GEMV tasks. Which kind a model's runs hold depends
on the input shapes (one model serves a 128-token prefill and its one-token decode steps), so a session learns it
per input signature: the first run of a signature (in the mode of the last learned signature's runs: a generation
loop's steps, a new signature each as the pasts grow, keep the mode their first step learned; BLAS's threads for a
session's first) records, through :func:`note_pool_product`, whether any of its product kernels met a product the
pool runs faster (``providers.cpu.gemm.note_product`` decides); the signature's later runs take the split mode where
one did. Measured on 2 Zen 5 cores (AVX-512), alternating processes: minilm_l6
at 128 tokens 11.0 -> 9.6 ms, a 128-token llama_tiny prefill 22.6 -> 22.0 ms; on 2 Zen 4 cores its decode step
4.95 -> 4.66 ms (``providers.cpu.gemm.GEMV_BLAS_MIN_ELEMENTS``).

A signature whose products sent it to neither mode (:func:`note_blas_product` marks a decode step's GEMVs for
BLAS's threads where onyxrt's GEMV tasks do not compile) is then timed in both (:class:`_Trial`): after
:data:`TRIAL_DELAY` runs on BLAS's threads (a session's first runs of a signature are slower: its plan's buffers and
recorded shapes settle), blocks of :data:`TRIAL_BLOCK` runs alternate between the split mode and BLAS's threads, the
first :data:`TRIAL_WARMING` of each block untimed, and every run of a split block's first
:data:`TRIAL_SETTLE_SECONDS` (a default block's first :data:`TRIAL_SETTLE_AFTER_SPLIT_SECONDS`), each block timing
:data:`TRIAL_BLOCK_SECONDS` of runs at least, until each mode has had :data:`TRIAL_RUNS` runs and
:data:`TRIAL_SECONDS` of timed runs (at most :data:`TRIAL_MAX_PAIRS` pairs of blocks). Each pair of blocks gives the
ratio of its split block's median run to its default block's; the split mode is kept where the median ratio is below
:data:`SPLIT_MARGIN`. Runs of one mode follow each other within a block: the other mode's threads spin for a few
milliseconds after its runs (OpenBLAS's, the pool's workers), and a run beside them takes up to 3x its time (a decode
step alternating modes: 2.4 -> 8 ms in the split mode); so a block's runs are timed only once those threads have
stopped (OpenBLAS's spin for ~6 ms, ``openblas_spin``): with one untimed run a block, a 4-sequence encoder's split runs
took 1.16-1.27x its default runs in the trial, which kept BLAS's threads, where blocks of 60 runs measured 0.86x (0.5
ms runs, one process, 2-vCPU Zen 4). The pool's workers stop spinning sooner: a default block's runs are even with
its later ones from 1 ms after a split block (both directions measured on 2-vCPU Zen 4 for 6 unseen nets, 30 ms
blocks). Blocks time 4 ms of runs, not 3 runs, so a 0.15-0.4 ms net's trial takes 5 pairs of blocks (0.1 s) rather
than up to 32 (0.3-0.55 s, the 8 ms of settling a block dominating): a session's runs reach their mode within its
first ~0.1 s of runs, as often the faster one (6 processes per net). The blocks alternate, and are compared pair by
pair, because a VM's speed drifts: on a 2-vCPU Zen 4 EPYC one block of 8 runs per mode kept an EfficientNet-like net
on BLAS's threads in some processes though its split mode ran 0.85x (alternating processes); with 12 runs a mode in
blocks of 4 (3.6 ms of timed runs for a 0.4 ms net) a MobileNetV3-like net still took the slower mode in 2 processes
of 6, a ConvNeXt-like one in 1 of 6, which the time floor addresses. A trial run failing in the split mode is redone
on BLAS's threads, which the signature then keeps. A trial's decision is tried again after :data:`RECHECK_TRIALS`
times the trial's length (~0.6 s for a small net), then twice as long after each time, at most
:data:`RECHECK_MAX_SECONDS` apart: on a 2-vCPU Zen 4 VM both runtimes' split runs slow down for spells of 0.1-1.5 s
(an EfficientNet-like net's split runs 0.34 -> 0.54-0.6 ms, its default ones 0.47 either way; onnxruntime's 0.28 ->
0.47), and 2 to 4 trials of 6-8 processes that ran in such a spell had kept BLAS's threads for the process's life.
Small models are where the rule above cannot tell: on 2 Zen 5 cores an EfficientNet-like net at batch 8 ran 0.91x in
the split mode, a ConvNeXt-like one 1.21x, a ShuffleNet-like one 1.02x (alternating processes).
"""

from __future__ import annotations

import statistics
import time
from contextvars import ContextVar
from typing import Any, Hashable

# the running learner's record: one entry per product the pool runs faster (None: nobody is learning)
_RECORD: ContextVar[list | None] = ContextVar("onyxrt_pool_products", default=None)
_MAX_SIGNATURES = 64
# Runs before a signature's trial; its least runs and timed seconds in each mode (in alternating blocks, the first
# runs of each block untimed, and the runs of its first seconds: the other mode's threads spinning), the most pairs
# of blocks it takes; the share of the default's run time the split mode's must stay below to be kept (run times
# move by a few percent between runs).
TRIAL_DELAY = 4
TRIAL_RUNS = 12
TRIAL_SECONDS = 0.02
TRIAL_MAX_PAIRS = 32
TRIAL_BLOCK = 4
TRIAL_BLOCK_SECONDS = 0.004
TRIAL_WARMING = 1
TRIAL_SETTLE_SECONDS = 0.008
TRIAL_SETTLE_AFTER_SPLIT_SECONDS = 0.002
SPLIT_MARGIN = 0.95
# A trial's decision is tried again after this many times the trial's duration, then after twice as long each time (at
# most RECHECK_MAX_SECONDS apart): a VM's cores change speed for seconds at a time, and a trial run in such a spell
# decides for it alone. The half of a trial's runs in the slower mode cost a few % of the runs up to the next trial.
RECHECK_TRIALS = 5
RECHECK_MAX_SECONDS = 60.0


def note_pool_product() -> None:
    """Record, for a run learning its signature's mode, a product the pool's split runs faster."""
    record = _RECORD.get()
    if record is not None:
        record.append(True)


def note_blas_product() -> None:
    """Record, for a run learning its signature's mode, a product BLAS's threads run faster (a decode step's GEMVs):
    unless another product sends it to the split mode, the signature keeps BLAS's threads without a trial."""
    record = _RECORD.get()
    if record is not None:
        record.append(False)


class _Trial:
    """A signature's trial: how many runs it has had, the timed runs of the current pair of blocks (seconds), each
    finished pair's ratio (split / default block medians), the timed seconds in each mode, and the current block's
    mode, start, runs and timed runs."""

    __slots__ = ("runs", "default", "split", "ratios", "seconds", "split_turn", "block_start", "block_runs",
                 "block_timed", "block_seconds", "pairs", "delay", "started", "recheck_after")

    def __init__(self, delay: int = TRIAL_DELAY, recheck_after: float | None = None) -> None:
        self.delay = delay  # runs on BLAS's threads before the blocks (none when a decision is tried again)
        self.started = time.perf_counter()
        self.recheck_after = recheck_after  # seconds from this trial's decision to the next (None: from its length)
        self.runs = 0
        self.default: list[float] = []
        self.split: list[float] = []
        self.ratios: list[float] = []
        self.seconds = [0.0, 0.0]  # split, default
        self.split_turn = True  # (each pair of blocks: the split mode's, then the default's)
        self.block_start = 0.0
        self.block_runs = 0
        self.block_timed = 0
        self.block_seconds = 0.0
        self.pairs = 0


class ThreadModes:
    """A session's choice per input signature between its pool (BLAS's threads) and the pool's split mode."""

    def __init__(self, pool: Any, split_pool: Any, trial_runs: int = TRIAL_RUNS) -> None:
        self.pool = pool
        self.split_pool = split_pool
        self._split: dict[Hashable, bool] = {}
        self._trials: dict[Hashable, _Trial] = {}
        self._trial_runs = trial_runs
        self._last_split = False  # the mode of the last run of a learned signature
        # signatures a trial decided: when their trial is run again, and the seconds until the one after
        self._rechecks: dict[Hashable, tuple[float, float]] = {}
        self._next_recheck = float("inf")  # the earliest of them

    def learned_pool(self, signature: Hashable) -> Any:
        """The pool a signature whose mode is learned runs on (None while it is not, or when its trial is due again):
        ``run`` without its callback."""
        split = self._split.get(signature)
        if split is None or (self._next_recheck <= time.perf_counter() and self._recheck(signature)):
            return None
        self._last_split = split
        return self.split_pool if split else self.pool

    def run(self, signature: Hashable, run):
        """``run(pool)`` on the pool this signature takes, learning it on the signature's first run."""
        pool = self.learned_pool(signature)
        if pool is not None:
            return run(pool)
        trial = self._trials.get(signature)
        if trial is not None:
            return self._timed(signature, trial, run)
        record: list = []
        token = _RECORD.set(record)
        try:
            result = self._learning_run(run)
        finally:
            _RECORD.reset(token)
        if len(self._split) >= _MAX_SIGNATURES:
            self._split.clear()
            self._trials.clear()
            self._rechecks.clear()
            self._next_recheck = float("inf")
        if record or self._trial_runs <= 0:
            self._split[signature] = self._last_split = any(record)
        else:
            self._trials[signature] = _Trial()
        return result

    def _learning_run(self, run):
        """A new signature's first run, in the mode of the last learned signature's run: a generation loop's steps
        (their pasts one row longer each, a new signature every step) stay in the mode their first step learned,
        rather than each running on BLAS's threads while it learns. A split-mode failure is redone on BLAS's
        threads."""
        if not self._last_split:
            return run(self.pool)
        try:
            return run(self.split_pool)
        except Exception:  # (the split mode's kernels failing where the default's may not: the run is redone)
            self._last_split = False
            return run(self.pool)

    def _timed(self, signature: Hashable, trial: _Trial, run):
        """A run of a signature on trial: after the delay, blocks of runs alternating between the split mode and the
        default, each block's first runs untimed until the other mode's threads have stopped spinning; each pair of
        blocks gives a ratio, and their median decides."""
        trial.runs += 1
        if trial.runs <= trial.delay:
            return run(self.pool)
        split = trial.split_turn
        start = time.perf_counter()
        if trial.block_runs == 0:
            trial.block_start = start
        settle = TRIAL_SETTLE_SECONDS if split else TRIAL_SETTLE_AFTER_SPLIT_SECONDS
        settled = trial.block_runs >= TRIAL_WARMING and start - trial.block_start >= settle
        trial.block_runs += 1
        if split:
            try:
                result = run(self.split_pool)
            except Exception:  # (the split mode's kernels failing where the default's may not: the run is redone)
                self._split[signature] = False
                self._trials.pop(signature, None)
                self._rechecks.pop(signature, None)
                return run(self.pool)
        else:
            result = run(self.pool)
        if settled:
            took = time.perf_counter() - start
            (trial.split if split else trial.default).append(took)
            trial.seconds[0 if split else 1] += took
            trial.block_timed += 1
            trial.block_seconds += took
        block = min(TRIAL_BLOCK, self._trial_runs)
        if trial.block_timed < block - min(TRIAL_WARMING, block - 1) or trial.block_seconds < TRIAL_BLOCK_SECONDS:
            return result
        trial.split_turn, trial.block_runs, trial.block_timed, trial.block_seconds = not split, 0, 0, 0.0
        if split:
            return result
        trial.pairs += 1  # a pair of blocks ends
        if trial.split and trial.default:  # (concurrent runs of the signature may have taken a block's turns)
            trial.ratios.append(statistics.median(trial.split) / statistics.median(trial.default))
        trial.split.clear()
        trial.default.clear()
        pairs = len(trial.ratios)
        if trial.pairs >= TRIAL_MAX_PAIRS or (pairs * block >= self._trial_runs
                                               and min(trial.seconds) >= TRIAL_SECONDS):
            self._split[signature] = bool(pairs) and statistics.median(trial.ratios) < SPLIT_MARGIN
            self._trials.pop(signature, None)
            now = time.perf_counter()
            after = trial.recheck_after
            if after is None:
                after = min(RECHECK_TRIALS * (now - trial.started), RECHECK_MAX_SECONDS)
            self._rechecks[signature] = (now + after, min(2 * after, RECHECK_MAX_SECONDS))
            self._next_recheck = min(self._next_recheck, now + after)
        return result

    def _recheck(self, signature: Hashable) -> bool:
        """Put ``signature`` on trial again where its time has come (True); else False, the earliest recheck
        recomputed."""
        due = self._rechecks.get(signature)
        again = due is not None and due[0] <= time.perf_counter()
        if again:
            self._rechecks.pop(signature, None)
            self._split.pop(signature, None)
            self._trials[signature] = _Trial(delay=0, recheck_after=due[1])
        self._next_recheck = min((at for at, _ in self._rechecks.values()), default=float("inf"))
        return again

    def split_for(self, signature: Hashable) -> bool | None:
        """Whether the signature's runs split products over the pool (None: not yet learned, or on trial)."""
        return self._split.get(signature)
