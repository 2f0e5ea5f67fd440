"""Plans specialized to the input shapes a session keeps seeing: shape computations run once, not every run.

Exporters compute Reshape targets, Slice bounds and masks at run time from ``Shape`` of a tensor
(``Concat(Unsqueeze(Gather(Shape(x), 0)), [-1], [64])``); constant folding cannot remove them while
a dim is symbolic, and each of those small nodes costs a kernel call per run (a tenth to a half of a
small model's run). For fixed input shapes their values never change: :func:`shape_determined_steps`
finds the steps whose outputs are a function of the graph inputs' shapes alone (not their values),
and :class:`ShapeSpecializations` keeps, for an input signature seen again, a plan without those
steps whose values it recorded (``framework.execution_plan.ExecutionPlan`` asks it on every run).

What "a function of the input shapes" means is proved per op, conservatively: a value is
*shape-static* when its shape follows from input shapes (ops whose output shape depends only on
their inputs' shapes and attributes, or also on inputs that are themselves value-static, such as
Reshape's target), and *value-static* when ``Shape``/``Size`` read a shape-static tensor or a
deterministic op reads only value-static values and weights. Ops not listed end both chains.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..graph.builder import subgraphs
from ..graph.opsets import ONYXRT_DOMAIN

# Ops whose output shapes follow from their inputs' shapes and their attributes alone.
_SHAPES_FROM_SHAPES = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
    "BatchNormalization", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "Cast", "CastLike",
    "Ceil", "Celu", "Clip", "Concat", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace", "Div",
    "Einsum", "Elu", "Equal", "Erf", "Exp", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu",
    "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GroupNormalization", "HardSigmoid",
    "HardSwish", "Identity", "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Less",
    "LessOrEqual", "Log", "LogSoftmax", "LpNormalization", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mish", "Mod",
    "Mul", "Neg", "Not", "Or", "PRelu", "Pow", "Reciprocal", "Relu", "RMSNormalization", "Round", "Selu", "Shrink",
    "Sigmoid", "Sign", "SimplifiedLayerNormalization", "Sin", "Sinh", "Softmax", "Softplus", "Softsign",
    "SpaceToDepth", "Sqrt", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Transpose", "Trilu", "Where", "Xor",
    # com.microsoft
    "BiasAdd", "BiasGelu", "FastGelu", "FusedConv", "FusedGemm", "FusedMatMul", "QuickGelu",
    "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
    # ai.onyxrt
    "ChannelGate", "ChannelScaledConv", "RowQuantizeMatMul",
})
_REDUCTIONS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
               "ReduceProd", "ReduceSum", "ReduceSumSquare")
# Ops whose output shapes also follow from the values of these inputs.
_SHAPES_FROM_VALUES: dict[str, frozenset[int]] = {
    "ConstantOfShape": frozenset({0}), "Expand": frozenset({1}), "OneHot": frozenset({1}),
    "Pad": frozenset({1, 2, 3}), "Range": frozenset({0, 1, 2}), "Reshape": frozenset({1}),
    "Resize": frozenset({1, 2, 3}), "Slice": frozenset({1, 2, 3, 4}), "Split": frozenset({1}),
    "Squeeze": frozenset({1}), "Tile": frozenset({1}), "TopK": frozenset({1}), "Unsqueeze": frozenset({1}),
    "Upsample": frozenset({1}), **{name: frozenset({1}) for name in _REDUCTIONS},
    "Rearrange": frozenset({1, 2}),  # (ai.onyxrt)
}
_SHAPE_READERS = frozenset({"Shape", "Size"})
_RANDOM = frozenset({"Bernoulli", "BiasDropout", "BitmaskBiasDropout", "BitmaskDropout", "Dropout", "Multinomial",
                     "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"})
_DOMAINS = frozenset({"", "ai.onnx", "com.microsoft", ONYXRT_DOMAIN})
_MAX_RECORDED_BYTES = 1 << 16  # a shape vector or a mask, not an activation
_MAX_PLANS = 4  # input signatures a plan keeps a specialization for (each holds its own buffer pool)
_MAX_SIGNATURES = 64  # signatures counted before the counts start over (a decoder's growing past)


def shape_determined_steps(nodes: Sequence[Any], steps: Sequence[tuple], input_slots: Sequence[int],
                           weight_slots: frozenset[int], on_host: Callable[[Any], bool]) -> frozenset[int]:
    """Indices of the steps whose outputs are value-static (see the module docstring).

    ``steps`` are the plan's ``(fn, ins, outs, ...)``; ``weight_slots`` hold initializers no feed
    overrides; ``on_host(node)`` says whether the node runs on the CPU provider's kernels.
    """
    shape_static = set(input_slots) | set(weight_slots) | {0}  # slot 0: an absent optional input
    value_static = set(weight_slots) | {0}
    found = set()
    for index, (node, step) in enumerate(zip(nodes, steps)):
        ins, outs = step[1], step[2]
        if node.domain not in _DOMAINS or not on_host(node) or next(subgraphs(node), None) is not None:
            continue
        op = node.op_type
        if op in _SHAPE_READERS and node.domain in ("", "ai.onnx"):
            known = bool(ins) and ins[0] in shape_static
        else:
            known = op not in _RANDOM and all(slot in value_static for slot in ins)
        if known:
            found.add(index)
            value_static.update(outs)
            shape_static.update(outs)
        elif op in _SHAPES_FROM_SHAPES:
            if all(slot in shape_static for slot in ins):
                shape_static.update(outs)
        elif op in _SHAPES_FROM_VALUES and node.domain in ("", "ai.onnx", ONYXRT_DOMAIN):
            by_value = _SHAPES_FROM_VALUES[op]
            if all(slot in (value_static if i in by_value else shape_static) for i, slot in enumerate(ins)):
                shape_static.update(outs)
    return frozenset(found)


def signature(inputs: Sequence[Any]) -> tuple | None:
    """What a specialization is keyed by: each input's shape (None for an absent optional input); None when an
    input is not a tensor (a sequence, a map), whose values no shape describes."""
    shapes = []
    for value in inputs:
        if value is None:
            shapes.append(None)
            continue
        shape = getattr(value, "shape", None)
        if shape is None or isinstance(value, (list, dict)):
            return None
        shapes.append(tuple(shape))
    return tuple(shapes)


class ShapeSpecializations:
    """A plan's specializations by input signature: the second run with a signature records the values of the
    shape-determined steps; later runs with it run a plan without them (``ExecutionPlan`` records and builds it)."""

    def __init__(self, static_steps: frozenset[int]) -> None:
        self.static_steps = static_steps
        self._plans: dict[tuple, Any] = {}
        self._seen: dict[tuple, int] = {}

    def plan_for(self, key: tuple | None) -> Any:
        """The specialized plan for ``key``; None when there is none (yet)."""
        return None if key is None else self._plans.get(key)

    def should_record(self, key: tuple | None) -> bool:
        """Whether this run (with ``key``) records: the signature was seen before and has no plan yet."""
        if key is None or key in self._plans or len(self._plans) >= _MAX_PLANS:
            return False
        if len(self._seen) >= _MAX_SIGNATURES:
            self._seen.clear()
        count = self._seen.get(key, 0) + 1
        self._seen[key] = count
        return count >= 2

    def remember(self, key: tuple, plan: Any) -> None:
        self._plans[key] = plan


def recordable(value: Any) -> bool:
    """Whether a step's output may stand in for the step in a specialized plan: a small host array (or
    numpy scalar)."""
    return isinstance(value, (np.ndarray, np.generic)) and value.nbytes <= _MAX_RECORDED_BYTES and value.dtype != object


def frozen_copy(value: np.ndarray | np.generic) -> np.ndarray:
    """A read-only copy of a recorded value (no run may write to it, and no kernel's buffer is kept)."""
    copy = np.array(value, copy=True)
    copy.flags.writeable = False
    return copy
