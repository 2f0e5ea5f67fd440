"""CPU kernels: ai.onnx.preview.training ops."""
