"""Small utilities shared by CPU kernels."""

from __future__ import annotations

import numpy as np
from ...errors import NodeInputError


def normalize_axis(axis: int, rank: int) -> int:
    """Map a possibly negative ONNX axis into [0, rank)."""
    if not -rank <= axis < max(rank, 1):
        raise NodeInputError(f"axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def as_int_list(values) -> list[int]:
    """A shape/axes/pads input (tensor or list) as a list of Python ints."""
    return [int(v) for v in np.asarray(values).reshape(-1)]


# Outputs smaller than this come from numpy's own allocator, not the plan's ``_alloc``: numpy
# serves small blocks from malloc's caches faster than the arena's bookkeeping (measured on a
# llama decode step, whose hundreds of sub-4 KiB values ran ~30% slower through the arena).
ALLOC_MIN_BYTES = 1 << 16


def wants_buffer(alloc, x: np.ndarray) -> bool:
    """Whether a kernel should write an output shaped like ``x`` into a buffer from ``alloc``."""
    return alloc is not None and x.nbytes >= ALLOC_MIN_BYTES and x.flags.c_contiguous


class ConstantInputs:
    """A node's constant inputs after its first (``prepack``'s view of them: the initializer arrays a plan passes on
    every run, None for an absent or computed input), and a bounded cache of what a kernel derived from them per input
    shape. :meth:`given` tells whether a run's inputs are those same constants (by identity: the plan hands the same
    read-only arrays to every run); a computed input of the same node never is."""

    __slots__ = ("arrays", "cache")
    _MAX_SHAPES = 16

    def __init__(self, arrays) -> None:
        self.arrays = tuple(arrays)
        self.cache: dict = {}

    def given(self, inputs) -> bool:
        arrays = self.arrays
        if len(inputs) > len(arrays):
            return False
        for value, constant in zip(inputs, arrays):
            if value is not constant:
                return False
        return all(constant is None for constant in arrays[len(inputs):])

    def remember(self, key, derived):
        """``derived`` cached under ``key`` (the cache starts over past a few keys); returns it."""
        if len(self.cache) >= self._MAX_SHAPES:
            self.cache.clear()
        self.cache[key] = derived
        return derived


def constant_inputs(inputs, first: int, required: int) -> ConstantInputs | None:
    """``prepack``'s :class:`ConstantInputs` for the inputs from ``first`` on, where the ``required`` ones from
    ``first`` are all constants (None otherwise: the kernel runs as it is)."""
    params = inputs[first:]
    if len(params) < required or any(p is None for p in params[:required]):
        return None
    return ConstantInputs(params)


def shape_keyed_fast_path(derive, apply):
    """A kernel's ``fast_path`` for constant parameters (a :class:`ConstantInputs` prepack): what
    ``derive(data, params, keywords)`` works out from them (a window, an output shape, raising the kernel's errors) is
    looked up per input shape and handed to ``apply(data, derived)``; other parameters run the kernel itself."""

    def fast_path(bound, keywords):
        constants = keywords.get("_packed")
        if constants is None:
            return None
        cache = constants.cache

        def constant_parameters(data, *params):
            if not constants.given(params):
                return bound(data, *params)
            derived = cache.get(data.shape)
            if derived is None:
                derived = constants.remember(data.shape, derive(data, params, keywords))
            return apply(data, derived)

        return constant_parameters

    return fast_path
