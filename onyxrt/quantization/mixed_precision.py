"""Automatic mixed precision: float16 everywhere except the nodes that push the outputs past a tolerance.

``auto_convert_mixed_precision`` follows ``onnxconverter_common.auto_mixed_precision``: the graph's
nodes, in order, form one segment; the largest segment not yet decided is tried in float16 together
with every segment already found good (everything else float32); if the outputs on the sample
inputs still pass, the segment is good, otherwise it is split in halves, and a failing single node
is kept float32. Runs go through onyxrt, computing float16 nodes in float16 (its session otherwise
moves them to float32, as onnxruntime's CPU provider does). Differences: ``keep_io_types`` defaults to True (float32
inputs and outputs, what a caller swapping the model in needs), only nodes that read or write a
float value are candidates (blocking the others changes nothing), and progress goes to ``logging``
instead of print.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import ModelProto, TensorProto

from .float16 import convert_float_to_float16

__all__ = ["auto_convert_mixed_precision", "MixedPrecisionResult"]

logger = logging.getLogger(__name__)

ValidateFn = Callable[[Sequence[Any], Sequence[Any]], bool]
_CONTROL_FLOW = ("If", "Loop", "Scan")


@dataclass
class _Segment:
    start: int
    end: int
    good: bool = False
    bad: bool = False

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class MixedPrecisionResult:
    """What ``auto_convert_mixed_precision`` decided: the nodes kept float32 and how many runs it took."""
    model: ModelProto
    kept_float32: list[str]
    candidates: int
    attempts: int


def auto_convert_mixed_precision(
    model: ModelProto | str | os.PathLike,
    feed_dict: dict[str, np.ndarray],
    validate_fn: ValidateFn | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    keep_io_types: bool = True,
    *,
    op_block_list: Sequence[str] | None = None,
    return_details: bool = False,
) -> ModelProto | MixedPrecisionResult:
    """The model in float16 except the fewest nodes (found by bisection) its outputs need in float32.

    A converted model passes when ``validate_fn(fp32_outputs, converted_outputs)`` is true (if
    given) and every output satisfies ``np.allclose(converted, fp32, rtol, atol)`` (if ``rtol`` or
    ``atol`` is given; the missing one is 1e-5 / 1e-8 as in onnxconverter_common). ``feed_dict``
    holds float32 inputs; without ``keep_io_types`` they are fed as float16 to the converted model.
    Raises ValueError when neither criterion is given, when the float32 model fails its own
    validation, or when even the model with every candidate node kept float32 fails.
    ``return_details`` returns a :class:`MixedPrecisionResult` instead of the model.
    """
    if rtol is None and atol is not None:
        rtol = 1e-5
    if atol is None and rtol is not None:
        atol = 1e-8
    if rtol is None and validate_fn is None:
        raise ValueError("auto_convert_mixed_precision needs validate_fn or rtol/atol; both are None")

    def passes(reference: Sequence[Any], candidate: Sequence[Any]) -> bool:
        if validate_fn is not None and not validate_fn(reference, candidate):
            return False
        if rtol is not None:
            for expected, actual in zip(reference, candidate):
                if not np.allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                                   rtol=rtol, atol=atol):
                    return False
        return True

    base = onnx.load(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else copy.deepcopy(model)
    if not isinstance(base, ModelProto):
        raise ValueError(f"Expected an ONNX ModelProto or a path but got {type(model).__name__}")
    _name_unnamed_nodes(base)
    base = onnx.shape_inference.infer_shapes(base)
    reference = _run(base, feed_dict)
    if not passes(reference, reference):
        raise ValueError("validation failed for the original float32 model (validate_fn rejects its own outputs)")
    low_feeds = feed_dict if keep_io_types else {
        name: value.astype(np.float16) if isinstance(value, np.ndarray) and value.dtype == np.float32 else value
        for name, value in feed_dict.items()}
    candidates = _candidate_nodes(base)
    attempts = 0

    def attempt(blocked: list[str]) -> tuple[bool, ModelProto]:
        nonlocal attempts
        attempts += 1
        converted = convert_float_to_float16(base, keep_io_types=keep_io_types, disable_shape_infer=True,
                                             keep_float32_between_blocked=True,
                                             op_block_list=op_block_list, node_block_list=blocked)
        try:
            outputs = _run(converted, low_feeds)
        except Exception as exc:  # noqa: BLE001 - a conversion that does not run is a failed attempt
            logger.info("attempt %d (%d nodes float32) does not run: %s", attempts, len(blocked), exc)
            return False, converted
        ok = passes(reference, outputs)
        logger.info("attempt %d with %d of %d nodes float32: %s", attempts, len(blocked), len(candidates),
                    "passes" if ok else "fails")
        return ok, converted

    if not attempt(candidates)[0]:
        raise ValueError("validation failed for the model with every candidate node kept float32 "
                         "(the ops float16 is forced on, or the input/output casts, exceed the tolerance)")
    segments = [_Segment(0, len(candidates))] if candidates else []

    def blocked_except(tried: _Segment | None) -> list[str]:
        return [name for segment in segments if not segment.good and segment is not tried
                for name in candidates[segment.start:segment.end]]

    while True:
        open_segments = [s for s in segments if not s.good and not s.bad]
        if not open_segments:
            break
        segment = max(open_segments, key=lambda s: s.size)
        if attempt(blocked_except(segment))[0]:
            segment.good = True
        elif segment.size == 1:
            segment.bad = True
        else:
            middle = segment.start + segment.size // 2
            at = segments.index(segment)
            segments[at:at + 1] = [_Segment(segment.start, middle), _Segment(middle, segment.end)]
    kept = blocked_except(None)
    ok, converted = attempt(kept)
    if not ok:
        raise ValueError(f"validation failed for the final mixed-precision model ({len(kept)} nodes float32)")
    logger.info("mixed precision: %d of %d candidate nodes kept float32: %s", len(kept), len(candidates), kept)
    if return_details:
        return MixedPrecisionResult(converted, kept, len(candidates), attempts)
    return converted


def _name_unnamed_nodes(model: ModelProto) -> None:
    """Give unnamed main-graph nodes unique names: the block list picks nodes by name."""
    taken = {node.name for node in model.graph.node}
    counter = 0
    for node in model.graph.node:
        if not node.name:
            while f"{node.op_type}_{counter}" in taken:
                counter += 1
            node.name = f"{node.op_type}_{counter}"
            taken.add(node.name)


def _candidate_nodes(model: ModelProto) -> list[str]:
    """Main-graph nodes that read or write a float32 value (control-flow nodes convert as a whole)."""
    floats = {v.name for v in (*model.graph.input, *model.graph.output, *model.graph.value_info)
              if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    floats |= {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    names = []
    for node in model.graph.node:
        if node.op_type in _CONTROL_FLOW:
            continue
        touches_float = any(name in floats for name in (*node.input, *node.output)) or (
            node.op_type in ("Constant", "ConstantOfShape") and any(
                a.t.data_type == TensorProto.FLOAT for a in node.attribute if a.type == onnx.AttributeProto.TENSOR))
        if touches_float:
            names.append(node.name)
    return names


def _run(model: ModelProto, feeds: dict[str, Any]) -> list[Any]:
    from ..session.inference_session import InferenceSession  # the session imports heavy modules

    # float16 nodes computed as float16 (not moved to float32 as the session does by default): the error
    # measured is that of hardware computing in float16, which the converted model is for
    session = InferenceSession(model, providers=["CPUExecutionProvider"], disabled_optimizers=["Float16ToFloat32"])
    return session.run(None, feeds)
