"""Selection of the Keras 2 API (tf-keras) that kerassurgeon and tfmot are written for.

TensorFlow 2.16+ ships Keras 3 as ``tf.keras``; the Keras 2 API lives in the ``tf-keras``
package and is chosen by ``TF_USE_LEGACY_KERAS=1``, which TensorFlow reads once, when it is
first imported. This module owns that choice: it sets the variable when TensorFlow has not
been imported yet, and refuses to go on when TensorFlow was already imported with Keras 3,
because every layer class would then be the wrong one. Everything else in the project takes
``tf`` and ``keras`` from here.
"""
from __future__ import annotations

import os
import sys

_LEGACY_VALUES = ("1", "true", "yes")


def _select_keras2() -> None:
    if "tensorflow" not in sys.modules:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return
    if os.environ.get("TF_USE_LEGACY_KERAS", "").lower() not in _LEGACY_VALUES:
        raise ImportError(
            "TensorFlow was imported before `surgery` without TF_USE_LEGACY_KERAS=1, so "
            "tf.keras is Keras 3, which kerassurgeon and tfmot do not support. Import "
            "`surgery` before TensorFlow, or set TF_USE_LEGACY_KERAS=1 in the environment "
            "before starting Python."
        )


_select_keras2()

if "tensorflow" not in sys.modules:
    from surgery import _startup  # imports no TensorFlow

    if _startup.launched_as_cli() or _startup.requested_by_environment():
        _startup.avoid_onednn_crash()  # TensorFlow 2.21 oneDNN crash on AVX-512 CPUs
    if _startup.launched_as_cli():  # keras-surgery: quiet C++ start-up, one-line errors
        _startup.muted_stderr_import(
            lambda: __import__("tensorflow").config.list_physical_devices())

import tensorflow as tf  # noqa: E402  (must follow the environment choice above)
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras"]
