"""What pruning did to a model's weights (``PruneReport``), and the sparsity of a model's weights for ``onyxrt info``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph.model_size import human_bytes
from .formats import zero_fraction

INFO_MIN_SPARSITY = 0.1  # `onyxrt info` lists weight matrices with at least this fraction of zeros
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


@dataclass
class PrunedWeight:
    """One pruned weight: the nodes reading it, its zeros before and after, and its bytes in the file."""

    name: str
    nodes: tuple[str, ...]
    op_type: str
    shape: tuple[int, ...]
    pattern: str
    sparsity_before: float
    sparsity_after: float
    dense_bytes: int
    stored_bytes: int  # in the written model: dense, or values + int64 indices when stored sparse
    stored_sparse: bool
    note: str = ""


@dataclass
class PruneReport:
    """Returned by ``prune``: the pruned weights, the nodes left alone and why, the model and file sizes."""

    pattern: str
    target_sparsity: float
    model: onnx.ModelProto
    weights: list[PrunedWeight] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # node name -> why its weight stays as it was
    file_bytes_before: int | None = None
    file_bytes_after: int | None = None

    def add(self, weight: PrunedWeight) -> None:
        self.weights.append(weight)

    def skip(self, node_name: str, why: str) -> None:
        self.skipped[node_name] = why

    def skip_weight(self, weight_name: str, node_names: tuple[str, ...], why: str) -> None:
        for node_name in node_names:
            self.skipped[node_name] = f"weight '{weight_name}': {why}"

    @property
    def dense_bytes(self) -> int:
        return sum(weight.dense_bytes for weight in self.weights)

    @property
    def stored_bytes(self) -> int:
        return sum(weight.stored_bytes for weight in self.weights)

    @property
    def sparsity(self) -> float:
        """Zeros over all pruned weights' elements."""
        elements = sum(int(np.prod(weight.shape)) for weight in self.weights)
        zeros = sum(weight.sparsity_after * int(np.prod(weight.shape)) for weight in self.weights)
        return zeros / elements if elements else 0.0

    def summary(self) -> str:
        text = (f"pruned {len(self.weights)} weights ({self.pattern}, target {self.target_sparsity:.0%}) to "
                f"{self.sparsity:.1%} zeros; {len(self.skipped)} nodes left alone")
        stored_sparse = sum(weight.stored_sparse for weight in self.weights)
        if stored_sparse:
            text += (f"; {stored_sparse} stored sparse: weight bytes {human_bytes(self.dense_bytes)} -> "
                     f"{human_bytes(self.stored_bytes)}")
        if self.file_bytes_before is not None and self.file_bytes_after is not None:
            text += f"; file {human_bytes(self.file_bytes_before)} -> {human_bytes(self.file_bytes_after)}"
        return text

    def table(self) -> list[str]:
        """One line per pruned weight, then one per node left alone with the reason."""
        lines = [f"{'weight':40s} {'op':6s} {'shape':18s} {'before':>7s} {'after':>7s} {'dense':>10s} {'stored':>10s}"]
        for weight in self.weights:
            shape = "x".join(map(str, weight.shape))
            stored = human_bytes(weight.stored_bytes) + (" sparse" if weight.stored_sparse else "")
            lines.append(f"{weight.name[-40:]:40s} {weight.op_type:6s} {shape:18s} {weight.sparsity_before:7.1%} "
                         f"{weight.sparsity_after:7.1%} {human_bytes(weight.dense_bytes):>10s} {stored:>10s}"
                         + (f"  ({weight.note})" if weight.note else ""))
        lines += [f"left alone: {node}: {why}" for node, why in self.skipped.items()]
        return lines


def weight_sparsity_lines(graph: onnx.GraphProto, base_dir: str | None) -> list[str]:
    """``onyxrt info``'s sparsity section: float weight matrices (rank >= 2) with at least
    ``INFO_MIN_SPARSITY`` zeros, from initializers (external data read from ``base_dir``) and
    sparse initializers; empty when there are none."""
    rows = []
    for tensor in graph.initializer:
        if tensor.data_type in _FLOAT_TYPES and len(tensor.dims) >= 2:
            rows.append((tensor.name, tuple(tensor.dims), zero_fraction(numpy_helper.to_array(tensor, base_dir or "")), "dense"))
    for sparse in graph.sparse_initializer:
        size = int(np.prod(sparse.dims))
        nonzeros = int(np.prod(sparse.values.dims))
        rows.append((sparse.values.name, tuple(sparse.dims), 1.0 - nonzeros / size if size else 0.0, "sparse"))
    shown = [row for row in rows if row[2] >= INFO_MIN_SPARSITY]
    if not shown:
        return []
    lines = [f"sparse weights (>= {INFO_MIN_SPARSITY:.0%} zeros): {len(shown)} of {len(rows)} weight matrices"]
    lines += [f"  {name:48s} {'x'.join(map(str, shape)):18s} {fraction:7.1%} zeros  stored {stored}"
              for name, shape, fraction, stored in shown]
    return lines
