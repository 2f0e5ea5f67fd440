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
