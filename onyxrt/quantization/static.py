"""``quantize_static``: activations quantized with ranges calibrated in onyxrt; QDQ pairs or QLinear operators."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from .calibration import calibrate_ranges
from .model_editor import MS_DOMAIN, ModelEditor, all_inputs, load_model, save_model
from .options import check_extra_options
from .parameters import QuantParams, scale_and_zero_point, weight_params
from .quant_types import CalibrationMethod, QuantFormat, QuantType, numpy_type
from .report import QuantizationReport
from .selection import NodeSelection

# Ops whose float inputs and outputs are all quantized.
COMPUTE_OPS = ("Conv", "MatMul", "Gemm", "Add", "Mul", "GlobalAveragePool", "AveragePool", "Concat")
# Ops dropped into the producer's output range (asymmetric activations clamp at the range's ends).
REMOVABLE_ACTIVATIONS = ("Relu", "Clip")
# Ops that move 8-bit values unchanged: quantized when their input is, sharing its parameters.
PASS_THROUGH_OPS = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")
STATIC_OP_TYPES = COMPUTE_OPS + REMOVABLE_ACTIVATIONS + PASS_THROUGH_OPS
_QLINEAR = {  # QOperator form: op -> (op type, domain)
    "Conv": ("QLinearConv", ""), "MatMul": ("QLinearMatMul", ""), "Gemm": ("QGemm", MS_DOMAIN),
    "Add": ("QLinearAdd", MS_DOMAIN), "Mul": ("QLinearMul", MS_DOMAIN),
    "GlobalAveragePool": ("QLinearGlobalAveragePool", MS_DOMAIN), "AveragePool": ("QLinearAveragePool", MS_DOMAIN),
    "Concat": ("QLinearConcat", MS_DOMAIN),
}


def quantize_static(
    model_input: "str | os.PathLike | onnx.ModelProto",
    model_output: "str | os.PathLike",
    calibration_data_reader: Any = None,
    quant_format: QuantFormat = QuantFormat.QDQ,
    op_types_to_quantize: list[str] | None = None,
    per_channel: bool = False,
    reduce_range: bool = False,
    activation_type: QuantType = QuantType.QInt8,
    weight_type: QuantType = QuantType.QInt8,
    nodes_to_quantize: list[str] | None = None,
    nodes_to_exclude: list[str] | None = None,
    use_external_data_format: bool = False,
    calibrate_method: CalibrationMethod = CalibrationMethod.MinMax,
    calibration_providers: list[str] | None = None,
    extra_options: dict[str, Any] | None = None,
    calibration_cache_path: "str | os.PathLike | None" = None,
) -> QuantizationReport:
    """Calibrate activation ranges in onyxrt on the reader's feeds, then write a quantized model.

    QDQ (default): QuantizeLinear/DequantizeLinear around the inputs and outputs of Conv, MatMul, Gemm,
    Add, Mul, pooling and Concat; weights stored as integers behind DequantizeLinear (per output channel
    with ``per_channel``), biases as int32 with scale input scale x weight scale. Relu/Clip right after a
    quantized op are folded into its output range; MaxPool/Reshape/Flatten/Transpose/Squeeze/Unsqueeze
    keep their input's parameters. QOperator: QLinearConv, QLinearMatMul, QGemm, QLinearAdd, QLinearMul,
    QLinearGlobalAveragePool, QLinearAveragePool, QLinearConcat, with QuantizeLinear/DequantizeLinear only
    where float and integer parts of the graph meet.

    Defaults are onnxruntime 1.32's (int8 activations and weights, MinMax, per-tensor). ``extra_options``
    read: ``ActivationSymmetric``, ``WeightSymmetric`` and the calibration keys (``CalibPercentile``,
    ``CalibTensorRangeSymmetric``, ``CalibMovingAverage``...). ``calibration_providers`` is accepted and
    ignored (calibration runs in onyxrt on CPU); ``calibration_cache_path`` is not supported. onyxrt's
    ``CalibProgress``: a callable ``(done, total, started)`` called after each sample (default: a bar on
    stderr when it is a terminal).
    """
    options = check_extra_options(extra_options, "static")
    if calibration_data_reader is None:
        raise ValueError("calibration_data_reader must be provided (onyxrt has no calibration cache)")
    if calibration_cache_path is not None:
        raise ValueError("calibration_cache_path is not supported by onyxrt; pass a calibration_data_reader")
    if not isinstance(quant_format, QuantFormat):
        raise TypeError(f"quant_format must be a QuantFormat, got {quant_format!r}")
    if not isinstance(calibrate_method, CalibrationMethod):
        raise TypeError(f"calibrate_method must be a CalibrationMethod, got {calibrate_method!r}")
    for kind, quant_type in (("activation_type", activation_type), ("weight_type", weight_type)):
        numpy_type(quant_type)
        if quant_format == QuantFormat.QOperator and quant_type not in (QuantType.QInt8, QuantType.QUInt8):
            raise ValueError(f"QOperator format needs 8-bit types; {kind} is {quant_type}")
    model = load_model(model_input)
    editor = ModelEditor(model)
    if per_channel and editor.opset("") < 13:
        raise ValueError(f"per_channel needs opset 13 or later (DequantizeLinear's axis); the model imports opset {editor.opset('')}")
    editor.ensure_opset("", max(editor.opset(""), 10))
    selection = NodeSelection(STATIC_OP_TYPES, op_types_to_quantize, nodes_to_quantize, nodes_to_exclude, model.graph, "static")
    activation_symmetric = bool(options.get("ActivationSymmetric", False))
    plan = _plan(editor, selection, fold_activations=not activation_symmetric)
    if not plan.activations:
        report = QuantizationReport(f"static {quant_format.name}")
        save_model(editor.finish(list(model.graph.node)), model_output, use_external_data_format)
        return report
    progress = options.get("CalibProgress")  # onyxrt: a callable(done, total, started) for progress reports
    ranges = calibrate_ranges(model, sorted(plan.activations), calibration_data_reader, calibrate_method, options, progress)
    weight_symmetric = bool(options.get("WeightSymmetric", weight_type in (QuantType.QInt8, QuantType.QInt16)))
    params: dict[str, QuantParams] = {}
    for name in plan.activations:
        low, high = ranges.get(name, (0.0, 0.0))
        if name in plan.activation_bounds:  # a folded Relu/Clip: its output range is within the op's bounds
            floor, ceiling = plan.activation_bounds[name]
            low, high = max(low, floor), min(high, ceiling)
        scale, zero_point = scale_and_zero_point(np.array(low), np.array(high), activation_type, activation_symmetric)
        params[name] = QuantParams(scale, zero_point, activation_type)
    for output, source in plan.shared.items():  # pass-through outputs keep their input's parameters
        params[output] = params[source]
    writer_class = _QDQWriter if quant_format == QuantFormat.QDQ else _QOperatorWriter
    writer = writer_class(editor, plan, params, per_channel, reduce_range, weight_type, weight_symmetric)
    nodes = writer.write()
    if writer.uses_ms_domain:
        editor.ensure_opset(MS_DOMAIN, 1)
    if per_channel:
        editor.ensure_opset("", 13)
    if {activation_type, weight_type} & {QuantType.QInt16, QuantType.QUInt16}:
        editor.ensure_opset("", 21)  # 16-bit QuantizeLinear/DequantizeLinear (onnxruntime moves to 21 too)
    save_model(editor.finish(nodes), model_output, use_external_data_format)
    return writer.report


@dataclass
class _Plan:
    """Which nodes are quantized and which float values get quantization parameters."""

    nodes: dict[str, onnx.NodeProto] = field(default_factory=dict)  # quantized node name -> node
    activations: set[str] = field(default_factory=set)  # calibrated values
    shared: dict[str, str] = field(default_factory=dict)  # pass-through output -> input whose parameters it shares
    folded: dict[str, onnx.NodeProto] = field(default_factory=dict)  # producer name -> activation folded into it
    activation_bounds: dict[str, tuple[float, float]] = field(default_factory=dict)  # folded activation output -> bounds


def _float_inputs(editor: ModelEditor, node: onnx.NodeProto) -> list[str]:
    return [name for name in node.input if name and not editor.is_constant(name) and editor.is_float(name)]


def _activation_bounds(editor: ModelEditor, node: onnx.NodeProto) -> tuple[float, float] | None:
    """The output bounds of Relu/Clip (Clip's min/max from attributes or constant inputs); None when not constant."""
    if node.op_type == "Relu":
        return 0.0, np.inf
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    low, high = float(attributes.get("min", -np.inf)), float(attributes.get("max", np.inf))
    for position, default in ((1, low), (2, high)):
        if len(node.input) > position and node.input[position]:
            if not editor.is_constant(node.input[position]):
                return None
            value = float(editor.array(node.input[position]))
            low, high = (value, high) if position == 1 else (low, value)
    return low, high


def _plan(editor: ModelEditor, selection: NodeSelection, fold_activations: bool = True) -> _Plan:
    plan = _Plan()
    quantized_values: set[str] = set()
    for node in editor.graph.node:
        if not selection.selected(node) or not all(editor.is_float(o) or not o for o in node.output[:1]):
            continue
        if node.op_type in COMPUTE_OPS:
            if not _compute_node_supported(editor, node):
                continue
            plan.nodes[node.name] = node
            plan.activations.update(_float_inputs(editor, node))
            output = node.output[0]
            consumers = editor.consumers.get(output, [])
            bounds = _activation_bounds(editor, consumers[0]) if len(consumers) == 1 and consumers[0].op_type in REMOVABLE_ACTIVATIONS else None
            # Folding is exact only when the range's ends are the activation's bounds (asymmetric ranges, 0 inside)
            if (fold_activations and bounds is not None and bounds[0] <= 0 <= bounds[1] and selection.selected(consumers[0])
                    and output not in editor.graph_outputs and node.op_type not in ("Concat",)):
                activation = consumers[0]
                plan.folded[node.name] = activation
                plan.activation_bounds[activation.output[0]] = bounds
                plan.activations.add(activation.output[0])
                quantized_values.add(activation.output[0])
            else:
                plan.activations.add(output)
                quantized_values.add(output)
            quantized_values.update(_float_inputs(editor, node))
        elif node.op_type in PASS_THROUGH_OPS and node.input and node.input[0] in quantized_values:
            plan.nodes[node.name] = node
            plan.shared[node.output[0]] = node.input[0]
            quantized_values.add(node.output[0])
    folded_names = {activation.name for activation in plan.folded.values()}
    for name in folded_names:
        plan.nodes.pop(name, None)
    # a pass-through op after a folded activation reads the activation's output: resolve shared chains to roots
    for output in list(plan.shared):
        source = plan.shared[output]
        while source in plan.shared:
            source = plan.shared[source]
        plan.shared[output] = source
        plan.activations.add(source)
    return plan


def _compute_node_supported(editor: ModelEditor, node: onnx.NodeProto) -> bool:
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        return editor.is_constant(node.input[1]) and editor.array(node.input[1]).dtype == np.float32
    if node.op_type == "Gemm":
        return not attributes.get("transA", 0) and attributes.get("alpha", 1.0) == 1.0 and attributes.get("beta", 1.0) == 1.0
    if node.op_type in ("Add", "Mul"):
        return all(editor.is_float(name) for name in node.input)
    if node.op_type == "AveragePool":
        return True
    return all(editor.is_float(name) for name in node.input if name)


class _Writer:
    def __init__(self, editor: ModelEditor, plan: _Plan, params: dict[str, QuantParams], per_channel: bool,
                 reduce_range: bool, weight_type: QuantType, weight_symmetric: bool) -> None:
        self.editor, self.plan, self.params = editor, plan, params
        self.per_channel, self.reduce_range = per_channel, reduce_range
        self.weight_type, self.weight_symmetric = weight_type, weight_symmetric
        self.uses_ms_domain = False
        self.report = QuantizationReport("static")
        self._initializers: dict[tuple, tuple[str, str, str, QuantParams]] = {}

    def _scale_zero_point(self, params: QuantParams, base: str) -> tuple[str, str]:
        key = ("params", base, id(params))
        if key not in self._initializers:
            self._initializers[key] = (self.editor.add_initializer(params.scale, f"{base}_scale"),
                                       self.editor.add_initializer(params.zero_point, f"{base}_zero_point"), "", params)
        scale, zero_point, _, _ = self._initializers[key]
        return scale, zero_point

    def _weight_axis(self, node: onnx.NodeProto, position: int, rank: int) -> int | None:
        if not self.per_channel or rank < 2:
            return None
        if node.op_type == "Conv" and position == 1:
            return 0
        if node.op_type == "MatMul" and position == 1:
            return rank - 1
        if node.op_type == "Gemm" and position == 1:
            transposed = any(a.name == "transB" and a.i for a in node.attribute)
            return 0 if transposed else 1
        return None

    def _weight(self, node: onnx.NodeProto, position: int) -> tuple[str, str, str, QuantParams]:
        name = node.input[position]
        array = self.editor.array(name).astype(np.float32)
        axis = self._weight_axis(node, position, array.ndim)
        key = ("weight", name, axis)
        if key not in self._initializers:
            params, quantized = weight_params(array, self.weight_type, axis, self.weight_symmetric, self.reduce_range)
            self._initializers[key] = (self.editor.add_initializer(quantized, f"{name}_quantized"),
                                       self.editor.add_initializer(params.scale, f"{name}_scale"),
                                       self.editor.add_initializer(params.zero_point, f"{name}_zero_point"), params)
        return self._initializers[key]

    def _bias(self, node: onnx.NodeProto, input_params: QuantParams, weight_params_: QuantParams) -> tuple[str, str, str, QuantParams] | None:
        """int32 bias with scale = input scale x weight scale (per channel when the weight is), zero point 0."""
        name = node.input[2]
        bias = self.editor.array(name).astype(np.float32)
        if bias.ndim != 1:
            return None
        scale = (np.float64(input_params.scale) * weight_params_.scale.astype(np.float64)).astype(np.float32)
        scale = np.where(scale == 0, np.float32(1.0), scale).astype(np.float32)
        if scale.ndim == 0:
            scale_vector = np.full(bias.shape, scale, dtype=np.float32)
        else:
            scale_vector = scale
        quantized = np.clip(np.rint(bias / scale_vector), -(2**31), 2**31 - 1).astype(np.int32)
        zero_point = np.zeros(scale.shape, dtype=np.int32)
        axis = 0 if scale.ndim == 1 else None
        params = QuantParams(scale, zero_point, QuantType.QInt8, axis)
        return (self.editor.add_initializer(quantized, f"{name}_quantized"),
                self.editor.add_initializer(scale, f"{name}_quantized_scale"),
                self.editor.add_initializer(zero_point, f"{name}_quantized_zero_point"), params)

    def _has_bias(self, node: onnx.NodeProto) -> bool:
        return (node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and bool(node.input[2])
                and self.editor.is_constant(node.input[2]) and node.input[0] in self.params)

    def _output_of(self, node: onnx.NodeProto) -> str:
        """The float output the quantized node stands for (a folded activation's output when there is one)."""
        folded = self.plan.folded.get(node.name)
        return folded.output[0] if folded is not None else node.output[0]

    def _dequantize(self, inputs: list[str], output: str, axis: int | None, name: str) -> onnx.NodeProto:
        attributes = {"axis": axis} if axis is not None else {}
        return helper.make_node("DequantizeLinear", inputs, [output], name=self.editor.unique_name(name), **attributes)


class _QDQWriter(_Writer):
    def write(self) -> list[onnx.NodeProto]:
        editor, plan = self.editor, self.plan
        folded_activations = {activation.name for activation in plan.folded.values()}
        self.report.mode = "static QDQ"
        # Every calibrated value gets one Q -> DQ pair; quantized nodes read the DQ output.
        dequantized: dict[str, str] = {}
        renamed: dict[str, str] = {}  # graph outputs: the producer writes <name>_QuantizeLinear_Input
        quantized_nodes = set(plan.nodes)
        for name in self.params:
            if name in editor.graph_outputs:
                renamed[name] = f"{name}_QuantizeLinear_Input"
                dequantized[name] = name
            else:
                dequantized[name] = editor.unique_name(f"{name}_DequantizeLinear_Output")
        nodes: list[onnx.NodeProto] = []

        def emit_pair(name: str) -> None:
            params = self.params[name]
            scale, zero_point = self._scale_zero_point(params, self._param_base(name))
            source = renamed.get(name, name)
            quantized = editor.unique_name(f"{name}_QuantizeLinear_Output")
            nodes.append(helper.make_node("QuantizeLinear", [source, scale, zero_point], [quantized], name=editor.unique_name(f"{name}_QuantizeLinear")))
            nodes.append(self._dequantize([quantized, scale, zero_point], dequantized[name], None, f"{name}_DequantizeLinear"))

        for graph_input in editor.graph.input:
            if graph_input.name in self.params:
                emit_pair(graph_input.name)
        for node in editor.graph.node:
            if node.name in folded_activations:
                continue
            new = onnx.NodeProto()
            new.CopyFrom(node)
            if node.name in quantized_nodes:
                for position, name in enumerate(node.input):
                    if name in self.params:
                        new.input[position] = dequantized[name]
                    elif name and editor.is_constant(name) and editor.is_float(name) and not (position == 2 and self._has_bias(node)):
                        if node.op_type in PASS_THROUGH_OPS:
                            continue  # their constant inputs are shapes and axes
                        quantized, scale, zero_point, params = self._weight(node, position)
                        output = editor.unique_name(f"{name}_DequantizeLinear_Output")
                        nodes.append(self._dequantize([quantized, scale, zero_point], output, params.axis, f"{name}_DequantizeLinear"))
                        new.input[position] = output
                if self._has_bias(node):
                    weight_params_ = self._weight(node, 1)[3]
                    bias = self._bias(node, self.params[node.input[0]], weight_params_)
                    if bias is not None:
                        output = editor.unique_name(f"{node.input[2]}_DequantizeLinear_Output")
                        nodes.append(self._dequantize(list(bias[:3]), output, bias[3].axis, f"{node.input[2]}_DequantizeLinear"))
                        new.input[2] = output
                if node.name in plan.folded:
                    new.output[0] = self._output_of(node)
                    self.report.add(plan.folded[node.name].name, f"{plan.folded[node.name].op_type} folded into the output range")
                self.report.add(node.name, f"{node.op_type} (QDQ)")
            # float readers of a renamed graph output read the DequantizeLinear output, which keeps its name
            for position, name in enumerate(new.output):
                if name in renamed:
                    new.output[position] = renamed[name]
            nodes.append(new)
            for name in new.output:
                original = next((k for k, v in renamed.items() if v == name), name)
                if original in self.params:
                    emit_pair(original)
        return nodes

    def _param_base(self, name: str) -> str:
        return self.plan.shared.get(name, name)


class _QOperatorWriter(_Writer):
    def write(self) -> list[onnx.NodeProto]:
        editor, plan = self.editor, self.plan
        self.report.mode = "static QOperator"
        folded_activations = {activation.name for activation in plan.folded.values()}
        self.quantized: dict[str, str] = {}  # float value -> its quantized value, where one exists
        self.float_available = {i.name for i in editor.graph.input} | set(editor.initializers)
        nodes: list[onnx.NodeProto] = []
        self.nodes = nodes
        for node in editor.graph.node:
            if node.name in folded_activations:
                continue
            if node.name in plan.nodes and self._write_quantized(node):
                continue
            new = onnx.NodeProto()
            new.CopyFrom(node)
            for name in all_inputs(node):  # subgraphs read outer values by name: those need float too
                self._ensure_float(name)
            nodes.append(new)
            self.float_available.update(node.output)
        for output in editor.graph_outputs:
            self._ensure_float(output)
        return nodes

    def _ensure_float(self, name: str) -> None:
        """Dequantize a value that so far exists only in integer form (under its own name, so readers are unchanged)."""
        if name in self.float_available or name not in self.quantized:
            return
        params = self.params[name]
        scale, zero_point = self._scale_zero_point(params, self.plan.shared.get(name, name))
        self.nodes.append(self._dequantize([self.quantized[name], scale, zero_point], name, None, f"{name}_DequantizeLinear"))
        self.float_available.add(name)

    def _ensure_quantized(self, name: str) -> str:
        if name not in self.quantized:
            params = self.params[name]
            scale, zero_point = self._scale_zero_point(params, self.plan.shared.get(name, name))
            quantized = self.editor.unique_name(f"{name}_quantized")
            self.nodes.append(helper.make_node("QuantizeLinear", [name, scale, zero_point], [quantized], name=self.editor.unique_name(f"{name}_QuantizeLinear")))
            self.quantized[name] = quantized
        return self.quantized[name]

    def _activation_operands(self, name: str) -> list[str]:
        params = self.params[name]
        scale, zero_point = self._scale_zero_point(params, self.plan.shared.get(name, name))
        return [self._ensure_quantized(name), scale, zero_point]

    def _write_quantized(self, node: onnx.NodeProto) -> bool:
        editor = self.editor
        output = self._output_of(node)
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in PASS_THROUGH_OPS:
            source = node.input[0]
            if source not in self.quantized and source not in self.params:
                return False
            quantized_out = editor.unique_name(f"{output}_quantized")
            inputs = [self._ensure_quantized(source)] + [self._float_or_constant(name) for name in node.input[1:]]
            self.nodes.append(helper.make_node(node.op_type, inputs, [quantized_out], name=node.name, **attributes))
            self.quantized[output] = quantized_out
            self.report.add(node.name, f"{node.op_type} on 8-bit values")
            return True
        if output not in self.params or any(name not in self.params and not editor.is_constant(name) for name in node.input if name):
            return False
        op_type, domain = _QLINEAR[node.op_type]
        out_scale, out_zero_point = self._scale_zero_point(self.params[output], output)
        operands: list[str] = []
        if node.op_type in ("Conv", "MatMul", "Gemm"):
            weight_position = 1
            if not editor.is_constant(node.input[1]):
                weights = self._activation_operands(node.input[1])
                weight_params_ = None
            else:
                quantized, scale, zero_point, weight_params_ = self._weight(node, weight_position)
                weights = [quantized, scale, zero_point]
            operands = self._activation_operands(node.input[0]) + weights
            if node.op_type == "Gemm":
                bias = ""
                if len(node.input) > 2 and node.input[2]:
                    if weight_params_ is None or not self._has_bias(node):
                        return False
                    bias_initializers = self._bias(node, self.params[node.input[0]], weight_params_)
                    if bias_initializers is None:
                        return False
                    bias = bias_initializers[0]
                operands += [bias, out_scale, out_zero_point]
                attributes.pop("beta", None)  # QGemm has no beta (only beta == 1 is quantized)
            else:
                operands += [out_scale, out_zero_point]
                if node.op_type == "Conv" and len(node.input) > 2 and node.input[2]:
                    bias_initializers = self._bias(node, self.params[node.input[0]], weight_params_)
                    if bias_initializers is None:
                        return False
                    operands.append(bias_initializers[0])
        elif node.op_type in ("Add", "Mul"):
            for name in node.input:
                if name in self.params:
                    operands += self._activation_operands(name)
                else:
                    quantized, scale, zero_point, _ = self._weight(node, list(node.input).index(name))
                    operands += [quantized, scale, zero_point]
            operands += [out_scale, out_zero_point]
        elif node.op_type == "Concat":
            operands = [out_scale, out_zero_point]
            for name in node.input:
                operands += self._activation_operands(name)
        else:  # GlobalAveragePool, AveragePool
            operands = self._activation_operands(node.input[0]) + [out_scale, out_zero_point]
            if node.op_type == "GlobalAveragePool":
                attributes = {"channels_last": 0}
        quantized_out = editor.unique_name(f"{output}_quantized")
        self.nodes.append(helper.make_node(op_type, operands, [quantized_out], name=editor.unique_name(f"{node.name}_quant"),
                                           domain=domain or None, **attributes))
        self.uses_ms_domain |= domain == MS_DOMAIN
        self.quantized[output] = quantized_out
        if node.name in self.plan.folded:
            self.report.add(self.plan.folded[node.name].name, f"{self.plan.folded[node.name].op_type} folded into the output range")
        self.report.add(node.name, f"{node.op_type} -> {op_type}")
        return True

    def _float_or_constant(self, name: str) -> str:
        if name:
            self._ensure_float(name)
        return name
