"""CPU kernels: com.microsoft contrib ops that onnxruntime tools write into models."""
