"""A loaded model optimized and partitioned for a provider list, in onnxruntime's order.

onnxruntime runs the provider-independent (basic) passes on the whole graph, lets the
providers claim their nodes, and then runs each provider's own fusions and layout changes
on the nodes that provider took. onyxrt does the same in four stages:

1. the passes that suit any provider (``GraphPass.providers`` empty, BASIC level) on the
   whole graph;
2. the providers ahead of the CPU provider claim their nodes; a region provider's groups
   become fused nodes (domain ``onyxrt.fused``), opaque to every later pass: their bodies
   are not a graph any pass visits, and no pass matches an op of that domain;
3. every pass at the session's level for the CPU provider (and those after it), the BASIC
   ones again among them, on what is left, so the CPU provider's com.microsoft fused ops never take a node from a provider
   ahead of it, and the regions stay standard ONNX;
4. the CPU provider and those after it take the rest.

With no provider ahead of the CPU provider, stages 1 and 3 are one optimizer run over every
pass, and stage 2 is empty. A provider ahead of the CPU that claims single
nodes without fusing them (a per-node provider) leaves nothing a pass cannot see through,
so stage 3 is skipped then: the CPU provider's fusions would take its nodes away.

``optimized_model_filepath`` gets the model as the optimizer left it: after every pass with
no provider ahead of the CPU provider; with one, after stage 1 (the graph the providers
partition; onnxruntime refuses to save a model holding compiled nodes, onyxrt saves the last
graph without them, which both load).
"""

from __future__ import annotations

from typing import Collection, Sequence

import onnx_ir as ir

from ..framework.constant_evaluator import provider_evaluator
from ..framework.partitioner import FUSED_GROUP, partition
from ..graph.autodiff import expand_gradient_nodes
from ..graph.builder import subgraphs
from ..graph.function_expansion import expand_unsupported
from ..graph.model_saver import save_model
from ..optimizer import (OptimizationLevel, OptimizationReport, batch_norm_depthwise, channel_gate_fusion,
                         channel_scale_conv_fusion, conv_epilogue_fusion, optimize, rearrange_fusion,
                         rotary_attention_packing, row_quantize_matmul_fusion, swiglu_fusion)
from ..providers.base import ExecutionProvider, is_assigned
from ..providers.cpu import CPUExecutionProvider
from .session_options import SessionOptions


def optimize_and_partition(model: ir.Model, providers: Sequence[ExecutionProvider], options: SessionOptions,
                           disabled: Collection[str] = ()) -> OptimizationReport:
    """Prepare ``model`` (in place) for ``providers`` (priority order): expanded, optimized, every node assigned.

    ``options`` gives the optimization level, ``session.disable_quant_qdq`` and
    ``optimized_model_filepath``; ``disabled`` names passes to skip. Returns what the passes did.
    """
    graph, opsets = model.graph, model.opset_imports
    # Gradient nodes name their forward values in attributes only: expand them before
    # the optimizer, whose dead-code pass would otherwise drop those values.
    expand_gradient_nodes(graph, opsets)
    # Ops no provider implements run as their ONNX function bodies, which the passes then see.
    expand_unsupported(graph, opsets, lambda node, opset: any(p.can_run(node, opset) for p in providers))
    level = int(options.graph_optimization_level)
    evaluator = provider_evaluator(CPUExecutionProvider())
    fold_dequantize_linear = options._config.get("session.disable_quant_qdq") == "1"

    def run_passes(at_level: int, for_providers: Sequence[ExecutionProvider]) -> OptimizationReport:
        return optimize(model, at_level, providers=[p.name for p in for_providers], evaluator=evaluator,
                        disabled=disabled, fold_dequantize_linear=fold_dequantize_linear)

    cpu_position = next((i for i, p in enumerate(providers) if p.name == CPUExecutionProvider.name), len(providers))
    ahead, rest = providers[:cpu_position], providers[cpu_position:]
    if not ahead:
        report = run_passes(level, providers)
        _save_if_asked(model, options)
        partition(graph, opsets, providers)
        _fuse_for_cpu_kernels(model, level, disabled)
        return report

    report = run_passes(min(level, OptimizationLevel.BASIC), ())
    _save_if_asked(model, options)
    partition(graph, opsets, ahead, complete=False)
    if _has_unfused_claims(graph):  # the CPU provider's passes could take those nodes: none run
        partition(graph, opsets, providers)
        return report
    if level > OptimizationLevel.BASIC:
        report = report.followed_by(run_passes(level, rest))
    partition(graph, opsets, rest)
    _fuse_for_cpu_kernels(model, level, disabled)
    return report


def _fuse_for_cpu_kernels(model: ir.Model, level: int, disabled: Collection[str]) -> None:
    """Rewrites into forms only onyxrt's CPU kernels run (never saved): see ``optimizer/batch_norm_depthwise.py``,
    ``optimizer/conv_epilogue_fusion.py``, ``optimizer/channel_gate_fusion.py``, ``optimizer/channel_scale_conv_fusion.py``,
    ``optimizer/rotary_attention_packing.py``, ``optimizer/swiglu_fusion.py``, ``optimizer/row_quantize_matmul_fusion.py``
    and ``optimizer/rearrange_fusion.py``."""
    if level < OptimizationLevel.EXTENDED:
        return
    for name, rewrite in ((batch_norm_depthwise.NAME, batch_norm_depthwise.batch_norm_as_depthwise),
                          (conv_epilogue_fusion.NAME, conv_epilogue_fusion.fuse_conv_epilogues),
                          (channel_gate_fusion.NAME, channel_gate_fusion.fuse_channel_gates),
                          (channel_scale_conv_fusion.NAME, channel_scale_conv_fusion.fuse_channel_scale_convs),
                          (rotary_attention_packing.NAME, rotary_attention_packing.pack_rotary_attention),
                          (swiglu_fusion.NAME, swiglu_fusion.fuse_swiglu),
                          (row_quantize_matmul_fusion.NAME, row_quantize_matmul_fusion.fuse_row_quantize_matmuls),
                          (rearrange_fusion.NAME, rearrange_fusion.fuse_rearranges)):
        if name not in disabled:
            rewrite(model.graph, model.opset_imports)


def _save_if_asked(model: ir.Model, options: SessionOptions) -> None:
    if options.optimized_model_filepath:
        save_model(model, options.optimized_model_filepath)


def _has_unfused_claims(graph: ir.Graph) -> bool:
    """Whether a node of ``graph`` or its subgraphs was claimed without being fused into a region."""
    for node in graph:
        if FUSED_GROUP in node.meta:
            continue
        if is_assigned(node) or any(_has_unfused_claims(subgraph) for subgraph in subgraphs(node)):
            return True
    return False
