"""Checkout shim (not installed): ``import patches`` (and ``patches.<submodule>``) gives
:mod:`surgery.patches` and its submodules, the same module objects."""
import importlib
import pkgutil
import sys

import surgery.patches as _impl

for _info in pkgutil.iter_modules(_impl.__path__):
    sys.modules[f"{__name__}.{_info.name}"] = importlib.import_module(
        f"{_impl.__name__}.{_info.name}")
sys.modules[__name__] = _impl
