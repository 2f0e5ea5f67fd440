"""The constant evaluator the optimizer folds with: one node on a provider's kernels, at load time."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from ..graph.attributes import attribute_value
from ..optimizer import ConstantEvaluator
from ..providers.base import ExecutionProvider


def provider_evaluator(provider: ExecutionProvider) -> ConstantEvaluator:
    """Evaluate a node on ``provider``; None when it has no kernel or the kernel fails (run time reports that)."""

    def evaluate(node: ir.Node, opset: int, inputs: list[Any]) -> list[Any] | None:
        if not provider.can_run(node, opset):
            return None
        try:
            attributes = {name: attribute_value(attr) for name, attr in node.attributes.items()}
            fn, multi = provider.compile_node(node, opset, attributes)
            with np.errstate(all="ignore"):
                result = fn(*inputs)
        except Exception:  # noqa: BLE001 - left to run time, which reports it with the node
            return None
        return list(result) if multi else [result]

    return evaluate
