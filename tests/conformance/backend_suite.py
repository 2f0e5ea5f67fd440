"""onnx's BackendTest over onyxrt.backend, split by category for the test modules.

Two kinds of node case are checked by a comparison of our own instead of the
runner's value comparison:

* random ops (Bernoulli and its expansion): their expected values come from an
  unseeded generator, so shape, dtype and range are checked, as the issue asks;
* cases where onnx's runner itself cannot compare the expected value (a 0-d
  tensor inside a sequence makes it call ``len()`` on a scalar): compared
  element by element here, with the case's tolerances.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import onnx.backend.test
from onnx.backend.test.case.node import collect_testcases

import onyxrt.backend

NODE = "OnnxBackendNodeModelTest"
MODEL_CATEGORIES = (
    "OnnxBackendPyTorchConvertedModelTest",
    "OnnxBackendPyTorchOperatorModelTest",
    "OnnxBackendSimpleModelTest",
    "OnnxBackendRealModelTest",  # the light_* models, checked against their stored outputs
)
RANDOM_CASES = {
    "test_bernoulli": (0, 1), "test_bernoulli_expanded": (0, 1), "test_bernoulli_double": (0, 1),
    "test_bernoulli_double_expanded": (0, 1), "test_bernoulli_seed": (0, 1), "test_bernoulli_seed_expanded": (0, 1),
}
RUNNER_CANNOT_COMPARE = {"test_loop16_seq_none"}


@functools.lru_cache(maxsize=1)
def _special_cases() -> dict:
    wanted = set(RANDOM_CASES) | RUNNER_CANNOT_COMPARE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {case.name: case for case in collect_testcases(None) if case.name in wanted}


def _node_case(name: str):
    return _special_cases()[name]


def _run_case(backend, case) -> list:
    rep = backend.prepare(case.model)
    return [(rep.run(inputs), outputs) for inputs, outputs in case.data_sets]


def _random_case_test(backend, name: str, low: float, high: float):
    def test(self) -> None:
        for got, want in _run_case(backend, _node_case(name)):
            for g, w in zip(got, want):
                assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
                assert np.all((g >= low) & (g <= high)), g

    return test


def _compare(got, want, rtol: float, atol: float) -> None:
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (got, want)
        for g, w in zip(got, want):
            _compare(g, w, rtol, atol)
    elif want is None:
        assert got is None
    else:
        want = np.asarray(want)
        assert np.asarray(got).dtype == want.dtype and np.shape(got) == want.shape, (got, want)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def _exact_case_test(backend, name: str):
    def test(self) -> None:
        case = _node_case(name)
        for got, want in _run_case(backend, case):
            assert len(got) == len(want)
            for g, w in zip(got, want):
                _compare(g, w, case.rtol, case.atol)

    return test


def backend_test_cases(module_name: str, categories: tuple[str, ...], backend=onyxrt.backend) -> dict[str, type]:
    """The suite's unittest classes of ``categories`` for ``backend`` (CPU cases only, special cases patched)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators warn about their own casts
        suite = onnx.backend.test.BackendTest(backend, module_name)
    cases = {name: cls for name, cls in suite.test_cases.items() if name in categories}
    for cls in cases.values():
        for attr in [a for a in vars(cls) if a.startswith("test_") and a.endswith("_cuda")]:
            delattr(cls, attr)  # onyxrt runs on the CPU only
    if NODE in cases:
        for name, (low, high) in RANDOM_CASES.items():
            setattr(cases[NODE], f"{name}_cpu", _random_case_test(backend, name, low, high))
        for name in RUNNER_CANNOT_COMPARE:
            setattr(cases[NODE], f"{name}_cpu", _exact_case_test(backend, name))
    return cases
