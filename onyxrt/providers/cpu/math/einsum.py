"""Einsum (ONNX standard domain).

Two-operand contractions (the common case: attention scores, bilinear forms) are
rewritten as one batched ``np.matmul`` over transposed/reshaped operands, which uses
BLAS; everything else (diagonals, broadcasting ellipsis dims, three or more operands)
goes to ``np.einsum`` with an explicit output, so the implicit-output rule is ONNX's
(ellipsis dims first, then the labels used once, in ASCII order).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from ..kernel_table import op
from .elementwise import as_array, is_float
from ....errors import NodeInputError, NodeInputTypeError

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


def _split_ellipsis(term: str) -> tuple[str, str, bool]:
    """(letters before '...', letters after, has ellipsis) of one term."""
    if "..." in term:
        head, _, tail = term.partition("...")
        if "." in head or "." in tail:
            raise NodeInputError(f"Einsum: malformed ellipsis in term {term!r}")
        return head, tail, True
    if "." in term:
        raise NodeInputError(f"Einsum: malformed ellipsis in term {term!r}")
    return term, "", False


def parse_equation(equation: str, shapes: list[tuple[int, ...]]):
    """Label lists per operand and for the output; ellipsis dims become labels '.0', '.1'...

    Ellipsis dims are aligned from the right across operands (numpy broadcasting).
    Returns (operand_labels, output_labels).
    """
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise NodeInputError(f"Einsum: equation {equation!r} has {len(terms)} terms for {len(shapes)} inputs")
    parts = [_split_ellipsis(t) for t in terms]
    ell_ranks = []
    for (head, tail, has), shape in zip(parts, shapes):
        rank = len(shape) - len(head) - len(tail)
        if rank < 0 or (rank and not has):
            raise NodeInputError(f"Einsum: term {head + ('...' if has else '') + tail!r} does not match rank {len(shape)}")
        ell_ranks.append(rank)
    n_ell = max(ell_ranks, default=0)
    any_ellipsis = any(has for _, _, has in parts)  # '...' may stand for zero dims
    labels = []
    for (head, tail, _), rank in zip(parts, ell_ranks):
        labels.append(list(head) + [f".{n_ell - rank + j}" for j in range(rank)] + list(tail))
    ell_labels = [f".{j}" for j in range(n_ell)]
    if arrow:
        head, tail, has = _split_ellipsis(rhs)
        if (has and not any_ellipsis) or len(set(head + tail)) != len(head + tail):
            raise NodeInputError(f"Einsum: invalid output term {rhs!r}")
        out_labels = list(head) + (ell_labels if has else []) + list(tail)
    else:
        counts = Counter(c for head, tail, _ in parts for c in head + tail)
        once = sorted(c for c, n in counts.items() if n == 1)
        out_labels = ell_labels + once
    for label in out_labels:
        if not label.startswith(".") and not any(label in ls for ls in labels):
            raise NodeInputError(f"Einsum: output label {label!r} is not an input label")
    return labels, out_labels


def _sum_private(x: np.ndarray, labels: list[str], keep: set[str]):
    """Sum out the labels of x that no other operand nor the output uses."""
    drop = tuple(i for i, label in enumerate(labels) if label not in keep)
    if not drop:
        return x, labels
    return x.sum(axis=drop, dtype=x.dtype), [label for label in labels if label in keep]


def _matmul_contract(a, la, b, lb, out_labels):
    """The two-operand einsum as one batched matmul, or None where it does not apply."""
    if len(set(la)) != len(la) or len(set(lb)) != len(lb):
        return None  # diagonals
    out_set = set(out_labels)
    a, la = _sum_private(a, la, set(lb) | out_set)
    b, lb = _sum_private(b, lb, set(la) | out_set)
    size = {}
    for x, ls in ((a, la), (b, lb)):
        for label, dim in zip(ls, x.shape):
            if size.setdefault(label, dim) != dim:
                return None  # broadcasting dims
    sb = set(lb)
    batch = [label for label in out_labels if label in la and label in sb]
    left = [label for label in out_labels if label in la and label not in sb]
    right = [label for label in out_labels if label in sb and label not in la]
    contract = [label for label in la if label in sb and label not in out_set]
    if len(batch) + len(left) + len(right) != len(out_labels):
        return None
    nb = math.prod(size[label] for label in batch)
    m = math.prod(size[label] for label in left)
    k = math.prod(size[label] for label in contract)
    n = math.prod(size[label] for label in right)
    a2 = a.transpose([la.index(label) for label in batch + left + contract]).reshape(nb, m, k)
    b2 = b.transpose([lb.index(label) for label in batch + contract + right]).reshape(nb, k, n)
    result = np.matmul(a2, b2).reshape([size[label] for label in batch + left + right])
    order = batch + left + right
    return result.transpose([order.index(label) for label in out_labels])


_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _letter_equation(labels: list[list[str]], out_labels: list[str]) -> str:
    """An ellipsis-free numpy equation: ellipsis dims get letters of their own, so that
    an output without '...' sums them (numpy would refuse)."""
    used = {label for ls in labels for label in ls if not label.startswith(".")}
    free = iter(c for c in _LETTERS if c not in used)
    letter = {}
    for label in [label for ls in labels for label in ls] + out_labels:
        if label not in letter:
            letter[label] = label if not label.startswith(".") else next(free)
    terms = ["".join(letter[label] for label in ls) for ls in labels]
    return ",".join(terms) + "->" + "".join(letter[label] for label in out_labels)


def einsum_values(equation: str, operands: list[np.ndarray]) -> np.ndarray:
    labels, out_labels = parse_equation(equation, [x.shape for x in operands])
    if len(operands) == 2:
        result = _matmul_contract(operands[0], labels[0], operands[1], labels[1], out_labels)
        if result is not None:
            return result
    return np.einsum(_letter_equation(labels, out_labels), *operands, optimize=len(operands) > 2)


@op("Einsum", versions=(12, 28))
def einsum(*inputs, equation):
    if not inputs:
        raise NodeInputError("Einsum needs at least one input")
    dt = inputs[0].dtype
    if any(x.dtype != dt for x in inputs):
        raise NodeInputTypeError(f"Einsum: inputs must share one type, got {[str(x.dtype) for x in inputs]}")
    compute = list(inputs)
    if is_float(dt) and dt != _F32 and dt != _F64:  # float16/bfloat16: computed in float32
        compute = [x.astype(np.float32) for x in inputs]
    elif not (is_float(dt) or dt.kind in "iu"):
        raise NodeInputTypeError(f"Einsum: unsupported input type {dt}")
    result = as_array(einsum_values(equation, compute))
    if any(np.may_share_memory(result, x) for x in inputs):
        result = result.copy()  # never hand out a view of an input
    return result.astype(dt, copy=False)
