"""MatMulNBits on packed weights (contrib/nbits.py, nbits_kernels.py): onnxruntime parity and exact references.

Weights come from onnxruntime's own ``MatMulNBitsQuantizer`` (4 and 8 bits, blocks 16..256,
symmetric and asymmetric, K and N that are multiples of neither the block nor the kernel's
column tile), and from hand-made blocks for what the quantizer does not write (float zero
points, float16 A, accuracy level 4, computed inputs). Rows 1..8 take the direct kernel, more
rows the dequantize-then-BLAS route; both are checked. Tolerances are float32 rounding of a
dot product relative to the output's magnitude: the kernels sum in another order than
onnxruntime (and form ``scale * sum(q * a) - scale * zp * sum(a)`` per block).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt
from onyxrt.errors import Fail
from onyxrt.framework.thread_pool import ThreadPool
from onyxrt.providers.cpu.contrib import nbits, quantized

F = np.float32
RNG = np.random.default_rng(2026)
pytest.importorskip("numba")


def _matmul_model(k: int, n: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, n)) * 0.1).astype(F)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _ort_quantized(k: int, n: int, bits: int, block: int, symmetric: bool) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(_matmul_model(k, n), bits=bits, block_size=block, is_symmetric=symmetric)
    quantizer.process()
    model = quantizer.model.model
    assert [node.op_type for node in model.graph.node] == ["MatMulNBits"]
    return model


def _close(got: np.ndarray, want: np.ndarray, rel: float = 2e-6) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = max(float(np.abs(want.astype(np.float64)).max()), 1e-6)
    err = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
    assert err <= rel * scale * 10, f"max error {err} against magnitude {scale}"


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
@pytest.mark.parametrize("block", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("bits", [4, 8])
def test_onnxruntime_quantized_matmul_matches_onnxruntime(bits, block, symmetric):
    ort = pytest.importorskip("onnxruntime")
    k, n = 300, 77  # neither a multiple of the block nor of the 64-column tile
    model = _ort_quantized(k, n, bits, block, symmetric)
    data = model.SerializeToString()
    expected_session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    session = onyxrt.InferenceSession(data)
    for rows in (1, 3, 8, 13):  # direct kernel up to 8 rows, then dequantize + BLAS
        a = RNG.standard_normal((rows, k)).astype(F)
        (want,) = expected_session.run(None, {"a": a})
        (got,) = session.run(None, {"a": a})
        _close(got, want)


def _nbits_inputs(bits, k, n, block, zero_points):
    kb = -(-k // block)
    q = RNG.integers(0, 2**bits, (n, kb, block)).astype(np.uint8)
    if bits == 4:
        b = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    else:
        b = q
    scales = RNG.uniform(0.01, 0.1, (n, kb)).astype(F)
    if zero_points == "packed":
        zq = RNG.integers(0, 2**bits, (n, kb + kb % 2)).astype(np.uint8)
        zp = (zq[:, 0::2] | (zq[:, 1::2] << 4)).astype(np.uint8) if bits == 4 else zq[:, :kb]
        zf = zq[:, :kb].astype(np.float64)
    elif zero_points == "float":
        zp = RNG.uniform(0, 2**bits - 1, (n, kb)).astype(F)
        zf = zp.astype(np.float64)
    else:
        zp, zf = None, np.full((n, kb), 2.0 ** (bits - 1))
    # float64 reference weight (K, N): scale * (q - zp), blocks cut to K
    w = (q.astype(np.float64) - zf[:, :, None]) * scales.astype(np.float64)[:, :, None]
    reference = w.reshape(n, kb * block)[:, :k].T
    return b, scales, zp, reference


@pytest.mark.parametrize("zero_points", ["packed", "float", None])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("rows", [1, 2, 5, 8, 9, 40])
def test_kernel_matches_float64_reference(bits, zero_points, rows):
    k, n, block = 200, 130, 32
    b, scales, zp, reference = _nbits_inputs(bits, k, n, block, zero_points)
    bias = RNG.standard_normal(n).astype(F)
    a = RNG.standard_normal((rows, k)).astype(F)
    got = quantized.matmul_nbits(a, b, scales, zp, None, bias, K=k, N=n, bits=bits, block_size=block)
    want = (a.astype(np.float64) @ reference + bias).astype(F)
    _close(got, want)


def test_prepacked_weight_is_tiled_and_holds_no_float_copy():
    k, n, block = 512, 1000, 32
    b, scales, zp, _ = _nbits_inputs(4, k, n, block, "packed")
    packed = quantized._matmul_nbits_prepack([None, b, scales, zp, None, None], dict(K=k, N=n, block_size=block))
    assert isinstance(packed, nbits.TiledNBits)
    held = packed.b.nbytes + packed.scales.nbytes + packed.scaled_zero_points.nbytes
    assert held < k * n  # 0.75 byte a weight (4 bits + two float32 per 32-block), padded to whole tiles
    assert not packed.b.flags.writeable


@pytest.mark.parametrize("rows", [1, 20])
def test_batched_1d_float16_and_accuracy_level_4(rows):
    k, n, block = 96, 70, 16
    b, scales, zp, reference = _nbits_inputs(4, k, n, block, "packed")
    a = RNG.standard_normal((2, rows, k)).astype(F)
    got = quantized.matmul_nbits(a, b, scales, zp, K=k, N=n, block_size=block)
    _close(got, (a.astype(np.float64) @ reference).astype(F))
    got1 = quantized.matmul_nbits(a[0, 0], b, scales, zp, K=k, N=n, block_size=block)
    _close(got1, (a[0, 0].astype(np.float64) @ reference).astype(F))
    a16 = a.astype(np.float16)
    got16 = quantized.matmul_nbits(a16, b, scales.astype(np.float16), zp, K=k, N=n, block_size=block)
    assert got16.dtype == np.float16
    _close(got16, (a16.astype(np.float64) @ reference).astype(np.float16), rel=2e-3)
    # accuracy level 4: A rounded to block-wise int8 first, as onnxruntime does
    rounded = quantized._int8_blockwise_roundtrip(a.reshape(-1, k), block).astype(np.float64)
    got4 = quantized.matmul_nbits(a, b, scales, zp, K=k, N=n, block_size=block, accuracy_level=4)
    _close(got4, (rounded @ reference).astype(F).reshape(got4.shape))


def test_accuracy_level_4_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    k, n, block = 128, 96, 32
    model = _ort_quantized(k, n, 4, block, False)
    for attribute in model.graph.node[0].attribute:
        if attribute.name == "accuracy_level":
            attribute.i = 4
    if not any(a.name == "accuracy_level" for a in model.graph.node[0].attribute):
        model.graph.node[0].attribute.append(helper.make_attribute("accuracy_level", 4))
    data = model.SerializeToString()
    a = RNG.standard_normal((3, k)).astype(F)
    (want,) = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"a": a})
    (got,) = onyxrt.InferenceSession(data).run(None, {"a": a})
    _close(got, want, rel=1e-5)


def test_numba_disabled_runs_the_dequantizing_kernel(monkeypatch):
    k, n, block = 160, 50, 32
    b, scales, zp, reference = _nbits_inputs(4, k, n, block, "packed")
    a = RNG.standard_normal((3, k)).astype(F)
    fast = quantized.matmul_nbits(a, b, scales, zp, K=k, N=n, block_size=block)
    monkeypatch.setenv("ONYXRT_DISABLE_NUMBA", "1")
    packed = quantized._matmul_nbits_prepack([None, b, scales, zp, None, None], dict(K=k, N=n, block_size=block))
    assert isinstance(packed, quantized._NBitsWeight)  # the dequantized float copy
    slow = quantized.matmul_nbits(a, b, scales, zp, K=k, N=n, block_size=block, _packed=packed)
    _close(slow, fast)
    _close(slow, (a.astype(np.float64) @ reference).astype(F))


def test_computed_zero_points_bias_and_g_idx_are_applied():
    """Inputs the prepack did not see (not constant) still count; g_idx takes the numpy path."""
    k, n, block = 64, 70, 32
    b, scales, zp, reference = _nbits_inputs(4, k, n, block, "float")
    bias = RNG.standard_normal(n).astype(F)
    a = RNG.standard_normal((2, k)).astype(F)
    packed = quantized._matmul_nbits_prepack([None, b, scales, None, None, None], dict(K=k, N=n, block_size=block))
    assert isinstance(packed, nbits.TiledNBits)
    got = quantized.matmul_nbits(a, b, scales, zp, None, bias, K=k, N=n, block_size=block, _packed=packed)
    _close(got, (a.astype(np.float64) @ reference + bias).astype(F))
    g_idx = np.arange(k, dtype=np.int32) // block
    got_g = quantized.matmul_nbits(a, b, scales, zp, g_idx, None, K=k, N=n, block_size=block, _packed=packed)
    _close(got_g, (a.astype(np.float64) @ reference).astype(F))


@pytest.mark.parametrize("spinning", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
def test_columns_split_over_threads_give_the_same_result(monkeypatch, bits, spinning):
    """The direct kernel's tiles as a native task over both threads (spinning workers or blocked ones)."""
    k, n, block = 256, 64 * 9 + 5, 32
    b, scales, zp, _ = _nbits_inputs(bits, k, n, block, "packed")
    a = RNG.standard_normal((2, k)).astype(F)
    serial = quantized.matmul_nbits(a, b, scales, zp, K=k, N=n, block_size=block, bits=bits)
    monkeypatch.setattr(nbits, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(nbits, "PARALLEL_MIN_WORK_WAKING", 0)
    pool = ThreadPool(2).splitting_gemms() if spinning else ThreadPool(2)
    with pool.activate():
        split = quantized.matmul_nbits(a, b, scales, zp, K=k, N=n, block_size=block, bits=bits)
    pool.shutdown()
    np.testing.assert_array_equal(split, serial)


def test_bad_k_is_reported_with_the_node():
    k, n, block = 64, 8, 32
    b, scales, zp, _ = _nbits_inputs(4, k, n, block, None)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MatMulNBits", ["a", "b", "s"], ["y"], domain="com.microsoft", name="proj",
                          K=k, N=n, block_size=block)],
        "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 60])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(b, "b"), numpy_helper.from_array(scales, "s")]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)], ir_version=9)
    session = onyxrt.InferenceSession(model.SerializeToString())
    with pytest.raises(Fail, match=r"proj(.|\n)*K=64"):
        session.run(None, {"a": np.ones((1, 60), F)})


def test_load_time_inference_gives_matmul_nbits_outputs_their_shape():
    """Values computed from a MatMulNBits output keep types and shapes (the decoder fusions need them)."""
    from onyxrt.graph.model_loader import load_model

    k, n, block = 64, 48, 32
    b, scales, zp, _ = _nbits_inputs(4, k, n, block, "packed")
    graph = helper.make_graph(
        [helper.make_node("MatMulNBits", ["a", "b", "s", "z"], ["p"], domain="com.microsoft", K=k, N=n, block_size=block),
         helper.make_node("Relu", ["p"], ["y"])],
        "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 7, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(b, "b"), numpy_helper.from_array(scales, "s"), numpy_helper.from_array(zp, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=9)
    loaded = load_model(model.SerializeToString())
    values = {v.name: v for node in loaded.graph for v in node.outputs}
    for name in ("p", "y"):
        assert values[name].shape is not None and [str(d) for d in values[name].shape] == ["batch", "7", str(n)]
        assert values[name].dtype == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("bits", [4, 8])
def test_prefill_rows_split_over_a_pool_that_owns_the_cores(bits):
    """Many rows (a prefill) on a pool splitting products: each thread dequantizes and multiplies its own
    column chunks (``nbits_kernels.prefill_part``); the result equals the one-thread route's to float rounding
    (the products are blocked differently)."""
    k, n, block = 200, 64 * 11 + 7, 32  # K padded to whole blocks, N to whole tiles
    b, scales, zp, reference = _nbits_inputs(bits, k, n, block, "packed")
    a = RNG.standard_normal((3, 9, k)).astype(F)
    serial = quantized.matmul_nbits(a, b, scales, zp, K=k, N=n, block_size=block, bits=bits)
    pool = ThreadPool(2).splitting_gemms()
    with pool.activate():
        split = quantized.matmul_nbits(a, b, scales, zp, K=k, N=n, block_size=block, bits=bits)
    pool.shutdown()
    _close(split, serial)
    _close(split, (a.astype(np.float64) @ reference).astype(F))
