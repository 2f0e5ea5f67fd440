"""Weight-only block quantization of MatMul weights to 4 or 8 bits, written as com.microsoft MatMulNBits."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
from onnx import helper

from .model_editor import MS_DOMAIN, ModelEditor, load_model, save_model
from .quant_types import QuantFormat
from .report import QuantizationReport

SUPPORTED_BITS = (4, 8)


def check_block_options(bits: int, block_size: int) -> None:
    """``ValueError`` unless bits is 4 or 8 and block_size a power of two from 16 to 256."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    if (isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 16
            or block_size > 256 or block_size & (block_size - 1)):
        raise ValueError(f"block_size must be a power of two from 16 to 256, got {block_size!r}")


def quantize_blocks(weight: np.ndarray, bits: int, block_size: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A [K, N] weight in MatMulNBits' layout: packed [N, blocks, block_size*bits/8] uint8, scales [N, blocks],
    packed zero points [N, ceil(blocks*bits/8)] (None when symmetric: MatMulNBits then uses 2**(bits-1)).

    K is padded with zeros to whole blocks. Symmetric blocks map their largest-magnitude value to the
    integer end -2**(bits-1) (a signed scale), which keeps one more level than a +-(2**(bits-1)-1) range.
    """
    k, n = weight.shape
    blocks = -(-k // block_size)
    padded = np.zeros((n, blocks * block_size), dtype=np.float32)
    padded[:, :k] = weight.T
    grouped = padded.reshape(n, blocks, block_size)
    levels = 2**bits - 1
    if symmetric:
        positions = np.abs(grouped).argmax(axis=2)[..., None]
        extreme = np.take_along_axis(grouped, positions, axis=2)[..., 0]
        scales = extreme / -(2 ** (bits - 1))
        zero_points = np.full(scales.shape, 2 ** (bits - 1), dtype=np.float32)
    else:
        low = np.minimum(grouped.min(axis=2), 0.0)
        high = np.maximum(grouped.max(axis=2), 0.0)
        scales = (high - low) / levels
        safe = np.where(scales == 0, 1.0, scales)
        zero_points = np.clip(np.rint(-low / safe), 0, levels)
    safe_scales = np.where(scales == 0, 1.0, scales)[..., None]
    quantized = np.clip(np.rint(grouped / safe_scales) + zero_points[..., None], 0, levels).astype(np.uint8)
    scales = scales.astype(np.float32)
    if bits == 4:
        packed = (quantized[..., 0::2] | (quantized[..., 1::2] << 4)).astype(np.uint8)
    else:
        packed = quantized
    if symmetric:
        return packed, scales, None
    zero_points = zero_points.astype(np.uint8)
    if bits == 4:
        if blocks % 2:
            zero_points = np.concatenate([zero_points, np.zeros((n, 1), dtype=np.uint8)], axis=1)
        zero_points = (zero_points[:, 0::2] | (zero_points[:, 1::2] << 4)).astype(np.uint8)
    return packed, scales, zero_points


def dequantize_blocks(packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, bits: int, k: int) -> np.ndarray:
    """The [K, N] float weight that MatMulNBits computes with (the inverse of ``quantize_blocks`` up to rounding)."""
    n, blocks, _ = packed.shape
    if bits == 4:
        values = np.empty((n, blocks, packed.shape[2] * 2), dtype=np.uint8)
        values[..., 0::2], values[..., 1::2] = packed & 0x0F, packed >> 4
    else:
        values = packed
    if zero_points is None:
        zeros = np.full((n, blocks), 2 ** (bits - 1), dtype=np.float32)
    elif bits == 4:
        unpacked = np.empty((n, zero_points.shape[1] * 2), dtype=np.uint8)
        unpacked[:, 0::2], unpacked[:, 1::2] = zero_points & 0x0F, zero_points >> 4
        zeros = unpacked[:, :blocks].astype(np.float32)
    else:
        zeros = zero_points.astype(np.float32)
    weight = (values.astype(np.float32) - zeros[..., None]) * scales.reshape(n, blocks)[..., None]
    return weight.reshape(n, -1)[:, :k].T


class _SavedModel:
    """What ``MatMulNBitsQuantizer.model`` holds: ``.model`` (a ModelProto) and ``save_model_to_file``."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model

    def save_model_to_file(self, output_path: "str | os.PathLike", use_external_data_format: bool = False) -> None:
        save_model(self.model, output_path, use_external_data_format)


class MatMulNBitsQuantizer:
    """onnxruntime's ``MatMulNBitsQuantizer`` (round-to-nearest, QOperator): ``process()``, then ``model``.

    Quantizes every MatMul whose second input is a constant float32 2-D weight (or those in
    ``nodes_to_include``), except ``nodes_to_exclude``, to a com.microsoft MatMulNBits node.
    Other algorithms (GPTQ, HQQ, ``algo_config``) and the QDQ format are not supported: ``ValueError``.
    """

    def __init__(self, model: "onnx.ModelProto | str", bits: int = 4, block_size: int = 128, is_symmetric: bool = False,
                 accuracy_level: int | None = None, nodes_to_exclude: list[str] | None = None,
                 nodes_to_include: list[str] | None = None, quant_format: QuantFormat = QuantFormat.QOperator,
                 op_types_to_quantize: tuple[str, ...] | None = None, quant_axes: Any = None,
                 channel_wised_quantize: bool = False, algo_config: Any = None) -> None:
        check_block_options(bits, block_size)
        if quant_format != QuantFormat.QOperator:
            raise ValueError("MatMulNBitsQuantizer in onyxrt writes the QOperator format (MatMulNBits) only")
        if algo_config is not None and type(algo_config).__name__ not in ("DefaultWeightOnlyQuantConfig", "RTNWeightOnlyQuantConfig"):
            raise ValueError(f"only round-to-nearest quantization is supported, not {type(algo_config).__name__}")
        unsupported = set(op_types_to_quantize or ("MatMul",)) - {"MatMul"}
        if unsupported:
            raise ValueError(f"weight-only quantization handles MatMul only, not {sorted(unsupported)}")
        if channel_wised_quantize:
            raise ValueError("channel_wised_quantize is not supported; use a block_size")
        if accuracy_level is not None and accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError(f"accuracy_level must be 0..4, got {accuracy_level}")
        self.model = _SavedModel(load_model(model))
        self.bits, self.block_size, self.is_symmetric = bits, block_size, is_symmetric
        self.accuracy_level = accuracy_level
        self.nodes_to_exclude = set(nodes_to_exclude or [])
        self.nodes_to_include = set(nodes_to_include) if nodes_to_include else None
        self.report = QuantizationReport(f"weight-only int{bits}")

    def process(self) -> None:
        editor = ModelEditor(self.model.model)
        nodes: list[onnx.NodeProto] = []
        for node in editor.graph.node:
            replacement = self._rewrite(editor, node) if self._selected(node) else None
            nodes.extend(replacement or [node])
        if self.report.quantized:
            editor.ensure_opset(MS_DOMAIN, 1)
        self.model = _SavedModel(editor.finish(nodes))

    def _selected(self, node: onnx.NodeProto) -> bool:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.name in self.nodes_to_exclude:
            return False
        return self.nodes_to_include is None or node.name in self.nodes_to_include

    def _rewrite(self, editor: ModelEditor, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        weight_name = node.input[1]
        if not editor.is_constant(weight_name):
            self.report.skip(node.name, "weight is not a constant")
            return None
        weight = editor.array(weight_name)
        if weight.dtype != np.float32 or weight.ndim != 2:
            self.report.skip(node.name, f"weight is {weight.dtype} of rank {weight.ndim}, not float32 2-D")
            return None
        k, n = weight.shape
        packed, scales, zero_points = quantize_blocks(weight, self.bits, self.block_size, self.is_symmetric)
        inputs = [node.input[0], editor.add_initializer(packed, f"{weight_name}_Q{self.bits}"),
                  editor.add_initializer(scales, f"{weight_name}_scales")]
        if zero_points is not None:
            inputs.append(editor.add_initializer(zero_points, f"{weight_name}_zero_points"))
        attributes = {"K": k, "N": n, "bits": self.bits, "block_size": self.block_size}
        if self.accuracy_level is not None:
            attributes["accuracy_level"] = self.accuracy_level
        self.report.add(node.name, f"MatMul -> MatMulNBits int{self.bits}")
        return [helper.make_node("MatMulNBits", inputs, list(node.output), name=editor.unique_name(f"{node.name}_Q{self.bits}"),
                                 domain=MS_DOMAIN, **attributes)]


def quantize_weight_only(
    model_input: "str | os.PathLike | onnx.ModelProto",
    model_output: "str | os.PathLike",
    bits: int = 4,
    block_size: int = 32,
    symmetric: bool = True,
    accuracy_level: int | None = None,
    nodes_to_exclude: list[str] | None = None,
    nodes_to_include: list[str] | None = None,
    use_external_data_format: bool = False,
) -> QuantizationReport:
    """Quantize the constant 2-D weights of MatMul nodes in blocks of ``block_size`` along K, write MatMulNBits.

    ``symmetric`` blocks store no zero points (MatMulNBits assumes 2**(bits-1)); asymmetric ones store one
    per block. Activations stay float. Returns a ``QuantizationReport``.
    """
    quantizer = MatMulNBitsQuantizer(model_input, bits=bits, block_size=block_size, is_symmetric=symmetric,
                                     accuracy_level=accuracy_level, nodes_to_exclude=nodes_to_exclude,
                                     nodes_to_include=nodes_to_include)
    quantizer.process()
    quantizer.model.save_model_to_file(model_output, use_external_data_format)
    return quantizer.report
