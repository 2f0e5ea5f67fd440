"""onnx's ``Backend`` interface over onyxrt (as ``onnxruntime.backend``), so ``onnx.backend.test`` runs against it.

    import onyxrt.backend as backend
    rep = backend.prepare(model_proto)
    outputs = rep.run([x])
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from .session.inference_session import InferenceSession
from .session.session_options import SessionOptions


class OnyxBackendRep(BackendRep):
    """A prepared model: runs it with positional or named inputs."""

    def __init__(self, session: InferenceSession) -> None:
        self.session = session

    def run(self, inputs: Any, **kwargs: Any) -> list[Any]:
        """Run with a list (in input order), a dict (by name) or a single array; returns all outputs."""
        names = [arg.name for arg in self.session.get_inputs()]
        if isinstance(inputs, dict):
            feed = dict(inputs)
        elif isinstance(inputs, (list, tuple)):
            if len(inputs) > len(names):
                # models with initializers listed as inputs (IR < 4): extra inputs override them
                names = names + [a.name for a in self.session.get_overridable_initializers()]
            feed = dict(zip(names, inputs))
        else:
            feed = {names[0]: inputs}
        return self.session.run(None, feed)


class OnyxBackend(Backend):
    """Prepares and runs models with onyxrt's InferenceSession on the CPU."""

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper().startswith("CPU")

    @classmethod
    def prepare(cls, model: Any, device: str = "CPU", **kwargs: Any) -> OnyxBackendRep:
        """Create a session for ``model`` (path, bytes, ModelProto or InferenceSession); kwargs set SessionOptions fields."""
        if isinstance(model, OnyxBackendRep):
            return model
        if isinstance(model, InferenceSession):
            return OnyxBackendRep(model)
        if not cls.supports_device(device):
            raise RuntimeError(f"onyxrt's backend supports only the CPU device, not '{device}'")
        options = SessionOptions()
        for key, value in kwargs.items():
            if hasattr(options, key):
                setattr(options, key, value)
        return OnyxBackendRep(InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"]))

    @classmethod
    def run_model(cls, model: Any, inputs: Any, device: str = "CPU", **kwargs: Any) -> list[Any]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Sequence[np.ndarray], device: str = "CPU",
                 outputs_info: Any = None, **kwargs: Any) -> list[Any]:
        """Run one node on ``inputs`` (wrapped in a model at the newest opset)."""
        input_infos = [
            onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(x).dtype), np.shape(x))
            for name, x in zip(node.input, inputs)
        ]
        output_infos = [onnx.ValueInfoProto(name=name) for name in node.output]
        graph = onnx.helper.make_graph([node], "run_node", input_infos, output_infos)
        model = onnx.helper.make_model(graph)
        return cls.run_model(model, list(inputs), device, **kwargs)


is_compatible = OnyxBackend.is_compatible
prepare = OnyxBackend.prepare
run = OnyxBackend.run_model
run_model = OnyxBackend.run_model
run_node = OnyxBackend.run_node
supports_device = OnyxBackend.supports_device
