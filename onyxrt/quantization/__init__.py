"""onnxruntime.quantization's API over onyxrt: a script ports by changing its import.

``quantize_dynamic``, ``quantize_static`` (with ``CalibrationDataReader``), ``quantize_weight_only`` and
``MatMulNBitsQuantizer``; the enums ``QuantType``, ``QuantFormat``, ``CalibrationMethod``. Models written
here run in onnxruntime and in onyxrt.
"""

# onnxruntime's submodule paths (``from onnxruntime.quantization.calibrate import ...``); its
# ``quantization.quantize`` module is left out: under the drop-in alias, importing it would replace
# the package's ``quantize`` function with the module
from . import calibrate, matmul_nbits_quantizer, quant_utils, shape_inference  # noqa: F401
from .calibration import CalibrationDataReader
from .config import DynamicQuantConfig, QuantConfig, StaticQuantConfig, quantize
from .dynamic import quantize_dynamic
from .errors import QuantizationError
from .float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_bfloat16, convert_float_to_float16
from .mixed_precision import auto_convert_mixed_precision
from .preprocess import quant_pre_process
from .quant_types import CalibrationMethod, QuantFormat, QuantType
from .report import QuantizationReport
from .static import quantize_static
from .weight_only import MatMulNBitsQuantizer, quantize_weight_only

__all__ = [
    "DEFAULT_OP_BLOCK_LIST",
    "auto_convert_mixed_precision",
    "convert_float_to_bfloat16",
    "convert_float_to_float16",
    "CalibrationDataReader",
    "MatMulNBitsQuantizer",
    "CalibrationMethod",
    "DynamicQuantConfig",
    "QuantConfig",
    "StaticQuantConfig",
    "quantize",
    "QuantFormat",
    "QuantType",
    "QuantizationError",
    "QuantizationReport",
    "quant_pre_process",
    "quantize_dynamic",
    "quantize_static",
    "quantize_weight_only",
]
