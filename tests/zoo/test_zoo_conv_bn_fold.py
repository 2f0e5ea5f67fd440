"""resnet50 as exported without BatchNormalization folding: onyxrt folds every BatchNormalization back into its Conv.

The zoo's exports have their BatchNormalizations folded already; this test puts one
(random inference statistics) after every Conv and checks that all fold, that the node
count at ORT_ENABLE_BASIC equals onnxruntime's, and that the outputs (ours, and
onnxruntime's on our saved model) match onnxruntime's unoptimized run. mobilenet_v2 is
no numerical witness: its random weights leave outputs of ~1e-9, remnants of
cancellations that any rounding change (onnxruntime's own fusion included) moves by
tens of percent.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from feeds import vision_feeds
from onnx import helper, numpy_helper

import onyxrt

ort = pytest.importorskip("onnxruntime")
pytestmark = [pytest.mark.heavy, pytest.mark.zoo]


def _with_batch_norm_after_every_conv(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    rng = np.random.default_rng(1)
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    nodes, inserted = [], 0
    for node in model.graph.node:
        nodes.append(node)
        if node.op_type != "Conv":
            continue
        channels = weights[node.input[1]].dims[0]
        output = node.output[0]
        node.output[0] = f"{output}_before_bn"
        variance = rng.uniform(0.5, 2.0, channels).astype(np.float32)
        mean = rng.normal(0.0, 0.1, channels).astype(np.float32)
        # Close to the identity, so activations keep their range through 53 layers.
        gamma = (np.sqrt(variance + 1e-5) * rng.uniform(0.9, 1.1, channels)).astype(np.float32)
        beta = (mean * gamma / np.sqrt(variance + 1e-5)).astype(np.float32)
        names = [f"{output}_bn_{part}" for part in ("gamma", "beta", "mean", "var")]
        for name, array in zip(names, (gamma, beta, mean, variance)):
            model.graph.initializer.append(numpy_helper.from_array(array, name))
        nodes.append(helper.make_node("BatchNormalization", [node.output[0], *names], [output]))
        inserted += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model, inserted


def test_resnet50_batch_norms_fold_into_convs(zoo_model, tmp_path):
    model, inserted = _with_batch_norm_after_every_conv(onnx.load(zoo_model("resnet50")))
    assert inserted == 53
    data = model.SerializeToString()

    options = onyxrt.SessionOptions()
    options.graph_optimization_level = onyxrt.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "ours.onnx")
    ours = onyxrt.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    assert "conv_bn_fusion" in ours.applied_optimizations
    ours_nodes = onnx.load(str(tmp_path / "ours.onnx")).graph.node
    assert not [node for node in ours_nodes if node.op_type == "BatchNormalization"]

    reference_options = ort.SessionOptions()
    reference_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    reference_options.optimized_model_filepath = str(tmp_path / "onnxruntime.onnx")
    ort.InferenceSession(data, reference_options, providers=["CPUExecutionProvider"])
    assert len(ours_nodes) == len(onnx.load(str(tmp_path / "onnxruntime.onnx")).graph.node)

    unoptimized = ort.SessionOptions()
    unoptimized.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(data, unoptimized, providers=["CPUExecutionProvider"])
    # onnxruntime runs our folded model too
    saved = str(tmp_path / "ours.onnx")
    ours_in_onnxruntime = ort.InferenceSession(saved, unoptimized, providers=["CPUExecutionProvider"])
    for batch in (1, 2):
        feeds = vision_feeds(batch)
        want = reference.run(None, feeds)[0]
        for got in (ours.run(None, feeds)[0], ours_in_onnxruntime.run(None, feeds)[0]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(want))))
