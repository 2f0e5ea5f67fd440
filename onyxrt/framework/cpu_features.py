"""What the host CPU can do, read once from the operating system (never assumed).

Kernels with instruction-set-specific routes (the int8 GEMM's VNNI kernel, say) ask here
before choosing one. On Linux the flags come from ``/proc/cpuinfo`` (the kernel's view, which
already accounts for what the OS enables, such as AVX-512 state saving); elsewhere, or when it
cannot be read, the set is empty and every caller takes its portable route.
"""

from __future__ import annotations

import functools
import platform

__all__ = ["cpu_flags", "has_flags", "cpu_model_name", "cpu_vendor"]

_CPUINFO = "/proc/cpuinfo"


def _read_cpuinfo(path: str = _CPUINFO) -> tuple[frozenset[str], str, str]:
    flags: frozenset[str] = frozenset()
    model = vendor = ""
    try:
        with open(path, encoding="ascii", errors="ignore") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "flags" and not flags:
                    flags = frozenset(value.split())
                elif key == "model name" and not model:
                    model = value.strip()
                elif key == "vendor_id" and not vendor:
                    vendor = value.strip()
                if flags and model and vendor:
                    break
    except OSError:
        pass
    return flags, model, vendor


@functools.cache
def _cached() -> tuple[frozenset[str], str, str]:
    flags, model, vendor = _read_cpuinfo()
    return flags, model or platform.processor(), vendor


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them (``avx512f``, ``avx512_vnni``, ``amx_int8``, ...);
    empty where they cannot be read. Read once per process."""
    return _cached()[0]


def has_flags(*names: str) -> bool:
    """Whether the CPU reports every one of ``names``."""
    flags = cpu_flags()
    return all(name in flags for name in names)


def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name``), or ``platform.processor()``."""
    return _cached()[1]


def cpu_vendor() -> str:
    """``GenuineIntel``, ``AuthenticAMD``, ... (``/proc/cpuinfo``'s ``vendor_id``); empty where unknown."""
    return _cached()[2]
