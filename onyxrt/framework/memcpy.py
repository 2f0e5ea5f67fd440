"""Copy nodes at device borders, after onnxruntime's memcpy transformer.

After partitioning every value lives on one device (``value.meta["device"]``): a node's
outputs on its provider's device; a graph input or initializer on the device of all its
readers when they agree, else on the host. A weight read on several devices gets a twin
initializer per other device (copied there once, when the plan is built, as onnxruntime
duplicates such initializers). Where any other value's reader runs on another device, one
``com.microsoft::MemcpyFromHost`` / ``MemcpyToHost`` node per (value, reader device) is
inserted before the first such reader, and assigned to the provider on the device side,
whose data transfer runs it. Nothing is copied between readers on the value's own device.

The main graph's outputs stay where they are produced: the plan hands them over on the
host or on the device an IOBinding asks for. A subgraph's outputs go back to the host,
where the control-flow kernel that called it reads them.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import onnx_ir as ir

from ..providers.base import PROVIDER_KEY, ExecutionProvider
from .device import HOST, Device

# The key of ``value.meta`` holding the Device a value lives on.
DEVICE = "device"
COPY_DOMAIN = "com.microsoft"
TO_DEVICE, TO_HOST = "MemcpyFromHost", "MemcpyToHost"


def is_copy(node: ir.Node) -> bool:
    """Whether ``node`` is a device-border copy node."""
    return node.domain == COPY_DOMAIN and node.op_type in (TO_DEVICE, TO_HOST)


def insert_copies(graph: ir.Graph, providers: Sequence[ExecutionProvider]) -> int:
    """Record each value's device in ``graph`` (and subgraphs) and add copy nodes at device borders.

    Every node must be assigned already (see ``framework.partitioner``). Returns the
    number of copy nodes inserted.
    """
    if all(provider.device.is_host for provider in providers):
        return 0  # one device: no borders, and every value is where value_device says (the host)
    by_name = {provider.name: provider for provider in providers}
    by_device: dict[Device, ExecutionProvider] = {}
    for provider in providers:
        by_device.setdefault(provider.device, provider)
    return _Placer(by_name, by_device).place(graph, is_main=True)


def compile_copy(node: ir.Node, provider: ExecutionProvider) -> Callable[[Any], Any]:
    """The step running a copy node with its (device-side) provider's data transfer."""
    transfer = provider.data_transfer
    if node.op_type == TO_HOST:
        return transfer.to_host

    def to_device(value: Any) -> Any:
        return transfer.to_device(np.asarray(value))  # kernels may return numpy scalars

    return to_device


def value_device(value: ir.Value) -> Device:
    """The device ``value`` lives on (the host where placement did not record one)."""
    return value.meta.get(DEVICE, HOST)


def _unused_name(graph: ir.Graph, wanted: str) -> str:
    """``wanted``, or ``wanted`` with a numeric suffix, that no input, initializer or node output of ``graph`` has."""
    taken = {v.name for v in graph.inputs} | set(graph.initializers)
    taken |= {v.name for node in graph for v in node.outputs}
    name, suffix = wanted, 1
    while name in taken:
        name, suffix = f"{wanted}_{suffix}", suffix + 1
    return name


class _Placer:
    def __init__(self, by_name: dict[str, ExecutionProvider], by_device: dict[Device, ExecutionProvider]) -> None:
        self._by_name = by_name
        self._by_device = by_device

    def node_device(self, node: ir.Node) -> Device:
        return self._by_name[node.meta[PROVIDER_KEY]].device

    def place(self, graph: ir.Graph, is_main: bool) -> int:
        # Sources first: graph inputs and initializers go where their readers are, except
        # a subgraph's inputs, which its control-flow kernel passes from the host.
        for value in graph.inputs:
            value.meta[DEVICE] = self._home(value) if is_main else HOST
        fed = set(graph.inputs)
        for value in list(graph.initializers.values()):
            if value not in fed:
                self._place_weight(graph, value)
        for node in graph:
            for value in node.outputs:
                value.meta[DEVICE] = self.node_device(node)
        inserted = 0
        position = {node: index for index, node in enumerate(graph)}
        sources = [*graph.inputs, *graph.initializers.values()]
        sources += [value for node in graph for value in node.outputs]
        for value in sources:
            inserted += self._copy_to_readers(graph, value, position)
        if not is_main:
            inserted += self._outputs_to_host(graph)
        for node in list(graph):
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.GRAPH:
                    inserted += self.place(attr.value, is_main=False)
                elif attr.type == ir.AttributeType.GRAPHS:
                    inserted += sum(self.place(subgraph, is_main=False) for subgraph in attr.value)
        return inserted

    def _home(self, value: ir.Value) -> Device:
        if value.is_graph_output():
            return HOST
        devices = set(self._readers_by_device(value))
        return devices.pop() if len(devices) == 1 else HOST

    def _readers_by_device(self, value: ir.Value) -> dict[Device, list[tuple[ir.Node, int]]]:
        readers: dict[Device, list[tuple[ir.Node, int]]] = {}
        for user, index in value.uses():
            if PROVIDER_KEY in user.meta:  # (nodes inside a fused body read through their fused node)
                readers.setdefault(self.node_device(user), []).append((user, index))
        return readers

    def _place_weight(self, graph: ir.Graph, value: ir.Value) -> None:
        """A weight goes where it is read; read on several devices, each other device gets its own twin.

        The plan copies a twin to its device once, when it is built, instead of a copy node on every run.
        """
        readers = self._readers_by_device(value)
        home = HOST if HOST in readers or not readers or value.is_graph_output() else next(iter(readers))
        value.meta[DEVICE] = home
        for device, uses in readers.items():
            if device == home:
                continue
            twin = ir.Value(name=_unused_name(graph, f"{value.name}_{device.type}{device.id}"), type=value.type,
                            shape=value.shape, const_value=value.const_value)
            twin.meta[DEVICE] = device
            graph.register_initializer(twin)
            for user, index in uses:
                user.replace_input_with(index, twin)

    def _copy_to_readers(self, graph: ir.Graph, value: ir.Value, position: dict[ir.Node, int]) -> int:
        """Give each reader on another device a copy; readers inside subgraphs get it in their own graph."""
        home = value_device(value)
        elsewhere: dict[tuple[int, Device], list[tuple[ir.Node, int]]] = {}
        graphs: dict[int, ir.Graph] = {}
        for user, index in value.uses():
            if PROVIDER_KEY not in user.meta or user.graph is None:
                continue  # a node inside a fused body: its fused node reads the value
            device = self.node_device(user)
            if device != home:
                elsewhere.setdefault((id(user.graph), device), []).append((user, index))
                graphs[id(user.graph)] = user.graph
        for (graph_id, device), uses in elsewhere.items():
            where = graphs[graph_id]
            if where is graph:
                first = min((user for user, _ in uses), key=position.__getitem__)
            else:  # an outer value read in a subgraph: copy at the subgraph's start
                first = where[0]
            copied = self._copy_chain(where, first, value, home, device)
            for user, index in uses:
                user.replace_input_with(index, copied)
        return sum(len(self._hops(home, device)) for _, device in elsewhere)

    def _outputs_to_host(self, graph: ir.Graph) -> int:
        inserted = 0
        for position, value in enumerate(list(graph.outputs)):
            home = value_device(value)
            if home.is_host:
                continue
            anchor = value.producer()
            copied = self._copy_chain(graph, None, value, home, HOST, after=anchor)
            # The copy takes the output's name (callers read subgraph outputs by position, names stay readable).
            value.name, copied.name = copied.name, value.name
            graph.outputs[position] = copied
            inserted += len(self._hops(home, HOST))
        return inserted

    @staticmethod
    def _hops(source: Device, target: Device) -> list[tuple[str, Device]]:
        """Copy ops from ``source`` to ``target``: through the host between two devices."""
        hops = []
        if not source.is_host:
            hops.append((TO_HOST, source))
        if not target.is_host:
            hops.append((TO_DEVICE, target))
        return hops

    def _copy_chain(self, graph: ir.Graph, before: ir.Node | None, value: ir.Value, source: Device, target: Device,
                    after: ir.Node | None = None) -> ir.Value:
        current = value
        for op_type, device in self._hops(source, target):
            provider = self._by_device[device]
            copy = ir.Node(COPY_DOMAIN, op_type, [current], num_outputs=1)
            copy.meta[PROVIDER_KEY] = provider.name
            output = copy.outputs[0]
            output.type, output.shape = value.type, value.shape
            output.meta[DEVICE] = HOST if op_type == TO_HOST else device
            if after is not None:
                graph.insert_after(after, copy)
                after = copy
            elif before is not None:
                graph.insert_before(before, copy)
            else:
                graph.append(copy)
            current = output
        return current
