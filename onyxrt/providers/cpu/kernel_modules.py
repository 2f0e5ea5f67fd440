"""Imports every CPU kernel module so their ``@op`` registrations run."""

import importlib
import pkgutil

from . import contrib, controlflow, math, ml, nn, sequence, tensor, training

for _package in (math, nn, tensor, controlflow, sequence, ml, contrib, training):
    for _info in pkgutil.iter_modules(_package.__path__):
        importlib.import_module(f"{_package.__name__}.{_info.name}")
