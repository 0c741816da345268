"""Checkout shim (not installed): :func:`import_tensorflow_quietly` from
``surgery/_startup.py``, loaded by path so that TensorFlow is not imported before it runs."""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_surgery_startup", os.path.join(os.path.dirname(os.path.abspath(__file__)), "surgery",
                                     "_startup.py"))
_startup = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_startup)
import_tensorflow_quietly = _startup.import_tensorflow_quietly
avoid_onednn_crash = _startup.avoid_onednn_crash
