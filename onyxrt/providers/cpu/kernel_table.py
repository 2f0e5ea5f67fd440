"""The CPU provider's kernel table and the ``op`` decorator kernels register with."""

from ..kernel_registry import KernelRegistry

CPU_KERNELS = KernelRegistry()
op = CPU_KERNELS.register
