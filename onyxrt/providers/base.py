"""The execution-provider interface every provider implements.

A provider answers three questions: which nodes it can run (``can_run``), how it
runs one (``compile_node`` returns a callable over the node's input values), and
where its data lives (``device`` and ``allocate``). The CPU provider is the first
implementation and the fallback for every node no earlier provider takes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

import numpy as np

import onnx_ir as ir

class ExecutionProvider(ABC):
    """One way of running nodes: a device, an allocator and a set of kernels."""

    name: str = ""
    device: str = "cpu"

    def __init__(self, options: dict[str, str] | None = None) -> None:
        self.options: dict[str, str] = dict(options or {})

    @abstractmethod
    def can_run(self, node: ir.Node, opset: int) -> bool:
        """Whether this provider has an implementation of ``node`` at ``opset``."""

    @abstractmethod
    def compile_node(self, node: ir.Node, opset: int, attributes: dict[str, Any],
                     constants: Sequence[Any] = ()) -> tuple[Callable[..., Any], bool]:
        """A callable computing ``node`` from its input values, and whether it returns a tuple of outputs.

        ``constants`` gives, per input, its value when it is a constant weight (else None),
        so a provider can prepare weights once at session creation.
        """

    def allocate(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Uninitialized memory for a tensor on this provider's device."""
        return np.empty(shape, dtype)
