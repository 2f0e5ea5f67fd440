"""Kernels keyed by (domain, op type, since-version), and generic attribute binding.

A kernel is a plain function: its positional parameters are the op's inputs
(a missing optional input arrives as ``None``; variadic ops take ``*inputs``),
its keyword parameters are the op's ONNX attributes with their defaults::

    @op("LeakyRelu", versions=(6, 16))
    def leaky_relu(x, *, alpha=0.01):
        return np.where(x >= 0, x, x * x.dtype.type(alpha))

``versions`` lists exactly the ONNX schema versions the function implements, so a
model's opset picks the right semantics and an unimplemented version is reported
instead of silently run with another version's rules. A kernel returns one value,
or a tuple of values when registered with ``multi_output=True``.

Keyword parameters whose names start with ``_`` are filled from the node, not its
attributes, when a kernel declares them:

* ``_num_outputs``: how many outputs the node declares (including skipped ones);
* ``_num_inputs``: how many inputs the node declares;
* ``_opset``: the model's opset for the node's domain;
* ``_outer``: (run time) the values of the outer-scope names that the node's
  subgraph attributes read; pass it on when calling a subgraph.

A kernel may also be registered with ``prepack=fn``: at session creation
``fn(inputs, attributes)`` is called once with the node's constant inputs (the
initializers it reads, ``None`` for every other input) and its attribute
keywords; what it returns reaches the kernel as the keyword ``_packed`` on every
run (``None`` when prepack declined). This is where constant weights are
reshaped, dequantized or compiled once instead of on every run. The result
must not be mutated afterwards: runs share it.

Graph attributes arrive as callables (see ``framework.execution_plan.Subgraph``).
An attribute named like a Python keyword (``lambda``) binds to the parameter with a
trailing underscore (``lambda_``).
"""

from __future__ import annotations

import functools
import inspect
import keyword
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import onnx.defs

from ..errors import InvalidGraph, NotImplemented as OrtNotImplemented
from ..graph.opsets import describe

KernelFn = Callable[..., Any]

# Domains whose op versions are defined by ONNX schemas (exact-version lookup).
_SCHEMA_DOMAINS = ("", "ai.onnx.ml", "ai.onnx.preview.training")


@dataclass(frozen=True)
class KernelDef:
    domain: str
    op_type: str
    since_version: int
    fn: KernelFn
    multi_output: bool = False
    prepack: KernelFn | None = None


class KernelRegistry:
    """Kernels of one provider, registered per op version."""

    def __init__(self) -> None:
        self._kernels: dict[tuple[str, str], dict[int, KernelDef]] = {}

    def register(self, op_type: str, versions: int | tuple[int, ...], domain: str = "", multi_output: bool = False,
                 prepack: KernelFn | None = None):
        """Decorator registering ``fn`` for each ONNX schema version in ``versions`` (see the module docstring)."""
        versions = (versions,) if isinstance(versions, int) else tuple(versions)

        def decorator(fn: KernelFn) -> KernelFn:
            table = self._kernels.setdefault((domain, op_type), {})
            for version in versions:
                if version in table:
                    raise ValueError(f"kernel {domain or 'ai.onnx'}::{op_type}-{version} registered twice")
                table[version] = KernelDef(domain, op_type, version, fn, multi_output, prepack)
            return fn

        return decorator

    def lookup(self, domain: str, op_type: str, opset: int) -> KernelDef | None:
        """The kernel implementing ``op_type`` as defined at ``opset`` in ``domain``, or None."""
        return _lookup(self, domain, op_type, opset)

    def ops(self) -> list[tuple[str, str, int]]:
        return sorted((d, o, v) for (d, o), table in self._kernels.items() for v in table)


@functools.lru_cache(maxsize=None)
def schema_since_version(domain: str, op_type: str, opset: int) -> int | None:
    """The since-version of the ONNX schema in force for ``op_type`` at ``opset``, or None."""
    if domain not in _SCHEMA_DOMAINS:
        return None
    try:
        return onnx.defs.get_schema(op_type, opset, domain).since_version
    except onnx.defs.SchemaError:
        return None


@functools.lru_cache(maxsize=None)
def schema_attributes(domain: str, op_type: str, since_version: int) -> frozenset[str] | None:
    """Attribute names the ONNX schema of that exact version defines, or None for non-ONNX domains."""
    if domain not in _SCHEMA_DOMAINS:
        return None
    try:
        schema = onnx.defs.get_schema(op_type, since_version, domain)
    except onnx.defs.SchemaError:
        return None
    return frozenset(schema.attributes) if schema.since_version == since_version else None


def _lookup(registry: KernelRegistry, domain: str, op_type: str, opset: int) -> KernelDef | None:
    table = registry._kernels.get((domain, op_type))
    if not table:
        return None
    since = schema_since_version(domain, op_type, opset)
    if since is not None:
        return table.get(since)
    candidates = [v for v in table if v <= opset]
    return table[max(candidates)] if candidates else None


# --------------------------------------------------------------------------- binding

_CONTEXT_KEYS = ("_num_outputs", "_num_inputs", "_opset")


@functools.lru_cache(maxsize=None)
def _signature(fn: KernelFn) -> tuple[frozenset[str], bool]:
    params = inspect.signature(fn).parameters
    names = frozenset(n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
    return names, any(p.kind == p.VAR_KEYWORD for p in params.values())


def accepts(fn: KernelFn, name: str) -> bool:
    names, var_kw = _signature(fn)
    return name in names or var_kw


def bind_attributes(kernel: KernelDef, node, opset: int, attributes: dict[str, Any],
                    constants: Sequence[Any] = ()) -> KernelFn:
    """Return ``kernel.fn`` with the node's (already converted) attributes bound as keywords.

    ``constants`` holds, per node input, its constant value or None; a kernel with a
    ``prepack`` function gets that function's result as ``_packed``.

    An attribute the op's schema (at that version) does not define is an invalid
    graph, as in onnxruntime; one the kernel does not take raises NOT_IMPLEMENTED
    naming the node: ignoring either would compute something else.
    """
    names, var_kw = _signature(kernel.fn)
    defined = schema_attributes(kernel.domain, kernel.op_type, kernel.since_version)
    kwargs: dict[str, Any] = {}
    for name, value in attributes.items():
        if defined is not None and name not in defined:
            raise InvalidGraph(
                f"{describe(node)}: unrecognized attribute '{name}' for {kernel.op_type}-{kernel.since_version}"
            )
        key = name + "_" if keyword.iskeyword(name) else name
        if key not in names and not var_kw:
            raise OrtNotImplemented(
                f"{describe(node)}: attribute '{name}' is not supported by onyxrt's "
                f"{kernel.op_type}-{kernel.since_version} kernel"
            )
        kwargs[key] = value
    if kernel.prepack is not None:
        inputs = list(constants) + [None] * (len(node.inputs) - len(constants))
        kwargs["_packed"] = kernel.prepack(inputs, dict(kwargs))
    context = {"_num_outputs": len(node.outputs), "_num_inputs": len(node.inputs), "_opset": opset}
    for key in _CONTEXT_KEYS:
        if key in names:
            kwargs[key] = context[key]
    return functools.partial(kernel.fn, **kwargs) if kwargs else kernel.fn
