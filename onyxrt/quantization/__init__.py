"""Model conversion tools: float16/bfloat16 and automatic mixed precision (``onnxruntime.transformers.float16``'s
and ``onnxconverter_common``'s names), beside onnxruntime.quantization's quantizers."""

from .float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_bfloat16, convert_float_to_float16
from .mixed_precision import auto_convert_mixed_precision

__all__ = [
    "DEFAULT_OP_BLOCK_LIST",
    "auto_convert_mixed_precision",
    "convert_float_to_bfloat16",
    "convert_float_to_float16",
]
