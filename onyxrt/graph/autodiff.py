"""Reverse-mode differentiation of IR graphs: expanding ai.onnx.preview.training::Gradient.

A ``Gradient(xs=[...], zs=[...], y="...")`` node is defined over the graph it sits
in: its outputs are dY/dX for each name in ``xs``, where ``y`` is computed from
``xs`` (variables) and ``zs`` (held constant) by the nodes of that graph, and its
inputs are the values of ``xs`` then ``zs`` at which to differentiate. No kernel
can see the graph, so :func:`expand_gradient_nodes` replaces each Gradient node
by the ops computing the gradients, before partitioning:

1. the forward subgraph is the set of nodes ``y`` depends on, the walk stopping
   at the names in ``xs`` and ``zs`` (they are independent variables, even when a
   node computes them);
2. when a Gradient input differs from the name it stands for (gradient at another
   point), the forward nodes downstream of it are cloned to read that input;
   otherwise the forward values are reused;
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

import heapq
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import onnx
import onnx.shape_inference

from ..errors import InvalidGraph, NotImplemented as OrtNotImplemented
from .function_expansion import inline_function, schema_function, value_type
from .ir import A, Attribute, Graph, Node, graph_to_proto

TRAINING_DOMAIN = "ai.onnx.preview.training"
AUTODIFF_DOMAIN = "ai.onyxrt.autodiff"

_counter = itertools.count()


def is_gradient_node(node: Node) -> bool:
    return node.op_type == "Gradient" and node.domain == TRAINING_DOMAIN


def expand_gradient_nodes(
    graph: Graph, opsets: dict[str, int], _outer: tuple[dict[str, Node], set[str]] | None = None
) -> bool:
    """Replace every Gradient node of ``graph`` (and its subgraphs) by the nodes computing its outputs.

    Returns whether anything changed. Raises NOT_IMPLEMENTED when a node on the
    differentiated path has no gradient rule, INVALID_GRAPH for a malformed
    Gradient node. A Gradient inside a subgraph may differentiate through nodes
    of the enclosing graphs: its gradient nodes stay in the subgraph and read
    the outer values they need.
    """
    outer_producers, outer_names = _outer if _outer is not None else ({}, set())
    changed = False
    pending = [node for node in graph.nodes if is_gradient_node(node)]
    if pending:
        taken = _names_in(graph) | outer_names
        defined = _defined_outside(graph) | outer_names
        while pending:
            progressed = False
            for gnode in list(pending):
                producers = {**outer_producers, **graph.producers()}
                spec = _GradientSpec.parse(gnode)
                forward = _forward_closure(spec.y, spec.stops, producers)
                if any(is_gradient_node(n) for n in forward):
                    continue  # differentiate through the other Gradient once it is expanded
                if _inline_function_ops(graph, forward, spec, opsets):
                    taken |= _names_in(graph)
                    producers = {**outer_producers, **graph.producers()}
                    forward = _forward_closure(spec.y, spec.stops, producers)
                if spec.y not in spec.stops and spec.y not in producers and spec.y not in defined:
                    raise InvalidGraph(f"{gnode.describe()}: y '{spec.y}' is not a value of the graph")
                builder = _Builder(gnode, opsets.get("", 1), taken)
                _differentiate(builder, gnode, spec, forward, graph)
                index = next(i for i, n in enumerate(graph.nodes) if n is gnode)
                graph.nodes[index : index + 1] = builder.nodes
                pending = [n for n in pending if n is not gnode]
                progressed = True
            if not progressed:
                raise InvalidGraph(f"{pending[0].describe()}: Gradient nodes depend on each other's outputs in a cycle")
        graph.nodes = topological_sort(graph.nodes, _defined_outside(graph))
        changed = True
    if any(True for node in graph.nodes for _ in node.subgraphs()):
        scope = ({**outer_producers, **graph.producers()}, outer_names | _names_in(graph))
        for node in graph.nodes:
            for sub in node.subgraphs():
                changed |= expand_gradient_nodes(sub, opsets, scope)
    return changed


# --------------------------------------------------------------------------- graph utilities


def _names_in(graph: Graph) -> set[str]:
    names = {vi.name for vi in graph.inputs} | {vi.name for vi in graph.outputs} | set(graph.initializers)
    for node in graph.nodes:
        names.update(node.inputs)
        names.update(node.outputs)
    names.update(graph.value_info)
    return names


def _defined_outside(graph: Graph) -> set[str]:
    return {vi.name for vi in graph.inputs} | set(graph.initializers) | {""}


def _reads(node: Node) -> list[str]:
    """Every value a node reads: its inputs and its subgraphs' outer-scope captures."""
    names = [n for n in node.inputs if n]
    for sub in node.subgraphs():
        names.extend(sub.free_variables())
    return names


def topological_sort(nodes: list[Node], available: set[str]) -> list[Node]:
    """``nodes`` in dependency order, keeping the given order where it already fits.

    Names neither produced by a node nor in ``available`` (outer-scope values) are
    taken as given.
    """
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.outputs:
            if name:
                producer[name] = i
    waiting = [0] * len(nodes)
    dependents: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in dict.fromkeys(_reads(node)):
            j = producer.get(name)
            if j is not None and name not in available and j != i:
                waiting[i] += 1
                dependents.setdefault(j, []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[Node] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for k in dependents.get(i, ()):
            waiting[k] -= 1
            if waiting[k] == 0:
                heapq.heappush(ready, k)
    if len(order) != len(nodes):
        stuck = next(nodes[i] for i, w in enumerate(waiting) if w)
        raise InvalidGraph(f"the graph has a cycle through {stuck.describe()}")
    return order


def _forward_closure(y: str, stops: set[str], producers: dict[str, Node]) -> list[Node]:
    """The nodes ``y`` depends on, not looking past ``stops``, in topological order."""
    root = producers.get(y) if y not in stops else None
    if root is None:
        return []

    def deps(node: Node) -> Iterable[Node]:
        for name in _reads(node):
            if name not in stops and name in producers:
                yield producers[name]

    order: list[Node] = []
    seen = {id(root)}
    stack = [(root, iter(deps(root)))]
    while stack:
        node, it = stack[-1]
        for dep in it:
            if id(dep) not in seen:
                seen.add(id(dep))
                stack.append((dep, iter(deps(dep))))
                break
        else:
            stack.pop()
            order.append(node)
    return order


def _inline_function_ops(graph: Graph, forward: list[Node], spec: _GradientSpec, opsets: dict[str, int]) -> bool:
    """Replace the rule-less nodes of ``graph`` on the differentiated path by their ONNX function bodies.

    LayerNormalization, Gelu, Elu, SoftmaxCrossEntropyLoss... have no gradient
    rule of their own but are defined by bodies of ops that do. Context-dependent
    bodies need the input types: taken from the graph, else from ONNX shape
    inference. Returns whether the graph changed.
    """
    changed = False
    inferred: dict[str, onnx.TypeProto] | None = None
    for _ in range(8):  # bodies may hold function ops themselves
        active = set(spec.xs)
        candidates = []
        for node in forward:
            rule = _rule_for(node)
            if rule is _NONDIFF or not any(name in active for name in node.inputs):
                continue
            active.update(name for name in node.outputs if name)
            if rule is None and any(n is node for n in graph.nodes):
                candidates.append(node)
        replaced = False
        for node in candidates:
            opset = opsets.get(node.domain, 1)
            types = [value_type(graph, name) if name else None for name in node.inputs]
            if any(t is None for name, t in zip(node.inputs, types) if name):
                if inferred is None:
                    inferred = _inferred_types(graph, opsets)
                types = [t if t is not None or not name else inferred.get(name) for name, t in zip(node.inputs, types)]
            function = schema_function(node, opset, types)
            if function is None:
                continue
            body = inline_function(node, function, opset)
            index = next(i for i, n in enumerate(graph.nodes) if n is node)
            graph.nodes[index : index + 1] = body
            replaced = changed = True
        if not replaced:
            break
        forward = _forward_closure(spec.y, spec.stops, graph.producers())
    return changed


def _inferred_types(graph: Graph, opsets: dict[str, int]) -> dict[str, onnx.TypeProto]:
    """Value types from ONNX shape inference over ``graph`` (empty where inference fails)."""
    model = onnx.helper.make_model(
        graph_to_proto(graph),
        opset_imports=[onnx.helper.make_opsetid(domain, version) for domain, version in opsets.items()],
    )
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - best effort: no types, no context-dependent body
        return {}
    return {vi.name: vi.type for vi in inferred.graph.value_info if vi.HasField("type")}


# --------------------------------------------------------------------------- the Gradient node


@dataclass
class _GradientSpec:
    xs: list[str]
    zs: list[str]
    y: str

    @property
    def stops(self) -> set[str]:
        return set(self.xs) | set(self.zs)

    @classmethod
    def parse(cls, node: Node) -> _GradientSpec:
        attrs = node.attributes
        if "xs" not in attrs or "y" not in attrs:
            raise InvalidGraph(f"{node.describe()}: Gradient needs the attributes 'xs' and 'y'")
        xs = list(attrs["xs"].value)
        zs = list(attrs["zs"].value) if "zs" in attrs else []
        y = attrs["y"].value
        unknown = set(attrs) - {"xs", "zs", "y"}
        if unknown:
            raise InvalidGraph(f"{node.describe()}: unrecognized attribute(s) {sorted(unknown)} for Gradient-1")
        if not xs:
            raise InvalidGraph(f"{node.describe()}: Gradient's 'xs' is empty")
        if len(node.inputs) != len(xs) + len(zs):
            raise InvalidGraph(
                f"{node.describe()}: Gradient takes one input per name in xs and zs "
                f"({len(xs) + len(zs)}), got {len(node.inputs)}"
            )
        if len(node.outputs) > len(xs):
            raise InvalidGraph(
                f"{node.describe()}: Gradient has one output per name in xs ({len(xs)}), got {len(node.outputs)}"
            )
        if any(not name for name in node.inputs):
            raise InvalidGraph(f"{node.describe()}: Gradient inputs cannot be omitted")
        if len(set(xs) | set(zs)) != len(xs) + len(zs):
            raise InvalidGraph(f"{node.describe()}: names in xs and zs must be distinct")
        return cls(xs, zs, y)


class _Builder:
    """Emits the nodes replacing one Gradient node, with fresh value names."""

    def __init__(self, gnode: Node, opset: int, taken: set[str]) -> None:
        self.gnode = gnode
        self.opset = opset
        self.taken = taken
        self.prefix = f"{gnode.name or 'Gradient'}__ad{next(_counter)}__"
        self.nodes: list[Node] = []
        self._consts: dict[tuple[str, float], str] = {}
        self._count = itertools.count()

    def fresh(self, hint: str) -> str:
        while True:
            name = f"{self.prefix}{hint}_{next(self._count)}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def require(self, version: int, what: str) -> None:
        if self.opset < version:
            raise OrtNotImplemented(
                f"{self.gnode.describe()}: the gradient of {what} needs ai.onnx opset >= {version}, "
                f"the model imports {self.opset}"
            )

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        attrs: dict[str, Any] | None = None,
        domain: str = "",
        outputs: int | Sequence[str] = 1,
    ) -> Any:
        """Append a node; returns its output name (or list of names when ``outputs`` is a list)."""
        if isinstance(outputs, int):
            names = [self.fresh(op_type) for _ in range(outputs)]
            single = outputs == 1
        else:
            names = list(outputs)
            single = False
        attributes = {k: _attribute(v) for k, v in (attrs or {}).items() if v is not None}
        node = Node(op_type, list(inputs), names, attributes, domain, name=self.fresh(op_type + "_node"))
        self.nodes.append(node)
        return names[0] if single else names

    def ad(self, op_type: str, inputs: Sequence[str], attrs: dict[str, Any] | None = None, outputs: Any = 1) -> Any:
        return self.op(op_type, inputs, attrs, AUTODIFF_DOMAIN, outputs)

    def const(self, ref: str, value: float) -> str:
        """A 0-d tensor ``value`` of ``ref``'s element type."""
        key = (ref, float(value))
        if key not in self._consts:
            self._consts[key] = self.ad("ConstLike", [ref], {"value": float(value), "scalar": 1})
        return self._consts[key]

    def zeros_like(self, ref: str) -> str:
        return self.ad("ConstLike", [ref], {"value": 0.0, "scalar": 0})

    def sum_to(self, grad: str, ref: str) -> str:
        return self.ad("SumToShape", [grad, ref])


def _attribute(value: Any) -> Attribute:
    if isinstance(value, Attribute):
        return value
    if isinstance(value, (bool, int, np.integer)):
        return Attribute(A.INT, int(value))
    if isinstance(value, (float, np.floating)):
        return Attribute(A.FLOAT, float(value))
    if isinstance(value, str):
        return Attribute(A.STRING, value)
    if isinstance(value, np.ndarray):
        return Attribute(A.TENSOR, value)
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (int, np.integer)) for v in value):
            return Attribute(A.INTS, [int(v) for v in value])
        if all(isinstance(v, (int, float, np.number)) for v in value):
            return Attribute(A.FLOATS, [float(v) for v in value])
        if all(isinstance(v, str) for v in value):
            return Attribute(A.STRINGS, list(value))
    raise TypeError(f"cannot make an attribute of {value!r}")


def _differentiate(b: _Builder, gnode: Node, spec: _GradientSpec, forward: list[Node], graph: Graph) -> None:
    stops = spec.stops

    # Gradient at other values than the named ones: recompute the forward nodes they feed.
    rename: dict[str, str] = {}
    for name, actual in zip(spec.xs + spec.zs, gnode.inputs):
        if actual != name:
            rename[name] = b.op("Identity", [actual])
    nodes: list[Node] = []
    for node in forward:
        if rename and any(name in rename for name in _reads(node)):
            if any(True for _ in node.subgraphs()):
                raise OrtNotImplemented(
                    f"{gnode.describe()}: recomputing {node.describe()} at the Gradient's inputs "
                    "(they differ from the values named in xs/zs) is not supported for nodes with subgraphs"
                )
            clone = Node(
                node.op_type,
                [rename.get(n, n) for n in node.inputs],
                [b.fresh(out) if out else "" for out in node.outputs],
                dict(node.attributes),
                node.domain,
                name=b.fresh((node.name or node.op_type) + "_recomputed"),
            )
            for old, new in zip(node.outputs, clone.outputs):
                if old and old not in stops:
                    rename[old] = new
            b.nodes.append(clone)
            nodes.append(clone)
        else:
            nodes.append(node)
    y = rename.get(spec.y, spec.y)
    leaves_x = [rename.get(x, x) for x in spec.xs]
    leaves = set(leaves_x) | {rename.get(z, z) for z in spec.zs} | stops

    # Forward: which values depend (differentiably) on xs.
    active = set(leaves_x)
    for node in nodes:
        rule = _rule_for(node)
        if rule is _NONDIFF:
            continue
        diff_in = rule.inputs(node) if rule is not None else range(len(node.inputs))
        reads_active = any(i < len(node.inputs) and node.inputs[i] in active for i in diff_in)
        if rule is None and not reads_active:
            reads_active = any(name in active for sub in node.subgraphs() for name in sub.free_variables())
        if not reads_active:
            continue
        if rule is not None:
            diff_out = rule.outputs(node)
        else:
            diff_out = [i for i in range(len(node.outputs)) if i not in _INDEX_OUTPUTS.get(node.op_type, ())]
        for i in diff_out:
            out = node.outputs[i] if i < len(node.outputs) else ""
            if out and out not in leaves and _may_be_float(graph, out):
                active.add(out)

    # Reverse: accumulate gradients from y back to xs.
    grads: dict[str, list[str]] = {}

    def total(name: str) -> str | None:
        parts = grads.get(name)
        if not parts:
            return None
        if len(parts) > 1:
            acc = parts[0]
            for part in parts[1:]:
                acc = b.op("Add", [acc, part])
            grads[name] = parts = [acc]
        return parts[0]

    if y in active:
        grads[y] = [b.ad("ConstLike", [y], {"value": 1.0, "scalar": 0})]
        for node in reversed(nodes):
            gys = [
                total(out) if out and out in active and out not in leaves else None for out in node.outputs
            ]
            if all(g is None for g in gys):
                continue
            rule = _rule_for(node)
            diff_in = set(rule.inputs(node)) if rule not in (None, _NONDIFF) else set(range(len(node.inputs)))
            need = [i in diff_in and bool(name) and name in active for i, name in enumerate(node.inputs)]
            if rule is None and any(name in active for sub in node.subgraphs() for name in sub.free_variables()):
                need.append(True)  # captured by a subgraph: no rule can differentiate through it
            if not any(need):
                continue
            if rule is None or rule is _NONDIFF:
                raise OrtNotImplemented(
                    f"{gnode.describe()}: no gradient rule for {node.describe()} on the path from xs to y"
                )
            if node.op_type not in _NO_OPSET_CHECK:
                b.require(9, node.op_type)
            results = rule.fn(b, node, gys, need)
            for i, g in enumerate(results):
                if g is not None and need[i]:
                    grads.setdefault(node.inputs[i], []).append(g)

    claimed: set[str] = set()
    consumed = {name for node in b.nodes for name in node.inputs}
    produced = {name: node for node in b.nodes for name in node.outputs if name}
    for out, leaf in zip(gnode.outputs, leaves_x):
        if not out:
            continue
        g = total(leaf)
        if g is None:
            g = b.zeros_like(leaf)
            consumed = {name for node in b.nodes for name in node.inputs}
            produced = {name: node for node in b.nodes for name in node.outputs if name}
        node = produced.get(g)
        if node is not None and g not in consumed and g not in claimed:
            node.outputs[node.outputs.index(g)] = out
            claimed.add(g)
        else:
            b.op("Identity", [g], outputs=[out])


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
# Integer (index) outputs of ops that have no gradient rule, so they never look differentiable.
_INDEX_OUTPUTS = {"MaxPool": (1,), "Unique": (1, 2, 3), "MaxRoiPool": (), "NonMaxSuppression": (0,)}


def _may_be_float(graph: Graph, name: str) -> bool:
    """False when the graph declares ``name`` a non-float tensor (it cannot carry a gradient)."""
    type_proto = graph.type_of(name)
    if type_proto is None or type_proto.WhichOneof("value") != "tensor_type":
        return True
    elem = type_proto.tensor_type.elem_type
    return elem == onnx.TensorProto.UNDEFINED or elem in _FLOAT_TYPES


# --------------------------------------------------------------------------- gradient rules


@dataclass
class _Rule:
    fn: Callable[[_Builder, Node, list, list], list]
    diff_inputs: Callable[[Node], Iterable[int]] | tuple[int, ...] | None = None
    diff_outputs: Callable[[Node], Iterable[int]] | tuple[int, ...] | None = None

    def inputs(self, node: Node) -> Iterable[int]:
        if self.diff_inputs is None:
            return range(len(node.inputs))
        return self.diff_inputs(node) if callable(self.diff_inputs) else self.diff_inputs

    def outputs(self, node: Node) -> Iterable[int]:
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


def _rule_for(node: Node) -> _Rule | None:
    return _RULES.get((node.domain, node.op_type))


def _rule(*op_types: str, domain: str = "", inputs=None, outputs=None):
    def decorator(fn):
        for op_type in op_types:
            _RULES[(domain, op_type)] = _Rule(fn, inputs, outputs)
        return fn

    return decorator


def _attr(node: Node, name: str, default: Any = None) -> Any:
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _no_legacy_broadcast(node: Node) -> None:
    if "axis" in node.attributes and _attr(node, "broadcast", 0):
        raise OrtNotImplemented(f"{node.describe()}: gradient of the legacy broadcast with 'axis' is not supported")


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
    training_mode = node.inputs[2] if len(node.inputs) > 2 else ""
    if not training_mode:  # inference: the identity
        return [gys[0]] + [None] * (len(node.inputs) - 1)
    # Training mode (decided at run time): the gradient needs the mask; request it if the node skipped it.
    if len(node.outputs) < 2 or not node.outputs[1]:
        node.outputs[1:] = [b.fresh("dropout_mask")]
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
    bias = node.inputs[2] if len(node.inputs) > 2 else ""
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
    if bias and need[2]:
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


def _unreduce(b: _Builder, node: Node, gy: str, mean: int) -> str:
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
    outs = [b.fresh("ConcatGrad") if need[i] else "" for i in range(len(node.inputs))]
    b.ad("ConcatGrad", [gys[0]] + list(node.inputs), {"axis": _attr(node, "axis", 0)}, outputs=outs)
    return [o or None for o in outs]


@_rule("Split", inputs=(0,))
def _grad_split(b, node, gys, need):
    parts = [g if g is not None else b.zeros_like(out) for g, out in zip(gys, node.outputs) if out]
    if len(parts) != len(node.outputs):
        raise OrtNotImplemented(f"{node.describe()}: gradient of Split with skipped outputs is not supported")
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


def _cast_outputs(node: Node) -> tuple[int, ...]:
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


def _matmul_grad_inputs(node: Node) -> tuple[int, ...]:
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


def _reduce_attrs(node: Node) -> dict[str, Any]:
    return {k: v for k, v in node.attributes.items()}


@_rule("Unreduce", domain=AUTODIFF_DOMAIN, inputs=(0,))
def _grad_unreduce(b, node, gys, need):
    # Unreduce(dy, x, [axes]) is linear in dy; its adjoint sums back over the axes into dy's shape.
    inputs = [gys[0], node.inputs[0]] + list(node.inputs[2:])
    return [b.ad("ReduceLike", inputs, _reduce_attrs(node))] + [None] * (len(node.inputs) - 1)


@_rule("ReduceLike", domain=AUTODIFF_DOMAIN, inputs=(0,))
def _grad_reduce_like(b, node, gys, need):
    inputs = [gys[0], node.inputs[0]] + list(node.inputs[2:])
    return [b.ad("Unreduce", inputs, _reduce_attrs(node))] + [None] * (len(node.inputs) - 1)


__all__ = ["AUTODIFF_DOMAIN", "TRAINING_DOMAIN", "expand_gradient_nodes", "is_gradient_node", "topological_sort"]
