"""Q/K/V projections + RotaryEmbedding + GroupQueryAttention -> one packed projection and a
GroupQueryAttention that rotates itself, for onyxrt's CPU kernels only.

A decoder layer exported from transformers and fused by ``group_query_attention_fusion`` reads three
MatMuls of one activation (q, k, v), rotates q and k by two RotaryEmbedding nodes and attends in
GroupQueryAttention. Here the three weights become one (D, (N + 2 Nkv) H) matrix, one product feeds
GroupQueryAttention's packed QKV input, and GroupQueryAttention applies the rotary embedding itself
(``do_rotary``) at the RotaryEmbedding nodes' position ids: six kernel calls per layer become two. In a
decoding step that is most of what they cost (each call's fixed cost exceeds the work on one token) and
one larger product reads its weights faster than three small ones.

onnxruntime's GroupQueryAttention reads only the first position id of a first prompt (for every batch
entry), where RotaryEmbedding reads each row's own; the rewritten node sets onyxrt's
``rotary_position_ids_per_row`` so that it rotates exactly as the nodes it replaces. That attribute
exists in onyxrt only, so, like ``conv_epilogue_fusion``, this runs after the optimized model was saved
and after partitioning (``session/placement.py``), at the EXTENDED level and above, unless
``disabled_optimizers`` names ``RotaryAttentionPacking``.
"""

from __future__ import annotations

import onnx_ir as ir

from ..framework.partitioner import PROVIDER_KEY, on_cpu_kernels
from ..graph.builder import UniqueNames
from .matching import drop_unused_initializers, is_constant, only_reader, packable, packed_product

NAME = "RotaryAttentionPacking"
_GQA_INPUTS = 7  # query, key, value, past_key, past_value, seqlens_k, total_sequence_length
_BIAS = 10  # attention_bias, after cos_cache, sin_cache and position_ids


def pack_rotary_attention(graph: ir.Graph, opsets: dict[str, int]) -> int:
    """Rewrite each matching GroupQueryAttention of ``graph`` (see the module docstring); returns how many."""
    names = UniqueNames(graph)
    packed = 0
    for attention in [node for node in graph if _is_plain_gqa(node)]:
        match = _match(attention)
        if match is None:
            continue
        projections, rotations, shape_readers = match
        x = projections[0].inputs[0]
        product = packed_product(graph, names, projections, f"{attention.name or 'gqa'}_qkv")
        rotary = rotations[0]
        inputs = list(attention.inputs[:_GQA_INPUTS]) + [None] * (_GQA_INPUTS - len(attention.inputs))
        inputs[0] = product.outputs[0]
        inputs[1] = inputs[2] = None
        inputs += [rotary.inputs[2], rotary.inputs[3], rotary.inputs[1]]  # cos_cache, sin_cache, position_ids
        if len(attention.inputs) > _BIAS and attention.inputs[_BIAS] is not None:
            inputs.append(attention.inputs[_BIAS])
        attributes = [attr for name, attr in attention.attributes.items()
                      if name not in ("do_rotary", "rotary_interleaved", "rotary_position_ids_per_row")]
        attributes += [ir.AttrInt64("do_rotary", 1),
                       ir.AttrInt64("rotary_interleaved", rotary.attributes.get_int("interleaved", 0)),
                       ir.AttrInt64("rotary_position_ids_per_row", 1)]
        fused = ir.Node("com.microsoft", "GroupQueryAttention", inputs, attributes=attributes,
                        num_outputs=len(attention.outputs), name=names.fresh(f"{attention.name or 'gqa'}_rotary"))
        fused.meta[PROVIDER_KEY] = attention.meta[PROVIDER_KEY]
        graph.insert_before(attention, fused)
        for reader in shape_readers:  # (batch and sequence dims: x's own)
            reader.replace_input_with(0, x)
        for old, new in zip(attention.outputs, fused.outputs):
            new.type, new.shape = old.type, old.shape
            name = old.name
            old.replace_all_uses_with(new, replace_graph_outputs=True)
            new.name = name
        weights = [v for p in projections for v in p.inputs[1:] if v is not None]
        graph.remove([*projections, *rotations, attention], safe=True)
        drop_unused_initializers(graph, weights)
        opsets.setdefault("com.microsoft", 1)
        packed += 1
    return packed


def _is_plain_gqa(node: ir.Node) -> bool:
    """A GroupQueryAttention the CPU kernels run with separate query, key and value, no rotary embedding of
    its own and nothing past total_sequence_length but an attention bias."""
    if node.domain != "com.microsoft" or node.op_type != "GroupQueryAttention" or not on_cpu_kernels(node):
        return False
    if node.attributes.get_int("do_rotary", 0) or len(node.inputs) < 3 or any(v is None for v in node.inputs[:3]):
        return False
    # inputs 7-9 (cos_cache, sin_cache, position_ids) are the rotary nodes' here; 10 (attention_bias) is kept;
    # later ones (head_sink, quantized caches, query norms) are not matched
    extra = list(node.inputs[_GQA_INPUTS:])
    return all(v is None for v in extra[:3]) and all(v is None for v in extra[4:])


def _match(attention: ir.Node):
    """(q/k/v MatMuls, the two RotaryEmbedding nodes, Shape nodes to re-point) for ``attention``, or None."""
    query, key, value = attention.inputs[:3]
    rq, rk = query.producer(), key.producer()
    if not (_is_rotary(rq) and _is_rotary(rk)) or rq is rk:
        return None
    if rq.inputs[1] is not rk.inputs[1] or rq.inputs[2] is not rk.inputs[2] or rq.inputs[3] is not rk.inputs[3]:
        return None
    if rq.attributes.get_int("interleaved", 0) != rk.attributes.get_int("interleaved", 0):
        return None
    positions = rq.inputs[1]
    if positions is None or positions.shape is None or len(positions.shape) != 2:
        return None  # (a single offset would be read differently)
    if not (is_constant(rq.inputs[2]) and is_constant(rq.inputs[3])):
        return None
    projections = [rq.inputs[0].producer(), rk.inputs[0].producer(), value.producer()]
    if any(p is None for p in projections):
        return None
    x = projections[0].inputs[0]
    if not packable(projections, x):
        return None
    if only_reader(projections[0].outputs[0]) is not rq or only_reader(projections[1].outputs[0]) is not rk:
        return None
    if only_reader(value) is not attention or attention.inputs[2] is not value:
        return None
    # the rotated query and key feed only the attention, and Shape nodes reading their leading dims (the
    # sequence lengths the GroupQueryAttention fusion computes), which x has too
    shape_readers = []
    for rotated in (query, key):
        if rotated.is_graph_output():
            return None
        for use in rotated.uses():
            if use.node is attention and use.idx in (0, 1):
                continue
            if not _reads_leading_dims(use.node, x):
                return None
            shape_readers.append(use.node)
    if any(p.meta.get(PROVIDER_KEY) != attention.meta.get(PROVIDER_KEY) for p in (*projections, rq, rk)):
        return None
    return projections, [rq, rk], shape_readers


def _is_rotary(node: ir.Node | None) -> bool:
    if node is None or node.domain != "com.microsoft" or node.op_type != "RotaryEmbedding" or len(node.inputs) != 4:
        return False
    if not on_cpu_kernels(node) or node.attributes.get_int("is_packed_batching", 0):
        return False
    scale = node.attributes.get("scale")
    return (scale is None or scale.value == 1.0) and not node.attributes.get_int("rotary_embedding_dim", 0)


def _reads_leading_dims(node: ir.Node, x: ir.Value) -> bool:
    """A Shape that reads no more than the leading dims of a product of ``x`` (which has x's rank and
    leading dims), which x itself then gives."""
    if node.domain != "" or node.op_type != "Shape" or x.shape is None:
        return False
    rank = len(x.shape)
    end = node.attributes.get_int("end", rank)
    return (end if end >= 0 else end + rank) <= rank - 1
