"""Float32 → float16 / bfloat16 model conversion, with onnxruntime's float16 tool semantics.

``convert_float_to_float16`` takes the same arguments as
``onnxruntime.transformers.float16.convert_float_to_float16`` and makes the same model: every
float tensor type (graph inputs, outputs, value_info, initializers, tensor attributes, ``Cast``
targets, ``dtype`` attributes, subgraphs of converted nodes) becomes float16, except

* nodes whose op is in ``op_block_list`` (default :data:`DEFAULT_OP_BLOCK_LIST`) or whose name is
  in ``node_block_list``: they stay float32 behind ``Cast`` nodes (``X_cast_to_fp32`` before,
  ``Y_cast_to_fp16`` after, onnxruntime's names);
* with ``keep_io_types`` (True, or a list of names) float graph inputs/outputs stay float32, cast
  right after the input (``graph_input_cast_<i>``) and right before the output (``graph_output_cast_<i>``);
* inputs that ONNX fixes to float32 (Resize's scales, GroupNorm's gamma/beta) get a Cast to float32;
* initializers read only by float32 nodes stay float32 (``force_fp16_initializers`` converts them too).

Converted values are clamped as onnxruntime clamps them: nonzero magnitudes below
``min_positive_val`` become ``±min_positive_val``, finite ones above ``max_finite_val`` become
``±max_finite_val``; zeros, infinities and NaNs are kept.

Where onnxruntime's tool writes a model that does not load, this one differs on purpose:
Casts are placed in dependency order inside the graph that holds the node (onnxruntime appends
them to the main graph, also for nodes inside subgraphs); a blocked node with subgraphs gets Casts
for the float16 outer values its subgraphs read; a node whose schema at the model's opset does not
accept the target type (e.g. ``Conv`` before opset 22 for bfloat16) stays float32 as if blocked;
and the caller's ModelProto is never modified (onnxruntime's tool changes it in place when
``disable_shape_infer=True``).
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import ml_dtypes
import numpy as np
import onnx
import onnx.defs
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto, helper, numpy_helper

__all__ = [
    "DEFAULT_OP_BLOCK_LIST",
    "convert_float_to_bfloat16",
    "convert_float_to_float16",
    "convert_np_to_bfloat16",
    "convert_np_to_float16",
    "convert_tensor_float_to_bfloat16",
    "convert_tensor_float_to_float16",
]

FLOAT16_MIN_POSITIVE = 5.96e-08  # float16's smallest subnormal (onnxruntime's default)
FLOAT16_MAX_FINITE = 65504.0
BFLOAT16_MIN_POSITIVE = float(ml_dtypes.finfo(ml_dtypes.bfloat16).smallest_subnormal)
BFLOAT16_MAX_FINITE = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)

#: Ops left in float32 when ``op_block_list`` is None (onnxruntime's list: ML ops, ops whose
#: float16 kernels are missing or imprecise in common providers).
DEFAULT_OP_BLOCK_LIST: tuple[str, ...] = (
    "ArrayFeatureExtractor", "Binarizer", "CastMap", "CategoryMapper", "DictVectorizer",
    "FeatureVectorizer", "Imputer", "LabelEncoder", "LinearClassifier", "LinearRegressor",
    "Normalizer", "OneHotEncoder", "RandomUniformLike", "SVMClassifier", "SVMRegressor", "Scaler",
    "TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble", "ZipMap", "NonMaxSuppression",
    "TopK", "RoiAlign", "Range", "CumSum", "Min", "Max", "Upsample",
)

# Inputs ONNX (or the contrib schema) types as float32 whatever the data's type: op -> input positions.
_ALWAYS_FLOAT_INPUTS = {"Resize": (2,), "GroupNorm": (1, 2), "SkipGroupNorm": (1, 2)}
# Ops whose ``dtype`` attribute says the float type they make; the starred ones default to float.
_DTYPE_OPS = ("EyeLike", "Multinomial", "RandomNormal", "RandomNormalLike", "RandomUniform",
              "RandomUniformLike", "SequenceEmpty", "Bernoulli")
_DTYPE_DEFAULTS_TO_FLOAT = ("RandomNormal", "RandomUniform", "SequenceEmpty")
_TYPE_STRING = {TensorProto.FLOAT16: "tensor(float16)", TensorProto.BFLOAT16: "tensor(bfloat16)"}


def _clamp(values: np.ndarray, min_positive_val: float, max_finite_val: float) -> np.ndarray:
    """Magnitudes in (0, min) raised to min, finite ones above max lowered to max; sign kept."""
    values = np.asarray(values, dtype=np.float32)
    magnitude = np.abs(values)
    sign = np.sign(values)
    tiny = (magnitude > 0) & (magnitude < min_positive_val)
    huge = (magnitude > max_finite_val) & np.isfinite(magnitude)
    if not tiny.any() and not huge.any():
        return values
    out = values.copy()
    out[tiny] = sign[tiny] * np.float32(min_positive_val)
    out[huge] = sign[huge] * np.float32(max_finite_val)
    return out


def convert_np_to_float16(np_array: np.ndarray, min_positive_val: float = FLOAT16_MIN_POSITIVE,
                          max_finite_val: float = FLOAT16_MAX_FINITE) -> np.ndarray:
    """A float32 array as float16, clamped so no value changes sign or finiteness."""
    return _clamp(np_array, min_positive_val, max_finite_val).astype(np.float16)


def convert_np_to_bfloat16(np_array: np.ndarray, min_positive_val: float = BFLOAT16_MIN_POSITIVE,
                           max_finite_val: float = BFLOAT16_MAX_FINITE) -> np.ndarray:
    """A float32 array as bfloat16 (``ml_dtypes.bfloat16``, round to nearest even), clamped likewise."""
    return _clamp(np_array, min_positive_val, max_finite_val).astype(ml_dtypes.bfloat16)


def _convert_tensor(tensor: TensorProto, target: int, min_positive_val: float, max_finite_val: float) -> TensorProto:
    """Rewrite a float32 TensorProto in place as ``target`` (raw data); other types are left alone."""
    if not isinstance(tensor, TensorProto):
        raise ValueError(f"Expected an ONNX TensorProto but got {type(tensor).__name__}")
    if tensor.data_type != TensorProto.FLOAT:
        return tensor
    if tensor.data_location == TensorProto.EXTERNAL:
        raise ValueError(f"tensor '{tensor.name}' has its data in an external file that was not loaded; "
                         "load the model with its external data (onnx.load(path)) before converting")
    values = numpy_helper.to_array(tensor).astype(np.float32, copy=False)
    if target == TensorProto.FLOAT16:
        converted = convert_np_to_float16(values, min_positive_val, max_finite_val)
    else:
        converted = convert_np_to_bfloat16(values, min_positive_val, max_finite_val)
    tensor.data_type = target
    del tensor.float_data[:]
    tensor.raw_data = np.ascontiguousarray(converted).tobytes()
    return tensor


def convert_tensor_float_to_float16(tensor: TensorProto, min_positive_val: float = FLOAT16_MIN_POSITIVE,
                                    max_finite_val: float = FLOAT16_MAX_FINITE) -> TensorProto:
    """Rewrite a float32 TensorProto as float16 in place and return it (other types unchanged)."""
    return _convert_tensor(tensor, TensorProto.FLOAT16, min_positive_val, max_finite_val)


def convert_tensor_float_to_bfloat16(tensor: TensorProto, min_positive_val: float = BFLOAT16_MIN_POSITIVE,
                                     max_finite_val: float = BFLOAT16_MAX_FINITE) -> TensorProto:
    """Rewrite a float32 TensorProto as bfloat16 in place and return it (other types unchanged)."""
    return _convert_tensor(tensor, TensorProto.BFLOAT16, min_positive_val, max_finite_val)


def convert_float_to_float16(
    model: ModelProto | str | os.PathLike,
    min_positive_val: float = FLOAT16_MIN_POSITIVE,
    max_finite_val: float = FLOAT16_MAX_FINITE,
    keep_io_types: bool | Sequence[str] = False,
    disable_shape_infer: bool = False,
    op_block_list: Iterable[str] | None = None,
    node_block_list: Iterable[str] | None = None,
    force_fp16_initializers: bool = False,
    force_fp16_inputs: dict[str, Sequence[int]] | None = None,
    keep_float32_between_blocked: bool = False,
) -> ModelProto:
    """A copy of ``model`` (a ModelProto or a path) with its float32 tensors as float16.

    Arguments mean what they mean for onnxruntime's ``convert_float_to_float16`` (see the module
    docstring): ``keep_io_types`` True or a list of input/output names kept float32;
    ``op_block_list`` None means :data:`DEFAULT_OP_BLOCK_LIST`; ``disable_shape_infer`` skips
    onnx's shape inference (value types must then already be in the model);
    ``force_fp16_inputs`` maps an op to input positions converted although ONNX types them float32.
    ``keep_float32_between_blocked`` (not in onnxruntime's tool, which rounds every value between
    two float32 nodes through float16 with a Cast pair) keeps float32 the values that float32 nodes
    make and only float32 nodes read, including a kept graph output made by a float32 node.
    """
    return _Converter(TensorProto.FLOAT16, min_positive_val, max_finite_val, keep_io_types, op_block_list,
                      node_block_list, force_fp16_initializers, force_fp16_inputs,
                      keep_float32_between_blocked).convert(model, disable_shape_infer)


def convert_float_to_bfloat16(
    model: ModelProto | str | os.PathLike,
    min_positive_val: float = BFLOAT16_MIN_POSITIVE,
    max_finite_val: float = BFLOAT16_MAX_FINITE,
    keep_io_types: bool | Sequence[str] = False,
    disable_shape_infer: bool = False,
    op_block_list: Iterable[str] | None = None,
    node_block_list: Iterable[str] | None = None,
    force_bf16_initializers: bool = False,
    force_bf16_inputs: dict[str, Sequence[int]] | None = None,
    keep_float32_between_blocked: bool = False,
) -> ModelProto:
    """A copy of ``model`` with its float32 tensors as bfloat16: ``convert_float_to_float16``'s rules.

    The bounds default to bfloat16's smallest subnormal and largest finite value (its range is
    float32's, so only values at float32's extremes are clamped). Blocked nodes, and nodes whose
    ONNX schema at the model's opset has no bfloat16 (Conv, MaxPool, ... before opset 22) stay
    float32 behind Casts named ``X_cast_to_fp32`` / ``Y_cast_to_bf16``.
    """
    return _Converter(TensorProto.BFLOAT16, min_positive_val, max_finite_val, keep_io_types, op_block_list,
                      node_block_list, force_bf16_initializers, force_bf16_inputs,
                      keep_float32_between_blocked).convert(model, disable_shape_infer)


@dataclass
class ConversionReport:
    """What a conversion did: the model, nodes now in the low type, nodes kept float32, Casts added."""
    model: ModelProto
    converted_nodes: list[str]
    kept_nodes: list[str]
    casts_added: int


def convert_with_report(model: ModelProto | str | os.PathLike, to: str = "fp16", **options) -> ConversionReport:
    """``convert_float_to_float16`` (``to="fp16"``) or ``convert_float_to_bfloat16`` (``to="bf16"``) with
    the list of nodes converted and kept float32 (nodes touching float values only)."""
    if to not in ("fp16", "bf16"):
        raise ValueError(f"to must be 'fp16' or 'bf16', got {to!r}")
    bf16 = to == "bf16"
    force = options.pop("force_bf16_initializers" if bf16 else "force_fp16_initializers", False)
    force_inputs = options.pop("force_bf16_inputs" if bf16 else "force_fp16_inputs", None)
    disable_shape_infer = options.pop("disable_shape_infer", False)
    target = TensorProto.BFLOAT16 if bf16 else TensorProto.FLOAT16
    bounds = (BFLOAT16_MIN_POSITIVE, BFLOAT16_MAX_FINITE) if bf16 else (FLOAT16_MIN_POSITIVE, FLOAT16_MAX_FINITE)
    converter = _Converter(target, options.pop("min_positive_val", bounds[0]), options.pop("max_finite_val", bounds[1]),
                           options.pop("keep_io_types", False), options.pop("op_block_list", None),
                           options.pop("node_block_list", None), force, force_inputs,
                           options.pop("keep_float32_between_blocked", False))
    if options:
        raise TypeError(f"unknown conversion option(s): {', '.join(sorted(options))}")
    converted = converter.convert(model, disable_shape_infer)
    return ConversionReport(converted, converter.converted_nodes, converter.kept_nodes, converter.casts_added)


# --------------------------------------------------------------------------------------------
# the conversion


@dataclass
class _InitializerUse:
    tensor: TensorProto
    by_low: list[str] = field(default_factory=list)   # names of converted nodes reading it
    by_float: list[str] = field(default_factory=list)  # names of float32 nodes reading it


@dataclass
class _GraphWork:
    """What the walk found in one graph; its Casts are placed once every graph was walked."""
    graph: GraphProto
    blocked: list[tuple[int, NodeProto]] = field(default_factory=list)
    mixed: list[tuple[int, NodeProto]] = field(default_factory=list)  # converted nodes with always-float inputs
    producers: dict[str, int] = field(default_factory=dict)  # value -> index of the node making it here
    after: dict[int, list[NodeProto]] = field(default_factory=dict)  # index -1: before every node
    dropped: set[int] = field(default_factory=set)  # indices of nodes removed (kept outputs' Casts no longer needed)


class _Converter:
    def __init__(self, target: int, min_positive_val: float, max_finite_val: float,
                 keep_io_types: bool | Sequence[str], op_block_list: Iterable[str] | None,
                 node_block_list: Iterable[str] | None, force_initializers: bool,
                 force_inputs: dict[str, Sequence[int]] | None, keep_float32_between_blocked: bool = False) -> None:
        low, high, type_name = ((FLOAT16_MIN_POSITIVE, FLOAT16_MAX_FINITE, "float16") if target == TensorProto.FLOAT16
                                else (BFLOAT16_MIN_POSITIVE, BFLOAT16_MAX_FINITE, "bfloat16"))
        if not min_positive_val >= low:
            raise ValueError(f"min_positive_val={min_positive_val} is below {type_name}'s smallest subnormal {low:g}")
        if not max_finite_val <= high:
            raise ValueError(f"max_finite_val={max_finite_val} is above {type_name}'s largest finite value {high:g}")
        self.target = target
        self.min_positive_val = min_positive_val
        self.max_finite_val = max_finite_val
        self.keep_io_types = keep_io_types
        self.op_block_list = set(DEFAULT_OP_BLOCK_LIST if op_block_list is None else op_block_list)
        self.node_block_list = set(node_block_list or ())
        self.force_initializers = force_initializers
        self.force_inputs = {op: tuple(positions) for op, positions in (force_inputs or {}).items()}
        self.keep_float32_between_blocked = keep_float32_between_blocked
        self.low_reads: set[str] = set()  # values some converted node (or a graph output) reads
        self.blocked_outputs: dict[str, tuple[_GraphWork, NodeProto, int]] = {}
        self.output_casts: dict[str, tuple[int, str]] = {}  # low name -> (index of its Cast, output name)
        self.low_suffix = "fp16" if target == TensorProto.FLOAT16 else "bf16"
        self.converted_nodes: list[str] = []  # nodes that now compute in the target type
        self.kept_nodes: list[str] = []       # nodes with float values kept float32 (blocked or no schema support)
        self.casts_added = 0

    # -- entry

    def convert(self, model: ModelProto | str | os.PathLike, disable_shape_infer: bool) -> ModelProto:
        model = self._load(model, disable_shape_infer)
        if not isinstance(model, ModelProto):
            raise ValueError(f"Expected an ONNX ModelProto or a path but got {type(model).__name__}")
        self.opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
        onnx_opset = self.opsets.get("", 11)
        self.always_float = dict(_ALWAYS_FLOAT_INPUTS)
        if onnx_opset <= 10:  # Resize-10 is (X, scales)
            self.always_float["Resize"] = (1,)
        self.taken = set(_all_names(model.graph))
        self.low_values: set[str] = set()       # values now of the target type (onnxruntime's value_info_list)
        self.initializers: dict[str, _InitializerUse] = {}
        self.cast_outputs: dict[tuple[str, int], str] = {}
        works: list[_GraphWork] = []

        self._cast_graph_io(model.graph)
        self.types = _value_types(model.graph)
        self._walk(model.graph, works)
        self._convert_initializers()
        if self.keep_float32_between_blocked:
            self._keep_float_between_blocked(works)
        for work in works:
            for _, node in work.mixed:
                self._cast_always_float_inputs(work, node)
            for index, node in work.blocked:
                self._wrap_blocked(work, index, node)
        for work in reversed(works):  # subgraphs first: placing a graph's Casts copies its nodes
            self.casts_added += _place_casts(work)
        self.casts_added += len(self.io_casts)
        return model

    def _load(self, model: ModelProto | str | os.PathLike, disable_shape_infer: bool) -> ModelProto:
        if isinstance(model, (str, os.PathLike)):
            path = Path(model)
            if not path.is_file():
                raise FileNotFoundError(f"model file '{path}' does not exist")
            if disable_shape_infer:
                return onnx.load(str(path))
            # infer_shapes_path works for models over 2 GB; the copy sits beside the model so
            # relative external-data paths still resolve.
            handle, inferred = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
            os.close(handle)
            try:
                onnx.shape_inference.infer_shapes_path(str(path), inferred)
                return _load_beside(inferred, path)
            finally:
                os.remove(inferred)
        if not isinstance(model, ModelProto):
            return model
        if disable_shape_infer:
            return copy.deepcopy(model)
        return onnx.shape_inference.infer_shapes(model)

    # -- graph inputs and outputs kept float32

    def _kept(self, values: Iterable[ValueInfoProto]) -> list[tuple[int, ValueInfoProto]]:
        if self.keep_io_types is False or self.keep_io_types is None:
            return []
        names = None if self.keep_io_types is True else set(self.keep_io_types)
        return [(i, v) for i, v in enumerate(values)
                if v.type.tensor_type.elem_type == TensorProto.FLOAT and (names is None or v.name in names)]

    def _cast_graph_io(self, graph: GraphProto) -> None:
        renames: dict[str, str] = {}
        self.io_skip: set[str] = set()
        self.io_casts: set[str] = set()
        head: list[NodeProto] = []
        tail: list[NodeProto] = []
        for i, value in self._kept(graph.input):
            low = f"graph_input_cast_{i}"
            renames[value.name] = low
            head.append(helper.make_node("Cast", [value.name], [low], name=self._fresh(f"graph_input_cast{i}"), to=self.target))
            self._add_value_info(graph, value, low, self.target)
            self.io_skip.add(value.name)
        output_renames: dict[str, str] = {}
        for i, value in self._kept(graph.output):
            low = f"graph_output_cast_{i}"
            output_renames[value.name] = low
            self.output_casts[low] = (len(graph.node) + len(head) + len(tail), value.name)
            tail.append(helper.make_node("Cast", [low], [value.name], name=self._fresh(f"graph_output_cast{i}"), to=TensorProto.FLOAT))
            self._add_value_info(graph, value, low, self.target)
            self.io_skip.add(value.name)
        self.taken.update(renames.values(), output_renames.values())
        self.low_values.update(renames.values(), output_renames.values())
        self.io_casts.update(node.name for node in head + tail)
        if not renames and not output_renames:
            return
        everything = {**renames, **output_renames}
        for node in _nodes_everywhere(graph):
            for i, name in enumerate(node.input):
                if name in everything:
                    node.input[i] = everything[name]
        for node in graph.node:  # a graph output is produced in the main graph
            for i, name in enumerate(node.output):
                if name in output_renames:
                    node.output[i] = output_renames[name]
        nodes = head + list(graph.node) + tail
        del graph.node[:]
        graph.node.extend(nodes)

    # -- the walk over every graph a converted node owns

    def _walk(self, graph: GraphProto, works: list[_GraphWork]) -> None:
        work = _GraphWork(graph)
        works.append(work)
        for tensor in graph.initializer:
            if tensor.data_type == TensorProto.FLOAT:
                self.initializers[tensor.name] = _InitializerUse(tensor)
        subgraphs: list[GraphProto] = []
        is_main = len(works) == 1
        for index, node in enumerate(graph.node):
            work.producers.update((name, index) for name in node.output if name)
            if is_main and node.name in self.io_casts:
                continue
            blocked = self._blocked(node)
            if blocked:
                self.blocked_outputs.update((name, (work, node, position)) for position, name in enumerate(node.output) if name)
            else:
                self.low_reads.update(node.input)
            float_only = self.always_float.get(node.op_type, ()) if node.domain in ("", "ai.onnx", "com.microsoft") else ()
            for position, name in enumerate(node.input):
                use = self.initializers.get(name)
                if use is not None:
                    keeps_float = blocked or (position in float_only and position not in self.force_inputs.get(node.op_type, ()))
                    (use.by_float if keeps_float else use.by_low).append(node.name)
            touches_float = self._touches_float(node)
            if blocked:
                work.blocked.append((index, node))
                if touches_float:
                    self.kept_nodes.append(node.name)
                continue
            if touches_float:
                self.converted_nodes.append(node.name)
            self._retype_attributes(node)
            if node.op_type in self.always_float and node.op_type not in self.force_inputs:
                work.mixed.append((index, node))
                continue
            for attribute in node.attribute:
                if attribute.type == AttributeProto.TENSOR:
                    _convert_tensor(attribute.t, self.target, self.min_positive_val, self.max_finite_val)
                elif attribute.type == AttributeProto.TENSORS:
                    for tensor in attribute.tensors:
                        _convert_tensor(tensor, self.target, self.min_positive_val, self.max_finite_val)
                elif attribute.type == AttributeProto.GRAPH:
                    subgraphs.append(attribute.g)
                elif attribute.type == AttributeProto.GRAPHS:
                    subgraphs.extend(attribute.graphs)
        for value in (*graph.input, *graph.output, *graph.value_info):
            if is_main and value.name in self.io_skip:
                continue
            if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type == TensorProto.FLOAT:
                value.type.tensor_type.elem_type = self.target
                self.low_values.add(value.name)
            elif value.type.HasField("sequence_type") and \
                    value.type.sequence_type.elem_type.tensor_type.elem_type == TensorProto.FLOAT:
                value.type.sequence_type.elem_type.tensor_type.elem_type = self.target
                self.low_values.add(value.name)
        if not is_main:  # a subgraph's outputs are its parent's (converted) node's outputs
            self.low_reads.update(value.name for value in graph.output)
        else:
            self.low_reads.update(value.name for value in graph.output if value.name not in self.io_skip)
        for subgraph in subgraphs:
            self._walk(subgraph, works)

    def _touches_float(self, node: NodeProto) -> bool:
        if any(self.types.get(name) in (TensorProto.FLOAT, self.target) for name in (*node.input, *node.output) if name):
            return True
        return any(a.type == AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT for a in node.attribute) \
            or any(a.name in ("to", "dtype") and a.i == TensorProto.FLOAT for a in node.attribute)

    def _blocked(self, node: NodeProto) -> bool:
        if node.op_type in self.op_block_list or node.name in self.node_block_list:
            return True
        return not self._schema_accepts_target(node)

    def _schema_accepts_target(self, node: NodeProto) -> bool:
        """False when the node's ONNX schema binds one of its float values to a type without the target type."""
        domain = "" if node.domain == "ai.onnx" else node.domain
        if domain not in ("", "ai.onnx.ml", "ai.onnx.preview.training"):
            return True  # no schema here to ask (contrib ops): trust the block lists
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opsets.get(domain, 1), domain)
        except onnx.defs.SchemaError:
            return True
        allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        target = _TYPE_STRING[self.target]
        for formals, actuals in ((schema.inputs, node.input), (schema.outputs, node.output)):
            for position, name in enumerate(actuals):
                if not name or not formals:
                    continue
                formal = formals[min(position, len(formals) - 1)]
                if position >= len(formals) and formal.option != onnx.defs.OpSchema.FormalParameterOption.Variadic:
                    continue
                if self.types.get(name) not in (TensorProto.FLOAT, self.target):
                    continue
                types = allowed.get(formal.type_str)
                if types is not None and "tensor(float)" in types and target not in types:
                    return False
        return True

    def _retype_attributes(self, node: NodeProto) -> None:
        """Attributes that name float32 as the type a converted node makes now name the target type."""
        if node.op_type == "Cast":
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                    attribute.i = self.target
        if node.op_type in _DTYPE_OPS:
            has_dtype = False
            for attribute in node.attribute:
                if attribute.name == "dtype":
                    has_dtype = True
                    if attribute.i == TensorProto.FLOAT:
                        attribute.i = self.target
            if not has_dtype and node.op_type in _DTYPE_DEFAULTS_TO_FLOAT:
                node.attribute.append(helper.make_attribute("dtype", self.target))
        if node.domain in ("", "ai.onnx") and node.op_type == "ConstantOfShape" \
                and not any(a.name == "value" for a in node.attribute):
            zero = helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0])
            node.attribute.append(helper.make_attribute("value", zero))  # converted with the other tensors

    # -- initializers

    def _convert_initializers(self) -> None:
        for name, use in self.initializers.items():
            if self.force_initializers or use.by_low:
                _convert_tensor(use.tensor, self.target, self.min_positive_val, self.max_finite_val)
                self.low_values.add(name)

    # -- values between float32 nodes

    def _keep_float_between_blocked(self, works: list[_GraphWork]) -> None:
        main = works[0]
        for name, (work, node, position) in self.blocked_outputs.items():
            if name not in self.low_values or name in self.low_reads:
                continue
            self.low_values.discard(name)
            for value in work.graph.value_info:
                if value.name == name:
                    value.type.tensor_type.elem_type = TensorProto.FLOAT
            if name in self.output_casts:  # the float32 node writes the kept output itself
                index, output = self.output_casts[name]
                node.output[position] = output
                for reader in _nodes_everywhere(main.graph):
                    for i, read in enumerate(reader.input):
                        if read == name:
                            reader.input[i] = output
                main.dropped.add(index)
                kept = [v for v in main.graph.value_info if v.name != name]
                del main.graph.value_info[:]
                main.graph.value_info.extend(kept)

    # -- Casts around float32 nodes

    def _cast_always_float_inputs(self, work: _GraphWork, node: NodeProto) -> None:
        forced = self.force_inputs.get(node.op_type, ())
        for position, name in enumerate(node.input):
            if position in self.always_float[node.op_type] and position not in forced and name in self.low_values:
                node.input[position] = self._cast_to_float(work, name)

    def _wrap_blocked(self, work: _GraphWork, index: int, node: NodeProto) -> None:
        for position, name in enumerate(node.input):
            if name in self.low_values:
                node.input[position] = self._cast_to_float(work, name)
        # a float32 node's subgraphs stay float32: the low outer values they read are cast for them
        renames = {name: self._cast_to_float(work, name)
                   for name in sorted(_free_names_of_subgraphs(node)) if name in self.low_values}
        if renames:
            for attribute in node.attribute:
                for subgraph in _attribute_graphs(attribute):
                    for inner in _nodes_everywhere(subgraph):
                        for i, name in enumerate(inner.input):
                            if name in renames:
                                inner.input[i] = renames[name]
        for position, name in enumerate(node.output):
            if name not in self.low_values:
                continue
            float_name = self._fresh(f"{name}_cast_to_{self.low_suffix}")
            self._add_value_info(work.graph, self._value_info_of(work.graph, name), float_name, TensorProto.FLOAT)
            cast = helper.make_node("Cast", [float_name], [name], name=self._fresh(f"{name}_cast_to_{self.low_suffix}_node"),
                                    to=self.target)
            node.output[position] = float_name
            work.after.setdefault(index, []).append(cast)

    def _cast_to_float(self, work: _GraphWork, name: str) -> str:
        """The name of ``name`` cast to float32: one Cast per value and graph, right after its producer."""
        key = (name, id(work.graph))
        if key in self.cast_outputs:
            return self.cast_outputs[key]
        output = self._fresh(f"{name}_cast_to_fp32")
        self._add_value_info(work.graph, self._value_info_of(work.graph, name), output, TensorProto.FLOAT)
        cast = helper.make_node("Cast", [name], [output], name=self._fresh(f"{name}_cast_to_fp32_node"), to=TensorProto.FLOAT)
        # a value from outside this graph's nodes (input, initializer, outer scope) is cast first thing
        work.after.setdefault(work.producers.get(name, -1), []).append(cast)
        self.cast_outputs[key] = output
        return output

    def _value_info_of(self, graph: GraphProto, name: str) -> ValueInfoProto | None:
        for value in (*graph.value_info, *graph.input, *graph.output):
            if value.name == name:
                return value
        use = self.initializers.get(name)
        if use is not None:
            return helper.make_tensor_value_info(name, use.tensor.data_type, list(use.tensor.dims))
        return None

    def _add_value_info(self, graph: GraphProto, like: ValueInfoProto | None, name: str, elem_type: int) -> None:
        value = graph.value_info.add()
        if like is not None:
            value.CopyFrom(like)
        value.name = name
        value.type.tensor_type.elem_type = elem_type

    def _fresh(self, name: str) -> str:
        candidate, n = name, 1
        while candidate in self.taken:
            candidate, n = f"{name}_{n}", n + 1
        self.taken.add(candidate)
        return candidate


# --------------------------------------------------------------------------------------------
# helpers over GraphProto


def _load_beside(inferred: str, original: Path) -> ModelProto:
    """Load the shape-inferred copy; its external data paths are relative to the original's folder."""
    model = onnx.load(inferred, load_external_data=False)
    onnx.load_external_data_for_model(model, str(original.parent))
    return model


def _place_casts(work: _GraphWork) -> int:
    """Rebuild the graph's node list with each new Cast right after the node it follows; the Casts placed."""
    if not work.after and not work.dropped:
        return 0
    nodes = list(work.after.get(-1, ()))
    for index, node in enumerate(work.graph.node):
        if index not in work.dropped:
            nodes.append(node)
        nodes.extend(work.after.get(index, ()))
    del work.graph.node[:]
    work.graph.node.extend(nodes)
    return sum(len(casts) for casts in work.after.values()) - len(work.dropped)


def _attribute_graphs(attribute: AttributeProto) -> Iterator[GraphProto]:
    if attribute.type == AttributeProto.GRAPH:
        yield attribute.g
    elif attribute.type == AttributeProto.GRAPHS:
        yield from attribute.graphs


def _nodes_everywhere(graph: GraphProto) -> Iterator[NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for subgraph in _attribute_graphs(attribute):
                yield from _nodes_everywhere(subgraph)


def _all_names(graph: GraphProto) -> Iterator[str]:
    for value in (*graph.input, *graph.output, *graph.value_info):
        yield value.name
    for tensor in graph.initializer:
        yield tensor.name
    for node in graph.node:
        yield node.name
        yield from node.output
        for attribute in node.attribute:
            for subgraph in _attribute_graphs(attribute):
                yield from _all_names(subgraph)


def _value_types(graph: GraphProto, types: dict[str, int] | None = None) -> dict[str, int]:
    """Element type of every value whose type is known (inputs, outputs, value_info, initializers), all scopes."""
    types = {} if types is None else types
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    for tensor in graph.initializer:
        types[tensor.name] = tensor.data_type
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in _attribute_graphs(attribute):
                _value_types(subgraph, types)
    return types


def _free_names_of_subgraphs(node: NodeProto) -> set[str]:
    """Names the node's subgraphs read from outside themselves."""
    free: set[str] = set()
    for attribute in node.attribute:
        for subgraph in _attribute_graphs(attribute):
            free |= _free_names(subgraph)
    return free


def _free_names(graph: GraphProto) -> set[str]:
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    free: set[str] = set()
    for node in graph.node:
        free.update(name for name in node.input if name and name not in defined)
        free |= {name for name in _free_names_of_subgraphs(node) if name not in defined}
        defined.update(node.output)
    free.update(v.name for v in graph.output if v.name not in defined)
    return free
