"""The models mutations start from: onnx's backend-test node cases and its stored test models."""

from __future__ import annotations

import functools
import glob
import os
import warnings

import onnx
import onnx.backend.test
from onnx.backend.test.case.node import collect_testcases

_STORED_MODEL_FOLDERS = ("simple", "pytorch-operator", "pytorch-converted")


@functools.lru_cache(maxsize=1)
def base_models() -> tuple[tuple[str, bytes], ...]:
    """(name, serialized model) of every backend-test model, in a fixed order."""
    models: dict[str, bytes] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in collect_testcases(None):
            models[case.name] = case.model.SerializeToString()
    data = os.path.join(os.path.dirname(onnx.backend.test.__file__), "data")
    for folder in _STORED_MODEL_FOLDERS:
        for path in sorted(glob.glob(os.path.join(data, folder, "*", "model.onnx"))):
            with open(path, "rb") as file:
                models[f"{folder}/{os.path.basename(os.path.dirname(path))}"] = file.read()
    return tuple(sorted(models.items()))
