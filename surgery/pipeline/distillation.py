"""Knowledge distillation for both Keras generations: this module owns training a student on
a blend of the hard labels and the temperature-softened outputs of a frozen teacher (Hinton
et al. 2015), as :func:`make_distiller` and :func:`compile_distiller` build it for the
student's Keras generation; only the student is ever saved.

Shared: the settings check (:func:`checked_settings`), telling whether a model's outputs are
softmax probabilities (:func:`ends_in_softmax`) and turning them back into logits
(:func:`as_logits`, on a generation's ``ops``). The loss is the same sum in both:
``alpha`` × Keras's KL divergence of the temperature-softened outputs × T², +
``1 − alpha`` × categorical cross-entropy.

Keras 3 trains with Keras's own ``keras.distillation.Distiller`` and ``LogitsDistillation``
(TensorFlow, JAX and PyTorch backends), adapted in two small subclasses, made on first use
so that a Keras 2 process never imports Keras 3 (both differences measured in
``tests/keras3_builtins_cases.py``):

- ``ProbabilityDistillation``: ``LogitsDistillation`` takes logits; the pipeline's models
  end in a softmax, so their probabilities are turned back into logits (``log``) first.
  Without it the KL term is computed on ``softmax(p / T)`` of probabilities. Its KL loss is
  passed as ``keras.losses.KLDivergence()``: ``LogitsDistillation``'s default, the string
  ``"kl_divergence"``, resolves (Keras 3.15.1) to the plain function, which its
  ``isinstance(loss_fn, KLDivergence)`` check misses, so it would compare the scaled logits
  themselves, with no softmax and no T².
- its ``Distiller``: Keras's ``Distiller.compute_loss`` leaves out the student's own losses
  (its kernel regularisers and the sparsity penalties); this adds them back, as
  ``Model.compute_loss`` does.

tf-keras 2.21 ships no distiller, so Keras 2 keeps :class:`Distiller` here, with the loss
:func:`distillation_loss` built from tf-keras's own loss functions.

Example:
    >>> import numpy as np
    >>> y = np.eye(3, dtype="float32")
    >>> logits = np.log(np.full((3, 3), 1 / 3, "float32"))
    >>> round(float(distillation_loss(y, logits, logits, alpha=0.0)), 4)  # ln 3
    1.0986
"""
from __future__ import annotations

import functools
from typing import Any, Sequence, Tuple

from surgery._backend import keras, tf
from surgery.pipeline.generation import keras2, keras3, of_model

__all__ = ["make_distiller", "compile_distiller", "Distiller", "distillation_loss",
           "ends_in_softmax", "checked_settings", "as_logits"]


# ----------------------------------------------------------------------------- shared


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


def as_logits(out: Any, is_softmax: bool, ops: Any) -> Any:
    """``out`` as logits: ``log`` of softmax probabilities (clipped at 1e-7), else as is;
    ``ops`` is a generation's :attr:`~surgery.pipeline.generation.KerasGeneration.ops`."""
    return ops.log(ops.clip(out, 1e-7, 1.0)) if is_softmax else out


def make_distiller(student: Any, teacher: Any, temperature: float = 4.0,
                   alpha: float = 0.5) -> Any:
    """A model of ``student``'s Keras generation that trains ``student`` on ``alpha`` × the
    KL divergence from the frozen ``teacher`` (outputs softened at ``temperature``, × T²) +
    ``(1 − alpha)`` × the categorical cross-entropy with the labels; calling it calls the
    student. Compile it with :func:`compile_distiller`; save ``distiller.student``.

    Example::

        d = make_distiller(pruned, original, temperature=4.0, alpha=0.5)
        compile_distiller(d, optimizer)
        d.fit(x, y, epochs=2)
        d.student.save("pruned.keras")
    """
    temperature, alpha = checked_settings(temperature, alpha)
    if not of_model(student).keras3:
        return Distiller(student, teacher, temperature=temperature, alpha=alpha)
    probability_distillation, distiller = _keras3_classes()
    loss = probability_distillation(temperature, teacher_softmax=ends_in_softmax(teacher),
                                    student_softmax=ends_in_softmax(student))
    return distiller(teacher=teacher, student=student, distillation_losses=loss,
                     student_loss_weight=1.0 - alpha)


def compile_distiller(distiller: Any, optimizer: Any,
                      metrics: Sequence[str] = ("accuracy",)) -> None:
    """Compile a :func:`make_distiller` model with ``optimizer`` and ``metrics`` (on Keras 3
    with the categorical cross-entropy on the student's outputs, probabilities or logits as
    the student gives them; the Keras 2 :class:`Distiller` computes its loss itself)."""
    if not of_model(distiller).keras3:
        distiller.compile(optimizer, metrics=list(metrics))
        return
    from_logits = not ends_in_softmax(distiller.student)
    distiller.compile(optimizer=optimizer,
                      loss=keras3().keras.losses.CategoricalCrossentropy(from_logits=from_logits),
                      metrics=list(metrics))


# ----------------------------------------------------------------------------- Keras 2


def distillation_loss(y, student_out, teacher_out, *, temperature: float = 4.0,
                      alpha: float = 0.5, student_softmax: bool = False,
                      teacher_softmax: bool = False) -> tf.Tensor:
    """tf-keras: ``alpha`` × the KL divergence of the student's from the teacher's outputs,
    both softened at ``temperature`` and scaled by T² (Hinton et al.), + ``(1 − alpha)`` ×
    the cross-entropy with the one-hot labels ``y``; softmax outputs (``*_softmax``) are
    turned back into logits first."""
    s_logits = as_logits(student_out, student_softmax, keras2().ops)
    t_logits = as_logits(teacher_out, teacher_softmax, keras2().ops)
    t = float(temperature)
    hard = keras.losses.categorical_crossentropy(tf.cast(y, s_logits.dtype), s_logits,
                                                 from_logits=True)
    soft = keras.losses.kl_divergence(tf.nn.softmax(t_logits / t), tf.nn.softmax(s_logits / t))
    return alpha * tf.reduce_mean(soft) * t * t + (1.0 - alpha) * tf.reduce_mean(hard)


class Distiller(keras.Model):
    """A student trained on ``alpha`` × soft-target KL (teacher and student outputs softened
    at ``temperature``, scaled by T², Hinton et al.) + ``(1 − alpha)`` × the hard-label
    loss; the teacher is frozen. Both models may end in a softmax: their outputs are turned
    back into logits with ``log`` before softening. Calling the distiller calls the student;
    save ``distiller.student``.

    Example::

        d = Distiller(pruned, original, temperature=4.0, alpha=0.5)
        d.compile(keras.optimizers.Adam(1e-3), metrics=["accuracy"])
        d.fit(train, epochs=2)
        d.student.save("pruned.h5")
    """

    def __init__(self, student: keras.Model, teacher: keras.Model, temperature: float = 4.0,
                 alpha: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.temperature, self.alpha = checked_settings(temperature, alpha)
        self.student = student
        self.teacher = teacher
        teacher.trainable = False
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self._softmax_out = ends_in_softmax(student)
        self._teacher_softmax = ends_in_softmax(teacher)

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    @property
    def metrics(self):
        return [self.loss_tracker] + (self.compiled_metrics.metrics
                                      if self.compiled_metrics is not None else [])

    def _distill_loss(self, y, student_out, teacher_out):
        return distillation_loss(y, student_out, teacher_out,
                                 temperature=self.temperature, alpha=self.alpha,
                                 student_softmax=self._softmax_out,
                                 teacher_softmax=self._teacher_softmax)

    def train_step(self, data):
        x, y = data[0], data[1]
        teacher_out = self.teacher(x, training=False)
        with tf.GradientTape() as tape:
            student_out = self.student(x, training=True)
            loss = self._distill_loss(y, student_out, teacher_out)
            if self.student.losses:
                loss += tf.add_n(self.student.losses)
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = loss / tf.cast(replicas, loss.dtype)
        variables = self.student.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        self.loss_tracker.update_state(loss)
        self.compiled_metrics.update_state(y, student_out)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        x, y = data[0], data[1]
        student_out = self.student(x, training=False)
        teacher_out = self.teacher(x, training=False)
        self.loss_tracker.update_state(self._distill_loss(y, student_out, teacher_out))
        self.compiled_metrics.update_state(y, student_out)
        return {m.name: m.result() for m in self.metrics}


# ----------------------------------------------------------------------------- Keras 3


@functools.cache
def _keras3_classes() -> Tuple[type, type]:
    """Keras 3's ``ProbabilityDistillation`` and ``Distiller`` (the module docstring says
    why each differs from Keras's), made once, on the first Keras 3 distillation."""
    k3 = keras3().keras
    ops = k3.ops

    class ProbabilityDistillation(k3.distillation.LogitsDistillation):
        """``LogitsDistillation`` (KL divergence at ``temperature``, × T²) for models whose
        outputs may be softmax probabilities: those are turned into logits first."""

        def __init__(self, temperature: float = 4.0, teacher_softmax: bool = False,
                     student_softmax: bool = False):
            super().__init__(temperature=float(temperature), loss=k3.losses.KLDivergence())
            self.teacher_softmax = bool(teacher_softmax)
            self.student_softmax = bool(student_softmax)

        def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
            return super().compute_loss(as_logits(teacher_outputs, self.teacher_softmax, ops),
                                        as_logits(student_outputs, self.student_softmax, ops),
                                        **kwargs)

    class Keras3Distiller(k3.distillation.Distiller):
        """``keras.distillation.Distiller`` whose loss also counts the student's own losses
        (regularisers). Save ``distiller.student``."""

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                         training=True):
            loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                        training=training)
            for extra in self.student.losses:
                loss = loss + ops.cast(self._aggregate_additional_loss(extra), loss.dtype)
            return loss

    return ProbabilityDistillation, Keras3Distiller
