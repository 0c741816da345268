"""Checkout shim (not installed): ``import data_generator`` gives :mod:`surgery.data`."""
import sys

from surgery import data as _impl

sys.modules[__name__] = _impl
