"""Small utilities shared by CPU kernels."""

from __future__ import annotations

import numpy as np


def normalize_axis(axis: int, rank: int) -> int:
    """Map a possibly negative ONNX axis into [0, rank)."""
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def as_int_list(values) -> list[int]:
    """A shape/axes/pads input (tensor or list) as a list of Python ints."""
    return [int(v) for v in np.asarray(values).reshape(-1)]
