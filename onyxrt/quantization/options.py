"""``extra_options``: the keys onnxruntime's quantizers read, plus onyxrt's own, checked by mode."""

from __future__ import annotations

import warnings
from typing import Any

# Keys onnxruntime documents; the ones onyxrt does not act on are accepted (a script passing them still runs).
ONNXRUNTIME_KEYS = {
    "extra.Sigmoid.nnapi", "ActivationSymmetric", "ActivationRestrictedAsymmetric", "WeightSymmetric", "EnableSubgraph",
    "ForceQuantizeNoInputCheck", "MatMulConstBOnly", "AddQDQPairToWeight", "OpTypesToExcludeOutputQuantization",
    "DedicatedQDQPair", "QDQOpTypePerChannelSupportToAxis", "CalibTensorRangeSymmetric", "CalibMovingAverage",
    "CalibMovingAverageConstant", "CalibMaxIntermediateOutputs", "CalibStridedMinMax", "SmoothQuant", "SmoothQuantAlpha",
    "SmoothQuantFolding", "UseQDQContribOps", "MinimumRealRange", "QDQKeepRemovableActivations",
    "QDQDisableWeightAdjustForInt32Bias", "TensorQuantOverrides", "BlockSize", "num_bins", "num_quantized_bins",
    "percentile", "symmetric", "CalibPercentile", "CalibNumBins", "CalibNumQuantizedBins",
}
ONYXRT_KEYS = {"GeluOutputActivations", "FloatActivationsAfterGelu", "CalibProgress"}


def check_extra_options(extra_options: dict[str, Any] | None, mode: str) -> dict[str, Any]:
    """A copy of ``extra_options``; keys nobody reads are warned about, unsupported values are errors."""
    options = dict(extra_options or {})
    unknown = sorted(set(options) - ONNXRUNTIME_KEYS - ONYXRT_KEYS)
    if unknown:
        warnings.warn(f"extra_options keys not used by {mode} quantization: {unknown}", stacklevel=3)
    if options.get("MatMulConstBOnly", True) is False:
        raise ValueError("extra_options MatMulConstBOnly=False is not supported: onyxrt quantizes MatMuls with a constant weight only")
    if options.get("EnableSubgraph"):
        raise ValueError("extra_options EnableSubgraph=True is not supported: onyxrt quantizes the main graph only")
    return options
