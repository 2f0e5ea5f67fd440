"""Imports every CPU kernel module so their ``@op`` registrations run."""

import importlib
import pkgutil

from . import controlflow, math, nn, sequence, tensor

for _package in (math, nn, tensor, controlflow, sequence):
    for _info in pkgutil.iter_modules(_package.__path__):
        importlib.import_module(f"{_package.__name__}.{_info.name}")
