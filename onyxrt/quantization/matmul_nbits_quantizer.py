"""onnxruntime's module path ``onnxruntime.quantization.matmul_nbits_quantizer``: the weight-only quantizer."""

from .weight_only import MatMulNBitsQuantizer

__all__ = ["MatMulNBitsQuantizer"]
