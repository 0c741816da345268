"""Knowledge distillation's shared parts: this module owns the settings check
(:func:`checked_settings`), telling whether a model's outputs are softmax probabilities
(:func:`ends_in_softmax`) and turning them back into logits (:func:`as_logits`), and the
tf-keras (Keras 2) loss :func:`distillation_loss`.

Keras 3 trains with Keras's own ``keras.distillation.Distiller`` and ``LogitsDistillation``
(:mod:`surgery.pipeline.distillation3`). tf-keras 2.21 ships no distiller, so the Keras 2
``Distiller`` (:mod:`surgery.pipeline.finetune`) keeps this loss: the same sum as Keras 3's
(``alpha`` × Keras's KL divergence of the temperature-softened outputs × T², + ``1 − alpha``
× categorical cross-entropy), built from tf-keras's own loss functions.

Example:
    >>> import numpy as np
    >>> y = np.eye(3, dtype="float32")
    >>> logits = np.log(np.full((3, 3), 1 / 3, "float32"))
    >>> round(float(distillation_loss(y, logits, logits, alpha=0.0)), 4)  # ln 3
    1.0986
"""
from __future__ import annotations

__all__ = ["distillation_loss", "ends_in_softmax", "checked_settings", "as_logits"]


def checked_settings(temperature: float, alpha: float) -> tuple[float, float]:
    """``(temperature, alpha)`` as floats; ``ValueError`` unless T > 0 and 0 ≤ alpha ≤ 1."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return float(temperature), float(alpha)


def ends_in_softmax(model) -> bool:
    """True when ``model``'s last layer outputs softmax probabilities."""
    last = model.layers[-1]
    act = getattr(last, "activation", None)
    if act is not None and getattr(act, "__name__", "") == "softmax":
        return True
    return type(last).__name__ == "Softmax"


def as_logits(out, is_softmax: bool, ops):
    """``out`` as logits: ``log`` of softmax probabilities (clipped at 1e-7), else as is;
    ``ops`` is ``keras.ops`` or :data:`surgery.pipeline.tf_ops.TF_OPS`."""
    return ops.log(ops.clip(out, 1e-7, 1.0)) if is_softmax else out


def distillation_loss(y, student_out, teacher_out, *, temperature: float = 4.0,
                      alpha: float = 0.5, student_softmax: bool = False,
                      teacher_softmax: bool = False):
    """tf-keras: ``alpha`` × the KL divergence of the student's from the teacher's outputs,
    both softened at ``temperature`` and scaled by T² (Hinton et al.), + ``(1 − alpha)`` ×
    the cross-entropy with the one-hot labels ``y``; softmax outputs (``*_softmax``) are
    turned back into logits first."""
    from surgery._backend import keras, tf
    from surgery.pipeline.tf_ops import TF_OPS

    s_logits = as_logits(student_out, student_softmax, TF_OPS)
    t_logits = as_logits(teacher_out, teacher_softmax, TF_OPS)
    t = float(temperature)
    hard = keras.losses.categorical_crossentropy(tf.cast(y, s_logits.dtype), s_logits,
                                                 from_logits=True)
    soft = keras.losses.kl_divergence(tf.nn.softmax(t_logits / t), tf.nn.softmax(s_logits / t))
    return alpha * tf.reduce_mean(soft) * t * t + (1.0 - alpha) * tf.reduce_mean(hard)
