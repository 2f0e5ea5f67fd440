"""Linear algebra: Det."""

from __future__ import annotations

import numpy as np

from ..kernel_table import op
from ....errors import NodeInputError


@op("Det", versions=(11, 22))
def det(x):
    """Determinants of the trailing square matrices of ``x`` (shape ``[*, M, M]`` -> ``[*]``)."""
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise NodeInputError(f"Det: input must have shape [*, M, M], got {x.shape}")
    work = x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)
    y = np.asarray(np.linalg.det(work))
    return y if y.dtype == x.dtype else y.astype(x.dtype)
