"""onnxruntime's module path ``onnxruntime.quantization.calibrate``: the calibration names scripts import from it."""

from .calibration import CalibrationDataReader
from .quant_types import CalibrationMethod

__all__ = ["CalibrationDataReader", "CalibrationMethod"]
