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
the project takes ``tf`` and ``keras`` (tf-keras) from here. The choice itself, made before
TensorFlow is imported, is :func:`surgery._startup.prepare_process`.
"""
from __future__ import annotations

import os

from surgery._startup import prepare_process  # imports no TensorFlow
from surgery.errors import SurgeryError

_LEGACY_VALUES = ("1", "true", "yes")

prepare_process()  # before TensorFlow: which Keras, the oneDNN guard, a quiet CLI start

import tensorflow as tf  # noqa: E402  (must follow the environment choice above)
import tf_keras as keras  # noqa: E402


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


__all__ = ["tf", "keras", "legacy_tf_keras", "require_legacy_tf_keras",
           "require_tf_keras_model"]
