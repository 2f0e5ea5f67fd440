"""The ONNX backend model cases: pytorch-converted, pytorch-operator, simple and the light_* models."""

from backend_suite import MODEL_CATEGORIES, backend_test_cases

globals().update(backend_test_cases(__name__, MODEL_CATEGORIES))
