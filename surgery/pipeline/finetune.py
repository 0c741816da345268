"""Fine-tuning after surgery, for both Keras generations: LR warmup + cosine decay,
knowledge distillation, strategies, accuracy.

This module owns the training half of the pipeline that runs after a model has lost
channels, written once for tf-keras and Keras 3 (TensorFlow, JAX or PyTorch backend); what
differs comes from the model's :class:`~surgery.pipeline.generation.KerasGeneration`.
:func:`finetune` compiles and fits with the generation's ``Adam`` under Keras's
``CosineDecay`` with a linear warmup, with Keras progress bars, optionally distilling from a
teacher (:mod:`surgery.pipeline.distillation`), optionally under a strategy;
:func:`evaluate_accuracy` gives top-1 accuracy as a fraction; :func:`set_bn_momentum` tunes
BatchNormalization for short fine-tunes; :func:`fit_data` turns a ``tf.data`` split into what
the running backend fits (the dataset itself on TensorFlow, NumPy arrays on JAX and PyTorch).
Data is a ``tf.data.Dataset`` of ``(x, y_onehot)`` batches (TensorFlow backend) or an
``(x, y)`` tuple of NumPy arrays (any backend). It also holds the small helpers that build a
Keras 2 ``tf.distribute`` strategy by name and copy a model into a strategy's scope (Keras
3's distribution: :mod:`surgery.pipeline.distribution`). It logs and raises; it never
prints.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from surgery._backend import keras, tf
from surgery.data import as_arrays
from surgery.export.batches import class_ids, data_arrays
from surgery.pipeline.distillation import compile_distiller, make_distiller
from surgery.pipeline.distillation import Distiller  # noqa: F401  (finetune.Distiller, as before)
from surgery.pipeline.distribution import (mirrored_strategy, padded_to_batches, scope,
                                           whole_batches)
from surgery.pipeline.generation import of_model, of_process
from surgery.progress import fit_verbose
from surgery.pipeline.schedules import warmup_cosine

logger = logging.getLogger(__name__)

STRATEGIES = ("default", "mirrored", "multiworker", "tpu")

#: ``(x, y)`` NumPy arrays, or a ``tf.data.Dataset`` of ``(x, y)`` batches
Data = Union[Tuple[np.ndarray, np.ndarray], tf.data.Dataset]

__all__ = ["Distiller", "finetune", "evaluate_accuracy", "fit_data", "make_strategy",
           "clone_into", "set_bn_momentum", "steps_per_epoch", "STRATEGIES"]


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


def set_bn_momentum(model, momentum: Optional[float]) -> int:
    """Set ``momentum`` on every BatchNormalization layer of ``model`` (either Keras
    generation; ``None`` leaves them); returns how many were changed. Short fine-tunes need
    ~0.9: with 0.999 the moving statistics barely move in a few hundred steps, and inference
    uses stale ones.

    Example:
        >>> m = keras.Sequential([keras.layers.BatchNormalization(input_shape=(3,))])
        >>> set_bn_momentum(m, 0.9), m.layers[0].momentum
        (1, 0.9)
    """
    if momentum is None:
        return 0
    api = of_model(model).keras
    count = 0
    for layer in model.layers:
        if isinstance(layer, api.layers.BatchNormalization):
            layer.momentum = float(momentum)
            count += 1
        elif isinstance(layer, api.Model):
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


def _is_arrays(data) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2


def fit_data(dataset: Optional[Data], backend: Optional[str] = None) -> Optional[Data]:
    """``dataset`` (a ``tf.data.Dataset`` of ``(x, y)`` batches) as ``backend``'s ``fit``
    takes it (default: this process's): the dataset itself on TensorFlow (both Keras
    generations), ``(x, y)`` NumPy arrays on JAX and PyTorch (:func:`surgery.data.as_arrays`);
    ``None`` and arrays as they are.

    Example:
        >>> ds = tf.data.Dataset.from_tensor_slices((np.zeros((5, 2)), np.zeros((5, 3))))
        >>> fit_data(ds.batch(2), "jax")[0].shape
        (5, 2)
    """
    if dataset is None or _is_arrays(dataset):
        return dataset
    if (backend or of_process().backend) == "tensorflow":
        return dataset
    return as_arrays(dataset)


def _batches_per_epoch(train: Data, batch_size: int, steps: Optional[int]) -> int:
    """Batches in one epoch of ``train``, capped at ``steps`` when given."""
    if _is_arrays(train):
        per_epoch = max(1, math.ceil(len(train[0]) / batch_size))
    else:
        per_epoch = steps_per_epoch(train)
    return per_epoch if steps is None else max(1, min(per_epoch, int(steps)))


def finetune(model, train: Data, val: Optional[Data] = None, *, epochs: int,
             lr: float = 1e-3, warmup_epochs: float = 1.0, teacher=None,
             temperature: float = 4.0, alpha: float = 0.5, strategy=None,
             verbose: Union[int, str] = "auto", steps: Optional[int] = None,
             batch_size: int = 32, callbacks: Sequence = (), seed: int = 0,
             stage: str = "fine-tuning") -> Any:
    """Train ``model`` (tf-keras or Keras 3) in place with its Keras's Adam and Keras's
    ``CosineDecay`` with warmup for ``epochs`` epochs (``warmup_epochs`` of them warming
    up), with Keras progress bars; with ``teacher``, distil from it
    (:func:`surgery.pipeline.distillation.make_distiller`). ``train``/``val`` are ``(x, y)``
    arrays (shuffled each epoch, ``batch_size``) or ``tf.data`` datasets (TensorFlow
    backend). Under ``strategy`` (a ``tf.distribute`` strategy, or Keras 3's
    ``DataParallel``) the model (and teacher) must have been built in its scope (see
    :func:`clone_into`). ``steps`` caps the batches per epoch (brief fine-tunes; arrays: a
    random subset, seeded by ``seed``); ``callbacks`` go to ``fit`` (e.g. tfmot's
    :func:`surgery.pipeline.sparsity.pruning_callbacks`); ``stage`` names the run in the
    log. Returns the Keras ``History``.

    Example::

        history = finetune(pruned, splits.train, splits.val, epochs=3, lr=1e-3,
                           warmup_epochs=1, teacher=original)
        acc = evaluate_accuracy(pruned, splits.test)
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    generation = of_model(model)
    train, val = whole_batches(train, batch_size), whole_batches(val, batch_size)
    per_epoch = _batches_per_epoch(train, batch_size, steps)
    schedule = warmup_cosine(lr, total_steps=max(1, per_epoch * int(epochs)),
                             warmup_steps=int(round(warmup_epochs * per_epoch)),
                             api=generation.keras)
    logger.info("%s %s for %d epochs x %d steps (lr %g, warmup %g epochs%s, %s backend)",
                stage, model.name, epochs, per_epoch, lr, warmup_epochs,
                ", distilling" if teacher is not None else "", generation.backend)
    with scope(strategy):
        optimizer = generation.keras.optimizers.Adam(schedule)
        if teacher is None:
            trainee = model
            trainee.compile(optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
        else:
            trainee = make_distiller(model, teacher, temperature=temperature, alpha=alpha)
            compile_distiller(trainee, optimizer)
        fit = dict(epochs=int(epochs), validation_data=val, verbose=fit_verbose(verbose),
                   callbacks=list(callbacks))
        if _is_arrays(train):
            x, y = train
            if steps is not None:  # a brief fine-tune: a random subset of `steps` batches
                pick = np.random.default_rng(seed).permutation(len(x))[:per_epoch * batch_size]
                x, y = x[pick], y[pick]
            return trainee.fit(x, y, batch_size=batch_size, shuffle=True, **fit)
        data = train.repeat() if steps is not None else train
        return trainee.fit(data, steps_per_epoch=per_epoch if steps is not None else None,
                           shuffle=False, **fit)


def _predictions(model, data: Data, batch_size: int
                 ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """``(outputs, labels)`` of ``model`` on ``data``, in one or more parts: a tf-keras model
    reads a dataset batch by batch through one traced function; otherwise the examples go
    through ``predict`` (padded to whole batches under a Keras 3 distribution)."""
    if isinstance(data, tf.data.Dataset) and not of_model(model).keras3:
        predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        for x, y in data:
            yield predict(x).numpy(), np.asarray(y)
        return
    x, y = data_arrays(data)
    if len(x) == 0:
        return
    out = model.predict(padded_to_batches(x, batch_size), batch_size=batch_size, verbose=0)
    if isinstance(out, (list, tuple)):
        out = out[0]
    yield np.asarray(out)[:len(x)], y


def evaluate_accuracy(model, data: Data, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (tf-keras or Keras 3) on ``(x, y)`` arrays or a dataset
    of ``(x, y)`` batches (one-hot or integer labels), as a fraction in [0, 1].

    Example::

        acc = evaluate_accuracy(model, splits.test)   # e.g. 0.9722
    """
    correct, seen = 0, 0
    for out, y in _predictions(model, data, batch_size):
        labels = class_ids(y)
        correct += int(np.sum(np.argmax(out, axis=-1).reshape(len(labels)) == labels))
        seen += len(labels)
    if seen == 0:
        raise ValueError("cannot measure accuracy on an empty dataset")
    return correct / seen
