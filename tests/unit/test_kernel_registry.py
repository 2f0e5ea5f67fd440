"""Every standard-domain kernel fits its schema: it takes each attribute the schema defines, with its default."""

from __future__ import annotations

import functools
import inspect
import keyword

import onnx.defs
import pytest
from onnx import helper

from onyxrt.providers.cpu.kernel_table import CPU_KERNELS
from onyxrt.providers.kernel_registry import schema_since_version

SCHEMA_DOMAINS = ("", "ai.onnx.ml", "ai.onnx.preview.training")
# Standard-domain ops that onnxruntime (not ONNX) defines, which models it optimized contain.
ORT_STANDARD_DOMAIN_CONTRIB = {("LayerNormalization", 1), ("SimplifiedLayerNormalization", 1)}
# Schema defaults that are typos in the spec itself; the kernel uses the intended value.
SPEC_TYPOS = {("GRU", 1, "direction"): "foward"}


def _schema_kernels():
    for domain, op_type, version in CPU_KERNELS.ops():
        if domain in SCHEMA_DOMAINS and (op_type, version) not in ORT_STANDARD_DOMAIN_CONTRIB:
            yield domain, op_type, version, CPU_KERNELS.lookup(domain, op_type, version).fn


def test_versions_are_real_schema_versions():
    for domain, op_type, version, _ in _schema_kernels():
        assert schema_since_version(domain, op_type, version) == version, f"{domain}::{op_type}-{version}"


def test_kernels_take_every_schema_attribute_with_its_default():
    problems = []
    for domain, op_type, version, fn in _schema_kernels():
        schema = onnx.defs.get_schema(op_type, version, domain)
        params = inspect.signature(fn).parameters
        if any(p.kind == p.VAR_KEYWORD for p in params.values()):
            continue
        for name, attr in schema.attributes.items():
            key = name + "_" if keyword.iskeyword(name) else name
            if key not in params:
                problems.append(f"{op_type}-{version} lacks attribute '{name}'")
                continue
            default = params[key].default
            if not attr.default_value.type or default is None or default is inspect.Parameter.empty:
                continue
            value = helper.get_attribute_value(attr.default_value)
            if isinstance(value, bytes):
                value = value.decode()
            if isinstance(value, float):
                ok = default == pytest.approx(value, rel=1e-6)
            else:
                ok = default == value or (isinstance(value, list) and list(default) == value)
            if not ok and SPEC_TYPOS.get((op_type, version, name)) != value:
                problems.append(f"{op_type}-{version} attribute '{name}' defaults to {default!r}, schema says {value!r}")
    assert not problems, "\n".join(problems)


def test_registered_op_count():
    assert len({(d, o) for d, o, _, _ in _schema_kernels()}) > 150


# --------------------------------------------------------------------------- kernel contract v2

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import onnx_ir as ir  # noqa: E402

from onyxrt.errors import NotImplemented as OrtNotImplemented  # noqa: E402
from onyxrt.providers.kernel_registry import KernelRegistry, bind_attributes, kernel_contract  # noqa: E402


def _typed_node(*dtypes):
    """An onnx-ir node whose inputs have the given element types (None: unknown)."""
    inputs = [ir.Value(name=f"x{i}", type=None if t is None else ir.TensorType(t)) for i, t in enumerate(dtypes)]
    return ir.Node("", "Twice", inputs, name="twice")


def _twice_registry():
    registry = KernelRegistry()
    calls = []

    @registry.register("Twice", versions=1, alias={0: 0})
    def general(x):
        calls.append("general")
        return x * 2

    @registry.register("Twice", versions=1, types={0: np.float32}, priority=5, inplace={0: 0})
    def fast(x, *, _alloc=None):
        calls.append("fast")
        return np.multiply(x, np.float32(2), out=None if _alloc is None else _alloc(x.shape, x.dtype))

    return registry, general, fast, calls


def test_lookup_returns_the_fallback_with_its_variants_best_first():
    registry, general, fast, _ = _twice_registry()

    @registry.register("Twice", versions=1, types={0: np.float64}, priority=2)
    def medium(x):
        return x + x

    kernel = registry.lookup("", "Twice", 1)
    assert kernel.fn is general
    assert [v.fn for v in kernel.variants] == [fast, medium]
    assert kernel.variants[0].types == {0: frozenset({np.dtype(np.float32)})}
    assert kernel.variants[0].inplace == {0: 0} and kernel.alias == {0: 0}
    assert len(list(registry.kernels())) == 3


def test_registering_two_kernels_at_one_priority_or_disagreeing_on_outputs_fails():
    registry, *_ = _twice_registry()
    with pytest.raises(ValueError, match="registered twice at priority 0"):
        registry.register("Twice", versions=1)(lambda x: x)
    with pytest.raises(ValueError, match="multi_output"):
        registry.register("Twice", versions=1, priority=9, multi_output=True)(lambda x: (x,))


def test_known_input_types_pick_a_kernel_at_compile_time():
    registry, general, fast, _ = _twice_registry()
    kernel = registry.lookup("", "Twice", 1)
    bound = bind_attributes(kernel, _typed_node(ir.DataType.FLOAT), 1, {})
    assert bound.func is fast
    assert kernel_contract(bound).inplace == {0: 0} and kernel_contract(bound).uses_alloc
    bound = bind_attributes(kernel, _typed_node(ir.DataType.INT64), 1, {})
    assert bound.func is general
    assert kernel_contract(bound).alias == {0: 0} and not kernel_contract(bound).uses_alloc


def test_unknown_input_types_dispatch_per_run_and_fall_back():
    registry, _, _, calls = _twice_registry()
    bound = bind_attributes(registry.lookup("", "Twice", 1), _typed_node(None), 1, {})
    contract = kernel_contract(bound)
    assert contract.inplace == {} and contract.alias == {0: 0} and contract.uses_alloc  # what every option allows
    buffer = np.empty(3, np.float32)
    out = bound(np.arange(3, dtype=np.float32), _alloc=lambda shape, dtype: buffer)
    assert out is buffer and out.tolist() == [0, 2, 4]
    assert bound(np.arange(3)).tolist() == [0, 2, 4]
    assert calls == ["fast", "general"]


def test_no_kernel_for_the_input_types_is_not_implemented():
    registry = KernelRegistry()
    registry.register("Twice", versions=1, types={0: np.float32})(lambda x: x * 2)
    kernel = registry.lookup("", "Twice", 1)
    with pytest.raises(OrtNotImplemented, match="twice.*no Twice-1 kernel handles inputs of type"):
        bind_attributes(kernel, _typed_node(ir.DataType.INT32), 1, {})
    bound = bind_attributes(kernel, _typed_node(None), 1, {})  # type unknown: checked per run
    assert bound(np.ones(2, np.float32)).tolist() == [2, 2]
    with pytest.raises(OrtNotImplemented, match="no kernel handles inputs of type \\(int32\\)"):
        bound(np.ones(2, np.int32))


def test_a_variant_without_an_attribute_the_node_sets_leaves_it_to_the_fallback():
    registry = KernelRegistry()

    @registry.register("Scale", versions=1, domain="test")
    def general(x, *, factor=2.0):
        return x * factor

    registry.register("Scale", versions=1, domain="test", types={0: np.float32}, priority=1)(lambda x: x * 2)
    node = ir.Node("test", "Scale", [ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT))], name="scale")
    bound = bind_attributes(registry.lookup("test", "Scale", 1), node, 1, {"factor": 3.0})
    assert bound.func is general and bound.keywords == {"factor": 3.0}


def test_variants_take_every_schema_attribute_too():
    variants = [k for k in CPU_KERNELS.kernels() if k.variants or k.priority]
    assert any(k.op_type == "Relu" for k in variants)
    for kernel in variants:
        params = inspect.signature(kernel.fn).parameters
        schema = onnx.defs.get_schema(kernel.op_type, kernel.since_version, kernel.domain)
        missing = [n for n in schema.attributes if n not in params]
        assert not missing, (kernel.op_type, kernel.since_version, missing)


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16", np.float32, np.float64])
def test_relu_on_the_sign_bit_matches_the_general_kernel(dtype):
    from onyxrt.providers.cpu.math.activations import relu, relu_sign_bit

    dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    x = np.array([-np.inf, -3.5, -0.0, 0.0, 1e-30, 2.0, np.inf, -1e-7]).astype(dtype).reshape(2, 4)
    got = relu_sign_bit(x)
    np.testing.assert_array_equal(got, relu(x))
    assert not np.signbit(got).any()  # -0.0 becomes +0.0
    assert relu_sign_bit(x[:, ::2]).tolist() == relu(x[:, ::2]).tolist()  # strided input
    kernel = CPU_KERNELS.lookup("", "Relu", 14)
    assert kernel.fn is relu and [v.fn for v in kernel.variants] == [relu_sign_bit]


def test_a_kernel_fast_path_replaces_the_partial_and_keeps_its_names():
    """A kernel's ``fast_path(bound, keywords)`` gets the node's bound kernel and keywords once; what it returns is the
    node's step (told by the partial's ``func`` and ``keywords``), None keeps the partial."""
    registry = KernelRegistry()
    seen = []

    @registry.register("Scale", versions=1, domain="test")
    def scale(x, *, factor=2.0):
        return x * factor

    def fast_path(bound, keywords):
        seen.append(dict(keywords))
        if keywords["factor"] == 0.0:
            return None
        factor = keywords["factor"]
        return lambda x: bound(x) if x.dtype != np.float32 else x * np.float32(factor)

    scale.fast_path = fast_path
    node = ir.Node("test", "Scale", [ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT))], name="scale")
    fast = bind_attributes(registry.lookup("test", "Scale", 1), node, 1, {"factor": 3.0})
    assert not isinstance(fast, functools.partial) and fast.func is scale and fast.keywords == {"factor": 3.0}
    assert fast(np.ones(2, np.float32)).tolist() == [3, 3] and fast(np.ones(2)).tolist() == [3, 3]
    plain = bind_attributes(registry.lookup("test", "Scale", 1), node, 1, {"factor": 0.0})
    assert isinstance(plain, functools.partial) and plain(np.ones(1)).tolist() == [0]
    assert seen == [{"factor": 3.0}, {"factor": 0.0}]
