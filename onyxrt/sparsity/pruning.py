"""Magnitude pruning of the constant weights of MatMul, Gemm and Conv nodes (``onyxrt.sparsity.prune``).

Every weight is seen as an ``(outputs, reduction)`` matrix, the layout of a torch Linear weight
(out x in): MatMul's B (K x N) transposed, Gemm's B transposed unless ``transB``, Conv's W
(M, C/group, kh, kw) as (M, C/group*kh*kw). Patterns:

- ``"unstructured"``: the ``round(sparsity * size)`` smallest magnitudes of the tensor become zero.
- ``"N:M"`` (``"2:4"``, ``"4:8"``, ...): in each group of M consecutive elements along the
  reduction axis the M-N smallest magnitudes become zero, the layout of cuSPARSELt and torch's
  semi-structured sparsity; the pattern fixes the sparsity at 1 - N/M (``sparsity`` is not used).
  A weight whose reduction length is not a multiple of M is left dense, with a note.
- ``"blockRxC"`` (``"block4x1"``, ``"block1x4"``, ...): blocks of R consecutive output channels x
  C consecutive reduction elements; the ``round(sparsity * blocks)`` blocks of smallest L2 norm
  become zero (blocks cut by the matrix edge count their elements only).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph.tensors import dense_to_sparse_proto
from ..quantization.model_editor import ModelEditor, all_inputs, load_model, save_model
from ..graph.model_size import model_file_bytes
from .report import PruneReport, PrunedWeight, zero_fraction

SUPPORTED_OP_TYPES = ("MatMul", "Gemm", "Conv")
PRUNABLE_DTYPES = (np.float32, np.float16, np.float64)
_N_OF_M = re.compile(r"^(\d+):(\d+)$")
_BLOCK = re.compile(r"^block(\d+)x(\d+)$")
_INDEX_BYTES = 8  # ONNX sparse tensors store int64 indices


@dataclass(frozen=True)
class Pattern:
    """A parsed pruning pattern: ``kind`` is "unstructured", "n:m" (``kept`` of each ``group``) or "block"
    (``block_rows`` x ``block_columns``)."""

    text: str
    kind: str
    kept: int = 0
    group: int = 0
    block_rows: int = 0
    block_columns: int = 0

    @classmethod
    def parse(cls, text: str) -> "Pattern":
        if text == "unstructured":
            return cls(text, "unstructured")
        if match := _N_OF_M.match(text):
            n, m = int(match[1]), int(match[2])
            if 0 < n < m:
                return cls(text, "n:m", kept=n, group=m)
        if match := _BLOCK.match(text):
            rows, columns = int(match[1]), int(match[2])
            if rows > 0 and columns > 0 and rows * columns > 1:
                return cls(text, "block", block_rows=rows, block_columns=columns)
        raise ValueError(f"pattern '{text}' is not one of: unstructured, N:M with 0 < N < M (e.g. 2:4, 4:8), "
                         "blockRxC (e.g. block4x1, block1x4)")


def prune(
    model_input: "str | os.PathLike | onnx.ModelProto",
    model_output: "str | os.PathLike | None" = None,
    sparsity: float = 0.9,
    pattern: str = "unstructured",
    op_types: "tuple[str, ...] | list[str]" = SUPPORTED_OP_TYPES,
    nodes_to_exclude: "tuple[str, ...] | list[str]" = (),
    store_sparse: bool = False,
    conv_kernel_shapes: "tuple[tuple[int, ...], ...] | None" = None,
    use_external_data_format: bool = False,
) -> PruneReport:
    """Zero the smallest-magnitude elements of the constant weights of ``op_types`` nodes.

    ``model_input`` is a path or a ModelProto (not modified); the pruned model is written to
    ``model_output`` when given and is ``report.model`` either way. Weights are initializers or
    Constant nodes (which become initializers), possibly through an Identity; a weight computed by
    another node (Transpose, Cast, DequantizeLinear...) or also read by a node that is not pruned
    stays as it is, with a note in ``report.skipped``. ``conv_kernel_shapes`` limits Conv to those
    kernel shapes (``((1, 1),)``: pointwise convolutions only). ``store_sparse`` writes each pruned
    weight as a sparse initializer (COO, linear int64 indices) when that is smaller than dense.
    """
    parsed = Pattern.parse(pattern)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    unknown = [op for op in op_types if op not in SUPPORTED_OP_TYPES]
    if unknown:
        raise ValueError(f"op_types {unknown} cannot be pruned; supported: {', '.join(SUPPORTED_OP_TYPES)}")
    source_bytes = model_file_bytes(Path(model_input)) if isinstance(model_input, (str, os.PathLike)) else None
    model = load_model(model_input)
    editor = ModelEditor(model)  # also turns Constant nodes into initializers and names unnamed nodes
    missing = sorted(set(nodes_to_exclude) - {node.name for node in model.graph.node})
    if missing:
        raise ValueError(f"nodes_to_exclude: the model has no node named {', '.join(map(repr, missing))}")
    target = 1.0 - parsed.kept / parsed.group if parsed.kind == "n:m" else sparsity
    report = PruneReport(pattern=parsed.text, target_sparsity=target, model=model, file_bytes_before=source_bytes)

    candidates: dict[str, list[onnx.NodeProto]] = {}  # initializer -> the nodes to prune that read it as weight
    for node in model.graph.node:
        if node.op_type not in op_types or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        if node.name in nodes_to_exclude:
            report.skip(node.name, "excluded")
            continue
        weight = node.input[1]
        if not editor.is_constant(weight):
            producer = editor.producer.get(weight)
            if producer is not None and all(editor.is_constant(name) for name in producer.input if name):
                report.skip(node.name, f"weight '{weight}' is computed by a {producer.op_type} node, not stored")
            continue
        if node.op_type == "Conv" and conv_kernel_shapes is not None:
            kernel = tuple(editor.array(weight).shape[2:])
            if kernel not in {tuple(shape) for shape in conv_kernel_shapes}:
                report.skip(node.name, f"kernel {'x'.join(map(str, kernel))} not among conv_kernel_shapes")
                continue
        candidates.setdefault(editor.aliases.get(weight, weight), []).append(node)

    readers = _readers(model.graph, editor)
    for source, uses in candidates.items():
        others = sorted(readers[source] - {node.name for node in uses})
        if others:
            for node in uses:
                report.skip(node.name, f"weight '{source}' is also read by {others[0]}"
                                       + (f" and {len(others) - 1} more" if len(others) > 1 else ""))
            continue
        _prune_weight(editor, source, uses, parsed, sparsity, store_sparse, report)

    if store_sparse:
        sparse_names = {weight.name for weight in report.weights if weight.stored_sparse}
        dense = [t for t in model.graph.initializer if t.name not in sparse_names]
        sparse = [t for t in model.graph.initializer if t.name in sparse_names]
        del model.graph.initializer[:]
        model.graph.initializer.extend(dense)
        model.graph.sparse_initializer.extend(dense_to_sparse_proto(t) for t in sparse)
    if model_output is not None:
        save_model(model, model_output, use_external_data_format)
        report.file_bytes_after = model_file_bytes(Path(model_output))
    return report


def _readers(graph: onnx.GraphProto, editor: ModelEditor) -> dict[str, set[str]]:
    """For each initializer, the nodes that read it (directly, through an Identity alias, or from a
    subgraph), Identity aliases themselves excepted; a graph output reads as ``graph output``."""
    readers: dict[str, set[str]] = {name: set() for name in editor.initializers}
    aliases = set(editor.aliases)
    for node in graph.node:
        if node.op_type == "Identity" and node.output and node.output[0] in aliases:
            continue
        for name in all_inputs(node):
            source = editor.aliases.get(name, name)
            if source in readers:
                readers[source].add(node.name)
    for output in graph.output:
        source = editor.aliases.get(output.name, output.name)
        if source in readers:
            readers[source].add("graph output")
    return readers


def _prune_weight(editor: ModelEditor, name: str, uses: list[onnx.NodeProto], pattern: Pattern,
                  sparsity: float, store_sparse: bool, report: PruneReport) -> None:
    """Prune one initializer (read by the nodes of ``uses``) in place and record it in ``report``."""
    node_names = tuple(node.name for node in uses)
    weight = editor.array(name)
    if weight.dtype not in PRUNABLE_DTYPES:
        report.skip_weight(name, node_names, f"element type {weight.dtype} is not float32/float16/float64")
        return
    views = {_matrix_axes(node, weight.ndim) for node in uses}
    if None in views:
        report.skip_weight(name, node_names, f"a weight of rank {weight.ndim} is not a matrix for {uses[0].op_type}")
        return
    if len(views) > 1:
        report.skip_weight(name, node_names, "read as a matrix in two layouts (Gemm transB differs)")
        return
    transposed = views.pop()
    matrix = _as_matrix(weight, transposed)
    if pattern.kind == "n:m" and matrix.shape[1] % pattern.group:
        report.skip_weight(name, node_names, f"reduction length {matrix.shape[1]} is not a multiple of {pattern.group}")
        return
    before = zero_fraction(weight)
    keep = _keep_mask(np.abs(matrix.astype(np.float64)), pattern, sparsity)
    pruned = _from_matrix(np.where(keep, matrix, np.zeros((), matrix.dtype)), weight.shape, transposed)
    tensor = editor.initializers[name]
    tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(pruned), name))
    nonzeros = int(np.count_nonzero(pruned))
    dense_bytes = pruned.nbytes
    sparse_bytes = nonzeros * (pruned.itemsize + _INDEX_BYTES)
    stored_sparse = store_sparse and sparse_bytes < dense_bytes
    report.add(PrunedWeight(
        name=name, nodes=node_names, op_type=uses[0].op_type, shape=tuple(weight.shape), pattern=pattern.text,
        sparsity_before=before, sparsity_after=1.0 - nonzeros / pruned.size if pruned.size else 0.0,
        dense_bytes=dense_bytes, stored_bytes=sparse_bytes if stored_sparse else dense_bytes, stored_sparse=stored_sparse,
        note="" if stored_sparse or not store_sparse else "stored dense: its sparse form would be larger"))


def _matrix_axes(node: onnx.NodeProto, rank: int) -> "bool | None":
    """Whether the weight must be transposed to be (outputs, reduction); None when it is no weight matrix."""
    if node.op_type == "Conv":
        return False if rank >= 3 else None
    if rank != 2:
        return None
    if node.op_type == "Gemm":
        trans_b = next((attribute.i for attribute in node.attribute if attribute.name == "transB"), 0)
        return not trans_b
    return True  # MatMul: B is (K, N)


def _as_matrix(weight: np.ndarray, transposed: bool) -> np.ndarray:
    return weight.T if transposed else weight.reshape(weight.shape[0], -1)


def _from_matrix(matrix: np.ndarray, shape: tuple[int, ...], transposed: bool) -> np.ndarray:
    return matrix.T if transposed else matrix.reshape(shape)


def _keep_mask(magnitude: np.ndarray, pattern: Pattern, sparsity: float) -> np.ndarray:
    """True where the (outputs, reduction) matrix keeps its element."""
    rows, columns = magnitude.shape
    if pattern.kind == "unstructured":
        return _keep_largest(magnitude.reshape(-1), round(sparsity * magnitude.size)).reshape(rows, columns)
    if pattern.kind == "n:m":
        groups = magnitude.reshape(rows, columns // pattern.group, pattern.group)
        # The M-N smallest of each group go: a stable sort keeps the earlier of equal magnitudes.
        order = np.argsort(groups, axis=-1, kind="stable")
        keep = np.ones(groups.shape, dtype=bool)
        np.put_along_axis(keep, order[..., : pattern.group - pattern.kept], False, axis=-1)
        return keep.reshape(rows, columns)
    block_rows, block_columns = pattern.block_rows, pattern.block_columns
    padded = np.zeros((-(-rows // block_rows) * block_rows, -(-columns // block_columns) * block_columns))
    padded[:rows, :columns] = magnitude
    blocks = padded.reshape(padded.shape[0] // block_rows, block_rows, padded.shape[1] // block_columns, block_columns)
    norms = np.sqrt((blocks**2).sum(axis=(1, 3)))
    keep_blocks = _keep_largest(norms.reshape(-1), round(sparsity * norms.size)).reshape(norms.shape)
    keep = np.repeat(np.repeat(keep_blocks, block_rows, axis=0), block_columns, axis=1)
    return keep[:rows, :columns]


def _keep_largest(values: np.ndarray, drop: int) -> np.ndarray:
    """A mask keeping all but the ``drop`` smallest of the flat ``values`` (exactly that many dropped)."""
    keep = np.ones(values.shape, dtype=bool)
    if drop > 0:
        keep[np.argpartition(values, drop - 1)[:drop]] = False
    return keep
