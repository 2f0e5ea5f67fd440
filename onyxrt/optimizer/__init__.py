"""Graph optimizer: rewrite passes over the onnx_ir model, run before partitioning and planning.

One pass per module; :mod:`.pass_manager` runs them over the main graph and every
subgraph to a fixed point. :func:`optimize` is the session's entry point.
"""

from __future__ import annotations

from typing import Collection, Sequence

import onnx_ir as ir

from .attention_fusion import AttentionFusion
from .common_subexpression_elimination import CommonSubexpressionElimination
from .constant_folding import ConstantFolding
from .conv_activation_fusion import ConvActivationFusion
from .conv_bn_fusion import ConvAddFusion, ConvBatchNormFusion, ConvMulFusion
from .conv_residual_add_fusion import ConvResidualAddFusion
from .dead_code_elimination import DeadCodeElimination
from .drop_qdq_nodes import DropQdqNodes
from .fast_gelu_fusion import FastGeluFusion
from .float16_to_float32 import Float16ToFloat32
from .gelu_fusion import GeluFusion
from .gemm_activation_fusion import GemmActivationFusion
from .group_query_attention_fusion import GroupQueryAttentionFusion
from .identity_elimination import IdentityElimination
from .layer_norm_fusion import LayerNormFusion
from .matmul_add_fusion import MatMulAddFusion
from .matmul_column_scale_fusion import MatMulColumnScaleFusion
from .matmul_scale_fusion import MatMulScaleFusion
from .matmul_transpose_fusion import MatMulTransposeFusion
from .nhwc_transformer import NhwcTransformer
from .noop_elimination import NoopElimination
from .pass_manager import (
    DEFAULT_MAX_FOLDED_BYTES,
    DEFAULT_MAX_ROUNDS,
    ConstantEvaluator,
    GraphPass,
    OptimizationContext,
    OptimizationLevel,
    OptimizationReport,
    PassManager,
)
from .qdq_binary_fusion import QdqBinaryFusion
from .qdq_concat_fusion import QdqConcatFusion
from .qdq_conv_fusion import QdqConvFusion
from .dynamic_quantize_matmul_merge import DynamicQuantizeMatMulMerge
from .qdq_matmul_fusion import DynamicQuantizeMatMulFusion, QdqMatMulFusion
from .qdq_unary_fusion import QdqUnaryFusion
from .reshape_chain_fusion import ReshapeChainFusion
from .rms_norm_fusion import RmsNormFusion
from .rotary_fusion import RotaryEmbeddingFusion
from .silu_fusion import SiluFusion
from .skip_layer_norm_fusion import SkipLayerNormFusion
from .transpose_optimizer import TransposeOptimizer

__all__ = [
    "DEFAULT_MAX_FOLDED_BYTES",
    "DEFAULT_MAX_ROUNDS",
    "ConstantEvaluator",
    "GraphPass",
    "OptimizationContext",
    "OptimizationLevel",
    "OptimizationReport",
    "PassManager",
    "default_passes",
    "optimize",
]


def default_passes() -> list[GraphPass]:
    """onyxrt's passes in the order each round runs them."""
    return [
        IdentityElimination(), ConstantFolding(), Float16ToFloat32(), NoopElimination(), CommonSubexpressionElimination(),
        ConvBatchNormFusion(), ConvMulFusion(), ConvAddFusion(),
        QdqMatMulFusion(), DynamicQuantizeMatMulFusion(),  # before MatMulAddFusion: they take a bias Add themselves
        DynamicQuantizeMatMulMerge(),
        MatMulColumnScaleFusion(),  # before MatMulAddFusion: the Add it keeps may still become a Gemm's bias
        MatMulAddFusion(),
        QdqConvFusion(), QdqBinaryFusion(), QdqUnaryFusion(), QdqConcatFusion(), DropQdqNodes(),
        DeadCodeElimination(), GeluFusion(), FastGeluFusion(), LayerNormFusion(), RmsNormFusion(), SiluFusion(),
        MatMulScaleFusion(), ConvResidualAddFusion(), ConvActivationFusion(), GemmActivationFusion(),
        SkipLayerNormFusion(),
        ReshapeChainFusion(), TransposeOptimizer(), MatMulTransposeFusion(),
        RotaryEmbeddingFusion(), GroupQueryAttentionFusion(), AttentionFusion(),
        NhwcTransformer(),  # last: the layout of what the fusions above made
    ]


def optimize(
    model: ir.Model,
    level: int,
    *,
    providers: Sequence[str],
    evaluator: ConstantEvaluator,
    disabled: Collection[str] = (),
    fold_dequantize_linear: bool = False,
    max_folded_bytes: int = DEFAULT_MAX_FOLDED_BYTES,
    max_rounds: int = DEFAULT_MAX_ROUNDS,
) -> OptimizationReport:
    """Optimize ``model`` in place at ``level`` (onnxruntime's GraphOptimizationLevel values).

    ``providers``: the session's provider names (passes declare which they suit);
    ``evaluator``: computes one node from constant inputs for constant folding;
    ``disabled``: pass names to skip, ours or onnxruntime's ("ConstantFolding", "EliminateIdentity");
    ``fold_dequantize_linear``: fold DequantizeLinear too (onnxruntime's ``session.disable_quant_qdq``);
    ``max_folded_bytes``: the largest tensor constant folding may grow the model by.

    At every level, nodes listed out of dependency order are sorted first.
    """
    context = OptimizationContext(
        opset_imports=model.opset_imports,
        providers=tuple(providers),
        evaluator=evaluator,
        fold_dequantize_linear=fold_dequantize_linear,
        max_folded_bytes=max_folded_bytes,
    )
    return PassManager(default_passes(), max_rounds).run(model, context, level, disabled)
