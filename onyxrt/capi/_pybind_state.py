"""Alias of :mod:`onyxrt.capi.onnxruntime_pybind11_state` (onnxruntime ships both names)."""

from .onnxruntime_pybind11_state import *  # noqa: F401,F403
from .onnxruntime_pybind11_state import Fail, InvalidArgument, NotImplemented  # noqa: F401
