"""Checkout shim (not installed): ``import models`` (and ``models.<submodule>``) gives
:mod:`surgery.models` and its submodules, the same module objects."""
import importlib
import pkgutil
import sys

import surgery.models as _impl

for _info in pkgutil.iter_modules(_impl.__path__):
    sys.modules[f"{__name__}.{_info.name}"] = importlib.import_module(
        f"{_impl.__name__}.{_info.name}")
sys.modules[__name__] = _impl
