"""onnxruntime's module path ``onnxruntime.quantization.quant_utils``: the enums scripts import from it."""

from .quant_types import QuantFormat, QuantType

__all__ = ["QuantFormat", "QuantType"]
