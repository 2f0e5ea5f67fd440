"""Shared fixtures: zoo models from ../shared/zoo, materialized once per machine; skipped cleanly where absent."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ZOO_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "zoo"


def zoo_available() -> bool:
    return (ZOO_DIR / "materialize.py").is_file()


@pytest.fixture(scope="session")
def zoo_model():
    """``zoo_model(name)`` -> path of the runnable model (built by the zoo's materialize.py)."""
    if not zoo_available():
        pytest.skip(f"model zoo not found at {ZOO_DIR}")
    spec = importlib.util.spec_from_file_location("zoo_materialize", ZOO_DIR / "materialize.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["zoo_materialize"] = module
    spec.loader.exec_module(module)
    return module.path
