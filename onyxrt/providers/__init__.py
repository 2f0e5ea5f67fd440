"""Execution providers: the interface, the registry of available providers, and their kernels."""

from __future__ import annotations

from ..framework.device import register_data_transfer
from .base import ExecutionProvider, NodeGroup
from .cpu import CPUExecutionProvider
from .openvino import OpenVINOExecutionProvider, openvino_installed

# Providers this build can create, in onnxruntime's priority order.
AVAILABLE_PROVIDERS: dict[str, type[ExecutionProvider]] = {
    CPUExecutionProvider.name: CPUExecutionProvider,
}


def register_execution_provider(provider_type: type[ExecutionProvider]) -> None:
    """Make ``provider_type`` available by its name (``providers=[name, ...]``), ahead of the CPU provider.

    Its device type becomes reachable for OrtValue and IOBinding through its
    ``data_transfer_type``.
    """
    if not provider_type.name:
        raise ValueError(f"{provider_type.__name__} has no provider name")
    register_data_transfer(provider_type.device_type, provider_type.data_transfer_type)
    others = {name: cls for name, cls in AVAILABLE_PROVIDERS.items() if name != provider_type.name}
    AVAILABLE_PROVIDERS.clear()
    AVAILABLE_PROVIDERS.update({provider_type.name: provider_type, **others})


def unregister_execution_provider(name: str) -> None:
    """Remove a provider registered with :func:`register_execution_provider` (the CPU provider stays)."""
    if name == CPUExecutionProvider.name:
        raise ValueError("The CPU execution provider cannot be unregistered")
    AVAILABLE_PROVIDERS.pop(name, None)


if openvino_installed():
    register_execution_provider(OpenVINOExecutionProvider)


def get_available_providers() -> list[str]:
    """Names of the execution providers this build can create, highest priority first."""
    return list(AVAILABLE_PROVIDERS)


__all__ = [
    "AVAILABLE_PROVIDERS", "CPUExecutionProvider", "ExecutionProvider", "NodeGroup", "get_available_providers",
    "register_execution_provider", "unregister_execution_provider",
]
