"""The CPU execution provider: numpy kernels, always available, the fallback for every node."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import onnx_ir as ir

from ...graph.opsets import describe
from ..base import ExecutionProvider
from ..kernel_registry import bind_attributes
from . import kernel_modules  # noqa: F401 - registers every CPU kernel
from .kernel_table import CPU_KERNELS


class CPUExecutionProvider(ExecutionProvider):
    """Runs nodes with the numpy kernels registered in :data:`CPU_KERNELS`."""

    name = "CPUExecutionProvider"

    def can_run(self, node: ir.Node, opset: int) -> bool:
        return CPU_KERNELS.lookup(node.domain, node.op_type, opset) is not None

    def compile_node(self, node: ir.Node, opset: int, attributes: dict[str, Any],
                     constants: Sequence[Any] = ()) -> tuple[Callable[..., Any], bool]:
        kernel = CPU_KERNELS.lookup(node.domain, node.op_type, opset)
        if kernel is None:
            raise LookupError(f"no CPU kernel for {describe(node)} at opset {opset}")
        return bind_attributes(kernel, node, opset, attributes, constants), kernel.multi_output
