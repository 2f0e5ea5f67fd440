"""Input values made from a model's declared inputs, for ``onyxrt run`` and ``onyxrt bench``.

Symbolic dims get values from explicit ``NAME=VALUE`` pairs first, then from the
batch/seq/past shorthands by the dim's name (``past`` -> past length, ``total`` -> past +
seq, a sum such as ``past + seq`` is evaluated; ``height``/``width`` -> 224; the first dim
-> batch; any other -> 1). Values follow each input's role:

* integer inputs that end up as indices into a table (through Cast, Unsqueeze, Reshape,
  Add of a constant, ... to Gather, GatherElements, GatherND, EmbedLayerNormalization) stay
  below the smallest such table, so token ids and token types are valid;
* operands that are not data (axes, Slice bounds, scales, K, split lengths, ratios, ...)
  get values that are valid whatever the data, found by the op schema's name for the input;
* masks (``*mask*``) are ones; position ids (``*position*``) count from the past length;
  a sample rate (``sr``, ``sample_rate``) is 16000;
* other integers are small (0..9), booleans random, floats standard normal, strings
  ``s0, s1, ...``; sequences hold two such tensors and optionals one.
"""

from __future__ import annotations

import ast
import operator
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from .graph.model_loader import _inferred, _light_copy
from .graph.types import np_dtype

DEFAULT_INTEGER_LIMIT = 10
IMAGE_SIDE = 224
SAMPLE_RATE = 16000  # audio models take 16 kHz (and often 8 kHz) only
_SAMPLE_RATE_NAMES = {"sr", "sample_rate", "sampling_rate"}
SEQUENCE_LENGTH = 2

# Ops that hand an index input on with the same values (possibly moved, repeated or cast).
_VALUE_PRESERVING = {
    "Cast", "CastLike", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Transpose",
    "Slice", "Tile", "Concat", "Split", "Gather", "GatherElements", "Clip", "Max", "Min",
}
# Index consumers: op type -> (index input position, data input position).
_INDEX_CONSUMERS = {"Gather": (1, 0), "GatherElements": (1, 0), "GatherND": (1, 0), "Scatter": (1, 0),
                    "ScatterElements": (1, 0), "ScatterND": (1, 0), "SoftmaxCrossEntropyLoss": (1, 0),
                    "NegativeLogLikelihoodLoss": (1, 0), "ArrayFeatureExtractor": (1, 0)}
# com.microsoft EmbedLayerNormalization: input_ids -> word table, segment_ids -> segment table, position_ids -> position table.
_EMBED_LAYER_NORM_TABLES = {0: 2, 1: 4, 7: 3}


class FeedSynthesisError(ValueError):
    """No value can be made for an input (its type), or a requested dim is unusable; names the input."""


@dataclass
class Shapes:
    """How symbolic dims get values: explicit ``dims`` first, then the shorthands by dim name."""

    dims: dict[str, int] = field(default_factory=dict)
    batch: int = 1
    seq: int = 1
    past: int = 0

    def value(self, name: str, position: int) -> int:
        """The value of symbolic dim ``name`` found at ``position`` of some input's shape."""
        if name in self.dims:
            return self.dims[name]
        summed = self._expression(name)
        if summed is not None:
            return summed
        lowered = name.lower()
        if "past" in lowered:
            return self.past
        if "total" in lowered or "all_seq" in lowered:
            return self.past + self.seq
        if "seq" in lowered or "len" in lowered or "token" in lowered:
            return self.seq
        if "batch" in lowered or position == 0:
            return self.batch
        if lowered in ("h", "w") or "height" in lowered or "width" in lowered:
            return IMAGE_SIDE  # 1 would be too small for most convolution and pooling windows
        return 1

    def _expression(self, text: str) -> int | None:
        """``past + seq``, ``2*s0`` and the like (exporters write derived dims so), or None.

        A bare hyphen is part of a name (``batch-size``), so subtraction must be spaced.
        """
        if not any(sign in text for sign in ("+", "*", "//", " - ")):
            return None
        try:
            tree = ast.parse(text, mode="eval").body
        except SyntaxError:
            return None
        if not isinstance(tree, ast.BinOp):
            return None
        operators = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}

        def evaluate(node: ast.AST) -> int:
            if isinstance(node, ast.Constant) and isinstance(node.value, int):
                return node.value
            if isinstance(node, ast.Name):
                return self.value(node.id, 1)
            if isinstance(node, ast.BinOp) and type(node.op) in operators:
                return operators[type(node.op)](evaluate(node.left), evaluate(node.right))
            raise ValueError(text)

        try:
            result = evaluate(tree)
        except (ValueError, ZeroDivisionError, RecursionError):
            return None
        return result if result >= 0 else None


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds: graph inputs that are not initializers."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    return [arg for arg in model.graph.input if arg.name not in initializers]


def symbolic_dims(model: onnx.ModelProto) -> list[str]:
    """Names of the symbolic dims of the fed inputs, in order of appearance."""
    names: dict[str, None] = {}
    for arg in graph_inputs(model):
        for dim in _tensor_type(arg.type).shape.dim if _tensor_type(arg.type) is not None else ():
            if dim.HasField("dim_param") and dim.dim_param:
                names.setdefault(dim.dim_param, None)
    return list(names)


def make_feeds(model: onnx.ModelProto, shapes: Shapes, seed: int = 0, skip: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """A value for every fed input of ``model`` not in ``skip`` (deterministic per seed).

    Raises FeedSynthesisError for an input of a type no value can be made for (a map).
    """
    rng = np.random.default_rng(seed)
    arguments = [arg for arg in graph_inputs(model) if arg.name not in skip]
    concrete = {arg.name: _concrete_shape(arg, shapes) for arg in graph_inputs(model)}
    known_shapes = _known_shapes(model, concrete)
    limits = _limits_from(model, known_shapes)
    operands = _shape_operands(model, known_shapes)
    feeds: dict[str, Any] = {}
    for arg in arguments:
        shape = concrete[arg.name]
        if arg.name in operands and shape is not None and _tensor_type(arg.type) is not None:
            dtype = _safe_dtype(arg.type.tensor_type.elem_type)
            if np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating):
                feeds[arg.name] = operands[arg.name](shape).astype(dtype)
                continue
        feeds[arg.name] = _value(arg.name, arg.type, shape, shapes, limits.get(arg.name), rng)
    return feeds


def _shape_operands(model: onnx.ModelProto, known_shapes: dict[str, list[int | None]]) -> dict[str, Any]:
    """Fed inputs that are an op's operand (not its data) -> a maker of a value valid for any data.

    Found by the op schema's name for the input: axes in range (Squeeze's on dims of size 1),
    whole-tensor Slice starts/ends/steps, unit scales/repeats/K, zero pads, a Reshape to
    ``[-1, 1, ...]``, split lengths that add up to the split dim, ratios and thresholds of 0.5.
    """
    fed = {arg.name for arg in graph_inputs(model)}
    opsets = {opset.domain or "": opset.version for opset in model.opset_import}
    operands: dict[str, Any] = {}
    for node in model.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        formal = _formal_input_names(node.op_type, domain, opsets.get(domain, 1))
        for position, name in enumerate(node.input):
            if name in fed and name not in operands and formal:
                maker = _operand_maker(node, formal[min(position, len(formal) - 1)], known_shapes)
                if maker is not None:
                    operands[name] = maker
    return operands


def _formal_input_names(op_type: str, domain: str, version: int) -> list[str]:
    try:
        return [formal.name for formal in onnx.defs.get_schema(op_type, version, domain).inputs]
    except onnx.defs.SchemaError:
        return []


def _operand_maker(node: onnx.NodeProto, formal: str, known_shapes: dict[str, list[int | None]]):
    """How to make input ``formal`` of ``node`` valid whatever the data, or None when any value does."""
    op = node.op_type
    data = known_shapes.get(node.input[0]) if node.input else None
    rank = len(data) if data is not None else None
    if op in ("Expand", "ConstantOfShape") or formal in ("repeats", "scales", "K", "steps", "sequence_lens"):
        return lambda shape: np.ones(shape)
    if op == "Reshape" and formal == "shape":
        return lambda shape: np.array([-1] + [1] * (int(np.prod(shape)) - 1)).reshape(shape)
    if op in ("Split", "SplitToSequence") and formal == "split":
        axis = _attribute(node, "axis", 0)
        if data and -len(data) <= axis < len(data) and isinstance(data[axis], int):
            return lambda shape, size=data[axis]: _parts(size, shape)
        return None
    if formal == "axes":
        if op == "Squeeze" and data is not None:
            ones = [axis for axis, size in enumerate(data) if size == 1]
            return lambda shape: np.array((ones * int(np.prod(shape)))[:int(np.prod(shape))]).reshape(shape)
        return lambda shape: np.arange(int(np.prod(shape))).reshape(shape)
    if formal == "axis":  # CumSum's and DFT's: 1 is inside every rank they take and not DFT's complex axis
        return lambda shape: np.full(shape, 1 if op == "DFT" or (rank or 0) > 1 else 0)
    if formal in ("starts", "pads", "batch_indices", "write_indices", "score_threshold"):
        return lambda shape: np.zeros(shape)
    if formal == "ends":
        return lambda shape: np.full(shape, np.iinfo(np.int32).max)
    if formal == "roi":  # begins at 0, ends at 1: the whole image
        return lambda shape: np.concatenate([np.zeros(int(np.prod(shape)) // 2), np.ones(int(np.prod(shape)) - int(np.prod(shape)) // 2)]).reshape(shape)
    if formal in ("ratio", "iou_threshold"):
        return lambda shape: np.full(shape, 0.5)
    if formal == "depth":
        return lambda shape: np.full(shape, DEFAULT_INTEGER_LIMIT)
    if op == "Col2Im" and formal == "block_shape":
        return lambda shape: np.ones(shape)
    if op == "Col2Im" and formal == "image_shape" and data and len(data) == 3 and isinstance(data[2], int):
        # unit blocks: there are as many blocks as image positions, all along the first image dim
        return lambda shape: np.array([data[2]] + [1] * (int(np.prod(shape)) - 1)).reshape(shape)
    if op == "AffineGrid" and formal == "size" and data:  # N from theta, then unit spatial sizes
        return lambda shape: np.array([data[0] or 1] + [1] * (int(np.prod(shape)) - 1)).reshape(shape)
    return None


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _parts(total: int, shape: list[int]) -> np.ndarray:
    """Split lengths of ``shape`` (scalar: one chunk length) that add up to ``total``."""
    if not shape:
        return np.array(max(total, 1))
    count = int(np.prod(shape))
    parts = np.full(count, total // count)
    parts[count - total % count:] += 1
    return parts.reshape(shape)


def _tensor_type(type_proto: onnx.TypeProto):
    return type_proto.tensor_type if type_proto.HasField("tensor_type") else None


def _concrete_shape(arg: onnx.ValueInfoProto, shapes: Shapes) -> list[int] | None:
    type_proto = arg.type
    while type_proto.WhichOneof("value") in ("sequence_type", "optional_type"):
        type_proto = getattr(type_proto, type_proto.WhichOneof("value")).elem_type
    tensor_type = _tensor_type(type_proto)
    if tensor_type is None:
        return None
    if not tensor_type.HasField("shape"):
        return []  # rank unknown: a scalar is the one shape every rank-agnostic op accepts
    return [dim.dim_value if dim.HasField("dim_value") else shapes.value(dim.dim_param, position)
            for position, dim in enumerate(tensor_type.shape.dim)]


def _value(name: str, type_proto: onnx.TypeProto, shape: list[int] | None, shapes: Shapes,
           limit: int | None, rng: np.random.Generator) -> Any:
    kind = type_proto.WhichOneof("value")
    if kind == "sequence_type":
        element = type_proto.sequence_type.elem_type
        return [_value(name, element, shape, shapes, limit, rng) for _ in range(SEQUENCE_LENGTH)]
    if kind == "optional_type":
        return _value(name, type_proto.optional_type.elem_type, shape, shapes, limit, rng)
    if kind != "tensor_type" or shape is None:
        raise FeedSynthesisError(f"input '{name}' is of type {onnx.helper.printable_type(type_proto) or kind}; "
                                 "no value can be made for it")
    try:
        dtype = np_dtype(type_proto.tensor_type.elem_type)
    except ValueError:
        raise FeedSynthesisError(f"input '{name}' has element type {type_proto.tensor_type.elem_type}, "
                                 "for which no value can be made") from None
    role = name.lower()
    is_integer = np.issubdtype(dtype, np.integer)
    if "mask" in role and (is_integer or dtype == np.bool_ or np.issubdtype(dtype, np.floating)):
        return np.ones(shape, dtype=dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if is_integer and role in _SAMPLE_RATE_NAMES:
        return np.full(shape, SAMPLE_RATE, dtype=dtype)
    if is_integer and "position" in role and shape:
        positions = np.arange(shapes.past, shapes.past + shape[-1])
        if limit is not None:
            positions %= limit
        return np.broadcast_to(positions.astype(dtype), shape).copy()
    if is_integer:
        high = DEFAULT_INTEGER_LIMIT if limit is None else limit
        return rng.integers(0, max(high, 1), size=shape).astype(dtype)
    if dtype == object:
        return np.array([f"s{i}" for i in range(int(np.prod(shape)))], dtype=object).reshape(shape)
    return rng.standard_normal(shape).astype(dtype)


def index_limits(model: onnx.ModelProto, concrete: dict[str, list[int] | None] | None = None) -> dict[str, int]:
    """Fed integer input -> exclusive upper bound of valid values, for inputs that index tables.

    An input is followed through value-preserving ops (and Add/Sub of a constant, which shift
    the bound) to the index operand of Gather-like consumers; the bound is the smallest indexed
    dim among them. Table sizes come from initializers or from onnx's shape inference with the
    inputs at ``concrete`` shapes (so a table computed in the graph counts too).
    """
    return _limits_from(model, _known_shapes(model, concrete or {}))


def _limits_from(model: onnx.ModelProto, known_shapes: dict[str, list[int | None]]) -> dict[str, int]:
    graph = model.graph
    fed = {arg.name for arg in graph_inputs(model)
           if _tensor_type(arg.type) is not None and np.issubdtype(_safe_dtype(arg.type.tensor_type.elem_type), np.integer)}
    if not fed:
        return {}
    constants = {tensor.name: tensor for tensor in graph.initializer if _numel(tensor.dims) <= 16}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and _numel(value.dims) <= 16:
                constants[node.output[0]] = value
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name:
                consumers.setdefault(name, []).append((node, position))

    limits: dict[str, int] = {}
    for start in fed:
        bound: int | None = None
        queue: deque[tuple[str, int]] = deque([(start, 0)])
        seen: set[str] = set()
        while queue:
            name, offset = queue.popleft()
            if name in seen:
                continue
            seen.add(name)
            for node, position in consumers.get(name, ()):
                size = _indexed_size(node, position, known_shapes)
                if size is not None:
                    bound = size - offset if bound is None else min(bound, size - offset)
                if node.domain not in ("", "ai.onnx"):
                    continue
                if node.op_type in _VALUE_PRESERVING and (node.op_type not in _INDEX_CONSUMERS or position == 0):
                    queue.extend((output, offset) for output in node.output if output)
                elif node.op_type == "Where" and position > 0:  # picks values of either branch
                    queue.append((node.output[0], offset))
                elif node.op_type in ("Add", "Sub") and len(node.input) == 2:
                    other = node.input[1 - position]
                    shift = _constant_extreme(constants.get(other), maximum=node.op_type == "Add")
                    if shift is None:
                        continue
                    if node.op_type == "Sub":
                        if position == 1:
                            continue  # c - ids reverses the range: no bound carries over
                        shift = -shift
                    queue.append((node.output[0], offset + shift))
        if bound is not None and bound > 0:
            limits[start] = bound
    return limits


def _safe_dtype(elem_type: int) -> np.dtype:
    try:
        return np_dtype(elem_type)
    except ValueError:
        return np.dtype(np.float32)


def _numel(dims) -> int:
    count = 1
    for dim in dims:
        count *= dim
    return count


def _constant_extreme(tensor: onnx.TensorProto | None, maximum: bool) -> int | None:
    """The largest (or, for a Sub, also the largest: values shift down by at least it) integer in a constant."""
    if tensor is None:
        return None
    values = onnx.numpy_helper.to_array(tensor)
    if values.size == 0 or not np.issubdtype(values.dtype, np.integer):
        return None
    return int(values.max()) if maximum else int(values.min())


def _indexed_size(node: onnx.NodeProto, position: int, shapes: dict[str, list[int | None]]) -> int | None:
    """How many entries the index operand at ``position`` of ``node`` may address, when it is one and known."""
    if node.domain == "com.microsoft" and node.op_type == "EmbedLayerNormalization":
        table = _EMBED_LAYER_NORM_TABLES.get(position)
        if table is None or table >= len(node.input):
            return None
        dims = shapes.get(node.input[table])
        return dims[0] if dims and isinstance(dims[0], int) else 1
    if node.domain not in ("", "ai.onnx", "ai.onnx.ml") or node.op_type not in _INDEX_CONSUMERS:
        return None
    index_position, data_position = _INDEX_CONSUMERS[node.op_type]
    if position != index_position:
        return None
    dims = shapes.get(node.input[data_position])
    if not dims:
        return 1  # an index into something of unknown size: only 0 is sure to be inside it
    if node.op_type in ("SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"):  # class ids along dim 1
        return dims[1] if len(dims) > 1 and isinstance(dims[1], int) else 1
    if node.op_type == "ArrayFeatureExtractor":  # positions along the last dim
        return dims[-1] if isinstance(dims[-1], int) else 1
    if node.op_type in ("GatherND", "ScatterND"):
        # Each index row addresses data dims batch_dims.. batch_dims+k: bounded by the smallest of them.
        batch_dims = next((a.i for a in node.attribute if a.name == "batch_dims"), 0)
        indices = shapes.get(node.input[index_position])
        depth = indices[-1] if indices and isinstance(indices[-1], int) else len(dims) - batch_dims
        sizes = dims[batch_dims:batch_dims + depth]
        return min(sizes) if sizes and all(isinstance(s, int) for s in sizes) else 1
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    if not -len(dims) <= axis < len(dims):
        return 1
    size = dims[axis]
    return size if isinstance(size, int) else 1


def _known_shapes(model: onnx.ModelProto, concrete: dict[str, list[int] | None]) -> dict[str, list[int | None]]:
    """Value name -> dims (None where unknown), from initializers and onnx's inference at ``concrete`` input shapes."""
    shapes: dict[str, list[int | None]] = {tensor.name: list(tensor.dims) for tensor in model.graph.initializer}
    light = _light_copy(model)
    for arg in light.graph.input:
        dims = concrete.get(arg.name)
        tensor_type = _tensor_type(arg.type)
        if dims is None or tensor_type is None or not tensor_type.HasField("shape"):
            continue
        for dim, value in zip(tensor_type.shape.dim, dims):
            dim.Clear()
            dim.dim_value = value
    inferred = _inferred(light)
    for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        tensor_type = _tensor_type(info.type)
        if tensor_type is not None and tensor_type.HasField("shape") and info.name not in shapes:
            shapes[info.name] = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor_type.shape.dim]
    return shapes
