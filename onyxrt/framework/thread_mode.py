"""Which of its pool's two modes a session runs an input signature in: products left to BLAS's threads (the
default), or split over the pool itself (``ThreadPool.splitting_gemms``).

The pool's own split runs large multi-row products on onyxrt's own GEMM where the CPU has it, faster than BLAS's
threads; a decode step's one-row products (GEMVs) run faster on BLAS's threaded sgemv. Which kind a model's runs
hold depends on the input shapes (one model serves a 128-token prefill and its one-token decode steps), so a
session learns it per input signature: the first run of a signature records, through :func:`note_pool_product`,
whether any of its product kernels met a product the pool runs faster (``providers.cpu.gemm.note_product``
decides); the signature's later runs take the split mode where one did. Measured on 2 Zen 5 cores (AVX-512),
alternating processes: minilm_l6 at 128 tokens 11.0 -> 9.6 ms, a 128-token llama_tiny prefill 22.6 -> 22.0 ms;
its decode step keeps BLAS's threads (2.8 ms; 3.2 ms split).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Hashable

# the running learner's record: one entry per product the pool runs faster (None: nobody is learning)
_RECORD: ContextVar[list | None] = ContextVar("onyxrt_pool_products", default=None)
_MAX_SIGNATURES = 64


def note_pool_product() -> None:
    """Record, for a run learning its signature's mode, a product the pool's split runs faster."""
    record = _RECORD.get()
    if record is not None:
        record.append(True)


class ThreadModes:
    """A session's choice per input signature between its pool (BLAS's threads) and the pool's split mode."""

    def __init__(self, pool: Any, split_pool: Any) -> None:
        self.pool = pool
        self.split_pool = split_pool
        self._split: dict[Hashable, bool] = {}

    def run(self, signature: Hashable, run):
        """``run(pool)`` on the pool this signature takes, learning it on the signature's first run."""
        split = self._split.get(signature)
        if split is not None:
            return run(self.split_pool if split else self.pool)
        record: list = []
        token = _RECORD.set(record)
        try:
            result = run(self.pool)
        finally:
            _RECORD.reset(token)
        if len(self._split) >= _MAX_SIGNATURES:
            self._split.clear()
        self._split[signature] = bool(record)
        return result

    def split_for(self, signature: Hashable) -> bool | None:
        """Whether the signature's runs split products over the pool (None: not yet learned)."""
        return self._split.get(signature)
