"""onyxrt: an ONNX inference engine in Python, drop-in for ``onnxruntime``'s Python API.

    import onyxrt as ort
    session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"input": array})
"""

from collections.abc import Callable
from typing import Any

from .drop_in import install_as_onnxruntime
from .errors import (
    EngineError,
    EPFail,
    Fail,
    InvalidArgument,
    InvalidGraph,
    InvalidProtobuf,
    ModelLoaded,
    NoModel,
    NoSuchFile,
    NotImplemented,
    OnyxRuntimeError,
    RuntimeException,
)
from .providers import get_available_providers
from .session.inference_session import InferenceSession
from .session.io_binding import IOBinding
from .session.node_arg import ModelMetadata, NodeArg
from .session.ort_value import OrtValue
from .session.session_options import (
    ExecutionMode,
    ExecutionOrder,
    GraphOptimizationLevel,
    OrtAllocatorType,
    OrtMemType,
    RunOptions,
    SessionOptions,
)
from .session.session_options import int32_argument
from .session.device import OrtDevice, OrtDeviceMemoryType, OrtDeviceVendorId, OrtMemoryInfo, OrtMemoryInfoDeviceType
from .session.global_thread_pool import set_global_thread_pool_sizes
from .session.ort_value import copy_tensors
from .session.session_api import OrtEpAssignedNode, OrtEpAssignedSubgraph
from .session.sparse_tensor import OrtSparseFormat, SparseTensor
from .framework import logging as _logging
from .version import __version__


def get_device() -> str:
    """The device onyxrt computes on, as onnxruntime reports it ('CPU')."""
    return "CPU"


def get_version_string() -> str:
    """onyxrt's version (onnxruntime's ``get_version_string``)."""
    return __version__


def get_build_info() -> str:
    """A one-line description of this build (onnxruntime's ``get_build_info``)."""
    import numpy
    import onnx

    return f"onyxrt {__version__}, pure Python (numpy {numpy.__version__}, onnx {onnx.__version__})"


# Every execution provider name onnxruntime 1.32 knows (its get_all_providers()), in its order.
_ONNXRUNTIME_PROVIDER_NAMES = (
    "TensorrtExecutionProvider", "CUDAExecutionProvider", "MIGraphXExecutionProvider", "OpenVINOExecutionProvider",
    "DnnlExecutionProvider", "VitisAIExecutionProvider", "QNNExecutionProvider", "NnapiExecutionProvider",
    "VSINPUExecutionProvider", "JsExecutionProvider", "CoreMLExecutionProvider", "DmlExecutionProvider",
    "RknpuExecutionProvider", "WebNNExecutionProvider", "WebGpuExecutionProvider", "XnnpackExecutionProvider",
    "CANNExecutionProvider", "AzureExecutionProvider", "CPUExecutionProvider",
)


def get_all_providers() -> list[str]:
    """Every provider name onnxruntime knows, whether or not this build has it (as onnxruntime's), with
    providers registered with onyxrt under other names just before the CPU provider."""
    extra = [name for name in get_available_providers() if name not in _ONNXRUNTIME_PROVIDER_NAMES]
    return [*_ONNXRUNTIME_PROVIDER_NAMES[:-1], *extra, _ONNXRUNTIME_PROVIDER_NAMES[-1]]


def set_default_logger_severity(severity: int) -> None:
    """Set the default logger's severity: 0 VERBOSE, 1 INFO, 2 WARNING (the default), 3 ERROR, 4 FATAL.

    Sessions created afterwards with ``log_severity_level`` -1 log at it too (``framework/logging.py``).
    """
    _logging.set_default_severity(int32_argument("set_default_logger_severity", "severity", severity))


def set_default_logger_verbosity(verbosity: int) -> None:
    """Set the default verbosity (kept: no onyxrt log line is verbosity-gated, as in onnxruntime's release builds)."""
    _logging.set_default_verbosity(int32_argument("set_default_logger_verbosity", "verbosity", verbosity))


def set_default_logger_callback(callback: Callable[[int, str, str, str, str], Any] | None, severity: int = 2) -> None:
    """Send log lines to ``callback(severity, category, logid, code_location, message)`` instead of stderr.

    Installing a callback sets the default severity to ``severity``; ``None`` restores stderr
    (``severity`` is then checked but not applied), as onnxruntime's function does.
    """
    _logging.set_callback(callback, int32_argument("set_default_logger_callback", "severity", severity))


def disable_telemetry_events() -> None:
    """Accepted for compatibility; onyxrt sends no telemetry."""


def enable_telemetry_events() -> None:
    """Accepted for compatibility; onyxrt sends no telemetry."""


def set_seed(seed: int) -> None:
    """Seed the random generators used by random ops without a ``seed`` attribute."""
    from .providers.cpu import random_state

    random_state.seed(seed)


__all__ = [
    "EPFail", "EngineError", "ExecutionMode", "ExecutionOrder", "Fail", "GraphOptimizationLevel", "IOBinding",
    "InferenceSession", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "ModelLoaded", "ModelMetadata",
    "NoModel", "NoSuchFile", "NodeArg", "NotImplemented", "OnyxRuntimeError", "OrtAllocatorType", "OrtMemType",
    "OrtValue", "RunOptions", "RuntimeException", "SessionOptions", "__version__", "get_all_providers",
    "disable_telemetry_events", "enable_telemetry_events", "get_available_providers", "get_build_info", "get_device", "get_version_string", "install_as_onnxruntime", "set_default_logger_callback", "set_default_logger_severity",
    "set_default_logger_verbosity",
    "set_seed",
    "OrtDevice", "OrtDeviceMemoryType", "OrtDeviceVendorId", "OrtEpAssignedNode", "OrtEpAssignedSubgraph",
    "OrtMemoryInfo", "OrtMemoryInfoDeviceType", "OrtSparseFormat", "SparseTensor", "set_global_thread_pool_sizes",
    "copy_tensors",
]

# ``onnxruntime.capi`` and its modules are reachable after ``import onnxruntime`` (code catches
# ort.capi.onnxruntime_pybind11_state.Fail); imported last because they take names from this module.
from . import capi  # noqa: E402
from .capi import _pybind_state, onnxruntime_inference_collection, onnxruntime_pybind11_state  # noqa: E402

del _pybind_state, onnxruntime_inference_collection, onnxruntime_pybind11_state
