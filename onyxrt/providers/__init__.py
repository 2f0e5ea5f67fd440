"""Execution providers: the interface, the registry of available providers, and their kernels."""

from __future__ import annotations

from .base import ExecutionProvider
from .cpu import CPUExecutionProvider

# Providers this build can create, in onnxruntime's priority order.
AVAILABLE_PROVIDERS: dict[str, type[ExecutionProvider]] = {
    CPUExecutionProvider.name: CPUExecutionProvider,
}


def get_available_providers() -> list[str]:
    """Names of the execution providers this build can create, highest priority first."""
    return list(AVAILABLE_PROVIDERS)


__all__ = ["AVAILABLE_PROVIDERS", "CPUExecutionProvider", "ExecutionProvider", "get_available_providers"]
