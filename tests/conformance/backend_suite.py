"""onnx's BackendTest over onyxrt.backend, split by category for the test modules."""

from __future__ import annotations

import warnings

import onnx.backend.test

import onyxrt.backend

NODE = "OnnxBackendNodeModelTest"
MODEL_CATEGORIES = (
    "OnnxBackendPyTorchConvertedModelTest",
    "OnnxBackendPyTorchOperatorModelTest",
    "OnnxBackendSimpleModelTest",
    "OnnxBackendRealModelTest",  # the light_* models, checked against their stored outputs
)


def backend_test_cases(module_name: str, categories: tuple[str, ...]) -> dict[str, type]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators warn about their own casts
        suite = onnx.backend.test.BackendTest(onyxrt.backend, module_name)
    cases = {name: cls for name, cls in suite.test_cases.items() if name in categories}
    for cls in cases.values():
        for attr in [a for a in vars(cls) if a.startswith("test_") and a.endswith("_cuda")]:
            delattr(cls, attr)  # onyxrt runs on the CPU only
    return cases
