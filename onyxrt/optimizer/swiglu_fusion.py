"""Gate and up projections + SiLU gating -> one packed projection and a com.microsoft SwiGLU, for onyxrt's CPU
kernels only.

A gated feed-forward block (Llama, Mistral, Qwen: ``down(silu(gate(x)) * up(x))``) reaches the CPU provider as
two MatMuls of one activation, a QuickGelu (``silu_fusion``) of the gate and a Mul. Here the two weights
become one (D, 2F) matrix (gate columns first), one product feeds a SwiGLU without its ``up`` input (the
op splits the packed halves itself), and the gating is one pass: four kernel calls become two, and in a
decoding step one larger product reads its weights faster than two.

SwiGLU is an onnxruntime contrib op, but onnxruntime's CPU provider has no kernel for it, so, like
``conv_epilogue_fusion``, this runs after the optimized model was saved and after partitioning
(``session/placement.py``), at the EXTENDED level and above, unless ``disabled_optimizers`` names
``SwiGLUFusion``. The result equals the nodes it replaces bit for bit on the compiled path (the same
``v * sigmoid(alpha * v)``, then the product).
"""

from __future__ import annotations

import onnx_ir as ir

from ..framework.partitioner import PROVIDER_KEY, on_cpu_kernels
from ..graph.builder import UniqueNames
from .matching import drop_unused_initializers, only_reader, packable, packed_product, partner, product_width, replace_with

NAME = "SwiGLUFusion"


def fuse_swiglu(graph: ir.Graph, opsets: dict[str, int]) -> int:
    """Rewrite each matching gated block of ``graph`` (see the module docstring); returns how many."""
    names = UniqueNames(graph)
    fused = 0
    for gating in [node for node in graph if _is_silu(node)]:
        match = _match(gating)
        if match is None:
            continue
        gate_product, up_product, product = match
        base = product.name or "swiglu"
        packed = packed_product(graph, names, [gate_product, up_product], f"{base}_gate_up")
        swiglu = ir.Node("com.microsoft", "SwiGLU", [packed.outputs[0]], num_outputs=1, name=names.fresh(base),
                         attributes=[ir.AttrFloat32("activation_alpha", gating.attributes.get_float("alpha", 1.702))])
        swiglu.meta[PROVIDER_KEY] = product.meta[PROVIDER_KEY]
        weights = [v for p in (gate_product, up_product) for v in p.inputs[1:] if v is not None]
        replace_with(graph, [gate_product, up_product, gating, product], product.outputs[0], swiglu, anchor=product)
        drop_unused_initializers(graph, weights)
        opsets.setdefault("com.microsoft", 1)
        fused += 1
    return fused


def _is_silu(node: ir.Node) -> bool:
    return node.domain == "com.microsoft" and node.op_type == "QuickGelu" and on_cpu_kernels(node)


def _match(gating: ir.Node):
    """(gate MatMul, up MatMul, the Mul) around the QuickGelu ``gating``, or None."""
    gate = gating.inputs[0]
    gate_product = gate.producer() if gate is not None else None
    product = only_reader(gating.outputs[0])
    if gate_product is None or product is None or only_reader(gate) is not gating:
        return None
    if product.domain != "" or product.op_type != "Mul" or not on_cpu_kernels(product):
        return None
    up = partner(product, gating.outputs[0])
    up_product = up.producer() if up is not None else None
    if up_product is None or up_product is gate_product or only_reader(up) is not product:
        return None
    products = [gate_product, up_product]
    if not all(on_cpu_kernels(p) for p in products) or not packable(products, gate_product.inputs[0]):
        return None
    if product_width(gate_product) != product_width(up_product):
        return None  # (the halves must be as wide: the Mul would broadcast otherwise)
    return gate_product, up_product, product
