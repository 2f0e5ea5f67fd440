"""Kernels keyed by (domain, op type, since-version), their declarations, and attribute binding.

A kernel is a plain function: its positional parameters are the op's inputs
(a missing optional input arrives as ``None``; variadic ops take ``*inputs``),
its keyword parameters are the op's ONNX attributes with their defaults::

    @op("LeakyRelu", versions=(6, 16))
    def leaky_relu(x, *, alpha=0.01):
        return np.where(x >= 0, x, x * x.dtype.type(alpha))

``versions`` lists exactly the ONNX schema versions the function implements, so a
model's opset picks the right semantics and an unimplemented version is reported
instead of silently run with another version's rules. A kernel returns one value,
or a tuple of values when registered with ``multi_output=True``.

Keyword parameters whose names start with ``_`` are filled from the node, not its
attributes, when a kernel declares them:

* ``_num_outputs``: how many outputs the node declares (including skipped ones);
* ``_num_inputs``: how many inputs the node declares;
* ``_opset``: the model's opset for the node's domain;
* ``_outer``: (run time) the values of the outer-scope names that the node's
  subgraph attributes read; pass it on when calling a subgraph;
* ``_alloc``: (run time) ``_alloc(shape, dtype)`` returns an uninitialized, C-contiguous,
  writable array from the run's arena (a recycled buffer, an input donated in place, or
  new memory); the kernel writes its output there (numpy ``out=``) and returns it. It is
  ``None`` outside a plan (constant folding, direct calls). Ask only for C-contiguous
  operands' outputs: numpy gives others its own layout, which later kernels' float paths
  (and so their rounding) follow.

A kernel may also be registered with ``prepack=fn``: at session creation
``fn(inputs, attributes)`` is called once with the node's constant inputs (the
initializers it reads, ``None`` for every other input) and its attribute
keywords; what it returns reaches the kernel as the keyword ``_packed`` on every
run (``None`` when prepack declined). This is where constant weights are
reshaped, dequantized or compiled once instead of on every run. The result
must not be mutated afterwards: runs share it.

A kernel function may carry a ``fast_path(bound, keywords)`` attribute: called once per node with the kernel
bound to its keywords (``functools.partial``) and those keywords, it returns a function of the node's inputs
alone computing what ``bound`` computes, with the per-call handling of the keywords done once (a convolution's
prepared route looked up directly: a small model's nodes spend microseconds there), or None where it has none;
it may fall back to ``bound`` for inputs it does not expect. It must take ``_alloc`` where the kernel does; it is given
the partial's ``func`` and ``keywords``.

Declarations the buffer planner uses (onnxruntime's ``MayInplace`` and ``Alias``):

* ``inplace={i: o}``: output ``o`` may be written over input ``i``: when input ``i`` dies
  at this node and no other value shares its memory, ``_alloc`` for output ``o`` hands that
  input's own array back (only when shape and dtype match). The kernel must then be correct
  with its output buffer being that input (element-wise ufuncs are).
* ``alias={i: o}``: output ``o`` may be a view of input ``i`` (Reshape, Identity, ...): the
  input's memory stays alive while the output is.

Variants: several kernels may implement one (domain, op, version). Each declares
``types={input index: dtypes}`` (the input element types it handles; none: every type) and
a ``priority``; at session creation the highest-priority kernel whose constraints the
node's statically known input types satisfy is chosen, and where those types are unknown a
dispatcher picks per run from the actual inputs (the unconstrained kernel is the fallback).
``lookup`` returns the fallback kernel; its ``variants`` holds the others, best first.

Graph attributes arrive as callables (see ``framework.execution_plan.Subgraph``).
An attribute named like a Python keyword (``lambda``) binds to the parameter with a
trailing underscore (``lambda_``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import keyword
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx.defs
import onnx_ir as ir

from ..errors import Fail, InvalidGraph, NotImplemented as OrtNotImplemented
from ..graph.opsets import describe

KernelFn = Callable[..., Any]
Allocator = Callable[[tuple[int, ...], np.dtype], np.ndarray]

# Domains whose op versions are defined by ONNX schemas (exact-version lookup).
_SCHEMA_DOMAINS = ("", "ai.onnx.ml", "ai.onnx.preview.training")


@dataclass(frozen=True)
class KernelDef:
    """One registered kernel for one op version, with its declarations (see the module docstring)."""

    domain: str
    op_type: str
    since_version: int
    fn: KernelFn
    multi_output: bool = False
    prepack: KernelFn | None = None
    inplace: Mapping[int, int] = field(default_factory=dict)
    alias: Mapping[int, int] = field(default_factory=dict)
    types: Mapping[int, frozenset[np.dtype]] = field(default_factory=dict)
    priority: int = 0
    variants: tuple[KernelDef, ...] = ()

    def handles(self, dtypes: Sequence[np.dtype | None]) -> bool | None:
        """Whether inputs of these element types meet the type constraints (None: a constrained type is unknown)."""
        unknown = False
        for index, allowed in self.types.items():
            dtype = dtypes[index] if index < len(dtypes) else None
            if dtype is None:
                unknown = True
            elif dtype not in allowed:
                return False
        return None if unknown else True


class KernelRegistry:
    """Kernels of one provider, registered per op version."""

    def __init__(self) -> None:
        # (domain, op) -> version -> kernels of that version, highest priority first
        self._kernels: dict[tuple[str, str], dict[int, list[KernelDef]]] = {}

    def register(self, op_type: str, versions: int | tuple[int, ...], domain: str = "", multi_output: bool = False,
                 prepack: KernelFn | None = None, *, inplace: Mapping[int, int] | None = None,
                 alias: Mapping[int, int] | None = None, types: Mapping[int, Any] | None = None,
                 priority: int = 0):
        """Decorator registering ``fn`` for each ONNX schema version in ``versions`` (see the module docstring).

        ``types`` maps an input index to the element type(s) the kernel handles (anything
        ``np.dtype`` accepts, or a tuple of them).
        """
        versions = (versions,) if isinstance(versions, int) else tuple(versions)
        constraints = {int(i): frozenset(np.dtype(t) for t in (ts if isinstance(ts, (tuple, list, set, frozenset)) else (ts,)))
                       for i, ts in (types or {}).items()}

        def decorator(fn: KernelFn) -> KernelFn:
            table = self._kernels.setdefault((domain, op_type), {})
            for version in versions:
                kernels = table.setdefault(version, [])
                name = f"{domain or 'ai.onnx'}::{op_type}-{version}"
                if any(k.priority == priority for k in kernels):
                    raise ValueError(f"kernel {name} registered twice at priority {priority}")
                if any(k.multi_output != multi_output for k in kernels):
                    raise ValueError(f"kernel variants of {name} disagree on multi_output")
                kernels.append(KernelDef(domain, op_type, version, fn, multi_output, prepack, dict(inplace or {}),
                                         dict(alias or {}), constraints, priority))
                kernels.sort(key=lambda k: -k.priority)
            return fn

        return decorator

    def lookup(self, domain: str, op_type: str, opset: int) -> KernelDef | None:
        """The fallback kernel implementing ``op_type`` as defined at ``opset`` in ``domain`` (its
        ``variants`` hold the higher-priority kernels of that version), or None."""
        kernels = _lookup(self, domain, op_type, opset)
        if not kernels:
            return None
        return dataclasses.replace(kernels[-1], variants=tuple(kernels[:-1])) if len(kernels) > 1 else kernels[0]

    def ops(self) -> list[tuple[str, str, int]]:
        return sorted((d, o, v) for (d, o), table in self._kernels.items() for v in table)

    def kernels(self) -> Iterable[KernelDef]:
        """Every registered kernel, variants included."""
        for table in self._kernels.values():
            for kernels in table.values():
                yield from kernels


@functools.lru_cache(maxsize=None)
def schema_since_version(domain: str, op_type: str, opset: int) -> int | None:
    """The since-version of the ONNX schema in force for ``op_type`` at ``opset``, or None."""
    if domain not in _SCHEMA_DOMAINS:
        return None
    try:
        return onnx.defs.get_schema(op_type, opset, domain).since_version
    except onnx.defs.SchemaError:
        return None


@functools.lru_cache(maxsize=None)
def schema_attributes(domain: str, op_type: str, since_version: int) -> frozenset[str] | None:
    """Attribute names the ONNX schema of that exact version defines, or None for non-ONNX domains."""
    if domain not in _SCHEMA_DOMAINS:
        return None
    try:
        schema = onnx.defs.get_schema(op_type, since_version, domain)
    except onnx.defs.SchemaError:
        return None
    return frozenset(schema.attributes) if schema.since_version == since_version else None


# INT attributes the ONNX schemas document as 0/1 switches (reviewed by hand: the descriptions
# are too irregular to find them all by wording, e.g. keepdims and transA never say "0 or 1").
# onnxruntime reads some as ``!= 0`` and others as ``== 1``, so any other value has no
# consistent meaning: it is an invalid graph, not a silent guess.
_FLAG_ATTRIBUTES = frozenset({
    "align_corners", "allowzero", "antialias", "broadcast", "ceil_mode", "center_point_box",
    "count_include_pad", "detect_negative", "detect_positive", "exclude_outside", "exclusive",
    "fmod", "input_forget", "interleaved", "inverse", "is_case_sensitive", "is_causal", "is_test",
    "keepdims", "largest", "layout", "linear_before_reset", "new_axis", "noop_with_empty_axes",
    "onesided", "output_sequence", "periodic", "reverse", "saturate", "select_last_index",
    "sorted", "spatial", "storage_order", "training_mode", "transA", "transB", "upper",
})


_RESIZE_COORDINATES = frozenset({
    "half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
    "tf_half_pixel_for_nn", "tf_crop_and_resize",
})
_RNN_DIRECTIONS = frozenset({"forward", "reverse", "bidirectional"})
_RNN_ACTIVATIONS = frozenset({
    "Relu", "Tanh", "Sigmoid", "Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh", "HardSigmoid", "Elu",
    "Softsign", "Softplus",
})
_LOSS_REDUCTIONS = frozenset({"none", "sum", "mean"})
_SCATTER_REDUCTIONS = frozenset({"none", "add", "mul", "max", "min"})
# String attributes of ONNX ops whose spec lists every value: (op type, attribute) -> the values.
# onnxruntime's kernels refuse other values when they are created, so a model fails at load.
_CHOICES: dict[tuple[str, str], frozenset[str]] = {
    ("Pad", "mode"): frozenset({"constant", "reflect", "edge", "wrap"}),
    ("BitShift", "direction"): frozenset({"LEFT", "RIGHT"}),
    ("GridSample", "mode"): frozenset({"bilinear", "nearest", "bicubic", "linear", "cubic"}),
    ("GridSample", "padding_mode"): frozenset({"zeros", "border", "reflection"}),
    ("Resize", "mode"): frozenset({"nearest", "linear", "cubic"}),
    ("Resize", "coordinate_transformation_mode"): _RESIZE_COORDINATES,
    ("Resize", "nearest_mode"): frozenset({"round_prefer_floor", "round_prefer_ceil", "floor", "ceil"}),
    ("Resize", "keep_aspect_ratio_policy"): frozenset({"stretch", "not_larger", "not_smaller"}),
    ("Upsample", "mode"): frozenset({"nearest", "linear", "bilinear"}),
    ("ScatterND", "reduction"): _SCATTER_REDUCTIONS,
    ("ScatterElements", "reduction"): _SCATTER_REDUCTIONS,
    ("RNN", "direction"): _RNN_DIRECTIONS,
    ("GRU", "direction"): _RNN_DIRECTIONS,
    ("LSTM", "direction"): _RNN_DIRECTIONS,
    ("RNN", "activations"): _RNN_ACTIVATIONS,
    ("GRU", "activations"): _RNN_ACTIVATIONS,
    ("LSTM", "activations"): _RNN_ACTIVATIONS,
    ("RoiAlign", "mode"): frozenset({"avg", "max"}),
    ("RoiAlign", "coordinate_transformation_mode"): frozenset({"half_pixel", "output_half_pixel"}),
    ("DepthToSpace", "mode"): frozenset({"DCR", "CRD"}),
    ("TfIdfVectorizer", "mode"): frozenset({"TF", "IDF", "TFIDF"}),
    ("StringNormalizer", "case_change_action"): frozenset({"LOWER", "UPPER", "NONE"}),
    ("NegativeLogLikelihoodLoss", "reduction"): _LOSS_REDUCTIONS,
    ("SoftmaxCrossEntropyLoss", "reduction"): _LOSS_REDUCTIONS,
    ("Gelu", "approximate"): frozenset({"none", "tanh"}),
    ("ImageDecoder", "pixel_format"): frozenset({"RGB", "BGR", "Grayscale"}),
    ("TensorScatter", "mode"): frozenset({"linear", "circular"}),
}
# onnxruntime reads an empty auto_pad as NOTSET.
_AUTO_PAD = frozenset({"NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID", ""})


def _positive(values) -> bool:
    return all(int(v) > 0 for v in (values if isinstance(values, (list, tuple)) else [values]))


# Int attributes of ONNX ops with a range the spec states and onnxruntime's kernels check when
# created: attribute -> (predicate, what it must be); ops -> their own rules where names overlap.
_INT_RULES: dict[str, tuple] = {
    "strides": (_positive, "positive"),
    "dilations": (_positive, "positive"),
    "kernel_shape": (_positive, "positive"),
}
_OP_INT_RULES: dict[tuple[str, str], tuple] = {
    ("RNN", "hidden_size"): (_positive, "positive"),
    ("GRU", "hidden_size"): (_positive, "positive"),
    ("LSTM", "hidden_size"): (_positive, "positive"),
    ("LpNormalization", "p"): (lambda v: v in (1, 2), "1 or 2"),
}


def attribute_range(domain: str, op_type: str, name: str) -> tuple | None:
    """(predicate, description) for an ONNX op's int attribute with a stated range, else None."""
    if domain != "":
        return None
    return _OP_INT_RULES.get((op_type, name)) or _INT_RULES.get(name)


def attribute_choices(domain: str, op_type: str, name: str) -> frozenset[str] | None:
    """The values an ONNX op's string attribute may take, where its spec lists them all (else None)."""
    if domain != "":
        return None
    if name == "auto_pad":
        return _AUTO_PAD
    return _CHOICES.get((op_type, name))


@functools.lru_cache(maxsize=None)
def schema_flag_attributes(domain: str, op_type: str, since_version: int) -> frozenset[str]:
    """Attributes of that exact ONNX schema that are INT 0/1 switches (empty for non-ONNX domains)."""
    if domain not in _SCHEMA_DOMAINS:
        return frozenset()
    try:
        schema = onnx.defs.get_schema(op_type, since_version, domain)
    except onnx.defs.SchemaError:
        return frozenset()
    if schema.since_version != since_version:
        return frozenset()
    int_type = onnx.defs.OpSchema.AttrType.INT
    return frozenset(n for n, a in schema.attributes.items() if n in _FLAG_ATTRIBUTES and a.type == int_type)


def _lookup(registry: KernelRegistry, domain: str, op_type: str, opset: int) -> list[KernelDef] | None:
    table = registry._kernels.get((domain, op_type))
    if not table:
        return None
    since = schema_since_version(domain, op_type, opset)
    if since is not None:
        return table.get(since)
    candidates = [v for v in table if v <= opset]
    return table[max(candidates)] if candidates else None


# --------------------------------------------------------------------------- binding

_CONTEXT_KEYS = ("_num_outputs", "_num_inputs", "_opset")


@functools.lru_cache(maxsize=None)
def _signature(fn: KernelFn) -> tuple[frozenset[str], bool]:
    params = inspect.signature(fn).parameters
    names = frozenset(n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
    return names, any(p.kind == p.VAR_KEYWORD for p in params.values())


@functools.lru_cache(maxsize=None)
def _required_keywords(fn: KernelFn) -> tuple[str, ...]:
    """The attributes a kernel cannot run without: its keyword-only parameters with no default."""
    params = inspect.signature(fn).parameters.values()
    return tuple(p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty and not p.name.startswith("_"))


def accepts(fn: KernelFn, name: str) -> bool:
    names, var_kw = _signature(fn)
    return name in names or var_kw


@dataclass(frozen=True)
class KernelContract:
    """What the plan may do around a compiled kernel: donate inputs, expect views, pass ``_alloc``."""

    inplace: Mapping[int, int] = field(default_factory=dict)
    alias: Mapping[int, int] = field(default_factory=dict)
    uses_alloc: bool = False


_NO_CONTRACT = KernelContract()


def kernel_contract(fn: KernelFn) -> KernelContract:
    """The declarations of a callable :func:`bind_attributes` returned (none for any other callable)."""
    return getattr(fn, "contract", _NO_CONTRACT)


def bind_attributes(kernel: KernelDef, node, opset: int, attributes: dict[str, Any],
                    constants: Sequence[Any] = ()) -> KernelFn:
    """Return the kernel for ``node`` with its (already converted) attributes bound as keywords.

    Among ``kernel`` and its ``variants`` the best one the node's statically known input
    types allow is bound; where a constrained input type is unknown, a dispatcher choosing
    per run is returned. The result carries its :class:`KernelContract` (see
    :func:`kernel_contract`). ``constants`` holds, per node input, its constant value or
    None; a kernel with a ``prepack`` function gets that function's result as ``_packed``.

    An attribute the op's schema (at that version) does not define is an invalid
    graph, as in onnxruntime; one the kernel does not take raises NOT_IMPLEMENTED
    naming the node: ignoring either would compute something else.
    """
    dtypes = _static_input_dtypes(node)
    options: list[tuple[KernelDef, KernelFn]] = []
    fit: bool | None = False
    for candidate in (*kernel.variants, kernel):
        fit = candidate.handles(dtypes)
        if fit is False:
            continue
        if candidate is not kernel and not _takes_attributes(candidate, attributes):
            continue  # a variant without an attribute the node sets: the fallback computes it
        options.append((candidate, _bind_one(candidate, node, opset, attributes, constants)))
        if fit:
            break  # every later candidate ranks lower
    if not options:
        types = ", ".join(str(t) for t in dtypes)
        raise OrtNotImplemented(f"{describe(node)}: no {kernel.op_type}-{kernel.since_version} kernel handles inputs of type ({types})")
    if len(options) == 1 and fit:
        return options[0][1]
    return _TypeDispatch(describe(node), options)



def _takes_attributes(kernel: KernelDef, attributes: dict[str, Any]) -> bool:
    names, var_kw = _signature(kernel.fn)
    return var_kw or all((n + "_" if keyword.iskeyword(n) else n) in names for n in attributes)


def _bind_one(kernel: KernelDef, node, opset: int, attributes: dict[str, Any], constants: Sequence[Any]) -> KernelFn:
    names, var_kw = _signature(kernel.fn)
    defined = schema_attributes(kernel.domain, kernel.op_type, kernel.since_version)
    flags = schema_flag_attributes(kernel.domain, kernel.op_type, kernel.since_version)
    kwargs: dict[str, Any] = {}
    for name, value in attributes.items():
        if defined is not None and name not in defined:
            raise InvalidGraph(
                f"{describe(node)}: unrecognized attribute '{name}' for {kernel.op_type}-{kernel.since_version}"
            )
        if name in flags and not (isinstance(value, (int, np.integer)) and value in (0, 1)):
            raise Fail(  # onnxruntime's kernels check these when they are created: FAIL at load
                f"{describe(node)}: attribute '{name}' of {kernel.op_type}-{kernel.since_version} "
                f"must be 0 or 1, got {value!r}"
            )
        choices = attribute_choices(kernel.domain, kernel.op_type, name)
        if choices is not None:
            for text in [value] if isinstance(value, str) else value:
                if text not in choices:
                    raise Fail(
                        f"{describe(node)}: attribute '{name}' of {kernel.op_type} is {text!r}; "
                        f"it must be one of {sorted(choices)}"
                    )
        rule = attribute_range(kernel.domain, kernel.op_type, name)
        if rule is not None and isinstance(value, (int, np.integer, list, tuple)) and not rule[0](value):
            raise Fail(f"{describe(node)}: attribute '{name}' of {kernel.op_type} must be {rule[1]}, got {value!r}")
        key = name + "_" if keyword.iskeyword(name) else name
        if key not in names and not var_kw:
            raise OrtNotImplemented(
                f"{describe(node)}: attribute '{name}' is not supported by onyxrt's "
                f"{kernel.op_type}-{kernel.since_version} kernel"
            )
        kwargs[key] = value
    missing = [name for name in _required_keywords(kernel.fn) if name not in kwargs]
    if missing:  # contrib ops have no ONNX schema to check them at load: the kernel's signature says
        raise InvalidGraph(f"{describe(node)}: required attribute '{missing[0]}' of {kernel.op_type} is missing")
    if kernel.prepack is not None:
        inputs = list(constants) + [None] * (len(node.inputs) - len(constants))
        kwargs["_packed"] = kernel.prepack(inputs, dict(kwargs))
    context = {"_num_outputs": len(node.outputs), "_num_inputs": len(node.inputs), "_opset": opset}
    for key in _CONTEXT_KEYS:
        if key in names:
            kwargs[key] = context[key]
    bound = functools.partial(kernel.fn, **kwargs)
    contract = KernelContract(kernel.inplace, kernel.alias, "_alloc" in names)
    fast = _fast_path(kernel, bound, kwargs, contract)
    if fast is not None:
        bound = fast
    if kernel.prepack is not None and getattr(kernel.fn, "fast_path", None) is not None:

        def with_constants(constants: Sequence[Any], _kernel=kernel, _kwargs=kwargs):
            """This node's kernel for a plan that holds ``constants`` (per input, None where it computes it): its
            fast path with a prepack of them, None where it has none."""
            rekeyed = dict(_kwargs, _packed=_kernel.prepack(list(constants), dict(_kwargs)))
            return _fast_path(_kernel, functools.partial(_kernel.fn, **rekeyed), rekeyed, contract)

        bound.with_constants = with_constants
    bound.contract = contract
    return bound


def _fast_path(kernel: KernelDef, bound: functools.partial, kwargs: dict[str, Any],
               contract: KernelContract) -> KernelFn | None:
    """The kernel's ``fast_path`` for ``bound`` where it has one (None otherwise), telling, as the partial does,
    which kernel and keywords it runs."""
    fast_path = getattr(kernel.fn, "fast_path", None)
    fast = fast_path(bound, kwargs) if fast_path is not None else None
    if fast is not None:
        fast.func, fast.keywords, fast.contract = bound.func, bound.keywords, contract
    return fast


def _static_input_dtypes(node) -> list[np.dtype | None]:
    """Element types of the node's inputs where the graph knows them (None elsewhere)."""
    dtypes: list[np.dtype | None] = []
    for value in node.inputs:
        value_type = None if value is None else value.type
        dtype = None
        if isinstance(value_type, ir.TensorType) and value_type.dtype != ir.DataType.UNDEFINED:
            try:
                dtype = np.dtype(value_type.dtype.numpy())
            except TypeError:  # an ONNX type numpy has no counterpart for
                dtype = None
        dtypes.append(dtype)
    return dtypes


class _TypeDispatch:
    """Picks, per run, the best bound kernel whose type constraints the actual inputs meet.

    Its contract is what every option allows: in-place pairs all options declare, aliases
    any option declares; ``_alloc`` is passed on to the options that take it.
    """

    def __init__(self, description: str, options: list[tuple[KernelDef, KernelFn]]) -> None:
        self._description = description
        self._options = options
        self._chosen: dict[tuple[np.dtype | None, ...], tuple[KernelFn, bool]] = {}
        self._constrained = sorted({i for kernel, _ in options for i in kernel.types})
        contracts = [kernel_contract(fn) for _, fn in options]
        inplace = dict(contracts[0].inplace)
        for contract in contracts[1:]:
            inplace = {i: o for i, o in inplace.items() if contract.inplace.get(i) == o}
        alias: dict[int, int] = {}
        for contract in contracts:
            alias.update(contract.alias)
        self.contract = KernelContract(inplace, alias, any(c.uses_alloc for c in contracts))

    def __call__(self, *inputs: Any, _alloc: Allocator | None = None) -> Any:
        key = tuple(getattr(inputs[i], "dtype", None) if i < len(inputs) else None for i in self._constrained)
        chosen = self._chosen.get(key)
        if chosen is None:
            chosen = self._chosen[key] = self._choose(key)
        fn, takes_alloc = chosen
        return fn(*inputs, _alloc=_alloc) if takes_alloc and _alloc is not None else fn(*inputs)

    def _choose(self, key: tuple[np.dtype | None, ...]) -> tuple[KernelFn, bool]:
        dtypes: list[np.dtype | None] = [None] * (max(self._constrained, default=-1) + 1)
        for index, dtype in zip(self._constrained, key):
            dtypes[index] = dtype
        for kernel, fn in self._options:
            if kernel.handles(dtypes):
                return fn, kernel_contract(fn).uses_alloc
        types = ", ".join(str(t) for t in key)
        raise OrtNotImplemented(f"{self._description}: no kernel handles inputs of type ({types})")
