"""Reverse-mode differentiation of IR graphs: expanding ai.onnx.preview.training::Gradient.

A ``Gradient(xs=[...], zs=[...], y="...")`` node is defined over the graph it sits
in: its outputs are dY/dX for each name in ``xs``, where ``y`` is computed from
``xs`` (variables) and ``zs`` (held constant) by the nodes of that graph, and its
inputs are the values of ``xs`` then ``zs`` at which to differentiate. No kernel
can see the graph, so :func:`expand_gradient_nodes` replaces each Gradient node
by the ops computing the gradients, before partitioning:

1. the forward subgraph is the set of nodes ``y`` depends on, the walk stopping
   at the values ``xs`` and ``zs`` name (they are independent variables, even when
   a node computes them);
2. when a Gradient input is another value than the one its name stands for
   (gradient at another point), the forward nodes downstream of it are cloned to
   read that input; otherwise the forward values are reused;
3. reverse mode: starting from ones shaped like ``y`` (so a non-scalar ``y`` is
   implicitly summed), each node on a path from ``xs`` to ``y`` maps its outputs'
   gradients to its inputs' by a vector-Jacobian rule written as graph nodes;
   contributions to one value are added; broadcasting is undone by summing the
   gradient back to the input's shape.

Gradients use standard ONNX ops where they fit the model's opset, and a few
private ops (domain :data:`AUTODIFF_DOMAIN`, kernels in
``providers/cpu/training/gradient.py``) for what needs an element type or rank
not known when the graph is built. Ops without a rule of their own but with an
ONNX function body (LayerNormalization, Gelu, Elu, SoftmaxCrossEntropyLoss...)
are replaced by their bodies first. The rules of most ops are themselves
differentiable, so a Gradient whose ``y`` is another Gradient's output (higher
order) works; the private gradients of Softmax, Slice, Concat, Gather,
GatherElements/TopK, Tile and Dropout are not (a clear NOT_IMPLEMENTED says so).

The pass must run before the graph optimizations: dead-code elimination would
drop forward nodes only the Gradient's ``y`` attribute refers to, identity
elimination could rename the values ``xs``/``y`` name, and constant folding could
fold away the dependence on an initializer listed in ``xs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx.shape_inference
import onnx_ir as ir

from ..errors import InvalidGraph, NotImplemented as OrtNotImplemented
from .attributes import attribute_value
from .builder import GraphBuilder, UniqueNames, captured_values, reads, replace_node, subgraphs
from .function_expansion import expand_node, schema_function
from .opsets import describe, opset_for

TRAINING_DOMAIN = "ai.onnx.preview.training"
AUTODIFF_DOMAIN = "ai.onyxrt.autodiff"


def is_gradient_node(node: ir.Node) -> bool:
    return node.op_type == "Gradient" and node.domain == TRAINING_DOMAIN


def expand_gradient_nodes(graph: ir.Graph, opset_imports: dict[str, int]) -> bool:
    """Replace every Gradient node of ``graph`` (and its subgraphs) by the nodes computing its outputs.

    Returns whether anything changed. Raises NOT_IMPLEMENTED when a node on the
    differentiated path has no gradient rule, INVALID_GRAPH for a malformed
    Gradient node. A Gradient inside a subgraph may differentiate through nodes
    of the enclosing graphs: its gradient nodes stay in the subgraph and read
    the outer values they need.
    """
    if not _has_gradient_node(graph):
        return False
    return _expand_in(graph, opset_imports, UniqueNames(graph), {})


def _has_gradient_node(graph: ir.Graph) -> bool:
    for node in graph:
        if is_gradient_node(node) or any(_has_gradient_node(sub) for sub in subgraphs(node)):
            return True
    return False


def _expand_in(graph: ir.Graph, opset_imports: dict[str, int], names: UniqueNames, outer: dict[str, ir.Value]) -> bool:
    changed = False
    pending = [node for node in graph if is_gradient_node(node)]
    while pending:
        progressed = False
        for gnode in list(pending):
            spec = _GradientSpec.parse(gnode)
            scope = {**outer, **_values_by_name(graph)}
            forward = _forward_closure(spec, scope)
            if any(is_gradient_node(n) for n in forward):
                continue  # differentiate through the other Gradient once it is expanded
            if _inline_function_ops(graph, forward, spec, scope, opset_imports, names):
                scope = {**outer, **_values_by_name(graph)}
                forward = _forward_closure(spec, scope)
            if spec.y not in scope:
                raise InvalidGraph(f"{describe(gnode)}: y '{spec.y}' is not a value of the graph")
            builder = _Builder(gnode, opset_imports.get("", 1), names)
            outputs = _differentiate(builder, gnode, spec, scope, forward)
            replace_node(gnode, builder.nodes, outputs)
            pending.remove(gnode)
            progressed = changed = True
        if not progressed:
            raise InvalidGraph(f"{describe(pending[0])}: Gradient nodes depend on each other's outputs in a cycle")
    if changed:
        try:
            graph.sort()
        except ValueError as error:
            raise InvalidGraph(f"graph '{graph.name}': the Gradient expansion left a cycle ({error})") from error
    if any(True for node in graph for _ in subgraphs(node)):
        scope = {**outer, **_values_by_name(graph)}
        for node in graph:
            for sub in subgraphs(node):
                changed |= _expand_in(sub, opset_imports, names, scope)
    return changed


# --------------------------------------------------------------------------- graph utilities


def _values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    """The values ``graph`` defines (inputs, initializers, node outputs), by name."""
    values = {value.name: value for value in graph.inputs if value.name}
    values.update((name, value) for name, value in graph.initializers.items())
    for node in graph:
        values.update((value.name, value) for value in node.outputs if value.name)
    return values


def _present(value: ir.Value | None) -> bool:
    """Whether an input or output slot holds a value (an omitted output is a value named '')."""
    return value is not None and value.name != ""


def _forward_closure(spec: _GradientSpec, scope: Mapping[str, ir.Value]) -> list[ir.Node]:
    """The nodes ``y`` depends on, not looking past the values xs and zs name, in topological order."""
    stops = spec.stop_values(scope)
    y = scope.get(spec.y)
    root = y.producer() if y is not None and y not in stops else None
    if root is None:
        return []

    def deps(node: ir.Node) -> Iterable[ir.Node]:
        for value in reads(node):
            producer = value.producer()
            if value not in stops and producer is not None:
                yield producer

    order: list[ir.Node] = []
    seen = {root}
    stack = [(root, iter(deps(root)))]
    while stack:
        node, it = stack[-1]
        for dep in it:
            if dep not in seen:
                seen.add(dep)
                stack.append((dep, iter(deps(dep))))
                break
        else:
            stack.pop()
            order.append(node)
    return order


def _inline_function_ops(
    graph: ir.Graph,
    forward: list[ir.Node],
    spec: _GradientSpec,
    scope: Mapping[str, ir.Value],
    opset_imports: dict[str, int],
    names: UniqueNames,
) -> bool:
    """Replace the rule-less nodes of ``graph`` on the differentiated path by their ONNX function bodies.

    LayerNormalization, Gelu, Elu, SoftmaxCrossEntropyLoss... have no gradient
    rule of their own but are defined by bodies of ops that do. Context-dependent
    bodies need the input types: where the graph lacks them, ONNX shape inference
    supplies them. Returns whether the graph changed.
    """
    changed = False
    inferred: dict[str, onnx.TypeProto] | None = None
    for _ in range(8):  # bodies may hold function ops themselves
        active = set(spec.x_values(scope))
        candidates = []
        for node in forward:
            rule = _rule_for(node)
            if rule is _NONDIFF or not any(value in active for value in node.inputs if value is not None):
                continue
            active.update(value for value in node.outputs if _present(value))
            if rule is None and node.graph is graph:
                candidates.append(node)
        replaced = False
        for node in candidates:
            opset = opset_for(node, opset_imports)
            if any(value is not None and not _typed(value) for value in node.inputs):
                if inferred is None:
                    inferred = _inferred_types(graph, opset_imports)
                for value in node.inputs:
                    if value is not None and not _typed(value) and value.name in inferred:
                        value.type = ir.serde.deserialize_type_proto_for_type(inferred[value.name])
                        value.shape = ir.serde.deserialize_type_proto_for_shape(inferred[value.name])
            function = schema_function(node, opset)
            if function is None:
                continue
            expand_node(node, function, opset, names)
            replaced = changed = True
        if not replaced:
            break
        scope = {**scope, **_values_by_name(graph)}
        forward = _forward_closure(spec, scope)
    return changed


def _typed(value: ir.Value) -> bool:
    return value.type is not None and value.type.dtype != ir.DataType.UNDEFINED


def _inferred_types(graph: ir.Graph, opset_imports: dict[str, int]) -> dict[str, onnx.TypeProto]:
    """Value types from ONNX shape inference over ``graph`` (empty where inference fails)."""
    try:
        model = onnx.helper.make_model(
            ir.serde.serialize_graph(graph),
            opset_imports=[onnx.helper.make_opsetid(domain, version) for domain, version in opset_imports.items()],
        )
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - best effort: no types, no context-dependent body
        return {}
    return {vi.name: vi.type for vi in inferred.graph.value_info if vi.HasField("type")}


# --------------------------------------------------------------------------- the Gradient node


@dataclass
class _GradientSpec:
    """A Gradient node's attributes: the names of its variables, constants and differentiated value."""

    xs: list[str]
    zs: list[str]
    y: str

    def x_values(self, scope: Mapping[str, ir.Value]) -> list[ir.Value]:
        return [scope[name] for name in self.xs if name in scope]

    def stop_values(self, scope: Mapping[str, ir.Value]) -> set[ir.Value]:
        return {scope[name] for name in self.xs + self.zs if name in scope}

    @classmethod
    def parse(cls, node: ir.Node) -> _GradientSpec:
        attrs = node.attributes
        if "xs" not in attrs or "y" not in attrs:
            raise InvalidGraph(f"{describe(node)}: Gradient needs the attributes 'xs' and 'y'")
        xs = list(attrs["xs"].value)
        zs = list(attrs["zs"].value) if "zs" in attrs else []
        y = attrs["y"].value
        unknown = set(attrs) - {"xs", "zs", "y"}
        if unknown:
            raise InvalidGraph(f"{describe(node)}: unrecognized attribute(s) {sorted(unknown)} for Gradient-1")
        if not xs:
            raise InvalidGraph(f"{describe(node)}: Gradient's 'xs' is empty")
        if len(node.inputs) != len(xs) + len(zs):
            raise InvalidGraph(
                f"{describe(node)}: Gradient takes one input per name in xs and zs "
                f"({len(xs) + len(zs)}), got {len(node.inputs)}"
            )
        if len(node.outputs) > len(xs):
            raise InvalidGraph(
                f"{describe(node)}: Gradient has one output per name in xs ({len(xs)}), got {len(node.outputs)}"
            )
        if any(value is None for value in node.inputs):
            raise InvalidGraph(f"{describe(node)}: Gradient inputs cannot be omitted")
        if len(set(xs) | set(zs)) != len(xs) + len(zs):
            raise InvalidGraph(f"{describe(node)}: names in xs and zs must be distinct")
        return cls(xs, zs, y)


# Ops whose output is boolean; the other gradient ops keep the element type of an input.
_BOOLEAN_OPS = {"Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or"}
# Ops whose inputs all have the output's element type (any typed one tells it).
_SAME_TYPE_OPS = {"Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "MatMul", "Gemm"}
_SAME_TYPE_PRIVATE_OPS = {"SumToShape", "BroadcastLike", "ReshapeLike", "MatMulGrad", "SoftmaxGrad"}
# Private ops whose output has the shape of their second input.
_SHAPED_LIKE_SECOND = {"SumToShape", "BroadcastLike", "ReshapeLike"}


class _Builder:
    """Emits the nodes replacing one Gradient node, typing each value as far as its op tells."""

    def __init__(self, gnode: ir.Node, opset: int, names: UniqueNames) -> None:
        self.gnode = gnode
        self.opset = opset
        self._nodes = GraphBuilder(names, f"{gnode.name or 'Gradient'}__")
        self._consts: dict[tuple[ir.Value, float], ir.Value] = {}

    @property
    def nodes(self) -> list[ir.Node]:
        return self._nodes.nodes

    def fresh(self, hint: str) -> str:
        return self._nodes.fresh(hint)

    def node(self, op_type: str, inputs: Sequence[ir.Value | None], attrs: Mapping[str, Any], **kwargs: Any) -> ir.Node:
        """Append a node whose outputs the caller types (see :meth:`GraphBuilder.node`)."""
        return self._nodes.node(op_type, inputs, attrs, **kwargs)

    def require(self, version: int, what: str) -> None:
        if self.opset < version:
            raise OrtNotImplemented(
                f"{describe(self.gnode)}: the gradient of {what} needs ai.onnx opset >= {version}, "
                f"the model imports {self.opset}"
            )

    def op(
        self, op_type: str, inputs: Sequence[ir.Value | None], attrs: Mapping[str, Any] | None = None, domain: str = ""
    ) -> ir.Value:
        """Append a node; returns its output."""
        type_, shape = _result_type(op_type, domain, inputs, attrs or {})
        return self._nodes.op(op_type, inputs, attrs, domain=domain, type=type_, shape=shape)

    def ad(self, op_type: str, inputs: Sequence[ir.Value | None], attrs: Mapping[str, Any] | None = None) -> ir.Value:
        return self.op(op_type, inputs, attrs, AUTODIFF_DOMAIN)

    def const(self, ref: ir.Value, value: float) -> ir.Value:
        """A 0-d tensor ``value`` of ``ref``'s element type."""
        key = (ref, float(value))
        if key not in self._consts:
            self._consts[key] = self.ad("ConstLike", [ref], {"value": float(value), "scalar": 1})
        return self._consts[key]

    def zeros_like(self, ref: ir.Value) -> ir.Value:
        return self.ad("ConstLike", [ref], {"value": 0.0, "scalar": 0})

    def sum_to(self, grad: ir.Value, ref: ir.Value) -> ir.Value:
        return self.ad("SumToShape", [grad, ref])


def _result_type(
    op_type: str, domain: str, inputs: Sequence[ir.Value | None], attrs: Mapping[str, Any]
) -> tuple[ir.TypeProtocol | None, ir.Shape | None]:
    """The type (and, for the shape-copying private ops, shape) of a gradient op's output."""
    if domain == "" and op_type in _BOOLEAN_OPS:
        return ir.TensorType(ir.DataType.BOOL), None
    private = domain == AUTODIFF_DOMAIN
    if (op_type == "Where" and not private) or (private and op_type == "CastLike"):
        sources = [inputs[1]]
    elif op_type in (_SAME_TYPE_PRIVATE_OPS if private else _SAME_TYPE_OPS):
        sources = list(inputs)
    else:
        sources = [inputs[0]]
    type_ = next((value.type for value in sources if value is not None and _typed(value)), None)
    shape = None
    if private and op_type in _SHAPED_LIKE_SECOND:
        ref = inputs[1]
        shape = ref.shape.copy() if ref is not None and ref.shape is not None else None
    elif private and op_type == "ConstLike":
        ref = inputs[0]
        shape = ir.Shape([]) if attrs.get("scalar") else (ref.shape.copy() if ref is not None and ref.shape else None)
    return type_, shape


def _differentiate(
    b: _Builder, gnode: ir.Node, spec: _GradientSpec, scope: Mapping[str, ir.Value], forward: list[ir.Node]
) -> list[ir.Value | None]:
    """Build the gradient nodes; returns the value computing each output of ``gnode``."""
    stops = spec.stop_values(scope)

    # Gradient at other values than the named ones: recompute the forward nodes they feed.
    rename: dict[ir.Value, ir.Value] = {}
    leaves_x: list[ir.Value] = []
    leaves: set[ir.Value] = set(stops)
    for i, (name, actual) in enumerate(zip(spec.xs + spec.zs, gnode.inputs)):
        named = scope.get(name)
        leaf = actual if actual is named else b.op("Identity", [actual])
        if named is not None and leaf is not named:
            rename[named] = leaf
        if i < len(spec.xs):
            leaves_x.append(leaf)
        leaves.add(leaf)
    nodes: list[ir.Node] = []
    for node in forward:
        if rename and any(value in rename for value in reads(node)):
            if any(True for _ in subgraphs(node)):
                raise OrtNotImplemented(
                    f"{describe(gnode)}: recomputing {describe(node)} at the Gradient's inputs "
                    "(they differ from the values named in xs/zs) is not supported for nodes with subgraphs"
                )
            clone = b.node(
                node.op_type,
                [None if value is None else rename.get(value, value) for value in node.inputs],
                dict(node.attributes),
                domain=node.domain,
                output_names=[b.fresh(value.name) if value.name else "" for value in node.outputs],
            )
            for old, new in zip(node.outputs, clone.outputs):
                new.type, new.shape = old.type, old.shape
                if _present(old) and old not in stops:
                    rename[old] = new
            nodes.append(clone)
        else:
            nodes.append(node)
    y = rename.get(scope[spec.y], scope[spec.y])

    # Forward: which values depend (differentiably) on xs.
    active = set(leaves_x)
    for node in nodes:
        rule = _rule_for(node)
        if rule is _NONDIFF:
            continue
        diff_in = rule.inputs(node) if rule is not None else range(len(node.inputs))
        reads_active = any(i < len(node.inputs) and node.inputs[i] in active for i in diff_in)
        if rule is None and not reads_active:
            reads_active = any(value in active for sub in subgraphs(node) for value in captured_values(sub))
        if not reads_active:
            continue
        if rule is not None:
            diff_out = rule.outputs(node)
        else:
            diff_out = [i for i in range(len(node.outputs)) if i not in _INDEX_OUTPUTS.get(node.op_type, ())]
        for i in diff_out:
            out = node.outputs[i] if i < len(node.outputs) else None
            if _present(out) and out not in leaves and _may_be_float(out):
                active.add(out)

    # Reverse: accumulate gradients from y back to xs.
    grads: dict[ir.Value, list[ir.Value]] = {}

    def total(value: ir.Value) -> ir.Value | None:
        parts = grads.get(value)
        if not parts:
            return None
        if len(parts) > 1:
            acc = parts[0]
            for part in parts[1:]:
                acc = b.op("Add", [acc, part])
            grads[value] = parts = [acc]
        return parts[0]

    if y in active:
        grads[y] = [b.ad("ConstLike", [y], {"value": 1.0, "scalar": 0})]
        for node in reversed(nodes):
            gys = [total(out) if _present(out) and out in active and out not in leaves else None for out in node.outputs]
            if all(g is None for g in gys):
                continue
            rule = _rule_for(node)
            diff_in = set(rule.inputs(node)) if rule not in (None, _NONDIFF) else set(range(len(node.inputs)))
            need = [i in diff_in and value is not None and value in active for i, value in enumerate(node.inputs)]
            if rule is None and any(value in active for sub in subgraphs(node) for value in captured_values(sub)):
                need.append(True)  # captured by a subgraph: no rule can differentiate through it
            if not any(need):
                continue
            if rule is None or rule is _NONDIFF:
                raise OrtNotImplemented(f"{describe(gnode)}: no gradient rule for {describe(node)} on the path from xs to y")
            if node.op_type not in _NO_OPSET_CHECK:
                b.require(9, node.op_type)
            results = rule.fn(b, node, gys, need)
            for i, g in enumerate(results):
                if g is not None and need[i]:
                    grads.setdefault(node.inputs[i], []).append(g)

    outputs: list[ir.Value | None] = []
    for out, leaf in zip(gnode.outputs, leaves_x):
        outputs.append((total(leaf) or b.zeros_like(leaf)) if _present(out) else None)
    return outputs


_FLOAT_TYPES = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
# Integer (index) outputs of ops that have no gradient rule, so they never look differentiable.
_INDEX_OUTPUTS = {"MaxPool": (1,), "Unique": (1, 2, 3), "MaxRoiPool": (), "NonMaxSuppression": (0,)}


def _may_be_float(value: ir.Value) -> bool:
    """False when the graph declares ``value`` a non-float tensor (it cannot carry a gradient)."""
    if not isinstance(value.type, ir.TensorType):
        return True
    return value.type.dtype == ir.DataType.UNDEFINED or value.type.dtype in _FLOAT_TYPES


# --------------------------------------------------------------------------- gradient rules


@dataclass
class _Rule:
    fn: Callable[[_Builder, ir.Node, list, list], list]
    diff_inputs: Callable[[ir.Node], Iterable[int]] | tuple[int, ...] | None = None
    diff_outputs: Callable[[ir.Node], Iterable[int]] | tuple[int, ...] | None = None

    def inputs(self, node: ir.Node) -> Iterable[int]:
        if self.diff_inputs is None:
            return range(len(node.inputs))
        return self.diff_inputs(node) if callable(self.diff_inputs) else self.diff_inputs

    def outputs(self, node: ir.Node) -> Iterable[int]:
        if self.diff_outputs is None:
            return range(len(node.outputs))
        return self.diff_outputs(node) if callable(self.diff_outputs) else self.diff_outputs


_NONDIFF = _Rule(lambda *args: [], (), ())
_RULES: dict[tuple[str, str], _Rule] = {}

# Ops whose outputs carry no gradient (piecewise constant, integer or shape valued, random).
for _op_type in (
    "Shape Size Equal Greater GreaterOrEqual Less LessOrEqual Not And Or Xor ArgMax ArgMin NonZero "
    "ConstantOfShape Constant Floor Ceil Round Sign IsNaN IsInf EyeLike RandomNormal RandomUniform "
    "RandomNormalLike RandomUniformLike Bernoulli Multinomial BitShift BitwiseAnd BitwiseOr BitwiseXor "
    "BitwiseNot OneHot Range StringNormalizer"
).split():
    _RULES[("", _op_type)] = _NONDIFF
_RULES[(AUTODIFF_DOMAIN, "ConstLike")] = _NONDIFF

# Rules emitting only private ops (no minimum ai.onnx opset).
_NO_OPSET_CHECK = {
    "Identity", "Dropout", "Add", "Sum", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Cast", "MatMul",
    "ReduceSum", "ReduceMean", "Softmax", "LogSoftmax", "Concat", "Slice", "Gather", "GatherElements", "TopK", "Tile",
    "SumToShape", "BroadcastLike", "ReshapeLike", "CastLike", "Unreduce", "ReduceLike",
}  # fmt: skip


def _rule_for(node: ir.Node) -> _Rule | None:
    return _RULES.get((node.domain, node.op_type))


def _rule(*op_types: str, domain: str = "", inputs=None, outputs=None):
    def decorator(fn):
        for op_type in op_types:
            _RULES[(domain, op_type)] = _Rule(fn, inputs, outputs)
        return fn

    return decorator


def _attr(node: ir.Node, name: str, default: Any = None) -> Any:
    attr = node.attributes.get(name)
    return default if attr is None else attribute_value(attr)


def _no_legacy_broadcast(node: ir.Node) -> None:
    if "axis" in node.attributes and _attr(node, "broadcast", 0):
        raise OrtNotImplemented(f"{describe(node)}: gradient of the legacy broadcast with 'axis' is not supported")


@_rule("Add")
def _grad_add(b, node, gys, need):
    _no_legacy_broadcast(node)
    gy = gys[0]
    return [b.sum_to(gy, x) if need[i] else None for i, x in enumerate(node.inputs[:2])]


@_rule("Sub")
def _grad_sub(b, node, gys, need):
    _no_legacy_broadcast(node)
    gy = gys[0]
    a, c = node.inputs[:2]
    return [b.sum_to(gy, a) if need[0] else None, b.op("Neg", [b.sum_to(gy, c)]) if need[1] else None]


@_rule("Mul")
def _grad_mul(b, node, gys, need):
    _no_legacy_broadcast(node)
    gy = gys[0]
    a, c = node.inputs[:2]
    return [
        b.sum_to(b.op("Mul", [gy, c]), a) if need[0] else None,
        b.sum_to(b.op("Mul", [gy, a]), c) if need[1] else None,
    ]


@_rule("Div")
def _grad_div(b, node, gys, need):
    _no_legacy_broadcast(node)
    gy = gys[0]
    a, c = node.inputs[:2]
    y = node.outputs[0]
    ga = b.sum_to(b.op("Div", [gy, c]), a) if need[0] else None
    gc = None
    if need[1]:  # d(a/c)/dc = -y/c
        gc = b.op("Neg", [b.sum_to(b.op("Div", [b.op("Mul", [gy, y]), c]), c)])
    return [ga, gc]


@_rule("Neg")
def _grad_neg(b, node, gys, need):
    return [b.op("Neg", [gys[0]])]


@_rule("Identity")
def _grad_identity(b, node, gys, need):
    return [gys[0]]


@_rule("Dropout", inputs=(0,), outputs=(0,))
def _grad_dropout(b, node, gys, need):
    training_mode = node.inputs[2] if len(node.inputs) > 2 else None
    if training_mode is None:  # inference: the identity
        return [gys[0]] + [None] * (len(node.inputs) - 1)
    # Training mode (decided at run time): the gradient needs the mask; request it if the node skipped it.
    if len(node.outputs) < 2:
        node.resize_outputs(2)
    if not node.outputs[1].name:
        node.outputs[1].name = b.fresh("dropout_mask")
        node.outputs[1].type = ir.TensorType(ir.DataType.BOOL)
    grad = b.ad("DropoutGrad", [gys[0], node.outputs[1], node.inputs[1], training_mode])
    return [grad, None, None]


@_rule("Sum")
def _grad_sum(b, node, gys, need):
    return [b.sum_to(gys[0], x) if need[i] else None for i, x in enumerate(node.inputs)]


@_rule("Mean")
def _grad_mean(b, node, gys, need):
    scaled = b.op("Div", [gys[0], b.const(gys[0], len(node.inputs))])
    return [b.sum_to(scaled, x) if need[i] else None for i, x in enumerate(node.inputs)]


@_rule("Max", "Min")
def _grad_max_min(b, node, gys, need):
    gy, y = gys[0], node.outputs[0]
    if len(node.inputs) == 1:
        return [gy]
    zero = b.const(gy, 0.0)
    return [
        b.sum_to(b.op("Where", [b.op("Equal", [x, y]), gy, zero]), x) if need[i] else None
        for i, x in enumerate(node.inputs)
    ]


@_rule("MatMul")
def _grad_matmul(b, node, gys, need):
    gy = gys[0]
    a, c = node.inputs[:2]
    return [b.ad("MatMulGrad", [gy, a, c], {"which": i}) if need[i] else None for i in range(2)]


@_rule("Gemm")
def _grad_gemm(b, node, gys, need):
    gy = gys[0]
    a, c = node.inputs[:2]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    alpha = _attr(node, "alpha", 1.0)
    beta = _attr(node, "beta", 1.0)
    ta, tb = _attr(node, "transA", 0), _attr(node, "transB", 0)

    def gemm(p, q, trans_p, trans_q):
        attrs = {"alpha": alpha, "transA": trans_p, "transB": trans_q}
        if b.opset >= 11:
            return b.op("Gemm", [p, q], attrs)
        return b.op("Gemm", [p, q, b.const(gy, 0.0)], {**attrs, "beta": 0.0})

    grads = [None, None, None]
    if need[0]:
        grads[0] = gemm(gy, c, 0, 1 - tb) if not ta else gemm(c, gy, tb, 1)
    if need[1]:
        grads[1] = gemm(a, gy, 1 - ta, 0) if not tb else gemm(gy, a, 1, ta)
    if bias is not None and need[2]:
        scaled = gy if beta == 1.0 else b.op("Mul", [gy, b.const(gy, beta)])
        grads[2] = b.sum_to(scaled, bias)
    return grads[: len(node.inputs)]


@_rule("Relu")
def _grad_relu(b, node, gys, need):
    x = node.inputs[0]
    zero = b.const(x, 0.0)
    return [b.op("Where", [b.op("Greater", [x, zero]), gys[0], zero])]


@_rule("LeakyRelu")
def _grad_leaky_relu(b, node, gys, need):
    x, gy = node.inputs[0], gys[0]
    alpha = _attr(node, "alpha", 0.01)
    scaled = b.op("Mul", [gy, b.const(gy, alpha)])
    return [b.op("Where", [b.op("Less", [x, b.const(x, 0.0)]), scaled, gy])]


@_rule("Sigmoid")
def _grad_sigmoid(b, node, gys, need):
    y = node.outputs[0]
    return [b.op("Mul", [gys[0], b.op("Mul", [y, b.op("Sub", [b.const(y, 1.0), y])])])]


@_rule("Tanh")
def _grad_tanh(b, node, gys, need):
    y = node.outputs[0]
    return [b.op("Mul", [gys[0], b.op("Sub", [b.const(y, 1.0), b.op("Mul", [y, y])])])]


@_rule("Exp")
def _grad_exp(b, node, gys, need):
    return [b.op("Mul", [gys[0], node.outputs[0]])]


@_rule("Log")
def _grad_log(b, node, gys, need):
    return [b.op("Div", [gys[0], node.inputs[0]])]


@_rule("Sqrt")
def _grad_sqrt(b, node, gys, need):
    y = node.outputs[0]
    return [b.op("Div", [gys[0], b.op("Mul", [y, b.const(y, 2.0)])])]


@_rule("Reciprocal")
def _grad_reciprocal(b, node, gys, need):
    y = node.outputs[0]
    return [b.op("Neg", [b.op("Mul", [gys[0], b.op("Mul", [y, y])])])]


@_rule("Abs")
def _grad_abs(b, node, gys, need):
    return [b.op("Mul", [gys[0], b.op("Sign", [node.inputs[0]])])]


@_rule("Sin")
def _grad_sin(b, node, gys, need):
    return [b.op("Mul", [gys[0], b.op("Cos", [node.inputs[0]])])]


@_rule("Cos")
def _grad_cos(b, node, gys, need):
    return [b.op("Neg", [b.op("Mul", [gys[0], b.op("Sin", [node.inputs[0]])])])]


@_rule("Erf")
def _grad_erf(b, node, gys, need):
    x = node.inputs[0]
    bump = b.op("Exp", [b.op("Neg", [b.op("Mul", [x, x])])])
    return [b.op("Mul", [gys[0], b.op("Mul", [bump, b.const(x, 2.0 / np.sqrt(np.pi))])])]


@_rule("Softplus")
def _grad_softplus(b, node, gys, need):
    return [b.op("Mul", [gys[0], b.op("Sigmoid", [node.inputs[0]])])]


@_rule("Pow")
def _grad_pow(b, node, gys, need):
    gy = gys[0]
    x, p = node.inputs[:2]
    y = node.outputs[0]
    gx = gp = None
    if need[0]:  # p * x^(p-1)
        pc = b.ad("CastLike", [p, x])
        slope = b.op("Mul", [pc, b.op("Pow", [x, b.op("Sub", [pc, b.const(x, 1.0)])])])
        gx = b.sum_to(b.op("Mul", [gy, slope]), x)
    if need[1]:  # y * log(x)
        gp = b.ad("CastLike", [b.sum_to(b.op("Mul", [gy, b.op("Mul", [y, b.op("Log", [x])])]), p), p])
    return [gx, gp]


@_rule("Where", inputs=(1, 2))
def _grad_where(b, node, gys, need):
    cond, a, c = node.inputs
    gy = gys[0]
    zero = b.const(gy, 0.0)
    return [
        None,
        b.sum_to(b.op("Where", [cond, gy, zero]), a) if need[1] else None,
        b.sum_to(b.op("Where", [cond, zero, gy]), c) if need[2] else None,
    ]


@_rule("Clip", inputs=(0,))
def _grad_clip(b, node, gys, need):
    x, g = node.inputs[0], gys[0]
    if b.opset < 11:
        low = b.const(x, _attr(node, "min")) if "min" in node.attributes else None
        high = b.const(x, _attr(node, "max")) if "max" in node.attributes else None
    else:
        low = node.inputs[1] if len(node.inputs) > 1 and node.inputs[1] else None
        high = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    zero = b.const(g, 0.0)
    if low is not None:
        g = b.op("Where", [b.op("Less", [x, low]), zero, g])
    if high is not None:
        g = b.op("Where", [b.op("Greater", [x, high]), zero, g])
    return [g] + [None] * (len(node.inputs) - 1)


@_rule("Reshape", "Flatten", "Squeeze", "Unsqueeze", inputs=(0,))
def _grad_reshape(b, node, gys, need):
    return [b.ad("ReshapeLike", [gys[0], node.inputs[0]])] + [None] * (len(node.inputs) - 1)


@_rule("Expand", inputs=(0,))
def _grad_expand(b, node, gys, need):
    return [b.sum_to(gys[0], node.inputs[0]), None]


@_rule("Transpose")
def _grad_transpose(b, node, gys, need):
    perm = _attr(node, "perm")
    if perm is None:  # reversed axes: its own inverse
        return [b.op("Transpose", [gys[0]])]
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p if p >= 0 else p + len(perm)] = i
    return [b.op("Transpose", [gys[0]], {"perm": inverse})]


def _unreduce(b: _Builder, node: ir.Node, gy: ir.Value, mean: int) -> ir.Value:
    inputs = [gy, node.inputs[0]] + ([node.inputs[1]] if len(node.inputs) > 1 and node.inputs[1] else [])
    attrs = {
        "axes": _attr(node, "axes"),
        "keepdims": _attr(node, "keepdims", 1),
        "noop_with_empty_axes": _attr(node, "noop_with_empty_axes", 0),
        "mean": mean,
    }
    return b.ad("Unreduce", inputs, attrs)


@_rule("ReduceSum", inputs=(0,))
def _grad_reduce_sum(b, node, gys, need):
    return [_unreduce(b, node, gys[0], 0)] + [None] * (len(node.inputs) - 1)


@_rule("ReduceMean", inputs=(0,))
def _grad_reduce_mean(b, node, gys, need):
    return [_unreduce(b, node, gys[0], 1)] + [None] * (len(node.inputs) - 1)


@_rule("ReduceSumSquare", inputs=(0,))
def _grad_reduce_sum_square(b, node, gys, need):
    x = node.inputs[0]
    g = _unreduce(b, node, gys[0], 0)
    return [b.op("Mul", [b.op("Mul", [g, x]), b.const(x, 2.0)])] + [None] * (len(node.inputs) - 1)


@_rule("Softmax", "LogSoftmax")
def _grad_softmax(b, node, gys, need):
    legacy = int(b.opset < 13)
    axis = _attr(node, "axis", 1 if legacy else -1)
    attrs = {"axis": axis, "legacy": legacy, "log": int(node.op_type == "LogSoftmax")}
    return [b.ad("SoftmaxGrad", [gys[0], node.outputs[0]], attrs)]


@_rule("Concat")
def _grad_concat(b, node, gys, need):
    names = [b.fresh("ConcatGrad") if need[i] else "" for i in range(len(node.inputs))]
    grad = b.node("ConcatGrad", [gys[0], *node.inputs], {"axis": _attr(node, "axis", 0)}, domain=AUTODIFF_DOMAIN,
                  output_names=names)
    for out, x in zip(grad.outputs, node.inputs):
        out.type = x.type
    return [out if out.name else None for out in grad.outputs]


@_rule("Split", inputs=(0,))
def _grad_split(b, node, gys, need):
    parts = [g if g is not None else b.zeros_like(out) for g, out in zip(gys, node.outputs) if _present(out)]
    if len(parts) != len(node.outputs):
        raise OrtNotImplemented(f"{describe(node)}: gradient of Split with skipped outputs is not supported")
    return [b.op("Concat", parts, {"axis": _attr(node, "axis", 0)})] + [None] * (len(node.inputs) - 1)


@_rule("Slice", inputs=(0,))
def _grad_slice(b, node, gys, need):
    x = node.inputs[0]
    if b.opset < 10:
        attrs = {"starts": _attr(node, "starts"), "ends": _attr(node, "ends"), "axes": _attr(node, "axes")}
        return [b.ad("SliceGrad", [gys[0], x], attrs)]
    return [b.ad("SliceGrad", [gys[0], x] + list(node.inputs[1:]))] + [None] * (len(node.inputs) - 1)


@_rule("Gather", inputs=(0,))
def _grad_gather(b, node, gys, need):
    data, indices = node.inputs[:2]
    return [b.ad("GatherGrad", [gys[0], data, indices], {"axis": _attr(node, "axis", 0)}), None]


def _cast_outputs(node: ir.Node) -> tuple[int, ...]:
    to = _attr(node, "to")
    if isinstance(to, str):  # Cast-1 spelled the type as a string
        to = getattr(onnx.TensorProto, to.upper(), None)
    return (0,) if to in _FLOAT_TYPES else ()


@_rule("Cast", outputs=_cast_outputs)
def _grad_cast(b, node, gys, need):
    return [b.ad("CastLike", [gys[0], node.inputs[0]])]


@_rule("GatherElements", inputs=(0,))
def _grad_gather_elements(b, node, gys, need):
    data, indices = node.inputs[:2]
    return [b.ad("GatherElementsGrad", [gys[0], data, indices], {"axis": _attr(node, "axis", 0)}), None]


@_rule("TopK", inputs=(0,), outputs=(0,))
def _grad_topk(b, node, gys, need):
    x, indices = node.inputs[0], node.outputs[1]
    grad = b.ad("GatherElementsGrad", [gys[0], x, indices], {"axis": _attr(node, "axis", -1)})
    return [grad] + [None] * (len(node.inputs) - 1)


@_rule("ReduceMax", "ReduceMin", inputs=(0,))
def _grad_reduce_max_min(b, node, gys, need):
    # The gradient goes to every element equal to the extremum (ties all receive it).
    x, y = node.inputs[0], node.outputs[0]
    gy = gys[0]
    at_extremum = b.op("Equal", [x, _unreduce(b, node, y, 0)])
    return [b.op("Where", [at_extremum, _unreduce(b, node, gy, 0), b.const(gy, 0.0)])] + [None] * (len(node.inputs) - 1)


@_rule("CumSum", inputs=(0,))
def _grad_cumsum(b, node, gys, need):
    attrs = {"exclusive": _attr(node, "exclusive", 0), "reverse": 1 - _attr(node, "reverse", 0)}
    return [b.op("CumSum", [gys[0], node.inputs[1]], attrs), None]


@_rule("Tile", inputs=(0,))
def _grad_tile(b, node, gys, need):
    return [b.ad("TileGrad", [gys[0], node.inputs[0]])] + [None] * (len(node.inputs) - 1)


# Private ops the rules emit: their own rules make higher-order gradients work.


@_rule("SumToShape", domain=AUTODIFF_DOMAIN, inputs=(0,))
def _grad_sum_to_shape(b, node, gys, need):
    return [b.ad("BroadcastLike", [gys[0], node.inputs[0]]), None]


@_rule("BroadcastLike", domain=AUTODIFF_DOMAIN, inputs=(0,))
def _grad_broadcast_like(b, node, gys, need):
    return [b.sum_to(gys[0], node.inputs[0]), None]


@_rule("ReshapeLike", domain=AUTODIFF_DOMAIN, inputs=(0,))
def _grad_reshape_like(b, node, gys, need):
    return [b.ad("ReshapeLike", [gys[0], node.inputs[0]]), None]


@_rule("CastLike", domain=AUTODIFF_DOMAIN, inputs=(0,))
def _grad_cast_like(b, node, gys, need):
    return [b.ad("CastLike", [gys[0], node.inputs[0]]), None]


def _matmul_grad_inputs(node: ir.Node) -> tuple[int, ...]:
    # MatMulGrad(dy, a, b): bilinear in dy and the operand it does not differentiate; the other gives a shape only.
    return (0, 2) if _attr(node, "which", 0) == 0 else (0, 1)


@_rule("MatMulGrad", domain=AUTODIFF_DOMAIN, inputs=_matmul_grad_inputs)
def _grad_matmul_grad(b, node, gys, need):
    g = gys[0]
    dy, a, c = node.inputs
    if _attr(node, "which", 0) == 0:  # da = dy @ b^T (summed to a)
        return [
            b.op("MatMul", [g, c]) if need[0] else None,
            None,
            b.ad("MatMulGrad", [dy, g, c], {"which": 1}) if need[2] else None,
        ]
    # db = a^T @ dy (summed to b)
    return [
        b.op("MatMul", [a, g]) if need[0] else None,
        b.ad("MatMulGrad", [dy, a, g], {"which": 0}) if need[1] else None,
        None,
    ]


def _reduce_attrs(node: ir.Node) -> dict[str, ir.Attr]:
    return dict(node.attributes)


@_rule("Unreduce", domain=AUTODIFF_DOMAIN, inputs=(0,))
def _grad_unreduce(b, node, gys, need):
    # Unreduce(dy, x, [axes]) is linear in dy; its adjoint sums back over the axes into dy's shape.
    inputs = [gys[0], node.inputs[0]] + list(node.inputs[2:])
    return [b.ad("ReduceLike", inputs, _reduce_attrs(node))] + [None] * (len(node.inputs) - 1)


@_rule("ReduceLike", domain=AUTODIFF_DOMAIN, inputs=(0,))
def _grad_reduce_like(b, node, gys, need):
    inputs = [gys[0], node.inputs[0]] + list(node.inputs[2:])
    return [b.ad("Unreduce", inputs, _reduce_attrs(node))] + [None] * (len(node.inputs) - 1)


__all__ = ["AUTODIFF_DOMAIN", "TRAINING_DOMAIN", "expand_gradient_nodes", "is_gradient_node"]
