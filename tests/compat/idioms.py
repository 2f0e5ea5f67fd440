"""Run one onnxruntime idiom against onnxruntime and onyxrt and compare what happens.

An idiom is a function taking the runtime module (``onnxruntime`` or ``onyxrt``) and returning
a value (numpy arrays, numbers, strings, lists/tuples/dicts of them). Both runtimes must
return equal values, or both must raise an exception of the same kind: the same class name
and the same built-in exception bases (``RuntimeError``, ``TypeError``, ...), so that code
catching either the onnxruntime class or a built-in catches both (onyxrt may raise a subclass
of the onnxruntime class, e.g. KernelError, a Fail that names the failing node).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime

import onyxrt

RUNTIMES = {"onnxruntime": onnxruntime, "onyxrt": onyxrt}

_BUILTIN_EXCEPTIONS = {
    value for value in vars(builtins).values() if isinstance(value, type) and issubclass(value, BaseException)
} - {Exception, BaseException}


@dataclass
class Outcome:
    """What one runtime did with an idiom: a value, or an exception's kind and message."""

    value: Any = None
    error: tuple[str, frozenset[str]] | None = None
    message: str = ""


# onnxruntime's status exception classes (Fail, InvalidArgument, ...): onyxrt may raise a subclass
# (KernelError is a Fail naming the node), which ``except Fail`` catches all the same.
_STATUS_CLASS_NAMES = {
    name for name, value in vars(onnxruntime.capi.onnxruntime_pybind11_state).items()
    if isinstance(value, type) and issubclass(value, Exception)
}


def error_kind(error: BaseException) -> tuple[str, frozenset[str]]:
    """The first onnxruntime status class or built-in exception class in an exception's MRO (its own
    class where it has neither), and the built-in exception classes it derives from."""
    mro = type(error).__mro__
    name = next((cls.__name__ for cls in mro if cls in _BUILTIN_EXCEPTIONS or cls.__name__ in _STATUS_CLASS_NAMES),
                type(error).__name__)
    bases = frozenset(cls.__name__ for cls in mro if cls in _BUILTIN_EXCEPTIONS)
    return name, bases


def outcome(idiom: Callable[[Any], Any], runtime: Any) -> Outcome:
    try:
        return Outcome(value=idiom(runtime))
    except Exception as error:  # noqa: BLE001 - the exception is the result being compared
        return Outcome(error=error_kind(error), message=str(error))


def assert_values_equal(ours: Any, theirs: Any, rtol: float, atol: float, where: str = "result") -> None:
    if isinstance(theirs, np.ndarray) or isinstance(ours, np.ndarray):
        ours_array, theirs_array = np.asarray(ours), np.asarray(theirs)
        assert ours_array.dtype == theirs_array.dtype, f"{where}: dtype {ours_array.dtype} != {theirs_array.dtype}"
        assert ours_array.shape == theirs_array.shape, f"{where}: shape {ours_array.shape} != {theirs_array.shape}"
        if ours_array.dtype.kind in "fc":
            np.testing.assert_allclose(ours_array, theirs_array, rtol=rtol, atol=atol, err_msg=where)
        else:
            np.testing.assert_array_equal(ours_array, theirs_array, err_msg=where)
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and ours.keys() == theirs.keys(), f"{where}: keys {ours!r} != {theirs!r}"
        for key in theirs:
            assert_values_equal(ours[key], theirs[key], rtol, atol, f"{where}[{key!r}]")
    elif isinstance(theirs, (list, tuple)):
        assert isinstance(ours, (list, tuple)) and len(ours) == len(theirs), f"{where}: {ours!r} != {theirs!r}"
        for index, (mine, other) in enumerate(zip(ours, theirs)):
            assert_values_equal(mine, other, rtol, atol, f"{where}[{index}]")
    elif isinstance(theirs, float):
        assert ours == theirs or abs(ours - theirs) <= atol + rtol * abs(theirs), f"{where}: {ours!r} != {theirs!r}"
    else:
        assert ours == theirs, f"{where}: {ours!r} != {theirs!r}"


def assert_same(idiom: Callable[[Any], Any], rtol: float = 1e-5, atol: float = 1e-6) -> Outcome:
    """Run ``idiom`` on both runtimes; they must agree. Returns onyxrt's outcome."""
    theirs = outcome(idiom, onnxruntime)
    ours = outcome(idiom, onyxrt)
    if theirs.error or ours.error:
        assert ours.error == theirs.error, (
            f"onnxruntime: {theirs.error or 'no error'} {theirs.message!r}\n"
            f"onyxrt:      {ours.error or 'no error'} {ours.message!r}"
        )
    else:
        assert_values_equal(ours.value, theirs.value, rtol, atol)
    return ours
