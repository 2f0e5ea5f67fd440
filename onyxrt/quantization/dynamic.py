"""``quantize_dynamic``: int8 weights, activations quantized at run time (onnxruntime's IntegerOps graph)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from .model_editor import ModelEditor, load_model, save_model
from .options import check_extra_options
from .parameters import QuantParams, weight_params
from .quant_types import QuantType
from .report import QuantizationReport
from .selection import NodeSelection

DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "Conv", "Gather", "Attention", "LSTM")
MICROSOFT_OP_TYPES = ("Attention",)
# Producers whose output has the long positive tail that one per-tensor uint8 range resolves badly.
GELU_OPS = {"Gelu", "FastGelu", "BiasGelu", "QuickGelu"}
_GELU_BODY_OPS = {"Mul", "Add", "Div", "Pow", "Tanh", "Erf", "Sigmoid"}


def quantize_dynamic(
    model_input: "str | os.PathLike | onnx.ModelProto",
    model_output: "str | os.PathLike",
    op_types_to_quantize: list[str] | None = None,
    per_channel: bool = True,
    reduce_range: bool = False,
    weight_type: QuantType = QuantType.QInt8,
    nodes_to_quantize: list[str] | None = None,
    nodes_to_exclude: list[str] | None = None,
    use_external_data_format: bool = False,
    extra_options: dict[str, Any] | None = None,
) -> QuantizationReport:
    """Quantize weights to 8 bits and let activations be quantized at run time; save to ``model_output``.

    Emits onnxruntime's dynamic graph: ``DynamicQuantizeLinear`` on the activation, ``MatMulInteger``
    (``ConvInteger`` for Conv), ``Cast`` and a ``Mul`` by the product of scales; Gather reads an 8-bit
    table and dequantizes what it gathered. Quantized op types: MatMul and Gemm with a constant 2-D
    weight, Conv with a constant weight, Gather from a constant table, com.microsoft Attention (as
    QAttention; not one with an attention_bias input, which QAttention lacks: it stays float), LSTM (as
    DynamicQuantizeLSTM).

    onyxrt's defaults differ from onnxruntime's to keep accuracy (measured on minilm_l6, mean cosine of
    mean-pooled embeddings to fp32 over 50 random inputs; ``benchmarks/quantization_accuracy.md``):

    - ``per_channel=True`` (onnxruntime: False): one scale per output channel of each weight, and per
      row of a Gather table (0.914 -> 0.984);
    - ``extra_options["GeluOutputActivations"] = "per_row"``: a MatMul/Gemm whose input is a GELU's output
      (the second MatMul of a transformer's feed-forward block) quantizes that activation per row (one
      symmetric int8 scale per token, in standard ops: ``_row_quantized_matmul``) instead of with one uint8
      range over GELU's long tail, where per-tensor dynamic quantization loses most (0.986 -> 0.992 with
      per-row tables; file 26%). onyxrt runs those ops as one int8 kernel (``row_quantize_matmul_fusion``);
      onnxruntime runs them op by op. ``"float"`` keeps that activation in float (an int8 weight,
      ``DequantizeLinear`` of it, a float MatMul: 0.993, and those MatMuls run in float), ``"per_tensor"``
      quantizes it as every other activation (onnxruntime's graph). ``FloatActivationsAfterGelu`` (an earlier
      name) True / False means ``"float"`` / ``"per_tensor"``.

    ``per_channel=False, extra_options={"GeluOutputActivations": "per_tensor"}`` gives onnxruntime's graph.
    Other ``extra_options`` read: ``WeightSymmetric`` (default True for int8 weights),
    ``MatMulConstBOnly`` (only True is supported: a MatMul needs a constant weight).
    Returns a ``QuantizationReport`` (onnxruntime returns None).
    """
    options = check_extra_options(extra_options, "dynamic")
    if weight_type not in (QuantType.QInt8, QuantType.QUInt8):
        raise ValueError(f"quantize_dynamic supports weight_type QInt8 or QUInt8 (MatMulInteger), got {weight_type}")
    model = load_model(model_input)
    editor = ModelEditor(model)
    selection = NodeSelection(DYNAMIC_OP_TYPES, op_types_to_quantize, nodes_to_quantize, nodes_to_exclude,
                              model.graph, "dynamic", MICROSOFT_OP_TYPES)
    quantizer = _DynamicQuantizer(editor, per_channel, reduce_range, weight_type,
                                  options.get("WeightSymmetric", weight_type == QuantType.QInt8),
                                  _gelu_activations(options))
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        replacement = quantizer.rewrite(node) if selection.selected(node) else None
        nodes.extend(replacement if replacement is not None else [node])
    read = {name for node in nodes for name in node.input} | editor.graph_outputs
    unread = {id(node) for node in quantizer.optional_nodes if node.output[0] not in read}
    quantized = editor.finish([node for node in nodes if id(node) not in unread])
    if quantizer.report.quantized:
        editor.ensure_opset("", 11)  # DynamicQuantizeLinear is opset 11 (onnxruntime moves older models up too)
    if quantizer.needs_opset13:
        editor.ensure_opset("", 13)
    if quantizer.uses_ms_domain:
        editor.ensure_opset("com.microsoft", 1)
    save_model(quantized, model_output, use_external_data_format)
    return quantizer.report


GELU_ACTIVATION_MODES = ("per_row", "float", "per_tensor")
# The smallest row scale (an all-zero row would otherwise divide by zero): far below any float32 activation's.
ROW_SCALE_FLOOR = 1e-30


def _gelu_activations(options: dict[str, Any]) -> str:
    mode = options.get("GeluOutputActivations")
    if mode is None:
        legacy = options.get("FloatActivationsAfterGelu")
        return "per_row" if legacy is None else ("float" if legacy else "per_tensor")
    if mode not in GELU_ACTIVATION_MODES:
        raise ValueError(f"extra_options GeluOutputActivations must be one of {GELU_ACTIVATION_MODES}, got {mode!r}")
    return mode


def is_gelu_output(editor: ModelEditor, name: str) -> bool:
    """Whether ``name`` is a GELU's output: a GELU op, or a short elementwise chain through Erf/Tanh ending in Mul."""
    node = editor.producer.get(name)
    if node is None:
        return False
    if node.op_type in GELU_OPS:
        return True
    if node.op_type != "Mul":
        return False
    frontier, seen = [node], set()
    for _ in range(4):  # x * 0.5 * (1 + erf(x / sqrt 2)) reaches Erf in at most four steps back
        next_frontier = []
        for current in frontier:
            for input_name in current.input:
                producer = editor.producer.get(input_name)
                if producer is None or id(producer) in seen or producer.op_type not in _GELU_BODY_OPS:
                    continue
                if producer.op_type in ("Erf", "Tanh"):
                    return True
                seen.add(id(producer))
                next_frontier.append(producer)
        frontier = next_frontier
    return False


class _DynamicQuantizer:
    def __init__(self, editor: ModelEditor, per_channel: bool, reduce_range: bool, weight_type: QuantType,
                 weight_symmetric: bool, gelu_activations: str) -> None:
        self.editor = editor
        self.per_channel = per_channel
        self.reduce_range = reduce_range
        self.weight_type = weight_type
        self.weight_symmetric = weight_symmetric
        self.gelu_activations = gelu_activations
        self.report = QuantizationReport("dynamic")
        self.needs_opset13 = False
        self.uses_ms_domain = False
        self._weights: dict[tuple, tuple[str, str, str, QuantParams]] = {}
        self._activations: dict[str, tuple[str, str, str]] = {}
        self.optional_nodes: list[onnx.NodeProto] = []  # dropped when nothing reads their output
        self._row_constants: dict[str, str] = {}

    def rewrite(self, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        handler = getattr(self, f"_rewrite_{node.op_type.lower()}")
        return handler(node)

    # -- weights and activations --------------------------------------------------------------

    def _weight(self, name: str, array: np.ndarray, axis: int | None, weight_type: QuantType | None = None,
                symmetric: bool | None = None, reduce_range: bool | None = None) -> tuple[str, str, str, QuantParams]:
        """(quantized, scale, zero point) initializer names for a weight, shared by the nodes that read it."""
        weight_type = weight_type or self.weight_type
        symmetric = self.weight_symmetric if symmetric is None else symmetric
        reduce_range = self.reduce_range if reduce_range is None else reduce_range
        key = (name, axis, weight_type, symmetric, reduce_range, array.shape)
        if key not in self._weights:
            params, quantized = weight_params(array, weight_type, axis, symmetric, reduce_range)
            editor = self.editor
            names = (editor.add_initializer(quantized, f"{name}_quantized"),
                     editor.add_initializer(params.scale, f"{name}_scale"),
                     editor.add_initializer(params.zero_point, f"{name}_zero_point"), params)
            self._weights[key] = names
        return self._weights[key]

    def _dynamic_activation(self, name: str, nodes: list[onnx.NodeProto]) -> tuple[str, str, str]:
        """One DynamicQuantizeLinear per activation, however many quantized nodes read it."""
        if name not in self._activations:
            base = self.editor.unique_name(f"{name}_quantized")
            outputs = (base, self.editor.unique_name(f"{name}_scale"), self.editor.unique_name(f"{name}_zero_point"))
            nodes.append(helper.make_node("DynamicQuantizeLinear", [name], list(outputs),
                                          name=self.editor.unique_name(f"{name}_QuantizeLinear")))
            self._activations[name] = outputs
        return self._activations[name]

    def _float_activation(self, name: str) -> bool:
        return self.editor.elem_types.get(name) == TensorProto.FLOAT

    # -- MatMul / Gemm --------------------------------------------------------------------------

    def _integer_matmul(self, node: onnx.NodeProto, activation: str, weight_name: str, weight: np.ndarray,
                        output: str) -> list[onnx.NodeProto]:
        editor, nodes = self.editor, []
        axis = 1 if self.per_channel else None
        quantized, scale, zero_point, _ = self._weight(weight_name, weight, axis)
        after_gelu = self.gelu_activations != "per_tensor" and is_gelu_output(editor, activation)
        if after_gelu and self.gelu_activations == "per_row":
            return self._row_quantized_matmul(node, activation, weight_name, weight, output)
        if after_gelu:  # "float"
            dequantized = editor.unique_name(f"{weight_name}_DequantizeLinear_Output")
            inputs = [quantized, scale, zero_point]
            nodes.append(helper.make_node("DequantizeLinear", inputs, [dequantized], name=editor.unique_name(f"{weight_name}_DequantizeLinear"),
                                          **({"axis": 1} if axis is not None else {})))
            self.needs_opset13 |= axis is not None
            nodes.append(helper.make_node("MatMul", [activation, dequantized], [output], name=node.name))
            self.report.add(node.name, f"{node.op_type} int8 weight, float activation (after GELU)")
            return nodes
        a_quantized, a_scale, a_zero_point = self._dynamic_activation(activation, nodes)
        scales = editor.unique_name(f"{node.name}_quant_scales_mul:0")
        nodes.append(helper.make_node("Mul", [a_scale, scale], [scales], name=editor.unique_name(f"{node.name}_quant_scales_mul")))
        integer_out = editor.unique_name(f"{output}_output_quantized")
        nodes.append(helper.make_node("MatMulInteger", [a_quantized, quantized, a_zero_point, zero_point], [integer_out],
                                      name=editor.unique_name(f"{node.name}_quant")))
        cast_out = editor.unique_name(f"{integer_out}_cast_output")
        nodes.append(helper.make_node("Cast", [integer_out], [cast_out], to=TensorProto.FLOAT,
                                      name=editor.unique_name(f"{integer_out}_cast")))
        nodes.append(helper.make_node("Mul", [cast_out, scales], [output], name=editor.unique_name(f"{node.name}_quant_output_scale_mul")))
        self.report.add(node.name, f"{node.op_type} -> MatMulInteger")
        return nodes

    def _row_quantized_matmul(self, node: onnx.NodeProto, activation: str, weight_name: str, weight: np.ndarray,
                              output: str) -> list[onnx.NodeProto]:
        """``activation @ weight`` with the activation quantized per row (each row of its last axis: one token)
        to symmetric int8, in standard ops onnxruntime runs too (onyxrt's ``row_quantize_matmul_fusion`` runs
        them as one int8 kernel): ``s = max(max|x|, tiny) / 127`` per row, ``q = int8(clip(round(x / s),
        -127, 127))``, ``y = float(q @ w_int8) * w_scale * s``. The weight is quantized symmetric int8 (per
        output column with ``per_channel``), whatever ``weight_type`` says: a zero point would need the row
        sums of q."""
        editor, nodes = self.editor, []
        axis = 1 if self.per_channel else None
        quantized, scale, _, _ = self._weight(weight_name, weight, axis, weight_type=QuantType.QInt8, symmetric=True)
        constants = self._row_quantize_constants()

        def add(op_type: str, inputs: list[str], out: str | None = None, **attributes) -> str:
            out = out or editor.unique_name(f"{node.name}_{op_type}_output")
            nodes.append(helper.make_node(op_type, inputs, [out], name=editor.unique_name(f"{node.name}_{op_type}"),
                                          **attributes))
            return out

        magnitude = add("Abs", [activation])
        if editor.opset() >= 18:  # ReduceMax takes its axes as an input from opset 18
            row_max = add("ReduceMax", [magnitude, constants["axes"]], keepdims=1)
        else:
            row_max = add("ReduceMax", [magnitude], axes=[-1], keepdims=1)
        row_scale = add("Div", [add("Max", [row_max, constants["tiny"]]), constants["limit"]])
        rounded = add("Round", [add("Div", [activation, row_scale])])
        q = add("Cast", [add("Clip", [rounded, constants["-limit"], constants["limit"]])], to=TensorProto.INT8)
        product = add("Cast", [add("MatMulInteger", [q, quantized])], to=TensorProto.FLOAT)
        add("Mul", [add("Mul", [product, scale]), row_scale], output)
        self.report.add(node.name, f"{node.op_type} -> MatMulInteger (activation per row, after GELU)")
        return nodes

    def _row_quantize_constants(self) -> dict[str, str]:
        if not self._row_constants:
            add = self.editor.add_initializer
            self._row_constants = {
                "tiny": add(np.array(ROW_SCALE_FLOOR, np.float32), "row_quantize_floor"),
                "limit": add(np.array(127, np.float32), "row_quantize_limit"),
                "-limit": add(np.array(-127, np.float32), "row_quantize_negative_limit"),
                "axes": add(np.array([-1], np.int64), "row_quantize_axes"),
            }
        return self._row_constants

    def _rewrite_matmul(self, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        activation, weight_name = node.input[0], node.input[1]
        if not self._usable_weight(node, weight_name, 2) or not self._float_activation(activation):
            return None
        return self._integer_matmul(node, activation, weight_name, self.editor.array(weight_name), node.output[0])

    def _rewrite_gemm(self, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        activation, weight_name = node.input[0], node.input[1]
        if attrs.get("transA", 0):
            self.report.skip(node.name, "Gemm with transA")
            return None
        if not self._usable_weight(node, weight_name, 2) or not self._float_activation(activation):
            return None
        weight = self.editor.array(weight_name).astype(np.float32)
        if attrs.get("transB", 0):
            weight = weight.T
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        if alpha != 1.0:
            weight = weight * np.float32(alpha)
        weight_key = weight_name if (not attrs.get("transB", 0) and alpha == 1.0) else f"{weight_name}_{node.name}"
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and beta != 1.0:
            if not self.editor.is_constant(bias):
                self.report.skip(node.name, "Gemm with beta != 1 and a computed C")
                return None
            bias = self.editor.add_initializer(self.editor.array(bias) * np.float32(beta), f"{bias}_scaled")
        product = self.editor.unique_name(f"{node.name}_MatMul_output") if bias else node.output[0]
        nodes = self._integer_matmul(node, activation, weight_key, weight, product)
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [node.output[0]], name=self.editor.unique_name(f"{node.name}_Add")))
        return nodes

    def _usable_weight(self, node: onnx.NodeProto, name: str, rank: int | None) -> bool:
        editor = self.editor
        if not editor.is_constant(name):
            self.report.skip(node.name, f"input '{name}' is not a constant")
            return False
        array = editor.array(name)
        if array.dtype != np.float32:
            self.report.skip(node.name, f"weight '{name}' is {array.dtype}, not float32")
            return False
        if rank is not None and array.ndim != rank:
            self.report.skip(node.name, f"weight '{name}' has rank {array.ndim}, not {rank}")
            return False
        return True

    # -- Conv ------------------------------------------------------------------------------------

    def _rewrite_conv(self, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        editor, nodes = self.editor, []
        activation, weight_name = node.input[0], node.input[1]
        if not self._usable_weight(node, weight_name, None) or not self._float_activation(activation):
            return None
        weight = editor.array(weight_name)
        # ConvInteger in onnxruntime takes one weight zero point: per-channel only when the channels share it
        # (symmetric weights), the per-channel scales being applied after the integer convolution.
        axis = 0 if self.per_channel and self.weight_symmetric else None
        quantized, scale, zero_point, params = self._weight(weight_name, weight, axis)
        if axis is not None:
            zero_point = editor.add_initializer(params.zero_point[:1].reshape(()), f"{weight_name}_zero_point_scalar")
        a_quantized, a_scale, a_zero_point = self._dynamic_activation(activation, nodes)
        channel_shape = [-1] + [1] * (weight.ndim - 2)
        if axis is not None:  # the per-channel scale multiplies the output along its channel axis
            scale = editor.add_initializer(params.scale.reshape(channel_shape), f"{weight_name}_scale_reshaped")
        scales = editor.unique_name(f"{node.name}_scales_mul:0")
        nodes.append(helper.make_node("Mul", [a_scale, scale], [scales], name=editor.unique_name(f"{node.name}_scales_mul")))
        integer_out = editor.unique_name(f"{node.output[0]}_output_quantized")
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        nodes.append(helper.make_node("ConvInteger", [a_quantized, quantized, a_zero_point, zero_point], [integer_out],
                                      name=editor.unique_name(f"{node.name}_quant"), **attributes))
        cast_out = editor.unique_name(f"{integer_out}_cast_output")
        nodes.append(helper.make_node("Cast", [integer_out], [cast_out], to=TensorProto.FLOAT, name=editor.unique_name(f"{integer_out}_cast")))
        has_bias = len(node.input) > 2 and node.input[2]
        scaled = editor.unique_name(f"{node.output[0]}_scaled") if has_bias else node.output[0]
        nodes.append(helper.make_node("Mul", [cast_out, scales], [scaled], name=editor.unique_name(f"{node.name}_output_scale_mul")))
        if has_bias:
            bias = node.input[2]
            if editor.is_constant(bias):
                bias = editor.add_initializer(editor.array(bias).reshape(channel_shape), f"{bias}_reshaped")
            else:
                shape = editor.add_initializer(np.array(channel_shape, dtype=np.int64), f"{node.name}_bias_shape")
                reshaped = editor.unique_name(f"{bias}_reshaped")
                nodes.append(helper.make_node("Reshape", [bias, shape], [reshaped], name=editor.unique_name(f"{node.name}_bias_reshape")))
                bias = reshaped
            nodes.append(helper.make_node("Add", [scaled, bias], [node.output[0]], name=editor.unique_name(f"{node.name}_bias_add")))
        self.report.add(node.name, "Conv -> ConvInteger")
        return nodes

    # -- com.microsoft Attention ----------------------------------------------------------------------

    def _rewrite_attention(self, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        """Attention -> QAttention: the input quantized at run time, the packed QKV weight per column whatever
        ``per_channel`` says (as onnxruntime does)."""
        editor = self.editor
        if any(a.name == "qkv_hidden_sizes" for a in node.attribute):
            self.report.skip(node.name, "Attention with qkv_hidden_sizes (QAttention has equal Q, K, V sizes)")
            return None
        if any(name for name in node.input[5:]):
            self.report.skip(node.name, "Attention with attention_bias or past_sequence_length (QAttention has neither)")
            return None
        activation, weight_name = node.input[0], node.input[1]
        if not self._usable_weight(node, weight_name, 2) or not self._float_activation(activation):
            return None
        nodes: list[onnx.NodeProto] = []
        a_quantized, a_scale, a_zero_point = self._dynamic_activation(activation, nodes)
        quantized, scale, zero_point, _ = self._weight(weight_name, editor.array(weight_name), 1)
        optional = lambda position: node.input[position] if len(node.input) > position else ""  # noqa: E731
        inputs = [a_quantized, quantized, node.input[2], a_scale, scale, optional(3), a_zero_point, zero_point, optional(4)]
        while inputs and not inputs[-1]:
            inputs.pop()
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        nodes.append(helper.make_node("QAttention", inputs, list(node.output), name=editor.unique_name(f"{node.name}_quant"),
                                      domain="com.microsoft", **attributes))
        self.uses_ms_domain = True
        self.report.add(node.name, "Attention -> QAttention")
        return nodes

    # -- LSTM ---------------------------------------------------------------------------------------------

    def _rewrite_lstm(self, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        """LSTM -> com.microsoft DynamicQuantizeLSTM: W and R in int8, one scale per direction (per gate row
        with ``per_channel``), stored transposed to [directions, input, 4*hidden] as the op reads them."""
        editor = self.editor
        if any(a.name == "layout" and a.i for a in node.attribute):
            self.report.skip(node.name, "LSTM with layout=1 (DynamicQuantizeLSTM is sequence-major only)")
            return None
        if len(node.input) < 3 or not all(self._usable_weight(node, name, 3) for name in node.input[1:3]):
            return None
        if not self._float_activation(node.input[0]):
            return None
        quantized_inputs = []
        for name in node.input[1:3]:
            weight = editor.array(name)
            directions, gates, width = weight.shape
            if self.per_channel:
                params, quantized = weight_params(weight.reshape(directions * gates, width), QuantType.QInt8, 0, True,
                                                  self.reduce_range)
                scale, zero_point = params.scale.reshape(directions, gates), params.zero_point.reshape(directions, gates)
            else:
                params, quantized = weight_params(weight, QuantType.QInt8, 0, True, self.reduce_range)
                scale, zero_point = params.scale, params.zero_point
            quantized = quantized.reshape(directions, gates, width).transpose(0, 2, 1)
            quantized_inputs.append((editor.add_initializer(np.ascontiguousarray(quantized), f"{name}_quantized"),
                                     editor.add_initializer(scale, f"{name}_scale"),
                                     editor.add_initializer(zero_point, f"{name}_zero_point")))
        (w_quantized, w_scale, w_zero_point), (r_quantized, r_scale, r_zero_point) = quantized_inputs
        optional = [node.input[position] if len(node.input) > position else "" for position in range(3, 8)]
        inputs = [node.input[0], w_quantized, r_quantized, *optional, w_scale, w_zero_point, r_scale, r_zero_point]
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "layout"}
        self.uses_ms_domain = True
        self.report.add(node.name, "LSTM -> DynamicQuantizeLSTM")
        return [helper.make_node("DynamicQuantizeLSTM", inputs, list(node.output), name=editor.unique_name(f"{node.name}_quant"),
                                 domain="com.microsoft", **attributes)]

    # -- Gather -----------------------------------------------------------------------------------

    def _rewrite_gather(self, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        editor = self.editor
        table = node.input[0]
        if not self._usable_weight(node, table, None):
            return None
        if editor.array(table).size < 64:  # a tiny table saves nothing and costs a DequantizeLinear
            self.report.skip(node.name, f"table '{table}' is too small to be worth quantizing")
            return None
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        array = editor.array(table)
        gathered = editor.unique_name(f"{node.output[0]}_quantized")
        if self.per_channel and self.weight_symmetric and array.ndim == 2 and attributes.get("axis", 0) == 0:
            # One scale per row, gathered beside the row: a small table with a few large rows (token types,
            # positions) keeps its precision. Symmetric rows have zero point 0, so Cast * scale dequantizes.
            quantized, _, _, params = self._weight(table, array, 0)
            row_scales = editor.add_initializer(params.scale.reshape(-1, 1), f"{table}_row_scale")
            scales, cast = editor.unique_name(f"{node.output[0]}_scale"), editor.unique_name(f"{node.output[0]}_cast")
            nodes = [
                helper.make_node("Gather", [quantized, node.input[1]], [gathered], name=node.name),
                helper.make_node("Gather", [row_scales, node.input[1]], [scales], name=editor.unique_name(f"{node.name}_scale")),
                helper.make_node("Cast", [gathered], [cast], to=TensorProto.FLOAT, name=editor.unique_name(f"{node.name}_cast")),
                helper.make_node("Mul", [cast, scales], [node.output[0]], name=editor.unique_name(f"{node.name}_dequantize")),
            ]
            self.report.add(node.name, "Gather int8 table, per-row scales")
            return nodes
        # One range over the whole table, as onnxruntime quantizes it: like an activation (uint8, asymmetric,
        # full range); the gathered rows are dequantized by one scalar scale.
        quantized, scale, zero_point, _ = self._weight(table, array, None, QuantType.QUInt8, symmetric=False, reduce_range=False)
        dequantize = helper.make_node("DequantizeLinear", [gathered, scale, zero_point], [node.output[0]],
                                      name=editor.unique_name(f"{node.output[0]}_DequantizeLinear"))
        nodes = [helper.make_node("Gather", [quantized, node.input[1]], [gathered], name=node.name, **attributes), dequantize]
        # A quantized MatMul reading the rows takes them as they are (onnxruntime chains them the same way);
        # the DequantizeLinear stays only if something else reads the float rows.
        self._activations[node.output[0]] = (gathered, scale, zero_point)
        self.optional_nodes.append(dequantize)
        self.report.add(node.name, "Gather int8 table")
        return nodes


