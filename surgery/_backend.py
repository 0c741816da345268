"""Which Keras generations a process uses, and the Keras 2 API (tf-keras) the
kerassurgeon-based parts are written for.

TensorFlow 2.16+ ships Keras 3 as ``tf.keras``; the Keras 2 API lives in the ``tf-keras``
package and is chosen by ``TF_USE_LEGACY_KERAS=1``, which TensorFlow reads when it is first
imported. In a fresh process (neither TensorFlow nor Keras 3 imported yet) this module sets
the variable, as the plugin always has, so ``tf.keras`` is Keras 2. In a process that has
already chosen (``import keras`` or ``import tensorflow`` came first) it changes nothing:
``tf_keras`` and Keras 3 live side by side, Keras 3 models are handled by the Keras 3 graph
adapter, and only the parts that need ``tf.keras`` to be Keras 2 (kerassurgeon's
``Surgeon``, tfmot sparse training) refuse to load, through :func:`require_legacy_tf_keras`,
and the parts written for tf-keras models refuse Keras 3 ones through
:func:`require_tf_keras_model`. Everything else in
the project takes ``tf`` and ``keras`` (tf-keras) from here.
"""
from __future__ import annotations

import os
import sys

from surgery.errors import SurgeryError

_LEGACY_VALUES = ("1", "true", "yes")


def _select_keras2() -> None:
    if "tensorflow" not in sys.modules and "keras" not in sys.modules:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def legacy_tf_keras() -> bool:
    """True when ``tf.keras`` is Keras 2 (tf-keras) in this process."""
    return os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in _LEGACY_VALUES


def require_legacy_tf_keras(what: str) -> None:
    """Refuse a Keras-2-only part (``what``) in a process whose ``tf.keras`` is Keras 3."""
    if not legacy_tf_keras():
        raise SurgeryError(
            f"{what} needs tf.keras to be Keras 2 (tf-keras), but this process imported "
            "Keras 3 or TensorFlow before `surgery` without TF_USE_LEGACY_KERAS=1. Import "
            "`surgery` first (in a fresh process) or start Python with TF_USE_LEGACY_KERAS=1 "
            "— or, for Keras 3 models, use surgery.plan / surgery.apply / surgery.prune, "
            "which need neither.")


def require_tf_keras_model(model, what: str) -> None:
    """Refuse a model that is not a tf-keras (Keras 2) model in a Keras-2-only part
    (``what``), naming the way out for Keras 3 models."""
    if isinstance(model, keras.Model):
        return
    kind = f"{type(model).__module__}.{type(model).__name__}"
    hint = ("for a Keras 3 model use structured pruning (surgery.plan / surgery.apply), or "
            "rebuild or load the model with tf-keras (TF_USE_LEGACY_KERAS=1)"
            if kind.startswith("keras.") else "pass a tf-keras keras.Model")
    raise SurgeryError(f"{what} works on tf-keras (Keras 2) models only, got {kind}; {hint}")


if "tensorflow" not in sys.modules and "keras" not in sys.modules:
    from surgery import _startup  # imports no TensorFlow

    _cli_argv = _startup.launched_cli_argv()
    if _cli_argv is not None and _startup.keras_generation(_cli_argv) == 3:
        _startup.avoid_onednn_crash()  # keras-surgery prune|train on Keras 3: Keras 3 first
        _startup.import_keras3_quietly()

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

__all__ = ["tf", "keras", "legacy_tf_keras", "require_legacy_tf_keras",
           "require_tf_keras_model"]
