"""Constant folding: evaluate nodes whose inputs are all constants, once, at load time."""

from __future__ import annotations

from ..framework.partitioner import opset_for
from ..graph.ir import Graph, Model
from ..providers.cpu import CPUExecutionProvider

# Ops whose results differ from run to run (or that only make sense per run) are never folded.
_NON_DETERMINISTIC = {
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout",
}


def fold_constants(model: Model) -> bool:
    """Replace constant-input nodes of the main graph by initializers; returns whether anything changed."""
    graph = model.graph
    cpu = CPUExecutionProvider()
    overridable = {vi.name for vi in graph.inputs}
    constants = {name for name in graph.initializers if name not in overridable}
    kept, changed = [], False
    for node in graph.nodes:
        if _foldable(node, constants) and cpu.can_run(node, opset_for(node, model.opset_imports)):
            values = _evaluate(cpu, node, graph, model)
            if values is not None:
                for name, value in zip(node.outputs, values):
                    if name:
                        graph.initializers[name] = value
                        constants.add(name)
                changed = True
                continue
        kept.append(node)
    graph.nodes = kept
    return changed


def _foldable(node, constants: set[str]) -> bool:
    if node.op_type in _NON_DETERMINISTIC or node.domain not in ("",) or any(True for _ in node.subgraphs()):
        return False
    return all(name == "" or name in constants for name in node.inputs)


def _evaluate(cpu: CPUExecutionProvider, node, graph: Graph, model: Model):
    attributes = {name: attr.value for name, attr in node.attributes.items()}
    try:
        fn, multi = cpu.compile_node(node, opset_for(node, model.opset_imports), attributes)
        result = fn(*[graph.initializers.get(name) if name else None for name in node.inputs])
    except Exception:  # noqa: BLE001 - leave it to run time, which reports it properly
        return None
    return list(result) if multi else [result]
