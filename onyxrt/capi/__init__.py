"""Compatibility package: ``onnxruntime.capi`` module paths that client code imports from."""
