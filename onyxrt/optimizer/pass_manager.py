"""The pass manager: runs graph passes over a model and its subgraphs to a fixed point.

A pass is a small object (see :class:`GraphPass`) that rewrites one graph at a time
and says how many rewrites it made. The manager picks the passes enabled at the
session's optimization level and for the session's providers, runs them over the
main graph and every subgraph (innermost first, so what a subgraph stops reading is
dead in its outer graph in the same round) and repeats whole rounds until one
changes nothing, or a round cap is hit (reported, not an error).

Invariant kept for every later stage: the nodes of each graph are in dependency
order. The manager establishes it before the first pass (a model may list its
nodes in any order) and verifies it after every pass that changed a graph; a pass
that reorders nodes on purpose calls :meth:`OptimizationContext.mark_reordered` and
the manager sorts that graph once.

Nothing here imports the session or a provider: what passes need (opsets, provider
names, the constant evaluator, limits) arrives in an :class:`OptimizationContext`.
"""

from __future__ import annotations

import abc
import enum
import time
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterator, MutableMapping, Sequence

import numpy as np
import onnx_ir as ir

from ..errors import Fail, InvalidGraph
from ..graph.builder import has_subgraphs, subgraphs
from ..graph.opsets import opset_for

# Node, its opset, its input arrays (None for a missing optional input) -> its output arrays,
# or None when the evaluator cannot (no kernel, the kernel failed): the node is then left to run time.
ConstantEvaluator = Callable[[ir.Node, int, "list[np.ndarray | None]"], "list[np.ndarray] | None"]

DEFAULT_MAX_ROUNDS = 10
# Folding trades compute per run for memory held for the session's lifetime. Past 1 MiB a
# tensor that folding would *grow* (ConstantOfShape, Expand, Tile, Range: outputs larger than
# their inputs) costs more resident memory and load time than recomputing it costs per run
# (a fill or a broadcast copy); onnxruntime itself keeps such generators in the graph at
# sizes that matter. Folds that do not grow the model (Transpose or Reshape of a weight,
# shape arithmetic) are never capped.
DEFAULT_MAX_FOLDED_BYTES = 1 << 20


class OptimizationLevel(enum.IntEnum):
    """onnxruntime's ``GraphOptimizationLevel`` values; a pass runs at its level and above."""

    DISABLED = 0
    BASIC = 1
    EXTENDED = 2
    LAYOUT = 3
    ALL = 99


@dataclass
class OptimizationContext:
    """What passes may read: the model's opsets, the session's providers, the evaluator, limits.

    Initializers that are also graph inputs may be overridden at run time
    (``value.is_graph_input()``); passes never treat them as constants.
    """

    opset_imports: MutableMapping[str, int]
    providers: Sequence[str]
    evaluator: ConstantEvaluator
    # Fold DequantizeLinear too (onnxruntime's "session.disable_quant_qdq" = "1"); by default QDQ
    # node units stay intact for the kernels and providers that fuse them.
    fold_dequantize_linear: bool = False
    max_folded_bytes: int = DEFAULT_MAX_FOLDED_BYTES
    _reordered: set[ir.Graph] = field(default_factory=set, repr=False)

    def opset(self, node: ir.Node) -> int:
        """The model's opset version for ``node``'s domain."""
        return opset_for(node, self.opset_imports)

    def require_opset(self, domain: str, version: int) -> None:
        """Import ``domain`` at ``version`` into the model unless it already is (for fused contrib ops)."""
        if domain not in self.opset_imports:
            self.opset_imports[domain] = version  # the model's own mapping

    def mark_reordered(self, graph: ir.Graph) -> None:
        """Called by a pass that left ``graph``'s nodes out of dependency order; the manager sorts it."""
        self._reordered.add(graph)

    def _take_reordered(self, graph: ir.Graph) -> bool:
        if graph in self._reordered:
            self._reordered.discard(graph)
            return True
        return False


class GraphPass(abc.ABC):
    """Base of the optimizer's passes.

    ``name`` is how reports and ``disabled`` name the pass; ``ort_names`` are the names
    of onnxruntime's equivalent optimizers, accepted in ``disabled`` too. ``level`` is the
    lowest optimization level that enables it; ``providers`` the provider names it suits
    (empty: any). :meth:`run` rewrites one graph (never its subgraphs: the manager visits
    those) and returns how many rewrites it made, 0 when it left the graph unchanged.
    """

    name: str = ""
    ort_names: tuple[str, ...] = ()
    level: int = OptimizationLevel.BASIC
    providers: tuple[str, ...] = ()

    @abc.abstractmethod
    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        """Rewrite ``graph``; the number of rewrites made."""


@dataclass
class OptimizationReport:
    """What the optimizer did: rewrites per pass (passes that fired only, in firing order) and rounds run."""

    counts: dict[str, int] = field(default_factory=dict)
    rounds: int = 0
    # False when the round cap stopped the manager while passes were still rewriting.
    reached_fixed_point: bool = True
    # Whether the model's nodes had to be sorted into dependency order before the passes ran.
    sorted_input: bool = False
    # Wall time each pass took (all its runs over every graph and round), passes in run order.
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def applied(self) -> list[str]:
        """Names of the passes that changed the graph."""
        return list(self.counts)

    def followed_by(self, later: OptimizationReport) -> OptimizationReport:
        """One report for this run and a ``later`` one over the same model: counts, times and rounds added."""
        counts, seconds = dict(self.counts), dict(self.seconds)
        for name, rewrites in later.counts.items():
            counts[name] = counts.get(name, 0) + rewrites
        for name, spent in later.seconds.items():
            seconds[name] = seconds.get(name, 0.0) + spent
        return OptimizationReport(counts, self.rounds + later.rounds,
                                  self.reached_fixed_point and later.reached_fixed_point, self.sorted_input, seconds)


class PassManager:
    """Runs ``passes`` in order, round after round, over a model's graph and subgraphs."""

    def __init__(self, passes: Sequence[GraphPass], max_rounds: int = DEFAULT_MAX_ROUNDS) -> None:
        if max_rounds < 1:
            raise ValueError(f"max_rounds must be at least 1, got {max_rounds}")
        self.passes = list(passes)
        self.max_rounds = max_rounds

    def enabled_passes(
        self, level: int, providers: Collection[str], disabled: Collection[str] = ()
    ) -> list[GraphPass]:
        """The passes enabled at ``level``, suiting ``providers`` and not named in ``disabled``."""
        disabled = set(disabled)
        return [
            p
            for p in self.passes
            if p.level <= level
            and p.name not in disabled
            and disabled.isdisjoint(p.ort_names)
            and (not p.providers or not set(p.providers).isdisjoint(providers))
        ]

    def run(
        self, model: ir.Model, context: OptimizationContext, level: int, disabled: Collection[str] = ()
    ) -> OptimizationReport:
        """Sort ``model`` into dependency order if needed, then run the enabled passes to a fixed point."""
        report = OptimizationReport(sorted_input=ensure_topological_order(model.graph))
        passes = self.enabled_passes(level, context.providers, disabled)
        if not passes:
            return report
        report.reached_fixed_point = False
        # A rewrite may add or drop subgraphs, but only of the graph it rewrites, which comes after
        # its own subgraphs in this order: the list stays valid for the rest of a pass.
        graphs = list(graphs_innermost_first(model.graph))
        for _ in range(self.max_rounds):
            report.rounds += 1
            changed = 0
            for graph_pass in passes:
                start = time.perf_counter()
                pass_changed = False
                for graph in graphs:
                    rewrites = graph_pass.run(graph, context)
                    if context._take_reordered(graph):
                        _sort(graph)
                    if not rewrites:
                        continue
                    pass_changed = True
                    changed += rewrites
                    report.counts[graph_pass.name] = report.counts.get(graph_pass.name, 0) + rewrites
                    _check_order_after(graph, graph_pass)
                if pass_changed:
                    graphs = list(graphs_innermost_first(model.graph))
                report.seconds[graph_pass.name] = report.seconds.get(graph_pass.name, 0.0) + time.perf_counter() - start
            if not changed:
                report.reached_fixed_point = True
                break
        return report


def graphs_innermost_first(graph: ir.Graph) -> Iterator[ir.Graph]:
    """``graph`` and every subgraph of its nodes, recursively, each subgraph before the graph holding it."""
    for node in list(graph):
        for subgraph in subgraphs(node):
            yield from graphs_innermost_first(subgraph)
    yield graph


def first_out_of_order(graph: ir.Graph) -> ir.Node | None:
    """The first node of ``graph`` that reads a value of ``graph`` produced later (its subgraphs' reads included), else None."""
    done: set[ir.Node] = set()
    for node in graph:
        # Plain loops, no generator per node: this check runs after every pass that changed a graph.
        for value in node.inputs:
            if value is not None:
                producer = value.producer()
                if producer is not None and producer not in done and producer.graph is graph:
                    return node
        if node.attributes and has_subgraphs(node):
            for value in _subgraph_reads(node):
                producer = value.producer()
                if producer is not None and producer not in done and producer.graph is graph:
                    return node
        done.add(node)
    return None


def ensure_topological_order(graph: ir.Graph) -> bool:
    """Sort ``graph`` and its subgraphs into dependency order if any is out of it; returns whether it sorted."""
    if all(first_out_of_order(g) is None for g in graphs_innermost_first(graph)):
        return False
    _sort(graph)
    return True


def _subgraph_reads(node: ir.Node) -> Iterator[ir.Value]:
    """The values the subgraphs of ``node`` read (outer-scope values among them)."""
    for subgraph in subgraphs(node):
        for inner in ir.traversal.RecursiveGraphIterator(subgraph):
            yield from (v for v in inner.inputs if v is not None)


def _sort(graph: ir.Graph) -> None:
    try:
        graph.sort()
    except ValueError as error:  # onnx_ir reports a cycle this way
        raise InvalidGraph(f"graph '{graph.name}' has a cycle: {error}") from error


def _check_order_after(graph: ir.Graph, graph_pass: GraphPass) -> None:
    node = first_out_of_order(graph)
    if node is not None:
        raise Fail(
            f"optimizer pass '{graph_pass.name}' left graph '{graph.name}' out of dependency order at "
            f"node '{node.name}' ({node.op_type}) without calling mark_reordered"
        )
