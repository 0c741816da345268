"""The knowledge-distillation loss, written once against an ``ops`` namespace: this module
owns :func:`distillation_loss`, which the tf-keras ``Distiller``
(:mod:`surgery.pipeline.finetune`, ``ops=TF_OPS``) and the Keras 3 one
(:mod:`surgery.pipeline.training3`, ``ops=keras.ops``, any backend) both train with, and
:func:`ends_in_softmax`, which tells them whether a model's outputs are probabilities.

Example:
    >>> import numpy as np
    >>> from surgery.pipeline.tf_ops import TF_OPS
    >>> y = np.eye(3, dtype="float32")
    >>> logits = np.log(np.full((3, 3), 1 / 3, "float32"))
    >>> round(float(distillation_loss(y, logits, logits, TF_OPS, alpha=0.0)), 4)  # ln 3
    1.0986
"""
from __future__ import annotations

__all__ = ["distillation_loss", "ends_in_softmax", "checked_settings"]


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


def distillation_loss(y, student_out, teacher_out, ops, *, temperature: float = 4.0,
                      alpha: float = 0.5, student_softmax: bool = False,
                      teacher_softmax: bool = False):
    """``alpha`` × the KL divergence of the student's from the teacher's outputs, both
    softened at ``temperature`` and scaled by T² (Hinton et al.), + ``(1 − alpha)`` × the
    cross-entropy with the one-hot labels ``y``. Softmax outputs (``*_softmax``) are
    turned back into logits with ``log`` first."""

    def logits(out, is_softmax: bool):
        return ops.log(ops.clip(out, 1e-7, 1.0)) if is_softmax else out

    s_logits = logits(student_out, student_softmax)
    t_logits = logits(teacher_out, teacher_softmax)
    y = ops.cast(y, s_logits.dtype)
    hard = ops.mean(-ops.sum(y * ops.log_softmax(s_logits, axis=-1), axis=-1))
    t = float(temperature)
    soft_t = ops.softmax(t_logits / t, axis=-1)
    kl = ops.sum(soft_t * (ops.log(ops.clip(soft_t, 1e-7, 1.0))
                           - ops.log_softmax(s_logits / t, axis=-1)), axis=-1)
    return alpha * ops.mean(kl) * t * t + (1.0 - alpha) * hard
