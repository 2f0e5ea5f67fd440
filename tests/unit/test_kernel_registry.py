"""Every standard-domain kernel fits its schema: it takes each attribute the schema defines, with its default."""

from __future__ import annotations

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
