"""Models quantized by onnxruntime's tools run on onyxrt's low-precision kernels.

* llama_tiny, weight-only int4 (``MatMulNBitsQuantizer``, block 32, asymmetric): the packed
  MatMulNBits kernels, and the decoder fusions still firing on the quantized graph (its
  MatMulNBits outputs get shapes at load); logits of a decode step at past 127 and of a prefill
  against onnxruntime on the same file, and 24 greedy tokens equal to onnxruntime's.
* resnet50, ``quantize_static`` (QDQ, per-channel, 32 random calibration images): every Conv
  fused into QLinearConv (integer GEMM); output against onnxruntime on the same file and
  signal-to-noise ratio against the float32 model (the issue asks for >= 20 dB).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onyxrt
from feeds import decoder_feeds, vision_feeds

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("numba")
pytestmark = [pytest.mark.heavy, pytest.mark.zoo]


@pytest.fixture(scope="module")
def llama_int4(zoo_model, tmp_path_factory):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(zoo_model("llama_tiny")), bits=4, block_size=32, is_symmetric=False)
    quantizer.process()
    path = tmp_path_factory.mktemp("int4") / "llama_tiny_int4.onnx"
    onnx.save(quantizer.model.model, str(path))
    return str(path)


def _greedy(session, steps: int) -> list[int]:
    feeds = decoder_feeds(1, 8, 0, seed=3)
    past_names = [name for name in feeds if name.startswith("past_key_values.")]
    output_names = ["logits"] + [name.replace("past_key_values", "present") for name in past_names]
    tokens = []
    for _ in range(steps):
        logits, *presents = session.run(output_names, feeds)
        token = int(logits[0, -1].argmax())
        tokens.append(token)
        total = feeds["attention_mask"].shape[1] + 1
        feeds = {"input_ids": np.array([[token]], np.int64), "position_ids": np.array([[total - 1]], np.int64),
                 "attention_mask": np.ones((1, total), np.int64), **dict(zip(past_names, presents))}
    return tokens


def test_llama_int4_matches_onnxruntime_and_keeps_its_fusions(llama_int4, tmp_path):
    options = onyxrt.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = onyxrt.InferenceSession(llama_int4, options)
    ops = [node.op_type for node in onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node]
    assert ops.count("MatMulNBits") == 29 and ops.count("GroupQueryAttention") == 4
    assert ops.count("RotaryEmbedding") == 8 and ops.count("SkipSimplifiedLayerNormalization") == 8
    reference = ort.InferenceSession(llama_int4, providers=["CPUExecutionProvider"])
    for past, seq in ((127, 1), (0, 32)):
        feeds = decoder_feeds(1, seq, past)
        for ours, theirs in zip(session.run(None, feeds), reference.run(None, feeds)):
            np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * float(np.abs(theirs).max()))
    assert _greedy(session, 24) == _greedy(reference, 24)


@pytest.fixture(scope="module")
def resnet50_qdq(zoo_model, tmp_path_factory):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class RandomImages(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.images = iter([{"input": rng.standard_normal((1, 3, 224, 224), dtype=np.float32)} for _ in range(32)])

        def get_next(self):
            return next(self.images, None)

    folder = tmp_path_factory.mktemp("qdq")
    prepared = str(folder / "prepared.onnx")
    quant_pre_process(zoo_model("resnet50"), prepared, skip_symbolic_shape=True)
    path = str(folder / "resnet50_qdq.onnx")
    quantize_static(prepared, path, RandomImages(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return path


def test_resnet50_qdq_runs_on_integer_convolutions(zoo_model, resnet50_qdq, tmp_path):
    options = onyxrt.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = onyxrt.InferenceSession(resnet50_qdq, options)
    ops = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    assert ops.count("QLinearConv") == 53 and "Conv" not in ops
    feeds = vision_feeds(1, seed=5)
    (ours,) = session.run(None, feeds)
    (theirs,) = ort.InferenceSession(resnet50_qdq, providers=["CPUExecutionProvider"]).run(None, feeds)
    (exact,) = ort.InferenceSession(zoo_model("resnet50"), providers=["CPUExecutionProvider"]).run(None, feeds)
    # same integer arithmetic as onnxruntime's QLinearConv: equal up to a rare one-unit rounding flip
    np.testing.assert_allclose(ours, theirs, atol=0.05 * float(np.abs(theirs).max()))
    assert ours.argmax() == theirs.argmax()
    snr = 10 * np.log10(float((exact.astype(np.float64) ** 2).sum()) / float(((ours - exact).astype(np.float64) ** 2).sum()))
    assert snr >= 20.0
