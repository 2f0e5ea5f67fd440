"""ai.onyxrt Rearrange: a Reshape, a Transpose and a Reshape in one node.

``Rearrange(X, shape_before, shape_after, perm=...)`` is ``Reshape(Transpose(Reshape(X, shape_before), perm),
shape_after)``, either Reshape absent where its shape input is (``allowzero_before`` / ``allowzero_after``: the
Reshapes' ``allowzero``). What ``optimizer/rearrange_fusion.py`` makes of a Transpose between Reshapes: a ShuffleNet's
channel shuffle, a Swin window partition, attention heads split or merged without a fused attention. The result is
the same array the three kernels give (a view where no copy is needed, the channel transposes' compiled copy), for one
kernel call instead of three (~1-1.5 us each on small tensors).
"""

from __future__ import annotations

import numpy as np

from ....graph.opsets import ONYXRT_DOMAIN
from .._helpers import ConstantInputs, shape_keyed_fast_path
from ..kernel_table import op
from .shape_ops import _reshape, transpose


def _prepack(inputs, attributes) -> ConstantInputs | None:
    """Constant target shapes (or absent ones): both output shapes are worked out once per input shape."""
    shapes = list(inputs[1:3]) + [None] * (3 - len(inputs))
    if not any(isinstance(shape, np.ndarray) for shape in shapes):
        return None
    return ConstantInputs(shapes)


def _rearranged(x, shape_before, shape_after, perm, allowzero_before: int, allowzero_after: int) -> np.ndarray:
    y = x if shape_before is None else _reshape(x, shape_before, allowzero_before)
    y = transpose(y, perm=perm)
    return y if shape_after is None else _reshape(y, shape_after, allowzero_after)


@op("Rearrange", versions=1, domain=ONYXRT_DOMAIN, alias={0: 0}, prepack=_prepack)
def rearrange(x, shape_before=None, shape_after=None, *, perm, allowzero_before=0, allowzero_after=0, _packed=None):
    """Reshape(Transpose(Reshape(x, shape_before), perm), shape_after); an absent shape skips its Reshape."""
    return _rearranged(x, shape_before, shape_after, perm, allowzero_before, allowzero_after)


def _derive(x, params, keywords) -> tuple:
    """The shapes the two Reshapes give for inputs of x's shape (None: no Reshape), from a run of the kernel's own
    checks."""
    shape_before, shape_after = (list(params) + [None, None])[:2]
    perm, allowzero_before = keywords["perm"], keywords.get("allowzero_before", 0)
    first = None if shape_before is None else _reshape(x, shape_before, allowzero_before).shape
    moved = transpose(x if first is None else x.reshape(first), perm=perm)
    last = None if shape_after is None else _reshape(moved, shape_after, keywords.get("allowzero_after", 0)).shape
    return first, list(perm), last


def _apply(x: np.ndarray, derived: tuple) -> np.ndarray:
    first, perm, last = derived
    moved = transpose(x if first is None else x.reshape(first), perm=perm)
    return moved if last is None else moved.reshape(last)


rearrange.fast_path = shape_keyed_fast_path(_derive, _apply)
