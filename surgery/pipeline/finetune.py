"""Fine-tuning after surgery: LR warmup + cosine decay, knowledge distillation, strategies.

This module owns the training half of the pipeline that runs after a model has lost
channels: :class:`Distiller` (a student trained on a blend of the hard labels and the
temperature-softened outputs of a frozen teacher, Hinton et al. 2015; only the student is
ever saved; tf-keras ships no distiller, Keras 3 uses Keras's own), :func:`finetune`
(compile + ``fit`` under Keras's ``CosineDecay`` with a linear warmup, with Keras progress
bars, optionally distilling, optionally under a ``tf.distribute`` strategy), :func:`evaluate_accuracy`
(top-1 accuracy as a fraction), and the small helpers that build a strategy by name and
copy a model into a strategy's scope. It logs and raises; it never prints.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence, Union

import numpy as np

from surgery._backend import keras, tf
from surgery.pipeline.distillation import checked_settings, distillation_loss, ends_in_softmax
from surgery.progress import fit_verbose
from surgery.pipeline.schedules import warmup_cosine

logger = logging.getLogger(__name__)

STRATEGIES = ("default", "mirrored", "multiworker", "tpu")

__all__ = ["Distiller", "finetune", "evaluate_accuracy", "make_strategy",
           "clone_into", "set_bn_momentum", "steps_per_epoch", "STRATEGIES"]


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



def steps_per_epoch(dataset: tf.data.Dataset) -> int:
    """Number of batches in ``dataset`` (counted once when the cardinality is unknown).

    Example:
        >>> steps_per_epoch(tf.data.Dataset.range(10).batch(4))
        3
    """
    n = int(dataset.cardinality())
    if n >= 0:
        return n
    if n == int(tf.data.INFINITE_CARDINALITY):
        raise ValueError("the training dataset is infinite; finite datasets are needed")
    return sum(1 for _ in dataset)


def set_bn_momentum(model: keras.Model, momentum: Optional[float]) -> int:
    """Set ``momentum`` on every BatchNormalization layer (``None`` leaves them); returns
    how many were changed. Short fine-tunes need ~0.9: with 0.999 the moving statistics
    barely move in a few hundred steps, and inference uses stale ones.

    Example:
        >>> m = keras.Sequential([keras.layers.BatchNormalization(input_shape=(3,))])
        >>> set_bn_momentum(m, 0.9), m.layers[0].momentum
        (1, 0.9)
    """
    if momentum is None:
        return 0
    count = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(momentum)
            count += 1
        elif isinstance(layer, keras.Model):
            count += set_bn_momentum(layer, momentum)
    return count


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """A ``tf.distribute`` strategy by name: ``default`` (no distribution), ``mirrored``
    (all GPUs, else all logical CPU devices), ``multiworker`` (reads ``TF_CONFIG``) or
    ``tpu``. Raises ``RuntimeError`` with one line when it is unavailable here.

    Example:
        >>> make_strategy("default").num_replicas_in_sync
        1
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        from surgery.pipeline.distribution import mirrored_strategy

        return mirrored_strategy()
    if name == "multiworker":
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except Exception as exc:  # noqa: BLE001  (TF raises many kinds here)
            raise RuntimeError(f"multiworker strategy unavailable ({exc}); set TF_CONFIG "
                               "for every worker") from None
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeError(f"no TPU available here ({first})") from None


def clone_into(model: keras.Model, strategy: Optional[tf.distribute.Strategy]) -> keras.Model:
    """A copy of ``model`` (same weights) whose variables live under ``strategy``'s scope;
    ``model`` itself when there is no strategy or it is the default one.

    Example:
        >>> m = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
        >>> clone_into(m, None) is m
        True
    """
    if strategy is None or _is_default(strategy):
        return model
    with strategy.scope():
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
    return copy


def _is_default(strategy: tf.distribute.Strategy) -> bool:
    return type(strategy).__name__ == "_DefaultDistributionStrategy"


def finetune(model: keras.Model, train: tf.data.Dataset, val: Optional[tf.data.Dataset] = None,
             *, epochs: int, lr: float = 1e-3, warmup_epochs: float = 1.0,
             teacher: Optional[keras.Model] = None, temperature: float = 4.0,
             alpha: float = 0.5, strategy: Optional[tf.distribute.Strategy] = None,
             verbose: Union[int, str] = "auto", steps: Optional[int] = None,
             callbacks: Sequence[keras.callbacks.Callback] = (),
             stage: str = "fine-tuning") -> keras.callbacks.History:
    """Train ``model`` in place with Adam and Keras's ``CosineDecay`` with warmup for ``epochs`` epochs
    (``warmup_epochs`` of them warming up), with Keras progress bars; with ``teacher``,
    distil from it (:class:`Distiller`). Under ``strategy`` the model (and teacher) must
    have been built in ``strategy.scope()`` (see :func:`clone_into`). ``steps`` caps the
    batches per epoch (brief fine-tunes); ``callbacks`` go to ``fit`` (e.g. tfmot's
    :func:`surgery.sparsity.pruning_callbacks`); ``stage`` names the run in the log.
    Returns the Keras ``History``.

    Example::

        history = finetune(pruned, splits.train, splits.val, epochs=3, lr=1e-3,
                           warmup_epochs=1, teacher=original)
        acc = evaluate_accuracy(pruned, splits.test)
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    per_epoch = steps_per_epoch(train)
    if steps is not None:
        per_epoch = max(1, min(per_epoch, int(steps)))
    total = max(1, per_epoch * int(epochs))
    schedule = warmup_cosine(lr, total_steps=total,
                             warmup_steps=int(round(warmup_epochs * per_epoch)))
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        optimizer = keras.optimizers.Adam(schedule)
        if teacher is None:
            trainee = model
            trainee.compile(optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
        else:
            trainee = Distiller(model, teacher, temperature=temperature, alpha=alpha)
            trainee.compile(optimizer, metrics=["accuracy"])
    logger.info("%s %s for %d epochs x %d steps (lr %g, warmup %g epochs%s)",
                stage, model.name, epochs, per_epoch, lr, warmup_epochs,
                ", distilling" if teacher is not None else "")
    data = train.repeat() if steps is not None else train
    history = trainee.fit(data, validation_data=val, epochs=int(epochs),
                          steps_per_epoch=per_epoch if steps is not None else None,
                          verbose=fit_verbose(verbose), callbacks=list(callbacks))
    return history


def evaluate_accuracy(model: keras.Model, dataset: tf.data.Dataset) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` (``(x, y_onehot)`` or ``(x, y_int)``
    batches), as a fraction in [0, 1].

    Example::

        acc = evaluate_accuracy(model, splits.test)   # e.g. 0.9722
    """
    correct, seen = 0, 0
    predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    for x, y in dataset:
        pred = np.argmax(predict(x).numpy(), axis=-1)
        y = np.asarray(y)
        label = np.argmax(y, axis=-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(-1)
        correct += int(np.sum(pred == label))
        seen += len(label)
    if seen == 0:
        raise ValueError("cannot measure accuracy on an empty dataset")
    return correct / seen
