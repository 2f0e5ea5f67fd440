"""CPU kernels: the ai.onnx.ml domain."""
