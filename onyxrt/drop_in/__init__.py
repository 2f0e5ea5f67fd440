"""Put onyxrt in ``onnxruntime``'s place, so code written for onnxruntime runs on onyxrt unchanged.

    import onyxrt
    onyxrt.install_as_onnxruntime()
    import onnxruntime                      # onyxrt itself
    from onnxruntime.capi.onnxruntime_pybind11_state import NoSuchFile   # onyxrt.NoSuchFile

or, for a program one does not edit: ``python -m onyxrt.drop_in script.py [args...]`` (or
``python -m onyxrt.drop_in -m package.module [args...]``).

How: a finder at the front of ``sys.meta_path`` answers every import of ``onnxruntime`` or
``onnxruntime.X.Y`` with the module object of ``onyxrt`` or ``onyxrt.X.Y`` (imported once, under
its own name), so both names give the same objects and ``except NoSuchFile`` written against
onnxruntime catches onyxrt's errors. ``onnxruntime.X`` with no ``onyxrt.X`` (onnxruntime's
``transformers``, ``tools``, ``training`` ...) raises ``ModuleNotFoundError``
naming the module, also from ``importlib.util.find_spec``.

The swap must come before anything imports the real onnxruntime: once a real onnxruntime module
is in ``sys.modules``, :func:`install_as_onnxruntime` raises ``RuntimeError`` rather than leave
the process with two runtimes whose classes and exceptions do not match. Only this process is
affected; child interpreters (``subprocess``, ``multiprocessing`` with ``spawn``) import the real
onnxruntime unless they install the alias themselves.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence

ALIAS = "onnxruntime"
TARGET = "onyxrt"

__all__ = ["install_as_onnxruntime", "is_installed"]


def _is_onyxrt_module(module: object) -> bool:
    name = getattr(module, "__name__", None)
    return isinstance(name, str) and (name == TARGET or name.startswith(TARGET + "."))


def _target_name(alias_name: str) -> str:
    return TARGET + alias_name[len(ALIAS):]


class _AliasLoader(importlib.abc.Loader):
    """Loads ``onnxruntime.X`` as the already importable module ``onyxrt.X`` (same object)."""

    def __init__(self, target_name: str) -> None:
        self.target_name = target_name
        self._target_spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(self.target_name)
        self._target_spec = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        # The import machinery stamps the alias spec on the module it got from create_module;
        # put onyxrt's own spec back so the module keeps describing its real name and file
        # (importlib.reload, pickling by module name and tracebacks rely on it).
        if self._target_spec is not None:
            module.__spec__ = self._target_spec


class _OnnxruntimeAliasFinder(importlib.abc.MetaPathFinder):
    """Answers imports of ``onnxruntime`` and ``onnxruntime.*`` with onyxrt's modules."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != ALIAS and not fullname.startswith(ALIAS + "."):
            return None
        target_name = _target_name(fullname)
        target_spec = importlib.util.find_spec(target_name)
        if target_spec is None:
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: 'onnxruntime' is onyxrt in this process "
                f"(onyxrt.install_as_onnxruntime()), and onyxrt has no {target_name!r}; onyxrt provides "
                "onnxruntime's inference API and quantization tools, not its transformers, tools or training packages",
                name=fullname,
            )
        return importlib.machinery.ModuleSpec(
            fullname,
            _AliasLoader(target_name),
            is_package=target_spec.submodule_search_locations is not None,
        )


def is_installed() -> bool:
    """Whether :func:`install_as_onnxruntime` has put onyxrt in onnxruntime's place in this process."""
    return any(isinstance(finder, _OnnxruntimeAliasFinder) for finder in sys.meta_path)


def install_as_onnxruntime() -> None:
    """Make ``import onnxruntime`` (and ``onnxruntime.X.Y``) give onyxrt's modules from now on.

    Idempotent. Raises ``RuntimeError`` if a real onnxruntime module was already imported in
    this process (call this first, before importing packages that import onnxruntime).
    """
    if is_installed():
        return
    foreign = sorted(
        name
        for name, module in list(sys.modules.items())
        if (name == ALIAS or name.startswith(ALIAS + ".")) and module is not None and not _is_onyxrt_module(module)
    )
    if foreign:
        origin = getattr(sys.modules.get(foreign[0]), "__file__", None) or "unknown location"
        raise RuntimeError(
            f"onyxrt.install_as_onnxruntime(): the real onnxruntime is already imported in this process "
            f"({foreign[0]!r} from {origin}); call install_as_onnxruntime() before anything imports "
            "onnxruntime, or run the program with `python -m onyxrt.drop_in`"
        )
    sys.meta_path.insert(0, _OnnxruntimeAliasFinder())
