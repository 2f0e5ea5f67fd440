"""The enums of ``onnxruntime.quantization`` with its names and values: QuantType, QuantFormat, CalibrationMethod."""

from __future__ import annotations

from enum import Enum

import numpy as np
from onnx import TensorProto


class QuantType(Enum):
    """Integer type of quantized weights or activations (onnxruntime's values)."""

    QInt8 = 0
    QUInt8 = 1
    QFLOAT8E4M3FN = 2
    QInt16 = 3
    QUInt16 = 4
    QInt4 = 5
    QUInt4 = 6

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def from_string(text: str) -> "QuantType":
        try:
            return QuantType[text]
        except KeyError:
            raise ValueError(f"Unknown QuantType '{text}'; expected one of {[t.name for t in QuantType]}") from None

    @property
    def tensor_type(self) -> int:
        """The ONNX ``TensorProto`` element type of this quantized type."""
        return _TENSOR_TYPES[self]


class QuantFormat(Enum):
    """QOperator: quantized operators (QLinearConv, MatMulInteger...); QDQ: QuantizeLinear/DequantizeLinear pairs."""

    QOperator = 0
    QDQ = 1

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def from_string(text: str) -> "QuantFormat":
        try:
            return QuantFormat[text]
        except KeyError:
            raise ValueError(f"Unknown QuantFormat '{text}'; expected QOperator or QDQ") from None


class CalibrationMethod(Enum):
    """How activation ranges are chosen from calibration data."""

    MinMax = 0
    Entropy = 1
    Percentile = 2
    Distribution = 3


_TENSOR_TYPES = {
    QuantType.QInt8: TensorProto.INT8,
    QuantType.QUInt8: TensorProto.UINT8,
    QuantType.QFLOAT8E4M3FN: TensorProto.FLOAT8E4M3FN,
    QuantType.QInt16: TensorProto.INT16,
    QuantType.QUInt16: TensorProto.UINT16,
    QuantType.QInt4: TensorProto.INT4,
    QuantType.QUInt4: TensorProto.UINT4,
}

# The integer types this package quantizes to (float8 and 4-bit QDQ are not emitted).
INTEGER_TYPES = {
    QuantType.QInt8: np.int8,
    QuantType.QUInt8: np.uint8,
    QuantType.QInt16: np.int16,
    QuantType.QUInt16: np.uint16,
}


def numpy_type(quant_type: QuantType) -> type:
    """numpy dtype of ``quant_type``; a ``ValueError`` for the types this package does not emit."""
    if not isinstance(quant_type, QuantType):
        raise TypeError(f"expected a QuantType, got {quant_type!r}")
    if quant_type not in INTEGER_TYPES:
        raise ValueError(
            f"{quant_type.name} is not supported here; use one of {[t.name for t in INTEGER_TYPES]} "
            "(4-bit weights: quantize_weight_only)"
        )
    return INTEGER_TYPES[quant_type]


def integer_range(quant_type: QuantType, reduce_range: bool = False, symmetric: bool = False) -> tuple[int, int]:
    """(qmin, qmax) as onnxruntime uses them: 7-bit with ``reduce_range``; -127..127 for symmetric int8."""
    info = np.iinfo(numpy_type(quant_type))
    qmin, qmax = int(info.min), int(info.max)
    if reduce_range:
        bits = info.bits - 1
        return (0, 2**bits - 1) if qmin == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1))
    if symmetric and qmin < 0:
        return qmin + 1, qmax
    return qmin, qmax
