"""The random generator random ops use when a node has no ``seed`` attribute."""

from __future__ import annotations

import threading

import numpy as np

_lock = threading.Lock()
_generator = np.random.default_rng()


def seed(value: int) -> None:
    """Make unseeded random ops reproducible (``onyxrt.set_seed``)."""
    global _generator
    with _lock:
        _generator = np.random.default_rng(value)


def generator(node_seed: float | None = None) -> np.random.Generator:
    """A generator for one op call: seeded from the node's ``seed`` attribute when it has one."""
    if node_seed is not None:
        return np.random.default_rng(int(node_seed))
    with _lock:
        return np.random.default_rng(_generator.integers(0, 2**63))
