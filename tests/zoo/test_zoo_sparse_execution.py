"""Zoo models with weights pruned by magnitude run on the sparse kernels with the dense run's outputs.

minilm_l6 with every MatMul weight 90% zeros (its optimized graph runs them as MatMul and Attention's
packed QKV weight) and resnet50 with its 1x1 convolutions 80% zeros, the sparse kernels forced
(``onyxrt.sparse.select=always``) against sparse execution off: within 1e-4 of the output's scale.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from feeds import encoder_feeds, vision_feeds
from onnx import numpy_helper

import onyxrt as ort
from onyxrt.providers.cpu.math.sparse_gemm import SparseWeight

pytestmark = [pytest.mark.heavy, pytest.mark.zoo]


def pruned_model(path: str, sparsity: float, wanted) -> bytes:
    """The model with each weight ``wanted(node, weight)`` accepts zeroed below its ``sparsity`` quantile."""
    model = onnx.load(path)
    initializers = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        tensor = initializers.get(node.input[1]) if len(node.input) > 1 else None
        if tensor is None:
            continue
        weight = numpy_helper.to_array(tensor)
        if wanted(node, weight):
            weight = weight.copy()
            weight[np.abs(weight) <= np.quantile(np.abs(weight), sparsity)] = 0
            tensor.CopyFrom(numpy_helper.from_array(weight, tensor.name))
    return model.SerializeToString()


def run(data: bytes, feeds, **config):
    options = ort.SessionOptions()
    for key, value in config.items():
        options.add_session_config_entry(f"onyxrt.sparse.{key}", value)
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    used = 0
    for step in session._plan._steps:
        packed = getattr(step[0], "keywords", {}).get("_packed")
        used += isinstance(packed, SparseWeight) or getattr(packed, "sparse", None) is not None
    return session.run(None, feeds)[0], used


def assert_same(sparse, dense):
    assert float(np.abs(sparse - dense).max()) <= 1e-4 * float(np.abs(dense).max())


def test_minilm_pruned_90_percent(zoo_model):
    data = pruned_model(zoo_model("minilm_l6"), 0.9, lambda node, w: node.op_type == "MatMul" and w.ndim == 2)
    for seq in (1, 64):
        feeds = encoder_feeds("minilm_l6", 2 if seq > 1 else 1, seq)
        sparse, used = run(data, feeds, select="always")
        dense, none = run(data, feeds, enable="0")
        assert used == 24 and none == 0  # 6 layers: QKV (Attention), output, two feed-forward weights
        assert_same(sparse, dense)


def test_resnet50_one_by_one_convolutions_pruned_80_percent(zoo_model):
    data = pruned_model(zoo_model("resnet50"), 0.8, lambda node, w: node.op_type == "Conv" and w.shape[2:] == (1, 1))
    feeds = vision_feeds(1)
    sparse, used = run(data, feeds, select="always")
    dense, none = run(data, feeds, enable="0")
    assert used == 36 and none == 0
    assert_same(sparse, dense)
