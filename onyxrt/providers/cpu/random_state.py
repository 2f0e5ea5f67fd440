"""The random generators of the random ops, seeded as onnxruntime seeds its random kernels.

* A node with a ``seed`` attribute owns a generator created from that seed when its kernel
  is created (at session creation) and advanced by every run: sessions built from the same
  model give the same outputs run after run, and successive runs of one session differ.
* A node without one gets a generator whose seed is drawn, at kernel creation, from the
  process-wide generator, which ``onyxrt.set_seed`` reseeds: sessions created after the
  same ``set_seed`` call sequence reproduce each other (onnxruntime seeds such a kernel
  from its global seed plus the node's index).
* Dropout without a seed draws from the process-wide generator on every run, as
  onnxruntime's Dropout uses its default generator.

A node's generator is shared by concurrent runs of its session; draws hold its lock.
"""

from __future__ import annotations

import threading
from typing import Union

import numpy as np

Generator = Union[np.random.Generator, np.random.RandomState]


class NodeGenerator:
    """A generator shared by the runs of one node (or the process); ``with`` it to draw."""

    def __init__(self, generator: Generator) -> None:
        self._generator = generator
        self._lock = threading.Lock()

    def __enter__(self) -> Generator:
        self._lock.acquire()
        return self._generator

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()

    def reseed(self, generator: Generator) -> None:
        with self._lock:
            self._generator = generator


_PROCESS = NodeGenerator(np.random.default_rng())


def seed(value: int) -> None:
    """Reseed the process-wide generator (``onyxrt.set_seed``)."""
    _PROCESS.reseed(np.random.default_rng(value))


def process_generator() -> NodeGenerator:
    """The process-wide generator (unseeded Dropout draws from it on every run)."""
    return _PROCESS


def seed_bits(node_seed: float) -> int:
    """The integer seed of a float ``seed`` attribute: its float32 bit pattern, so that distinct
    seeds give distinct streams."""
    return int(np.float32(node_seed).view(np.uint32))


def node_generator(node_seed: float | None) -> NodeGenerator:
    """A new node's generator: from its ``seed`` attribute, else from a seed drawn from the
    process-wide generator."""
    if node_seed is not None:
        return NodeGenerator(np.random.default_rng(seed_bits(node_seed)))
    with _PROCESS as process:
        drawn = int(process.integers(0, 2**63))
    return NodeGenerator(np.random.default_rng(drawn))


def random_op_prepack(inputs: list, attributes: dict) -> NodeGenerator:
    """Prepack of the random ops: the node's generator, created once per kernel."""
    return node_generator(attributes.get("seed"))
