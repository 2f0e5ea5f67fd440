"""Opset versions and node descriptions shared by every stage."""

from __future__ import annotations

import functools
from typing import Mapping

import onnx_ir as ir
from onnx import defs


# onyxrt's private ops: what its post-partitioning rewrites give its CPU kernels (never in a saved model).
ONYXRT_DOMAIN = "ai.onyxrt"


def normalize_domain(domain: str | None) -> str:
    """ONNX's default domain is spelled both '' and 'ai.onnx'; onyxrt uses ''."""
    return "" if domain in (None, "", "ai.onnx") else domain


def opset_for(node: ir.Node, opset_imports: Mapping[str, int]) -> int:
    """The model's opset version for the node's domain (1 when the model does not import it)."""
    return opset_imports.get(node.domain, 1)


def describe(node: ir.Node) -> str:
    """How errors name a node: its name and its op."""
    return f"node '{node.name or ''}' (op {node.domain or 'ai.onnx'}::{node.op_type})"


# onnx builds its schema registry on the first lookup (~20 ms); do it at import, as onnxruntime builds
# its registries when imported, so the first session's creation does not pay for it.
defs.get_schema("Add", 1, "")


@functools.lru_cache(maxsize=4096)  # bounded: op types come from untrusted files
def onnx_schema(op_type: str, domain: str, version: int) -> defs.OpSchema | None:
    """The ONNX schema of ``domain::op_type`` in force at opset ``version``; None when onnx has none."""
    try:
        return defs.get_schema(op_type, version, domain)
    except defs.SchemaError:
        return None
