"""onnxruntime's module path ``onnxruntime.quantization.shape_inference``: ``quant_pre_process``."""

from .preprocess import quant_pre_process

__all__ = ["quant_pre_process"]
