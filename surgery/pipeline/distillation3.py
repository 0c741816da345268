"""Keras 3 distillation with Keras's own ``keras.distillation``: this module owns
:func:`make_distiller`, which builds a ``keras.distillation.Distiller`` with
``LogitsDistillation`` (TensorFlow, JAX and PyTorch backends) for the pipeline's settings.

Two small subclasses adapt it where the pipeline's models differ from what Keras assumes
(both differences measured in ``tests/keras3_builtins_cases.py``):

- :class:`ProbabilityDistillation`: ``LogitsDistillation`` takes logits; the pipeline's
  models end in a softmax, so their probabilities are turned back into logits (``log``)
  first. Without it the KL term is computed on ``softmax(p / T)`` of probabilities.
- :class:`Distiller`: Keras's ``Distiller.compute_loss`` leaves out the student's own
  losses (its kernel regularisers and the sparsity penalties); this adds them back, as
  ``Model.compute_loss`` does.

The KL loss is passed as ``keras.losses.KLDivergence()``: ``LogitsDistillation``'s default,
the string ``"kl_divergence"``, resolves (Keras 3.15.1) to the plain function, which its
``isinstance(loss_fn, KLDivergence)`` check misses, so it would compare the scaled logits
themselves, with no softmax and no T².

Keras 3 must be imported before this module.
"""
from __future__ import annotations

import keras
from keras import ops

from surgery.pipeline.distillation import as_logits, checked_settings, ends_in_softmax

__all__ = ["make_distiller", "compile_distiller", "Distiller", "ProbabilityDistillation"]


class ProbabilityDistillation(keras.distillation.LogitsDistillation):
    """``LogitsDistillation`` (KL divergence at ``temperature``, × T²) for models whose
    outputs may be softmax probabilities: those are turned into logits first."""

    def __init__(self, temperature: float = 4.0, teacher_softmax: bool = False,
                 student_softmax: bool = False):
        super().__init__(temperature=float(temperature), loss=keras.losses.KLDivergence())
        self.teacher_softmax = bool(teacher_softmax)
        self.student_softmax = bool(student_softmax)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        return super().compute_loss(as_logits(teacher_outputs, self.teacher_softmax, ops),
                                    as_logits(student_outputs, self.student_softmax, ops),
                                    **kwargs)


class Distiller(keras.distillation.Distiller):
    """``keras.distillation.Distiller`` whose loss also counts the student's own losses
    (regularisers). Save ``distiller.student``."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                    training=training)
        for extra in self.student.losses:
            loss = loss + ops.cast(self._aggregate_additional_loss(extra), loss.dtype)
        return loss


def make_distiller(student: keras.Model, teacher: keras.Model, temperature: float = 4.0,
                   alpha: float = 0.5) -> Distiller:
    """A distiller training ``student`` on ``alpha`` × the KL divergence from the frozen
    ``teacher`` (outputs softened at ``temperature``, × T²) + ``(1 − alpha)`` × the
    categorical cross-entropy with the labels. Compile it with :func:`compile_distiller`.

    Example::

        d = make_distiller(pruned, original, temperature=4.0, alpha=0.5)
        compile_distiller(d, keras.optimizers.Adam(1e-3))
        d.fit(x, y, epochs=2)
        d.student.save("pruned.keras")
    """
    temperature, alpha = checked_settings(temperature, alpha)
    loss = ProbabilityDistillation(temperature, teacher_softmax=ends_in_softmax(teacher),
                                   student_softmax=ends_in_softmax(student))
    return Distiller(teacher=teacher, student=student, distillation_losses=loss,
                     student_loss_weight=1.0 - alpha)


def compile_distiller(distiller: Distiller, optimizer, metrics=("accuracy",)) -> None:
    """Compile ``distiller`` with ``optimizer``: categorical cross-entropy on the student's
    outputs (probabilities or logits, as the student gives them) and ``metrics``."""
    from_logits = not ends_in_softmax(distiller.student)
    distiller.compile(optimizer=optimizer,
                      loss=keras.losses.CategoricalCrossentropy(from_logits=from_logits),
                      metrics=list(metrics))
