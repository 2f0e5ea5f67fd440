"""onnxruntime's config-object API: ``quantize(model_input, model_output, quant_config)`` with
``StaticQuantConfig`` or ``DynamicQuantConfig``."""

from __future__ import annotations

import os
from typing import Any

import onnx

from .dynamic import quantize_dynamic
from .quant_types import CalibrationMethod, QuantFormat, QuantType
from .report import QuantizationReport
from .static import quantize_static


class QuantConfig:
    """Options shared by static and dynamic quantization (onnxruntime's base class)."""

    def __init__(self, activation_type: QuantType = QuantType.QUInt8, weight_type: QuantType = QuantType.QInt8,
                 op_types_to_quantize: list[str] | None = None, nodes_to_quantize: list[str] | None = None,
                 nodes_to_exclude: list[str] | None = None, per_channel: bool = False, reduce_range: bool = False,
                 use_external_data_format: bool = False) -> None:
        self.activation_type = activation_type
        self.weight_type = weight_type
        self.op_types_to_quantize = op_types_to_quantize or []
        self.nodes_to_quantize = nodes_to_quantize or []
        self.nodes_to_exclude = nodes_to_exclude or []
        self.per_channel = per_channel
        self.reduce_range = reduce_range
        self.use_external_data_format = use_external_data_format


class StaticQuantConfig(QuantConfig):
    """``quantize_static``'s options as one object (onnxruntime's defaults)."""

    def __init__(self, calibration_data_reader: Any, calibrate_method: CalibrationMethod = CalibrationMethod.MinMax,
                 quant_format: QuantFormat = QuantFormat.QDQ, activation_type: QuantType = QuantType.QInt8,
                 weight_type: QuantType = QuantType.QInt8, op_types_to_quantize: list[str] | None = None,
                 nodes_to_quantize: list[str] | None = None, nodes_to_exclude: list[str] | None = None,
                 per_channel: bool = False, reduce_range: bool = False, use_external_data_format: bool = False,
                 calibration_providers: list[str] | None = None, extra_options: dict[str, Any] | None = None) -> None:
        super().__init__(activation_type, weight_type, op_types_to_quantize, nodes_to_quantize, nodes_to_exclude,
                         per_channel, reduce_range, use_external_data_format)
        self.calibration_data_reader = calibration_data_reader
        self.calibrate_method = calibrate_method
        self.quant_format = quant_format
        self.calibration_providers = calibration_providers
        self.extra_options = extra_options or {}


class DynamicQuantConfig(QuantConfig):
    """``quantize_dynamic``'s options as one object; ``per_channel`` defaults to True as in onyxrt's
    ``quantize_dynamic`` (onnxruntime: False), the accuracy-keeping default."""

    def __init__(self, weight_type: QuantType = QuantType.QInt8, op_types_to_quantize: list[str] | None = None,
                 nodes_to_quantize: list[str] | None = None, nodes_to_exclude: list[str] | None = None,
                 per_channel: bool = True, reduce_range: bool = False, use_external_data_format: bool = False,
                 extra_options: dict[str, Any] | None = None) -> None:
        super().__init__(QuantType.QUInt8, weight_type, op_types_to_quantize, nodes_to_quantize, nodes_to_exclude,
                         per_channel, reduce_range, use_external_data_format)
        self.extra_options = extra_options or {}


def quantize(model_input: "str | os.PathLike | onnx.ModelProto", model_output: "str | os.PathLike",
             quant_config: QuantConfig) -> QuantizationReport:
    """Quantize with a ``StaticQuantConfig`` or a ``DynamicQuantConfig`` (a ``TypeError`` for anything else)."""
    if isinstance(quant_config, StaticQuantConfig):
        return quantize_static(
            model_input, model_output, quant_config.calibration_data_reader, quant_format=quant_config.quant_format,
            op_types_to_quantize=quant_config.op_types_to_quantize, per_channel=quant_config.per_channel,
            reduce_range=quant_config.reduce_range, activation_type=quant_config.activation_type,
            weight_type=quant_config.weight_type, nodes_to_quantize=quant_config.nodes_to_quantize,
            nodes_to_exclude=quant_config.nodes_to_exclude, use_external_data_format=quant_config.use_external_data_format,
            calibrate_method=quant_config.calibrate_method, calibration_providers=quant_config.calibration_providers,
            extra_options=quant_config.extra_options)
    if isinstance(quant_config, DynamicQuantConfig):
        return quantize_dynamic(
            model_input, model_output, op_types_to_quantize=quant_config.op_types_to_quantize,
            per_channel=quant_config.per_channel, reduce_range=quant_config.reduce_range,
            weight_type=quant_config.weight_type, nodes_to_quantize=quant_config.nodes_to_quantize,
            nodes_to_exclude=quant_config.nodes_to_exclude, use_external_data_format=quant_config.use_external_data_format,
            extra_options=quant_config.extra_options)
    raise TypeError("Invalid quantization config type, it must be either StaticQuantConfig or DynamicQuantConfig "
                    f"(got {type(quant_config).__name__})")
